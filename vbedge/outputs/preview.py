"""The live preview page: ``http://@:8080`` serves the captioned video and the running caption list.

::

    vbedge caption rtsp://cam0/stream http://@:8080 --bundle bundle/

then open ``http://THIS-MACHINE:8080/`` in a browser. For every source of the pipeline the page
shows the live video (MJPEG) with the caption drawn on it and, beside it, the captions with their
verbs, nouns and confidences, the forecast, the per-stage latency, drops and reconnects
(docs/preview.md).

Targets: ``http://@:PORT`` (``@``: every interface, as jetson-inference writes ``webrtc://@:8554``),
``http://localhost:PORT``, ``http://127.0.0.1:PORT`` or another IP address of this machine;
port 0 picks a free one (read it from :attr:`PreviewOutput.port` after ``open``).

How it stays out of captioning's way: :meth:`PreviewOutput.write` (the consumer's thread) only
swaps references under a lock. A player thread plays the newest clip of each source at the
source rate (``context.fps``), draws the caption and encodes one JPEG at a time, and only while
someone watches; each browser connection has its own thread that sends the newest JPEG and skips
the ones it was too slow for. A client that goes away mid-stream is counted
(:attr:`PreviewOutput.client_disconnects`), never raised.

Endpoints: ``/`` the page, ``/api/state`` JSON the page polls, ``/stream/N.mjpg`` the MJPEG
stream of source N (``multipart/x-mixed-replace``), ``/frame/N.jpg`` its newest frame.

No authentication: anyone who reaches the port sees the video. Bind to ``localhost`` on shared
networks.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import re
import socket
import socketserver
import threading
import time
from collections import deque
from dataclasses import asdict, is_dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import InvalidInputError, MissingDependencyError, VbedgeError
from .base import Output, register_output

log = logging.getLogger("vbedge.outputs.preview")

__all__ = ["PreviewOutput", "PreviewServerError", "parse_preview_target"]

BOUNDARY = "vbedgeframe"
CAPTIONS_KEPT = 100        # newest caption events the page can show
SOURCE_EVENTS_KEPT = 20    # newest disconnect / reconnect reports per source
# Errors of a browser that went away (tab closed, reload, network gone) while we wrote to it.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, TimeoutError)

_TARGET = re.compile(r"^http://(?P<host>[^/:\[\]]*|\[[0-9a-fA-F:.]+\]):(?P<port>[^/]*)/?$", re.IGNORECASE)


class PreviewServerError(VbedgeError, OSError):
    """The preview server cannot listen where it was asked (port in use, no permission, no such
    address)."""


def _matches(target: str) -> bool:
    # Only an address and a port (no path): ``http://@:9100/metrics`` and the like are left to
    # other outputs.
    return _TARGET.match(target) is not None


def parse_preview_target(target: str) -> tuple:
    """``(bind_host, port)`` of a preview target such as ``http://@:8080``.

    ``@`` binds every IPv4 interface (``0.0.0.0``); ``localhost`` binds ``127.0.0.1``; an IP
    address binds that address. Port 0 asks the system for a free port.
    """
    match = _TARGET.match(str(target))
    if match is None:
        raise InvalidInputError(f"preview target {target!r} is not http://HOST:PORT "
                                "(e.g. http://@:8080, http://localhost:8080)")
    host, port_text = match["host"], match["port"]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInputError(f"preview target {target!r}: port {port_text!r} is not a number "
                                "from 0 to 65535 (0 picks a free port)")
    if host == "@":
        bind = "0.0.0.0"
    elif host.lower() == "localhost":
        bind = "127.0.0.1"
    else:
        try:
            bind = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            raise InvalidInputError(
                f"preview target {target!r}: host {host!r} must be @ (every interface), localhost "
                "or an IP address of this machine") from None
    return bind, int(port_text)


def _finite(value):
    """``value`` with NaN and infinities replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _SourceSlot:
    """One source's frames: the clip arriving, the clip playing and the newest JPEG."""

    def __init__(self, index, source_id):
        self.index = index
        self.source_id = source_id
        self.pending = None     # newest event with frames, not yet played
        self.playing = None     # (event, frames, lines)
        self.position = 0       # next frame of ``playing``
        self.due = 0.0          # monotonic time the next frame is due
        self.jpeg = None        # newest encoded frame
        self.jpeg_seq = 0       # increases with every new JPEG
        self.latest = None      # newest event as a dict (any event, frames or not)
        self.clips = 0
        self.events = deque(maxlen=SOURCE_EVENTS_KEPT)
        self.viewers = 0


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that keeps its request threads so that close() can join them, and
    skips HTTPServer's reverse DNS lookup of the bind address (slow on a machine without DNS)."""

    daemon_threads = True
    block_on_close = False  # we join our own threads, with a timeout

    def __init__(self, address, handler, preview, family):
        self.address_family = family
        self.preview = preview
        self.request_threads = set()
        self.threads_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self._serve_one, args=(request, client_address),
                                  name="vbedge-preview-request", daemon=True)
        with self.threads_lock:
            self.request_threads.add(thread)
        thread.start()

    def _serve_one(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.threads_lock:
                self.request_threads.discard(threading.current_thread())

    def handle_error(self, request, client_address):
        # A request that failed: count a client that went away, log anything else once per
        # request (the default prints a traceback to stderr).
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, _CLIENT_GONE):
            self.preview._count_disconnect()
        else:
            log.warning("preview: request from %s failed: %s: %s", client_address[0],
                        type(error).__name__, error)


class _Handler(BaseHTTPRequestHandler):
    server_version = "vbedge-preview"
    timeout = 10  # seconds a blocked socket read/write may take before the client counts as gone

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("preview: %s %s", self.address_string(), format % args)

    def do_GET(self):  # noqa: N802 - http.server's name
        preview = self.server.preview
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                from .preview_page import PAGE

                self._send(200, "text/html; charset=utf-8", PAGE.encode("utf-8"))
            elif path == "/api/state":
                body = json.dumps(preview.state(), allow_nan=False).encode("utf-8")
                self._send(200, "application/json", body)
            elif (match := re.fullmatch(r"/stream/(\d+)\.mjpg", path)) is not None:
                slot = preview._slot_at(int(match[1]))
                if slot is None:
                    self._send(404, "text/plain", b"no such source\n")
                else:
                    self._stream(preview, slot)
            elif (match := re.fullmatch(r"/frame/(\d+)\.jpg", path)) is not None:
                slot = preview._slot_at(int(match[1]))
                jpeg = None if slot is None else preview._newest_jpeg(slot)
                if jpeg is None:
                    self._send(404, "text/plain", b"no frame yet\n")
                else:
                    self._send(200, "image/jpeg", jpeg)
            else:
                self._send(404, "text/plain", b"not found\n")
        except _CLIENT_GONE:
            preview._count_disconnect()

    def _send(self, code, content_type, body):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, preview, slot):
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        for jpeg in preview._frames_for_viewer(slot, self.connection):
            self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                             f"Content-Length: {len(jpeg)}\r\n\r\n".encode("ascii"))
            self.wfile.write(jpeg)
            self.wfile.write(b"\r\n")
            self.wfile.flush()


class PreviewOutput(Output):
    """Serves the live preview page while captioning (see the module docstring).

    Attributes:
        host: the address bound (``0.0.0.0`` for ``@``).
        port: the port asked for; after :meth:`open`, the port listening (also when 0 was asked).
        client_disconnects: browser connections that went away mid-response (counted, harmless).
        frames_encoded: JPEG frames encoded so far.
    """

    kind = "preview"
    needs_frames = True

    def __init__(self, target, jpeg_quality=80):
        super().__init__(target)
        self.host, self.port = parse_preview_target(self.target)
        self._asked_port = self.port
        self.jpeg_quality = int(jpeg_quality)
        self.client_disconnects = 0
        self.frames_encoded = 0
        self.encode_errors = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._context = None
        self._slots = {}            # source id -> _SourceSlot, in the order first seen
        self._captions = deque(maxlen=CAPTIONS_KEPT)
        self._seq = 0               # events written (the page redraws its list when it changes)
        self._started = None
        self._server = None
        self._server_thread = None
        self._player = None
        self._stop = threading.Event()
        self._streams = set()       # sockets of open MJPEG streams (shut down at close)

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the page (valid after :meth:`open`)."""
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    # -- the Output contract -------------------------------------------------------------------

    def open(self, context, resume=False):
        """Start listening (a port in use raises :class:`PreviewServerError` here, before any model
        loads) and start the server and player threads. ``resume``: keep the captions shown."""
        try:
            import cv2  # noqa: F401 - fail now, not in the player thread, when OpenCV is missing
        except ImportError as error:
            raise MissingDependencyError("the preview page encodes JPEG frames with OpenCV: "
                                         "pip install 'vbedge[opencv]' (or use JetPack's cv2)") from error

        if self._server is not None:
            self.close()
        with self._lock:
            self._context = context
            # A source may report (a failed connect) before the outputs open: keep that on the
            # first open; a later fresh open starts from nothing.
            if not resume and self._started is not None:
                self._slots.clear()
                self._captions.clear()
                self._seq = 0
            if not resume:
                self._started = time.time()
            # The context's order (the page's /stream/N), then any source seen only so far.
            early = self._slots
            self._slots = {}
            for source_id in [*context.sources, *[s for s in early if s not in context.sources]]:
                slot = self._slots[source_id] = early.get(source_id) or _SourceSlot(0, source_id)
                slot.index = len(self._slots) - 1
        # After a failure the page reconnects to the same port, also when 0 was asked at first.
        port = self.port if resume else self._asked_port
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            server = _Server((self.host, port), _Handler, self, family)
        except OSError as error:
            reason = {errno.EADDRINUSE: "the port is already in use (another vbedge or program "
                                        "listens there; pick another port, or 0 for a free one)",
                      errno.EACCES: "no permission (ports below 1024 need root)",
                      errno.EADDRNOTAVAIL: "that address is not one of this machine's"}.get(
                error.errno, str(error))
            failure = PreviewServerError(f"preview {self.target}: cannot listen on {self.host}:{port}: {reason}")
            failure.errno = error.errno
            raise failure from error
        self._server = server
        self.port = server.server_address[1]
        self._stop.clear()
        self._server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                               name="vbedge-preview-server", daemon=True)
        self._player = threading.Thread(target=self._play, name="vbedge-preview-player", daemon=True)
        self._server_thread.start()
        self._player.start()
        where = " (every interface: use this machine's name or address)" if self.host == "0.0.0.0" else ""
        log.warning("preview page at %s%s", self.url, where)

    def write(self, event):
        """Show ``event``: add it to the caption list and, when it has frames, make its clip the
        one to play next (the clip not yet played is replaced: only the newest counts)."""
        row = _finite(event.to_dict())
        with self._changed:
            slot = self._slot_for(event.source_id)
            slot.latest = row
            slot.clips += 1
            self._captions.append(row)
            self._seq += 1
            frames = event.frames
            if frames:
                shown = frames[:len(frames) - event.padded_frames] or frames[:1]
                slot.pending = (event, shown)
            self._changed.notify_all()

    def source_event(self, source_id, event):
        """Note a disconnect / reconnect / end of ``source_id`` for the page (reader thread)."""
        with self._lock:
            self._slot_for(source_id).events.append(
                {"time": time.time(), "kind": event.kind, "message": event.message,
                 "attempt": event.attempt, "retry_in": event.retry_in})

    def close(self):
        """Stop the server, the player and every stream; joins their threads. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
            streams = list(self._streams)
        for connection in streams:  # unblock a write to a client that stopped reading
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.shutdown()
        server.server_close()
        for thread in [self._server_thread, self._player, *list(server.request_threads)]:
            if thread is not None:
                thread.join(timeout=5)
                if thread.is_alive():
                    log.warning("preview: thread %s did not stop", thread.name)
        self._server_thread = self._player = None

    # -- what the page reads -------------------------------------------------------------------

    def state(self) -> dict:
        """Everything ``/api/state`` returns: info, sources (newest event, stats, reports),
        captions (oldest first), the outputs' status and the server's own counters."""
        context = self._context
        with self._lock:
            slots = list(self._slots.values())
            sources = [{"index": s.index, "id": s.source_id, "clips": s.clips, "latest": s.latest,
                        "events": list(s.events), "has_video": s.jpeg is not None or s.pending is not None
                        or s.playing is not None, "viewers": s.viewers} for s in slots]
            captions = list(self._captions)
            seq = self._seq
            server = {"client_disconnects": self.client_disconnects, "frames_encoded": self.frames_encoded,
                      "encode_errors": self.encode_errors, "started": self._started}
        for source in sources:
            stats = context.source_stats(source["id"]) if context is not None else None
            source["stats"] = asdict(stats) if is_dataclass(stats) else stats
        outputs = [asdict(s) if is_dataclass(s) else s for s in (context.status() if context else [])]
        info = {k: str(v) for k, v in (context.info if context else {}).items()}
        return _finite({"seq": seq, "fps": context.fps if context else None, "info": info,
                        "sources": sources, "captions": captions, "outputs": outputs,
                        "server": server, "time": time.time()})

    # -- internals -----------------------------------------------------------------------------

    def _slot_for(self, source_id):
        # Caller holds the lock.
        slot = self._slots.get(source_id)
        if slot is None:
            slot = self._slots[source_id] = _SourceSlot(len(self._slots), source_id)
        return slot

    def _slot_at(self, index):
        with self._lock:
            for slot in self._slots.values():
                if slot.index == index:
                    return slot
        return None

    def _count_disconnect(self):
        with self._lock:
            self.client_disconnects += 1

    def _newest_jpeg(self, slot):
        """The newest JPEG of ``slot``, encoded now from the newest clip when nobody watched."""
        with self._lock:
            if slot.jpeg is not None:
                return slot.jpeg
            clip = slot.pending or slot.playing
        if clip is None:
            return None
        event, frames = clip[0], clip[1]
        return self._encode(frames[-1], event)

    def _frames_for_viewer(self, slot, connection):
        """Yield the newest JPEG of ``slot`` each time there is a new one, until close()."""
        sent = -1
        with self._changed:
            slot.viewers += 1
            self._streams.add(connection)
            self._changed.notify_all()   # wake the player: someone watches now
        try:
            while True:
                with self._changed:
                    while not self._stop.is_set() and (slot.jpeg is None or slot.jpeg_seq == sent):
                        self._changed.wait(timeout=1.0)
                    if self._stop.is_set():
                        return
                    jpeg, sent = slot.jpeg, slot.jpeg_seq
                yield jpeg
        finally:
            with self._changed:
                slot.viewers -= 1
                self._streams.discard(connection)

    def _encode(self, image, event):
        import cv2

        from ..render import caption_lines, draw_caption

        ok, data = cv2.imencode(".jpg", draw_caption(image, caption_lines(event)),
                                [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise InvalidInputError(f"OpenCV could not encode a {image.shape} frame as JPEG")
        return data.tobytes()

    def _play(self):
        """The player thread: each source's newest clip at the source rate, while someone watches.

        A clip that arrives while another plays replaces it at once (the picture stays live when
        captioning runs faster than real time, e.g. on a file); when a clip has been played
        before the next arrives, its last frame stays up.
        """
        period = 1.0 / max(float(self._context.fps or 20.0), 1.0)
        while True:
            work = []
            with self._changed:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                wake = now + 1.0
                for slot in self._slots.values():
                    if slot.pending is not None and slot.viewers == 0 and slot.jpeg is not None:
                        slot.jpeg = None  # stale: a new viewer should not see an old frame first
                    if slot.viewers == 0:
                        continue
                    if slot.pending is not None:
                        slot.playing, slot.pending = slot.pending, None
                        slot.position, slot.due = 0, now
                    if slot.playing is None or slot.position >= len(slot.playing[1]):
                        continue
                    if now >= slot.due:
                        event, frames = slot.playing
                        work.append((slot, frames[slot.position], event))
                        slot.position += 1
                        # Late (a slow encode, a busy machine): go on from now, do not burst.
                        slot.due = max(slot.due + period, now - period)
                    wake = min(wake, slot.due)
                if not work:
                    self._changed.wait(timeout=max(0.0, wake - now))
                    continue
            for slot, image, event in work:
                try:
                    jpeg = self._encode(image, event)
                except Exception as error:  # noqa: BLE001 - a bad frame never stops the preview
                    with self._lock:
                        self.encode_errors += 1
                        first = self.encode_errors == 1
                    if first:
                        log.warning("preview: cannot encode a frame of %s: %s", slot.source_id, error)
                    continue
                with self._changed:
                    slot.jpeg = jpeg
                    slot.jpeg_seq += 1
                    self.frames_encoded += 1
                    self._changed.notify_all()


register_output("preview", _matches, PreviewOutput,
                "http://@:PORT (live preview page; @ = every interface, or localhost / an address; "
                "port 0 = any free port)")
