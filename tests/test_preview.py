"""The live preview page over plain HTTP: targets, /api/state, the MJPEG stream's format and frames,
clients that go away or stop reading, the port in use, and one run of caption_sources with the
small real bundle. The page in a real browser is tests/test_preview_browser.py.

No test asserts a duration; waits are for a condition, with a generous deadline.
"""

import errno
import http.client
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from vbedge.errors import InvalidInputError, VbedgeError  # noqa: E402
from vbedge.outputs import OutputContext, OutputStatus, open_output  # noqa: E402
from vbedge.outputs.preview import BOUNDARY, PreviewOutput, PreviewServerError  # noqa: E402
from vbedge.captioner import Forecast  # noqa: E402
from vbedge.pipeline import ClipEvent  # noqa: E402
from vbedge.render import caption_lines, draw_caption  # noqa: E402
from vbedge.sources import SourceEvent, SourceStats  # noqa: E402

SIZE = (160, 120)  # width, height


from thread_checks import no_thread_left  # noqa: E402,F401  (autouse: no test leaves a thread)


def colour(clip, frame):
    """A distinct solid colour per (clip, frame): the frames tell which one a JPEG shows."""
    return (40 + 6 * frame, 200 - 50 * (clip % 4), 30 + 60 * (clip % 3))


def solid_frames(clip, count=30):
    frames = []
    for i in range(count):
        image = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
        image[:] = colour(clip, i)
        frames.append(image)
    return frames


def clip_event(i, source="cam0", frames=True, caption=None, **fields):
    values = dict(source_id=source, clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=i, token_id=100 + i,
                  token=f"[V:{i}]", caption=caption or f"cut the onion {i}", clip_caption=f"chop the carrot {i}",
                  caption_changed=i % 2 == 0, confidence=0.5 + i / 1000,
                  verbs=(("cut", 3.25), ("chop", 2.5)), nouns=(("onion", 4.0), ("carrot", 1.5)),
                  forecast=(Forecast(i + 1, 101 + i, f"[V:{i + 1}]", 7.5), Forecast(i + 2, 102 + i, f"[V:{i + 2}]", 6.0)),
                  latency_ms={"capture": 1.0, "preprocess": 2.0, "s3d": 30.0 + i, "tokenize": 0.5,
                              "videobert": 12.0, "total": 50.0 + i},
                  dropped_clips=i // 3, dropped_frames=2 * i,
                  frames=frames if isinstance(frames, list) else solid_frames(i) if frames else None)
    values.update(fields)
    return ClipEvent(**values)


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        # JSON has no NaN: a browser's JSON.parse would reject it.
        return json.loads(response.read(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


@pytest.fixture
def preview():
    out = PreviewOutput("http://127.0.0.1:0")
    yield out
    out.close()


def context(sources=("cam0",), stats=None, status=None, info=None):
    return OutputContext(fps=20, sources=sources, source_stats=(stats or (lambda source_id: None)),
                         status=(status or (lambda: [])), info=info or {})


def read_parts(response, count):
    """``count`` parts of a multipart/x-mixed-replace body, checking the framing of each."""
    parts = []
    for _ in range(count):
        assert response.readline() == f"--{BOUNDARY}\r\n".encode()
        headers = {}
        while (line := response.readline()) != b"\r\n":
            name, value = line.decode("ascii").rstrip("\r\n").split(": ", 1)
            headers[name.lower()] = value
        assert headers["content-type"] == "image/jpeg"
        data = response.read(int(headers["content-length"]))
        assert response.read(2) == b"\r\n"
        parts.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    return parts


def which_frame(image, clip):
    """The frame of ``clip`` whose colour the bottom-right corner (away from the caption) shows."""
    corner = image[-30:, -40:].reshape(-1, 3).mean(axis=0)
    errors = [np.abs(corner - colour(clip, i)).max() for i in range(30)]
    best = int(np.argmin(errors))
    return best if errors[best] < 3 else None


# -- targets ----------------------------------------------------------------------------------------


def test_targets_pick_the_preview_and_bad_ones_say_what_is_expected():
    at = open_output("http://@:8080")
    assert isinstance(at, PreviewOutput) and (at.host, at.port) == ("0.0.0.0", 8080)
    assert (open_output("http://localhost:0").host, open_output("http://127.0.0.1:9000/").port) == ("127.0.0.1", 9000)
    assert open_output("http://[::1]:0").host == "::1"
    with pytest.raises(InvalidInputError, match="0 to 65535"):
        open_output("http://@:99999")
    with pytest.raises(InvalidInputError, match="must be @"):
        open_output("http://example.com:80")
    with pytest.raises(InvalidInputError, match="no output kind"):  # a path is another output's
        open_output("http://@:9100/metrics")


def test_a_port_in_use_is_a_clear_error_at_open():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        out = PreviewOutput(f"http://127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(PreviewServerError, match="already in use") as raised:
            out.open(context())
        assert isinstance(raised.value, VbedgeError) and raised.value.errno == errno.EADDRINUSE
        assert str(raised.value).startswith(f"preview {out.target}: cannot listen")
        out.close()  # nothing was started: a no-op
    finally:
        taken.close()


# -- /api/state -------------------------------------------------------------------------------------


def test_state_lists_the_events_stats_reports_and_outputs(preview):
    stats = {"cam0": SourceStats(frames_read=90, disconnects=3, reconnects=2, last_error="read timed out")}
    peers = [OutputStatus("jsonl events.jsonl", events=4), OutputStatus("preview x", state="failing", failures=1)]
    # A source can report before the outputs open (its first connect failed): kept.
    preview.source_event("cam1", SourceEvent("connect_failed", "cam1: connection refused", attempt=1))
    preview.open(context(("cam0", "cam1"), stats=stats.get, status=lambda: peers,
                         info={"backend": "onnxruntime"}))
    nan = float("nan")
    events = [clip_event(0), clip_event(1, frames=False, confidence=nan, verbs=(("cut", nan),)),
              clip_event(2, source="cam1")]
    for e in events:
        preview.write(e)
    preview.source_event("cam0", SourceEvent("reconnected", "cam0 is back after 2 attempts", attempt=2))
    state = get_json(preview.url + "api/state")

    expected = [e.to_dict() for e in events]
    expected[1]["verbs"] = [["cut", None]]  # NaN is not JSON (to_dict makes a NaN confidence None)
    assert state["captions"] == json.loads(json.dumps(expected))
    assert state["seq"] == 3 and state["info"] == {"backend": "onnxruntime"}
    cam0, cam1 = state["sources"]
    assert (cam0["id"], cam0["index"], cam0["clips"], cam1["id"], cam1["clips"]) == ("cam0", 0, 2, "cam1", 1)
    assert cam0["latest"]["latency_ms"] == events[1].latency_ms and cam0["latest"]["dropped_frames"] == 2
    assert (cam0["stats"]["reconnects"], cam0["stats"]["disconnects"], cam1["stats"]) == (2, 3, None)
    assert [(r["kind"], r["message"]) for r in cam0["events"]] == [("reconnected", "cam0 is back after 2 attempts")]
    assert [(r["kind"], r["attempt"]) for r in cam1["events"]] == [("connect_failed", 1)]
    assert [(o["description"], o["state"]) for o in state["outputs"]] == [("jsonl events.jsonl", "ok"),
                                                                          ("preview x", "failing")]


def test_state_keeps_the_newest_captions_and_resume_keeps_them_on_the_same_port(preview):
    preview.open(context())
    for i in range(105):
        preview.write(clip_event(i, frames=False))
    port = preview.port
    preview.close()
    preview.open(context(), resume=True)   # a retry after a failure: same port, same list
    assert preview.port == port
    clips = [c["clip"] for c in get_json(preview.url + "api/state")["captions"]]
    assert clips == list(range(5, 105))
    preview.close()
    preview.open(context())                 # a fresh start clears it
    assert get_json(preview.url + "api/state")["captions"] == []


def test_the_page_and_unknown_paths(preview):
    preview.open(context())
    with urllib.request.urlopen(preview.url, timeout=10) as response:
        page = response.read().decode()
    assert response.headers["Content-Type"].startswith("text/html")
    assert "/api/state" in page and "innerHTML" not in page and "http" not in page.split("<script>")[1]
    for path in ("nothing", "stream/7.mjpg", "frame/0.jpg"):  # no source 7; no frame yet
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(preview.url + path, timeout=10)
        assert raised.value.code == 404


# -- the MJPEG stream -------------------------------------------------------------------------------


def test_mjpeg_parts_are_the_clip_frames_in_order_with_the_caption_drawn(preview):
    preview.open(context())
    event = clip_event(1)
    preview.write(event)
    connection = http.client.HTTPConnection("127.0.0.1", preview.port, timeout=10)
    connection.request("GET", "/stream/0.mjpg")
    response = connection.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    images = read_parts(response, 5)
    connection.close()
    shown = [which_frame(image, 1) for image in images]
    assert None not in shown and shown == sorted(set(shown)), shown  # played in order, none twice
    for image, index in zip(images, shown):
        expected = draw_caption(event.frames[index], caption_lines(event))
        assert image.shape == expected.shape
        assert np.abs(image.astype(int) - expected).mean() < 3  # only JPEG's loss
    # The caption is really there: the reference without it differs where the text is.
    plain = event.frames[shown[0]]
    assert np.abs(images[0].astype(int) - plain).mean() > 5 * np.abs(
        images[0].astype(int) - draw_caption(plain, caption_lines(event))).mean()


def test_a_newer_clip_replaces_the_one_playing_and_the_frame_endpoint_shows_the_newest(preview):
    preview.open(context())
    preview.write(clip_event(0))
    connection = http.client.HTTPConnection("127.0.0.1", preview.port, timeout=10)
    connection.request("GET", "/stream/0.mjpg")
    response = connection.getresponse()
    assert which_frame(read_parts(response, 1)[0], 0) is not None
    preview.write(clip_event(1))
    # Clip 1 replaces clip 0 at once (29 frames of it were left to play): only the frame
    # already encoded and the one being encoded may still come.
    old_frames = 0
    while which_frame(read_parts(response, 1)[0], 1) is None:
        old_frames += 1
        assert old_frames <= 3, "clip 0 went on playing after clip 1 came"
    connection.close()
    preview.write(clip_event(2, frames=False))  # no frames: the video stays on clip 1
    with urllib.request.urlopen(preview.url + "frame/0.jpg", timeout=10) as r:
        jpeg = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert which_frame(jpeg, 1) is not None


def test_clients_that_go_away_or_stop_reading_never_stop_writes_and_are_counted(preview):
    preview.open(context())
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    big = [noise.copy() for _ in range(30)]   # ~0.3 MB per JPEG: fills a socket's buffers fast
    preview.write(clip_event(0, frames=big))

    request = b"GET /stream/0.mjpg HTTP/1.0\r\n\r\n"
    gone = socket.create_connection(("127.0.0.1", preview.port))
    gone.sendall(request)
    assert gone.recv(100).startswith(b"HTTP/1.0 200")
    # Close with a reset (SO_LINGER 0), as a crashed browser or a dropped network does.
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", preview.port))
    stalled.sendall(request)        # and never reads: its server thread blocks in a write
    try:
        i = 1
        while preview.client_disconnects < 1:
            preview.write(clip_event(i, frames=big))
            i += 1
            time.sleep(0.02)
            if i > 2000:
                pytest.fail("the client that went away was never counted")
        # Far more than the stalled client's socket buffers hold (a few MB): its thread blocks.
        encoded = preview.frames_encoded
        while preview.frames_encoded < encoded + 40:
            preview.write(clip_event(i, frames=big))
            i += 1
            time.sleep(0.02)
        # Captioning went on meanwhile; a new viewer still gets frames.
        with urllib.request.urlopen(preview.url + "stream/0.mjpg", timeout=10) as response:
            assert response.readline() == f"--{BOUNDARY}\r\n".encode()
        assert preview.state()["sources"][0]["clips"] == i
        preview.close()             # must unblock the stalled client's thread, not wait for it
        assert [t for t in threading.enumerate() if t.name.startswith("vbedge-preview")] == []
    finally:
        stalled.close()


# -- end to end -------------------------------------------------------------------------------------


def test_caption_sources_serves_the_page_while_it_captions(small_bundle, tmp_path):
    from test_pipeline import write_video
    from video_files import decode_frames

    from vbedge.caption_job import caption_sources

    video = write_video(tmp_path / "v.avi", 40, seed=3)     # 2 full clips + 1 padded
    preview = PreviewOutput("http://127.0.0.1:0")
    seen = []

    def on_event(event):   # the consumer's thread, after the outputs got the event: the server runs
        state = get_json(preview.url + "api/state")
        with urllib.request.urlopen(preview.url + "frame/0.jpg", timeout=10) as response:
            jpeg = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
        seen.append((event, state, jpeg))

    result = caption_sources(small_bundle, str(video), [preview], backend="onnxruntime",
                             template="caption", stable_clips=1, on_event=on_event)
    assert result.events == len(seen) == 3
    decoded = decode_frames(video)
    clip_frames = 16   # tests/bundle_factory.py
    for event, state, jpeg in seen:
        assert state["captions"][-1] == json.loads(json.dumps(event.to_dict()))
        assert state["captions"][-1]["caption"] and state["sources"][0]["id"] == str(video)
        # /frame shows the clip's last real frame (padding excluded), the caption drawn on it.
        # (JPEG's loss on text at 160x120 is ~5 grey levels: the frame is told by the best match.)
        last = min((event.clip_index + 1) * clip_frames, len(decoded)) - 1
        errors = [np.abs(jpeg.astype(int) - draw_caption(frame, caption_lines(event))).mean() for frame in decoded]
        assert int(np.argmin(errors)) == last and errors[last] < 8, (last, errors)
    with pytest.raises(urllib.error.URLError):   # closed with the job
        urllib.request.urlopen(preview.url + "api/state", timeout=5)


def test_a_port_in_use_stops_caption_sources_before_the_models_load(small_bundle, tmp_path, monkeypatch):
    from test_pipeline import write_video

    from vbedge.caption_job import caption_sources
    from vbedge.pipeline import Pipeline

    loads = []
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, *a, **k: loads.append(a)))
    video = write_video(tmp_path / "v.avi", 20, seed=1)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(PreviewServerError, match="already in use"):
            caption_sources(small_bundle, str(video), [f"http://127.0.0.1:{taken.getsockname()[1]}"])
    finally:
        taken.close()
    assert loads == []


def test_each_source_has_its_own_stream(preview):
    preview.open(context(("cam0", "cam1")))
    preview.write(clip_event(0, source="cam0"))
    preview.write(clip_event(1, source="cam1"))
    for index, clip in ((1, 1), (0, 0)):
        connection = http.client.HTTPConnection("127.0.0.1", preview.port, timeout=10)
        connection.request("GET", f"/stream/{index}.mjpg")
        image = read_parts(connection.getresponse(), 1)[0]
        connection.close()
        assert which_frame(image, clip) is not None and which_frame(image, 1 - clip) is None
