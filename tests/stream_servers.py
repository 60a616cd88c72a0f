"""Live video servers on 127.0.0.1 for the source tests: RTSP (GStreamer) and HTTP MPEG-TS (ffmpeg).

Both run as child processes that a test can stop and start again on the same port, to check
that a live source reconnects. They need Debian packages that ``.ci/system-deps.sh`` installs;
:func:`rtsp_unavailable_reason` and :func:`ffmpeg_unavailable_reason` say what is missing so a
test can skip with that reason.

* :class:`RtspServer` runs a few lines of Python with the *system* ``/usr/bin/python3`` (which
  has ``python3-gi`` and ``gir1.2-gst-rtsp-server-1.0``; the virtualenv has not): a live
  ``videotestsrc`` encoded with x264 (zerolatency, a key frame every 10 frames so a reconnecting
  client decodes at once) served at ``rtsp://127.0.0.1:PORT/live``.
* :class:`HttpTsServer` runs ``ffmpeg -re -stream_loop -1 -i FILE.ts -c copy -f mpegts -listen 1
  http://127.0.0.1:PORT/live.ts``. ``-listen 1`` serves a single client and exits when it
  leaves, like a camera that drops: start it again to "come back".
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

SYSTEM_PYTHON = "/usr/bin/python3"

_RTSP_SERVER_CODE = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
port, width, height, fps = sys.argv[1:5]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball "
    f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
    f"! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=10 "
    f"! rtph264pay name=pay0 pt=96 config-interval=1 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    print("ERROR cannot listen on port", port, flush=True)
    sys.exit(1)
print("READY", server.get_bound_port(), flush=True)
GLib.MainLoop().run()
"""

_RTSP_CHECK_CODE = r"""
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [name for name in ("videotestsrc", "x264enc", "rtph264pay")
           if Gst.ElementFactory.find(name) is None]
print("MISSING " + " ".join(missing) if missing else "OK")
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.lru_cache(maxsize=None)
def rtsp_unavailable_reason():
    """``None`` when an RTSP server can run here, else why not (for ``pytest.skip``)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (the RTSP test server runs with the system Python)"
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", _RTSP_CHECK_CODE], capture_output=True,
                                text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "checking GStreamer's RTSP server timed out"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return ("the system python3 cannot import GstRtspServer (install python3-gi and "
                "gir1.2-gst-rtsp-server-1.0: bash .ci/system-deps.sh): "
                + (lines[-1] if lines else f"exit status {result.returncode}"))
    if result.stdout.strip() != "OK":
        return (f"GStreamer elements {result.stdout.strip()[len('MISSING '):]} missing (install "
                f"gstreamer1.0-plugins-base/-good/-ugly: bash .ci/system-deps.sh)")
    return None


def ffmpeg_unavailable_reason():
    """``None`` when the ffmpeg program is installed, else why not."""
    if shutil.which("ffmpeg") is None:
        return "the ffmpeg program is not installed (bash .ci/system-deps.sh installs it)"
    return None


def _listening(port) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (no connection is made:
    a connection would be the one client that ``ffmpeg -listen 1`` serves)."""
    target = f"0100007F:{port:04X}"
    for table in ("/proc/net/tcp",):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    # State 0A is LISTEN.
                    if len(parts) > 3 and parts[1] == target and parts[3] == "0A":
                        return True
        except OSError:
            return False
    return False


class _ChildServer:
    """A server process that can be stopped and started again on the same port."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self._process = None

    def _command(self):
        raise NotImplementedError

    def _wait_ready(self, process, deadline):
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout=15.0):
        """Start the server; return once it listens (raise RuntimeError if it does not)."""
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        while True:
            process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True)
            self._process = process
            if self._wait_ready(process, deadline):
                return self
            self.stop()
            # The port may still be held by the previous instance's closing sockets.
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{type(self).__name__} did not start listening on port "
                                   f"{self.port} within {timeout} s")
            time.sleep(0.2)

    def stop(self):
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
        return False


class RtspServer(_ChildServer):
    """``rtsp://127.0.0.1:PORT/live``: a moving ball, H.264, ``width`` x ``height`` at ``fps``."""

    def __init__(self, port=None, width=160, height=120, fps=20):
        super().__init__(port)
        self.width, self.height, self.fps = width, height, fps

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def _command(self):
        return [SYSTEM_PYTHON, "-c", _RTSP_SERVER_CODE, str(self.port), str(self.width),
                str(self.height), str(self.fps)]

    def _wait_ready(self, process, deadline):
        # The script prints one line: READY <port> or ERROR. Reading it blocks, so poll with
        # select to honour the deadline.
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return False
                if selector.select(timeout=0.1):
                    line = process.stdout.readline()
                    return line.startswith("READY")
            return False
        finally:
            selector.close()


class HttpTsServer(_ChildServer):
    """``http://127.0.0.1:PORT/live.ts``: an MPEG-TS file looped at its native rate by ffmpeg.

    Args:
        ts_path: an MPEG-TS file (see :func:`make_ts_file`).
    """

    def __init__(self, ts_path, port=None):
        super().__init__(port)
        self.ts_path = os.fspath(ts_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def _command(self):
        return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
                "-stream_loop", "-1", "-i", self.ts_path, "-c", "copy", "-f", "mpegts",
                "-listen", "1", self.url]

    def _wait_ready(self, process, deadline):
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if _listening(self.port):
                return True
            time.sleep(0.05)
        return False


def make_ts_file(video_path, ts_path):
    """Remux an OpenCV-written MPEG-4 file into MPEG-TS (no re-encoding).

    ``dump_extra`` repeats the codec header in the stream: an mp4 keeps it only in its global
    header, which MPEG-TS has no place for, and without it a client cannot decode.
    """
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i",
                    os.fspath(video_path), "-c", "copy", "-bsf:v", "dump_extra", "-f", "mpegts",
                    os.fspath(ts_path)], check=True, timeout=60)
    return ts_path


if __name__ == "__main__":  # manual check: python tests/stream_servers.py
    reason = rtsp_unavailable_reason()
    print("rtsp:", reason or "available")
    print("ffmpeg:", ffmpeg_unavailable_reason() or "available")
    if reason is None:
        with RtspServer() as srv:
            print("serving", srv.url, "for 5 s")
            time.sleep(5)
    sys.exit(0)
