"""vbedge.outputs.rtsp: the annotated stream over RTSP.

The parent side (pacing, dropping, the frame protocol, a server that dies) is checked against a
fake server (a shell script that records its stdin), so it runs everywhere; the real GStreamer
server is read back with OpenCV's FFmpeg RTSP client where the system Python has GstRtspServer.
"""

import os
import socket
import stat
import sys
import threading
import time

import numpy as np
import pytest

from vbedge.errors import InvalidInputError, MissingDependencyError
from vbedge.outputs import OutputContext, OutputSet, open_output
from vbedge.outputs.rtsp import RtspOutput, parse_rtsp_target, rtsp_unavailable_reason
from vbedge.pipeline import ClipEvent

cv2 = pytest.importorskip("cv2")


def event(i, frames, caption="a caption", padded=0):
    return ClipEvent(source_id="cam0", clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=0, token_id=0,
                     token="[V:0]", caption=caption, frames=frames, padded_frames=padded)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("target, expected", [
    ("rtsp://@:8554/captioned", ("0.0.0.0", 8554, "/captioned")),
    ("rtsp://@/live", ("0.0.0.0", 8554, "/live")),
    ("rtsp://127.0.0.1:0/a/b/", ("127.0.0.1", 0, "/a/b")),
    ("RTSP://[::1]:9000/x", ("::1", 9000, "/x")),
])
def test_parse_rtsp_target(target, expected):
    assert parse_rtsp_target(target) == expected


@pytest.mark.parametrize("target, match", [("rtsp://@:8554", "no stream name"), ("rtsp://@:8554/", "no stream name"),
                                           ("rtsp://@:99999/x", "bad port"), ("rtsp://@:1/x?a=1", "no query"),
                                           ("http://@:1/x", "expected rtsp://")])
def test_parse_rtsp_target_refuses(target, match):
    with pytest.raises(InvalidInputError, match=match):
        parse_rtsp_target(target)


def test_open_output_picks_rtsp_without_starting_anything():
    output = open_output("rtsp://@:8554/captioned")
    assert isinstance(output, RtspOutput) and output.needs_frames and output.port is None


def test_a_missing_system_python_is_a_clear_error(tmp_path):
    output = RtspOutput("rtsp://127.0.0.1:0/x", python=str(tmp_path / "no-python3"))
    with pytest.raises(MissingDependencyError, match=r"no-python3 does not exist.*python3-gi gir1.2-gst-rtsp-server-1.0"):
        output.open(OutputContext(fps=20))


def test_a_python_without_gi_is_a_clear_error():
    # The test virtualenv's own Python has no PyGObject (it is a Debian package, not in the venv).
    try:
        import gi  # noqa: F401
        pytest.skip("this Python has gi: it cannot stand for one without")
    except ImportError:
        pass
    output = RtspOutput("rtsp://127.0.0.1:0/x", python=sys.executable)
    with pytest.raises(MissingDependencyError, match=r"PyGObject 'gi'.*No module named 'gi'.*apt-get install python3-gi"):
        output.open(OutputContext(fps=20))
    assert output._process is None


# -- the parent side against a fake server ------------------------------------------------------


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    """A 'python' that answers READY and records the frames; ``exit_at_once``: one that dies."""

    def make(exit_at_once=False):
        record = tmp_path / "stdin.bin"
        script = tmp_path / ("dying-python" if exit_at_once else "fake-python")
        body = "exit 0" if exit_at_once else f'exec cat > "{record}"'
        script.write_text(f'#!/bin/sh\necho "READY 5555"\n{body}\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return str(script), record

    return make


def test_frames_are_drawn_paced_and_written_in_the_protocol(fake_python):
    from vbedge.render import caption_lines, draw_caption

    python, record = fake_python()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (25, 33, 3), dtype=np.uint8) for _ in range(6)]
    output = RtspOutput("rtsp://@:0/x", python=python)
    output.open(OutputContext(fps=50))
    assert output.port == 5555 and output.url == "rtsp://127.0.0.1:5555/x"
    clip = event(0, frames, padded=1)                   # the padding frame is not shown
    output.write(clip)
    assert wait_for(lambda: output.frames_sent >= 7)    # 5 new, then repeats of the last
    output.close()
    data = record.read_bytes()
    header, _, body = data.partition(b"\n")
    assert header == b"32 24"                           # rounded down to even for H.264
    size = 32 * 24 * 3
    assert len(body) % size == 0 and len(body) // size == output.frames_sent
    shown = [np.frombuffer(body[i * size:(i + 1) * size], np.uint8).reshape(24, 32, 3)
             for i in range(len(body) // size)]
    lines = caption_lines(clip)
    for got, image in zip(shown[:5], frames[:5]):
        np.testing.assert_array_equal(got, draw_caption(cv2.resize(image, (32, 24)), lines))
    assert all(np.array_equal(s, shown[4]) for s in shown[5:])
    assert output.frames_repeated == output.frames_sent - 5 and output.frames_dropped == 0


def test_a_full_queue_drops_frames_and_never_blocks_the_caller(fake_python):
    python, _ = fake_python()
    output = RtspOutput("rtsp://@:0/x", python=python, queue_seconds=0.5)   # 10 frames at 20 fps
    output.open(OutputContext(fps=20))
    frames = [np.zeros((24, 32, 3), np.uint8)] * 50
    output.write(event(0, frames))                       # returns at once: 50 frames, room for ~10
    assert 38 <= output.frames_dropped <= 40
    assert wait_for(lambda: output.frames_sent - output.frames_repeated == 50 - output.frames_dropped)
    output.close()


def test_a_server_that_dies_makes_write_fail_so_the_output_set_retries(fake_python):
    python, _ = fake_python(exit_at_once=True)
    outputs = OutputSet(retry_delay=1000.0)
    output = outputs.add(RtspOutput("rtsp://@:0/x", python=python))
    outputs.open(OutputContext(fps=50, sources=("cam0",)))
    frames = [np.zeros((24, 32, 3), np.uint8)] * 3
    outputs.write(event(0, frames))
    assert wait_for(lambda: output._error is not None)
    outputs.write(event(1, frames))
    status = outputs.status()[0]
    assert status.failures == 1 and "RTSP server stopped" in status.last_error
    outputs.close()


# -- the real GStreamer server, read back over RTSP --------------------------------------------------


@pytest.fixture(scope="module")
def gstreamer():
    reason = rtsp_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GStreamer RTSP server here: {reason}")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_stream_reads_back_over_rtsp(gstreamer, monkeypatch):
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    color = (200, 60, 20)
    output = RtspOutput(f"rtsp://127.0.0.1:{free_port()}/test")
    output.open(OutputContext(fps=20))
    stop = threading.Event()

    def feed():  # half a second of frames every half second, like clips arriving
        i = 0
        while not stop.is_set():
            output.write(event(0, [np.full((121, 161, 3), color, np.uint8)] * 10, caption="hello rtsp"))
            i += 1
            stop.wait(0.5)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        capture = cv2.VideoCapture(output.url, cv2.CAP_FFMPEG)
        assert capture.isOpened(), f"OpenCV could not open {output.url}"
        frames = []
        for _ in range(15):
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        # A client that comes after the first one left, and two at once, get the stream too.
        again = [cv2.VideoCapture(output.url, cv2.CAP_FFMPEG) for _ in range(2)]
        later = [sum(c.read()[0] for _ in range(5)) for c in again]
        for c in again:
            c.release()
    finally:
        stop.set()
        feeder.join(timeout=5)
        process = output._process
        output.close()
    assert len(frames) == 15 and later == [5, 5]
    assert all(f.shape == (120, 160, 3) for f in frames)
    # What was served is the frame with the caption drawn (H.264 is lossy: compared on average,
    # and far closer to the drawn reference than to the plain frame).
    from vbedge.render import caption_lines, draw_caption

    plain = np.full((120, 160, 3), color, np.uint8)
    drawn = draw_caption(plain, caption_lines(event(0, None, caption="hello rtsp")))
    error = np.abs(frames[-1].astype(float) - drawn).mean()
    assert error < 6 and error < np.abs(frames[-1].astype(float) - plain).mean() / 3
    assert process.poll() is not None                    # close() ended the server


def test_a_port_in_use_is_a_clear_error(gstreamer):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = RtspOutput(f"rtsp://127.0.0.1:{port}/x")
        with pytest.raises(InvalidInputError, match=rf"cannot listen on 127.0.0.1:{port}.*port in use"):
            output.open(OutputContext(fps=20))
        assert output._process is None


def test_caption_sources_into_rtsp_end_to_end(gstreamer, small_bundle, tmp_path, monkeypatch):
    from test_pipeline import SIZE, write_video

    from vbedge.caption_job import caption_sources

    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    video = write_video(tmp_path / "v.avi", 40, seed=7)
    url = f"rtsp://127.0.0.1:{free_port()}/captioned"
    seen = []

    def watch(event):  # a client joins while the run goes on (the stream repeats the last frame)
        if seen:
            return
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        for _ in range(5):
            ok, frame = capture.read()
            if ok:
                seen.append(frame.shape)
        capture.release()

    result = caption_sources(small_bundle, {"cam0": str(video)}, [url], backend="onnxruntime", on_event=watch)
    output, status = result.output_objects[0], result.outputs[0]
    assert isinstance(output, RtspOutput) and status.failures == 0 and status.events == result.events == 3
    width, height = SIZE
    assert seen == [(height - height % 2, width - width % 2, 3)] * 5
    assert output.frames_sent - output.frames_repeated + output.frames_dropped == 40


def test_a_restarted_server_gets_the_stream_again(tmp_path):
    # Dies the first time (leaving a marker), records its stdin the second time.
    marker, record = tmp_path / "died-once", tmp_path / "stdin.bin"
    script = tmp_path / "flaky-python"
    script.write_text(f'#!/bin/sh\necho "READY $3"\nif [ ! -e "{marker}" ]; then touch "{marker}"; exit 0; fi\n'
                      f'exec cat > "{record}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    outputs = OutputSet(retry_delay=1.0, clock=clock)
    output = outputs.add(RtspOutput("rtsp://@:0/x", python=str(script)))
    outputs.open(OutputContext(fps=50, sources=("cam0",)))
    frames = [np.full((24, 32, 3), 77, np.uint8)] * 3
    outputs.write(event(0, frames))
    assert wait_for(lambda: output._error is not None)
    outputs.write(event(1, frames))                      # fails: closed, waits 1 s to retry
    clock.now = 2.0
    outputs.write(event(2, frames))                      # reopens (a new server) and writes
    assert wait_for(lambda: output.frames_sent >= 3)
    outputs.close()
    status = outputs.status()[0]
    assert (status.failures, status.events) == (1, 2)    # event 0 went to the server that died
    assert record.read_bytes().startswith(b"32 24\n")
