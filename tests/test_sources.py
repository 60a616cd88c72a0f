"""Video sources: files (several containers, damaged ones), iterables, live behaviour with a fake
capture (backoff, give-up, stale-frame dropping) and real network streams on 127.0.0.1."""

import contextlib
import os
import threading
import time

import numpy as np
import pytest

from vbedge.errors import FormatError, InvalidInputError, MissingDependencyError
from vbedge.sources import (Frame, SourceEnded, SourceNotFoundError, SourceOpenError,
                            csi_pipeline, open_source, opencv_has_gstreamer)

cv2 = pytest.importorskip("cv2")

FPS = 20
N_FRAMES = 40
SIZE = (96, 64)  # width, height


BITS = 6  # 2**6 > N_FRAMES


def synthetic_frame(i):
    """Frame i shows its index in binary: 6 columns of 16 px, white for a 1 bit, black for 0
    (large flat blocks survive every lossy codec used here)."""
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    for bit in range(BITS):
        if (i >> bit) & 1:
            image[:, bit * 16:(bit + 1) * 16] = 255
    return image


def frame_index_of(image):
    """Read back the index drawn by synthetic_frame (block centres, thresholded)."""
    return sum(1 << bit for bit in range(BITS)
               if image[16:-16, bit * 16 + 4:(bit + 1) * 16 - 4].mean() > 128)


def write_video(path, fourcc, n=N_FRAMES):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, SIZE)
    if not writer.isOpened():
        return None
    for i in range(n):
        writer.write(synthetic_frame(i))
    writer.release()
    return path


@pytest.fixture(autouse=True)
def no_reader_threads_left():
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t.name.startswith("vbedge-source")]
        if not left:
            return
        time.sleep(0.02)
    pytest.fail(f"reader threads left running: {left}")


CONTAINERS = [("mp4", "mp4v"), ("avi", "MJPG"), ("mkv", "MJPG")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for ext, fourcc in CONTAINERS:
        path = write_video(folder / f"clip_{fourcc}.{ext}", fourcc)
        if path is not None:
            out[ext] = path
    return out


# -- files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [c[0] for c in CONTAINERS])
def test_file_reads_every_frame_with_timestamps(videos, ext):
    if ext not in videos:
        pytest.skip(f"this OpenCV cannot write .{ext}")
    with open_source(videos[ext]) as source:
        assert not source.is_live
        frames = list(source)
        assert source.end_reason == "end of file" and not source.failed
    assert len(frames) == N_FRAMES
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [frame_index_of(f.image) for f in frames] == list(range(N_FRAMES))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(N_FRAMES) / FPS,
                               atol=1e-3)
    assert frames[0].image.shape == (SIZE[1], SIZE[0], 3) and frames[0].image.dtype == np.uint8
    stats = source.stats
    assert (stats.frames_read, stats.frames_delivered, stats.frames_dropped) == (40, 40, 0)
    with pytest.raises(SourceEnded):
        source.read()


def test_file_with_slow_consumer_drops_nothing(videos):
    with open_source(videos["avi"]) as source:
        seen = []
        for frame in source:
            seen.append(frame.index)
            time.sleep(0.01)  # a slow consumer: an offline source must still give every frame
    assert seen == list(range(N_FRAMES)) and source.stats.frames_dropped == 0


@pytest.mark.parametrize("ext", ["avi", "mkv"])
def test_truncated_file_delivers_frames_before_the_damage(videos, tmp_path, ext):
    if ext not in videos:
        pytest.skip(f"this OpenCV cannot write .{ext}")
    data = videos[ext].read_bytes()
    damaged = tmp_path / f"truncated.{ext}"
    damaged.write_bytes(data[:len(data) // 2])
    with open_source(damaged) as source:
        frames = list(source)
    assert 0 < len(frames) < N_FRAMES
    assert [frame_index_of(f.image) for f in frames] == list(range(len(frames)))
    assert source.failed
    assert "ended early" in source.end_reason and "truncated or damaged" in source.end_reason
    assert source.stats.last_error == source.end_reason


def test_unreadable_files_raise_clear_errors(videos, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        open_source(empty)
    data = videos["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"  # OpenCV writes the mp4 index at the end: nothing decodable
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(FormatError, match="cannot decode"):
        open_source(cut)
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="cannot decode"):
        open_source(str(garbage))
    with pytest.raises(SourceNotFoundError, match="not found") as info:
        open_source(tmp_path / "missing.mp4")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(InvalidInputError, match="directory"):
        open_source(tmp_path)


# -- URIs and options ----------------------------------------------------------------------------


@pytest.mark.parametrize("uri,match", [
    ("ftp://host/x.mp4", "unknown source scheme 'ftp'"), ("", "empty"),
    ("csi://a", "csi://N"),
])
def test_bad_uris(uri, match):
    with pytest.raises(InvalidInputError, match=match):
        open_source(uri)


@pytest.mark.parametrize("options,match", [
    (dict(give_up=3), "unknown source option"), (dict(buffer_size=5), "buffer_size"),
    (dict(reconnect_delay=0), "reconnect_delay"), (dict(give_up_after=-1), "give_up_after"),
    (dict(reconnect_delay=2, reconnect_max_delay=1), "reconnect_max_delay"),
    (dict(on_event=3), "on_event"), (dict(fps=0), "fps"),
])
def test_bad_options(videos, options, match):
    with pytest.raises(InvalidInputError, match=match):
        open_source(videos["avi"], **options)


def test_other_source_types_rejected():
    with pytest.raises(InvalidInputError, match="camera index"):
        open_source(-1)
    with pytest.raises(InvalidInputError, match="got float"):
        open_source(1.5)
    with pytest.raises(SourceNotFoundError, match="V4L2"):
        open_source("/dev/video987")


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("uri", ["csi://0", "videotestsrc ! videoconvert ! appsink"])
def test_gstreamer_sources_need_an_opencv_with_gstreamer(uri):
    with pytest.raises(MissingDependencyError, match="GStreamer.*JetPack"):
        open_source(uri)


def test_csi_and_camera_targets_through_a_factory():
    seen = []

    def factory(target):
        seen.append(target)
        return FakeCapture([("frames", 1)])

    for uri in ("csi://1", "0", 3):
        with open_source(uri, capture_factory=factory, width=640, height=480) as source:
            assert source.is_live
            assert source.read(timeout=5) is not None
    assert seen[0].kind == "gstreamer" and "nvarguscamerasrc sensor-id=1" in seen[0].location
    assert "width=(int)640" in seen[0].location and "appsink drop=true" in seen[0].location
    assert (seen[1].kind, seen[1].location) == ("camera", 0)
    assert (seen[2].kind, seen[2].location) == ("camera", 3)
    with pytest.raises(InvalidInputError, match="flip_method"):
        csi_pipeline(0, flip_method=9)


# -- iterables -----------------------------------------------------------------------------------


def images(n, start=0):
    return [np.full((8, 8, 3), start + i, np.uint8) for i in range(n)]


def test_iterable_of_images_pairs_and_frames():
    with open_source(images(5), fps=10) as source:
        frames = list(source)
    assert [f.timestamp for f in frames] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert source.end_reason == "end of iterable" and not source.is_live
    pairs = [(1.5 + i, img) for i, img in enumerate(images(3))]
    assert [f.timestamp for f in open_source(pairs)] == [1.5, 2.5, 3.5]
    objects = [Frame(img, 7.0 + i, 0) for i, img in enumerate(images(2))]
    assert [f.timestamp for f in open_source(iter(objects))] == [7.0, 8.0]


def test_iterable_errors_name_the_item():
    source = open_source(images(2))
    with pytest.raises(InvalidInputError, match="needs fps"):
        source.read()
    bad = images(2) + [np.zeros((8, 8), np.uint8)]
    source = open_source(bad, fps=5)
    assert source.read().index == 0 and source.read().index == 1
    with pytest.raises(InvalidInputError, match="item 2"):
        source.read()
    assert source.failed and "item 2" in source.end_reason
    backwards = [(1.0, images(1)[0]), (0.5, images(1)[0])]
    source = open_source(backwards)
    source.read()
    with pytest.raises(InvalidInputError, match="earlier than the previous"):
        source.read()


def test_generator_is_closed_with_the_source():
    closed = []

    def gen():
        try:
            for img in images(100):
                yield img
        finally:
            closed.append(True)

    source = open_source(gen(), fps=20)
    source.read()
    source.close()
    assert closed == [True] and source.end_reason == "closed by caller"
    with pytest.raises(SourceEnded, match="closed by caller"):
        source.read()


def test_live_iterable_keeps_the_newest():
    gate = threading.Event()

    def gen():
        yield from images(10)
        gate.wait(10)  # keep the source open until the test has read

    with open_source(gen(), live=True) as source:
        deadline = time.monotonic() + 10
        while source.stats.frames_read < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        frame = source.read(timeout=5)
        assert frame.index == 9 and int(frame.image[0, 0, 0]) == 9
        assert source.stats.frames_dropped == 9
        gate.set()  # the iterable ends; nothing is left in the buffer
        with pytest.raises(SourceEnded, match="end of iterable"):
            source.read(timeout=5)
    assert source.end_reason == "end of iterable" and not source.failed


# -- live behaviour with a fake capture ------------------------------------------------------------


class FakeCapture:
    """A scripted capture. Steps: ("frames", n) gives n frames; ("gated", n) gives n frames, each
    only after the test releases it (``gate.release()``); ("fail",) makes read fail;
    ("stall", s) blocks s seconds then fails (like FFmpeg's read timeout). After the script,
    reads fail. ``pos_msec`` is a callable giving the stream clock per frame (or None)."""

    counter = 0

    def __init__(self, script, gate=None, pos_msec=None, produced=None):
        self.steps = []
        for step in script:
            if step[0] in ("frames", "gated"):
                self.steps += [step[0]] * step[1]
            else:
                self.steps.append(step)
        self.gate = gate
        self.pos_msec = pos_msec
        self.produced = produced if produced is not None else []
        self.released = False
        self.abandoned = threading.Event()
        self.pos = -1.0

    def abandon(self):
        """Unblock a gated read for good (before closing the source, so its reader can exit)."""
        self.abandoned.set()

    def isOpened(self):
        return True

    def read(self):
        if not self.steps:
            return False, None
        step = self.steps.pop(0)
        if step == "gated":
            while not self.gate.acquire(timeout=0.02):
                if self.abandoned.is_set():
                    return False, None
            step = "frames"
        if step == "frames":
            number = len(self.produced)
            self.produced.append(number)
            image = np.zeros((4, 4, 3), np.uint8)
            image[0, 0, 0], image[0, 0, 1] = number % 256, number // 256
            if self.pos_msec is not None:
                self.pos = self.pos_msec(number)
            return True, image
        if step[0] == "stall":
            time.sleep(step[1])
        return False, None

    def get(self, prop):
        return self.pos if prop == cv2.CAP_PROP_POS_MSEC else 0.0

    def release(self):
        self.released = True


def number_of(image):
    return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def scripted_factory(connections):
    """Each connection attempt takes the next item: a FakeCapture, or None (refused)."""
    attempts = []

    def factory(target):
        attempts.append(target)
        item = connections.pop(0) if connections else None
        return item if item is not None else Closed()

    factory.attempts = attempts
    return factory


class Closed:
    def isOpened(self):
        return False


@contextlib.contextmanager
def live_fake(capture, uri="rtsp://fake/stream", **options):
    """A live source over one fake capture; the capture is abandoned before the source closes
    so a reader blocked on the gate exits at once (also when the test fails)."""
    source = open_source(uri, capture_factory=scripted_factory([capture]), **options)
    try:
        yield source
    finally:
        capture.abandon()
        source.close()


FAST = dict(reconnect_delay=0.01, reconnect_max_delay=0.04, give_up_after=5.0)


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted():
    gate = threading.Semaphore(0)
    with live_fake(FakeCapture([("gated", 1000)], gate=gate), **FAST) as source:
        for burst, expected_newest in ((10, 9), (5, 14), (1, 15)):
            before = source.stats.frames_read
            for _ in range(burst):
                gate.release()
            deadline = time.monotonic() + 10
            while source.stats.frames_read < before + burst and time.monotonic() < deadline:
                time.sleep(0.005)
            frame = source.read(timeout=5)
            # The consumer was slower than the capture: it gets the newest frame, not a stale one.
            assert number_of(frame.image) == expected_newest and frame.index == expected_newest
            assert source.read(timeout=0.05) is None
        stats = source.stats
        assert stats.frames_read == 16 and stats.frames_delivered == 3
        assert stats.frames_dropped == 13


def test_two_slot_buffer_keeps_the_two_newest():
    gate = threading.Semaphore(0)
    with live_fake(FakeCapture([("gated", 100)], gate=gate), buffer_size=2, **FAST) as source:
        for _ in range(6):
            gate.release()
        deadline = time.monotonic() + 10
        while source.stats.frames_read < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [source.read(timeout=5).index for _ in range(2)] == [4, 5]
        assert source.stats.frames_dropped == 4


def test_paced_slow_consumer_latency_stays_bounded():
    produced = []
    capture = FakeCapture([("frames", 300)], produced=produced)
    original_read = capture.read

    def paced_read():  # a 500 fps camera
        time.sleep(0.002)
        return original_read()

    capture.read = paced_read
    with open_source("rtsp://fake/x", capture_factory=scripted_factory([capture]),
                     reconnect_delay=0.01, reconnect_max_delay=0.01, give_up_after=0.3) as source:
        delivered = []
        for frame in source:
            behind = len(produced) - 1 - number_of(frame.image)
            delivered.append((frame.index, behind))
            time.sleep(0.02)  # a consumer 10x slower than the camera
        indices = [index for index, _ in delivered]
    assert indices == sorted(set(indices))  # in order, no frame twice
    assert source.stats.frames_dropped > 0
    assert source.stats.frames_dropped + source.stats.frames_delivered == 300
    # At the moment it is handed over, the delivered frame is at most a couple of frames older
    # than the newest captured (one slot buffer + the frame being captured), never a backlog.
    # Loose bound: thread scheduling on a loaded machine may let the reader run a few frames.
    assert max(behind for _, behind in delivered[:-1]) <= 10
    assert len(delivered) < 150


def test_reconnects_with_exponential_backoff_and_reports_events():
    events = []
    factory = scripted_factory([
        FakeCapture([("frames", 5), ("fail",)]),
        None, None, None,
        FakeCapture([("frames", 5), ("stall", 0.05)]),
        FakeCapture([("frames", 3)]),
    ])
    with open_source("rtsp://fake/cam", capture_factory=factory, on_event=events.append,
                     reconnect_delay=0.01, reconnect_max_delay=0.04, give_up_after=0.5) as source:
        frames = list(source)
    kinds = [e.kind for e in events]
    assert kinds[:8] == ["disconnected", "connect_failed", "connect_failed", "connect_failed",
                         "reconnected", "disconnected", "reconnected", "disconnected"]
    # Then attempts fail until it gives up (how many depends on time; at least one).
    assert len(kinds) >= 10 and set(kinds[8:-1]) == {"connect_failed"} and kinds[-1] == "ended"
    # Backoff doubles per failed attempt up to the maximum, and restarts once frames flow.
    retry = [e.retry_in for e in events if e.kind in ("disconnected", "connect_failed")]
    assert retry[:5] == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.01])
    assert [e.attempt for e in events if e.kind == "reconnected"] == [4, 1]
    # Live: the consumer may miss frames the fake produced faster than it read (dropped, counted).
    stats = source.stats
    assert stats.frames_read == 13 and stats.frames_read == stats.frames_delivered + \
        stats.frames_dropped
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)) and set(indices) <= set(range(13))
    timestamps = [f.timestamp for f in frames]
    assert all(b > a for a, b in zip(timestamps, timestamps[1:]))
    stats = source.stats
    assert (stats.disconnects, stats.reconnects) == (3, 2)
    assert stats.failed_connects == kinds.count("connect_failed")
    assert source.failed
    assert source.end_reason.startswith("gave up after 0.5 s without frames: cannot connect")


def test_first_connection_failure_raises_unless_waiting():
    with pytest.raises(SourceOpenError, match="cannot open rtsp://fake/none.*wait_for_connection"):
        open_source("rtsp://fake/none", capture_factory=scripted_factory([]))
    factory = scripted_factory([None, None, FakeCapture([("frames", 2)])])
    with open_source("rtsp://fake/late", capture_factory=factory, wait_for_connection=True,
                     **FAST) as source:
        assert source.read(timeout=5) is not None
        assert source.stats.failed_connects == 2 and source.stats.reconnects == 0


def test_factory_exceptions_are_retried_and_reported():
    calls = []

    def factory(target):
        calls.append(1)
        if len(calls) == 1:
            return FakeCapture([("frames", 1)])
        raise OSError("device busy")

    with open_source(0, capture_factory=factory, reconnect_delay=0.01,
                     reconnect_max_delay=0.01, give_up_after=0.2) as source:
        list(source)
    assert source.stats.frames_read == 1
    assert "OSError: device busy" in source.end_reason and source.failed


def test_close_stops_the_reader_promptly():
    factory = scripted_factory([FakeCapture([("frames", 10 ** 6)])])
    source = open_source("http://fake/live.ts", capture_factory=factory, **FAST)
    assert source.read(timeout=5) is not None
    source.close()
    source.close()  # idempotent
    assert source.end_reason == "closed by caller" and not source.failed
    with pytest.raises(SourceEnded):
        source.read(timeout=0)
    # the autouse fixture checks that the reader thread has exited


def test_a_failing_callback_does_not_stop_the_source():
    def callback(event):
        raise RuntimeError("bug in the app")

    factory = scripted_factory([FakeCapture([("frames", 2), ("fail",)]), FakeCapture([
        ("frames", 2)])])
    with open_source("rtsp://fake/cb", capture_factory=factory, on_event=callback,
                     reconnect_delay=0.01, reconnect_max_delay=0.01,
                     give_up_after=0.2) as source:
        list(source)
    assert source.stats.reconnects == 1 and source.stats.frames_read == 4


def test_live_timestamps_follow_a_sane_stream_clock_else_the_monotonic_clock():
    gate = threading.Semaphore(0)
    sane = FakeCapture([("gated", 5)], gate=gate, pos_msec=lambda n: 1000.0 + 40.0 * n)
    with live_fake(sane, buffer_size=2, **FAST) as source:
        stamps = []
        for _ in range(5):
            gate.release()
            stamps.append(source.read(timeout=5).timestamp)
    np.testing.assert_allclose(np.diff(stamps), 0.04, atol=1e-9)  # the stream's own spacing

    gate = threading.Semaphore(0)
    backwards = FakeCapture([("gated", 5)], gate=gate, pos_msec=lambda n: 1000.0 - 40.0 * n)
    with live_fake(backwards, buffer_size=2, **FAST) as source:
        stamps = []
        for _ in range(5):
            gate.release()
            stamps.append(source.read(timeout=5).timestamp)
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # never backwards
    assert not np.allclose(np.diff(stamps), -0.04)


def test_iteration_and_read_timeout_on_a_silent_live_source():
    gate = threading.Semaphore(0)
    with live_fake(FakeCapture([("gated", 5)], gate=gate), **FAST) as source:
        assert source.read(timeout=0.05) is None
        with pytest.raises(InvalidInputError, match="timeout"):
            source.read(timeout=-1)


# -- real network streams on 127.0.0.1 -------------------------------------------------------------

from stream_servers import (HttpTsServer, RtspServer, ffmpeg_unavailable_reason,  # noqa: E402
                            make_ts_file, rtsp_unavailable_reason)

NET = dict(reconnect_delay=0.2, reconnect_max_delay=1.0, read_timeout=3.0, open_timeout=5.0)


def drive_restart(source, server, budget=40.0):
    """Read frames; stop the server mid-stream, restart it once the drop is seen, and read
    frames again after the reconnect. Returns (frames before, frames after)."""
    deadline = time.monotonic() + budget
    before, after = [], []
    phase = "before"
    while time.monotonic() < deadline:
        frame = source.read(timeout=0.2)
        if phase == "before":
            if frame is not None:
                before.append(frame)
            if len(before) >= 10:
                server.stop()
                phase = "down"
        elif phase == "down":
            if source.stats.disconnects >= 1:
                time.sleep(0.3)
                server.start()
                phase = "restarted"
        elif frame is not None and source.stats.reconnects >= 1:
            after.append(frame)
            if len(after) >= 10:
                break
    return before, after


def check_restart(source, before, after):
    assert len(before) >= 10, f"no frames before the restart: {source.stats}"
    assert len(after) >= 10, f"no frames after the restart: {source.stats} {source.end_reason}"
    stats = source.stats
    assert stats.disconnects >= 1 and stats.reconnects >= 1
    stamps = [f.timestamp for f in before + after]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    indices = [f.index for f in before + after]
    assert indices == sorted(set(indices))


@pytest.mark.slow
def test_rtsp_stream_reconnects_after_server_restart_then_gives_up():
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = RtspServer(width=160, height=120, fps=20)
    events = []
    try:
        server.start()
        with open_source(server.url, give_up_after=2.0, on_event=events.append,
                         **NET) as source:
            assert source.is_live
            before, after = drive_restart(source, server)
            check_restart(source, before, after)
            assert after[0].image.shape == (120, 160, 3)
            assert "reconnected" in [e.kind for e in events]
            server.stop()  # for good this time
            deadline = time.monotonic() + 20
            with pytest.raises(SourceEnded, match="gave up"):
                while time.monotonic() < deadline:
                    source.read(timeout=0.2)
            assert source.failed
            assert source.end_reason.startswith("gave up after 2.0 s without frames: ")
    finally:
        server.stop()


@pytest.mark.slow
def test_http_ts_stream_reconnects_after_server_restart(videos, tmp_path):
    reason = ffmpeg_unavailable_reason()
    if reason:
        pytest.skip(reason)
    ts_file = make_ts_file(videos["mp4"], tmp_path / "loop.ts")
    server = HttpTsServer(ts_file)
    try:
        server.start()
        with open_source(server.url, give_up_after=10.0, **NET) as source:
            before, after = drive_restart(source, server)
            check_restart(source, before, after)
            # The content is the synthetic video: the decoded frames are recognisable.
            assert {frame_index_of(f.image) for f in before} <= set(range(N_FRAMES))
        assert source.end_reason == "closed by caller"
    finally:
        server.stop()


def test_http_url_read_offline_is_a_file(videos, tmp_path):
    reason = ffmpeg_unavailable_reason()
    if reason:
        pytest.skip(reason)
    ts_file = make_ts_file(videos["mp4"], tmp_path / "once.ts")
    # ffmpeg -listen without -re sends the file as fast as it can; read as a finite file.
    import subprocess

    from stream_servers import free_port, _listening
    port = free_port()
    process = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(ts_file),
                                "-c", "copy", "-f", "mpegts", "-listen", "1",
                                f"http://127.0.0.1:{port}/once.ts"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open_source(f"http://127.0.0.1:{port}/once.ts", live=False) as source:
            frames = list(source)
        assert not source.is_live
        assert [frame_index_of(f.image) for f in frames] == list(range(N_FRAMES))
    finally:
        process.kill()
        process.wait(timeout=10)


def test_importing_sources_and_clips_does_not_import_opencv():
    import json
    import subprocess
    import sys

    code = ("import sys, json, vbedge.sources, vbedge.clips\n"
            "print(json.dumps('cv2' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) is False


def test_a_frame_put_after_the_buffer_ended_is_not_handed_out():
    """The close() race CI hit once: the reader delivered a frame after close() ended and cleared
    the buffer, and read() returned it instead of raising SourceEnded."""
    from vbedge.sources import _END, _NewestFrameBuffer

    buffer = _NewestFrameBuffer(1)
    buffer.put("before")
    buffer.end()
    buffer.clear()
    assert buffer.put("late") == 0
    assert buffer.get(timeout=0) is _END
