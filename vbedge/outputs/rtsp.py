"""``rtsp://@:8554/NAME``: the annotated stream (frames with the caption drawn) served over RTSP.

::

    vbedge caption rtsp://cam0/stream rtsp://@:8554/captioned --bundle bundle/
    ffplay rtsp://EDGE-BOX:8554/captioned        # or VLC, or cv2.VideoCapture(...)

GStreamer's RTSP server does the serving. The pip OpenCV has no GStreamer and PyGObject is not on
PyPI for every platform, so vbedge runs :mod:`vbedge.outputs._rtsp_server` with the *system*
Python (``/usr/bin/python3`` with Debian's ``python3-gi`` and ``gir1.2-gst-rtsp-server-1.0``;
``VBEDGE_GST_PYTHON`` names another) and writes raw BGR frames into its stdin. Where a piece is
missing, :meth:`RtspOutput.open` says which and how to install it (docs/rtsp-output.md).

Captioning never waits for the stream: frames go into a bounded queue that a writer thread
drains at the bundle's frame rate (a clip's frames arrive together, once per clip); when the
queue is full, frames are dropped and counted (:attr:`RtspOutput.frames_dropped`, which also
counts the frames still queued at close); when it is empty the last frame is shown again, so
clients see a steady frame rate.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from urllib.parse import urlsplit

from ..errors import InvalidInputError, MissingDependencyError
from .base import Output, register_output

__all__ = ["RtspOutput", "parse_rtsp_target", "rtsp_unavailable_reason"]

DEFAULT_PORT = 8554
SYSTEM_PYTHON = "/usr/bin/python3"
_SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rtsp_server.py")
_INSTALL = ("sudo apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
            "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly (Debian/Ubuntu/JetPack; "
            "bash .ci/system-deps.sh in a vbedge checkout)")


def parse_rtsp_target(target) -> tuple:
    """``rtsp://HOST:PORT/PATH`` -> ``(host, port, path)``; ``@`` or no host = every interface
    (``0.0.0.0``), no port = 8554, port 0 = any free port.

    Raises:
        InvalidInputError: not ``rtsp://``, or no mount path.
    """
    text = str(target)
    expected = "expected rtsp://@:PORT/NAME (every interface) or rtsp://ADDRESS:PORT/NAME"
    if not text.lower().startswith("rtsp://"):
        raise InvalidInputError(f"RTSP output {text!r}: {expected}")
    netloc, _, rest = text[len("rtsp://"):].partition("/")
    if netloc.startswith("@"):  # ``@`` means "listen here", as in http://@:8080
        netloc = netloc[1:]
    parts = urlsplit(f"rtsp://{netloc}/{rest}")
    try:
        port = parts.port
    except ValueError as error:
        raise InvalidInputError(f"RTSP output {text!r}: bad port ({error}); {expected}") from None
    path = parts.path.rstrip("/")
    if not path or path == "/":
        raise InvalidInputError(f"RTSP output {text!r}: no stream name; {expected}")
    if parts.query or parts.fragment:
        raise InvalidInputError(f"RTSP output {text!r}: no query or fragment allowed; {expected}")
    return parts.hostname or "0.0.0.0", DEFAULT_PORT if port is None else port, path


def _system_python():
    return os.environ.get("VBEDGE_GST_PYTHON") or SYSTEM_PYTHON


def _explain(line, stderr, python):
    """The sentence for a server that did not start: what is missing and how to get it."""
    if line.startswith("ERROR import"):
        return MissingDependencyError(
            f"RTSP output needs GStreamer's RTSP server for {python} (PyGObject 'gi' with the "
            f"Gst and GstRtspServer 1.0 typelibs): {line[len('ERROR import '):]}; install: {_INSTALL}")
    if line.startswith("ERROR elements"):
        return MissingDependencyError(
            f"RTSP output needs the GStreamer elements {line[len('ERROR elements '):]}; "
            f"install: {_INSTALL}")
    if line.startswith("ERROR listen"):
        return InvalidInputError(f"RTSP output {line[len('ERROR listen '):]} (is the port in use? "
                                 "pick another with rtsp://@:PORT/NAME)")
    detail = (stderr.strip().splitlines() or [line or "no output"])[-1]
    return MissingDependencyError(f"RTSP server ({python} {_SERVER_SCRIPT}) did not start: {detail}")


def rtsp_unavailable_reason(python=None) -> str | None:
    """``None`` when an RTSP output can be served here, else why not (starts the server once on a
    free port and stops it)."""
    output = RtspOutput("rtsp://127.0.0.1:0/check", python=python)
    try:
        output.open(_Context())
    except (MissingDependencyError, InvalidInputError) as error:
        return str(error)
    finally:
        output.close()
    return None


class _Context:
    fps = 20.0


class RtspOutput(Output):
    """Serves the annotated frames at ``rtsp://HOST:PORT/PATH`` (H.264 over RTP).

    Args:
        target: ``rtsp://@:8554/NAME``; see :func:`parse_rtsp_target`.
        python: the Python that has ``gi`` (default ``$VBEDGE_GST_PYTHON`` or ``/usr/bin/python3``).
        queue_seconds: frames buffered ahead of the stream before new ones are dropped (2 s).
        start_timeout: seconds to wait for the server to listen.

    The stream's size is the first frame's (rounded down to even, as H.264 wants); later frames
    of another size are resized to it.
    """

    kind = "rtsp"
    needs_frames = True

    def __init__(self, target, python=None, queue_seconds=2.0, start_timeout=15.0):
        super().__init__(target)
        self.host, self.requested_port, self.path = parse_rtsp_target(target)
        self.python = python or _system_python()
        self.queue_seconds = float(queue_seconds)
        self.start_timeout = float(start_timeout)
        self.frames_sent = 0       # frames written to the server (repeats included)
        self.frames_repeated = 0   # frames shown again because no new one was ready in time
        self.frames_dropped = 0    # frames never shown: the queue was full, or still queued at close
        self._process = None
        self._thread = None
        self._queue = None
        self._stop = threading.Event()
        self._error = None
        self._bound_port = None
        self._fps = None

    @property
    def port(self) -> int | None:
        """The port being served (the one picked for port 0), ``None`` before :meth:`open`."""
        return self._bound_port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        port = self._bound_port if self._bound_port is not None else self.requested_port
        return f"rtsp://{host}:{port}{self.path}"

    def open(self, context, resume=False):
        if not os.path.exists(self.python):
            raise MissingDependencyError(
                f"RTSP output needs a Python with GStreamer's RTSP server; {self.python} does not exist "
                f"(set VBEDGE_GST_PYTHON to one that has 'gi'); install: {_INSTALL}")
        self._fps = float(context.fps)
        port = self._bound_port if self._bound_port is not None else self.requested_port
        process = subprocess.Popen(
            [self.python, _SERVER_SCRIPT, self.host, str(port), self.path, str(max(1, round(self._fps)))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        line = self._first_line(process)
        if not line.startswith("READY"):
            stderr = ""
            _stop_process(process)
            if process.stderr is not None:
                stderr = process.stderr.read().decode("utf-8", "replace")
                process.stderr.close()
            raise _explain(line, stderr, self.python)
        self._bound_port = int(line.split()[1])
        self._process = process
        # The server's stderr is drained so a chatty GStreamer never blocks it on a full pipe.
        threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
        self._queue = queue.Queue(maxsize=max(1, int(round(self.queue_seconds * self._fps))))
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._pace, name=f"vbedge-rtsp-{self._bound_port}", daemon=True)
        self._thread.start()

    def _first_line(self, process):
        import selectors

        deadline = time.monotonic() + self.start_timeout
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    return process.stdout.readline().decode("utf-8", "replace").strip()
                if process.poll() is not None:
                    return ""
            return f"ERROR start no answer within {self.start_timeout:g} s"
        finally:
            selector.close()

    def write(self, event):
        if self._error is not None:
            raise OSError(f"RTSP server stopped: {self._error}")  # OutputSet retries (restarts it)
        if not event.frames:
            return
        from ..render import caption_lines

        lines = caption_lines(event)
        for image in event.frames[:len(event.frames) - event.padded_frames]:
            try:
                self._queue.put_nowait((image, lines))  # drawn on the writer thread
            except queue.Full:
                self.frames_dropped += 1

    def _pace(self):
        """Writer thread: one frame every 1/fps s into the server, the last one again when none is new."""
        import cv2

        from ..render import draw_caption

        stdin = self._process.stdin
        size = None
        last = None
        period = 1.0 / self._fps
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    image, lines = self._queue.get(timeout=max(0.0, next_at - time.monotonic()))
                except queue.Empty:
                    if last is None:
                        next_at = time.monotonic() + period
                        continue
                    frame = last
                    self.frames_repeated += 1
                else:
                    if size is None:
                        height, width = image.shape[:2]
                        size = (width - width % 2, height - height % 2)
                        stdin.write(f"{size[0]} {size[1]}\n".encode())
                    if image.shape[1::-1] != size:
                        image = cv2.resize(image, size)
                    frame = last = draw_caption(image, lines).tobytes()
                    # A new frame waits for its slot; stop waiting if told to stop.
                    if self._stop.wait(max(0.0, next_at - time.monotonic())):
                        self.frames_dropped += 1  # taken from the queue, never shown
                        break
                stdin.write(frame)
                stdin.flush()
                self.frames_sent += 1
                next_at = max(next_at + period, time.monotonic() - period)
        except (OSError, ValueError) as error:  # the server went away
            self._error = f"{type(error).__name__}: {error}"

    def close(self):
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        if self._queue is not None:
            self.frames_dropped += self._queue.qsize()  # not shown: the stream ends now
            self._queue = None
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()  # end of stdin ends the server
            except OSError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _stop_process(process)
            process.stdout.close()


def _drain(stream):
    try:
        for _ in iter(lambda: stream.read(65536), b""):
            pass
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _stop_process(process):
    import signal

    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass


register_output("rtsp", lambda target: target.lower().startswith("rtsp://"), RtspOutput,
                "rtsp://@:8554/NAME (annotated stream over RTSP; needs GStreamer's RTSP server)")
