"""Source options after jetson-utils' videoSource: ``loop``, ``rate``, ``rtsp_latency``.

Synthetic files written with OpenCV; the reference for the frames is a plain OpenCV read-back
(tests/video_files.py). Pacing is checked on a fake clock (no timing is asserted).
"""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

import vbedge.sources as sources  # noqa: E402
from vbedge.errors import InvalidInputError, MissingDependencyError  # noqa: E402
from vbedge.sources import SourceEnded, open_source, opencv_has_gstreamer  # noqa: E402

from test_pipeline import write_video  # noqa: E402
from video_files import decode_frames  # noqa: E402

FRAMES = 24  # at 20 fps


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("source_options") / "v.avi", FRAMES, seed=5)


def read_all(source, limit=10_000):
    frames = []
    with source:
        while len(frames) < limit:
            try:
                frame = source.read(timeout=1.0)
            except SourceEnded:
                break
            if frame is not None:
                frames.append(frame)
    return frames


def test_loop_plays_the_file_n_times_with_increasing_timestamps(video):
    reference = decode_frames(video)
    source = open_source(video, loop=3)
    frames = read_all(source)
    assert len(frames) == 3 * len(reference) == 3 * FRAMES
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, reference[i % FRAMES])
    stamps = np.array([f.timestamp for f in frames])
    assert np.all(np.diff(stamps) > 0), "timestamps must keep increasing across plays"
    np.testing.assert_allclose(stamps, np.arange(3 * FRAMES) / 20.0, atol=1e-6)
    assert [f.index for f in frames] == list(range(3 * FRAMES))
    assert source.end_reason == "end of file (after 3 plays)" and not source.failed


@pytest.mark.parametrize("loop", [0, 1])
def test_loop_zero_or_one_is_one_play(video, loop):
    frames = read_all(open_source(video, loop=loop))
    assert len(frames) == FRAMES


def test_loop_forever_until_closed(video):
    source = open_source(video, loop=-1)
    frames = read_all(source, limit=5 * FRAMES + 3)
    assert len(frames) == 5 * FRAMES + 3
    assert np.all(np.diff([f.timestamp for f in frames]) > 0)
    assert source.end_reason == "closed by caller"


def test_loop_stops_at_a_damaged_file(tmp_path):
    good = write_video(tmp_path / "good.avi", 60, seed=2)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    source = open_source(damaged, loop=3)
    frames = read_all(source)
    assert 0 < len(frames) < 60
    assert source.failed and "truncated or damaged" in source.end_reason


class FakeClock:
    """time.monotonic/time.sleep for vbedge.sources: sleeping advances the clock."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_rate_paces_a_file_in_real_time_and_keeps_at_most_rate_frames(video, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(sources, "time", clock)
    source = open_source(video, rate=10)
    returned = []
    with source:
        while True:
            try:
                frame = source.read(timeout=None)
            except SourceEnded:
                break
            returned.append((clock.now - 1000.0, frame))
    # 20 fps file at rate 10: every other frame, each returned at its own timestamp.
    assert [round(f.timestamp, 6) for _, f in returned] == [round(i / 10, 6) for i in range(FRAMES // 2)]
    for when, frame in returned:
        assert when == pytest.approx(frame.timestamp, abs=1e-9)
    reference = decode_frames(video)
    np.testing.assert_array_equal(returned[3][1].image, reference[6])


def test_rate_with_a_read_timeout_returns_none_until_the_frame_is_due(video, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(sources, "time", clock)
    source = open_source(video, rate=100)  # above the file's 20 fps: pacing only, nothing skipped
    with source:
        first = source.read(timeout=0.01)
        results = [source.read(timeout=0.01) for _ in range(5)]
    assert first.timestamp == 0.0
    # The next frame is due 0.05 s later: four 0.01 s timeouts, then the frame.
    assert results[:4] == [None] * 4 and results[4].timestamp == pytest.approx(0.05) and results[4].index == 1


def test_rate_thins_a_live_capture(monkeypatch):
    image = np.zeros((8, 8, 3), np.uint8)

    class Capture:
        def __init__(self):
            self.read_count = 0

        def isOpened(self):
            return True

        def read(self):
            self.read_count += 1
            return (self.read_count <= 40), image

        def get(self, prop):
            return (self.read_count - 1) * 50.0 if prop == 0 else float("nan")  # a 20 fps stream clock

        def release(self):
            pass

    made = []

    def factory(target):
        if made:
            return None  # the stream does not come back: the source gives up
        made.append(Capture())
        return made[0]

    source = open_source("rtsp://cam/stream", rate=10, capture_factory=factory, buffer_size=2,
                         max_clock_drift=1000.0, give_up_after=0.3, reconnect_delay=0.05)
    frames = read_all(source)
    stats = source.stats
    assert stats.frames_read == 40
    assert stats.frames_delivered + stats.frames_dropped == 20
    assert len(frames) == stats.frames_delivered


def test_rtsp_latency_opens_rtspsrc_through_gstreamer():
    targets = []

    def factory(target):
        targets.append(target)
        return None

    with pytest.raises(sources.SourceOpenError):
        open_source("rtsp://10.0.0.5/stream?x=1", rtsp_latency=200, capture_factory=factory)
    assert targets[0].kind == "gstreamer"
    assert targets[0].location.startswith('rtspsrc location="rtsp://10.0.0.5/stream?x=1" latency=200 ! ')
    assert targets[0].location.endswith("appsink drop=true max-buffers=1 sync=false")
    targets.clear()
    with pytest.raises(sources.SourceOpenError):
        open_source("rtsp://10.0.0.5/stream", capture_factory=factory)
    assert targets[0].kind == "stream" and targets[0].location == "rtsp://10.0.0.5/stream"
    targets.clear()
    # Not an RTSP source: the option does not apply (one set of options serves any URI).
    with pytest.raises(sources.SourceOpenError):
        open_source(0, rtsp_latency=200, capture_factory=factory)
    assert targets[0].kind == "camera"


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
def test_rtsp_latency_without_gstreamer_is_a_clear_error():
    with pytest.raises(MissingDependencyError, match=r"rtsp_latency .*FFmpeg backend has no such setting.*GStreamer"):
        open_source("rtsp://10.0.0.5/stream", rtsp_latency=200)


@pytest.mark.parametrize("options, message", [
    ({"loop": -2}, r"loop must be an integer: -1 \(forever\)"),
    ({"loop": 1.5}, r"loop must be an integer"),
    ({"loop": True}, r"loop must be an integer"),
    ({"rate": 0}, r"rate must be a positive number"),
    ({"rate": float("inf")}, r"rate must be a positive number"),
    ({"rtsp_latency": -1}, r"rtsp_latency must be a non-negative integer"),
    ({"rtsp_latency": 2.5}, r"rtsp_latency must be a non-negative integer"),
])
def test_bad_option_values(video, options, message):
    with pytest.raises(InvalidInputError, match=message):
        open_source(video, **options)


def test_loop_keeps_the_containers_own_timing_in_later_plays(video):
    """A variable-frame-rate file: later plays repeat its uneven steps, shifted past the last frame."""
    image = np.zeros((8, 8, 3), np.uint8)
    stamps_ms = [0.0, 100.0, 150.0, 400.0]

    class Capture:
        def __init__(self):
            self.i = 0

        def isOpened(self):
            return True

        def read(self):
            self.i += 1
            return self.i <= len(stamps_ms), image

        def get(self, prop):
            return {0: stamps_ms[min(self.i, len(stamps_ms)) - 1], 5: 20.0, 7: len(stamps_ms)}.get(prop, float("nan"))

    source = open_source(video, loop=2, capture_factory=lambda target: Capture())
    got = [round(f.timestamp, 6) for f in read_all(source)]
    first = [t / 1000 for t in stamps_ms]
    assert got == [round(t, 6) for t in first + [0.4 + 0.05 + t for t in first]]
