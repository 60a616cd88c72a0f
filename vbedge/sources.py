"""Video sources: files, cameras, network streams, GStreamer pipelines and frame iterables.

:func:`open_source` turns a URI or an object into a :class:`VideoSource`::

    with open_source("rtsp://camera/stream", give_up_after=60) as source:
        for frame in source:            # Frame(image=BGR uint8 HxWx3, timestamp=s, index)
            ...
    print(source.end_reason)            # "gave up after 60.0 s without frames: ..."

Two behaviours, chosen by :attr:`VideoSource.is_live`:

* **Offline** (video files, ``http(s)://`` with ``live=False``, iterables by default): frames are
  decoded on demand in the caller's thread, so nothing is ever dropped however slow the
  consumer. The end is clean ("end of file") or says the file ended early / was damaged; a file
  from which nothing can be decoded raises :class:`~vbedge.errors.FormatError` at open.
* **Live** (cameras, ``rtsp://``, ``http(s)://``, GStreamer, ``csi://``, iterables with
  ``live=True``): a background thread reads continuously into a small buffer (``buffer_size``
  frames, 1 by default) that keeps the newest frames; an unread frame that is overwritten is
  counted in ``stats.frames_dropped``. A slow consumer therefore always gets a fresh frame and
  latency never grows. After a drop the source reconnects with exponential backoff
  (``reconnect_delay`` doubling up to ``reconnect_max_delay``), reporting each disconnect and
  reconnect (log, :attr:`VideoSource.stats`, ``on_event`` callback), and gives up after
  ``give_up_after`` seconds without a frame, with the reason in :attr:`VideoSource.end_reason`.

Timestamps are seconds. Files use the container's presentation time
(``CAP_PROP_POS_MSEC``), falling back to ``index / fps`` where it is missing or not increasing.
Live captures count seconds from when the source was opened: the stream's own clock is used
while it is sane (increasing and within ``max_clock_drift`` seconds of the monotonic clock),
else the monotonic clock at capture; timestamps never go backwards, also across reconnects.
Iterables give ``(timestamp, image)`` pairs or :class:`Frame` objects, or bare images timed as
``index / fps``.

OpenCV is imported when a capture is opened, never by ``import vbedge``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np

from .errors import FormatError, InvalidInputError, MissingDependencyError, VbedgeError
from .preprocess import _check_frame

__all__ = [
    "CaptureTarget",
    "Frame",
    "SourceEnded",
    "SourceEvent",
    "SourceNotFoundError",
    "SourceOpenError",
    "SourceStats",
    "VideoSource",
    "csi_pipeline",
    "open_source",
    "rtsp_pipeline",
    "opencv_has_gstreamer",
]

log = logging.getLogger("vbedge.sources")


# -- public data types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        image: ``(H, W, 3)`` uint8 array, BGR (OpenCV's order).
        timestamp: seconds (see the module docstring for where it comes from).
        index: 0, 1, 2... in capture order; gaps in the indices delivered by a live source are
            frames that were dropped for being stale.
    """

    image: np.ndarray
    timestamp: float
    index: int


@dataclass(frozen=True)
class SourceStats:
    """A snapshot of a source's counters (:attr:`VideoSource.stats`).

    Attributes:
        frames_read: frames decoded from the source.
        frames_delivered: frames returned by :meth:`VideoSource.read` / iteration.
        frames_dropped: frames overwritten in a live source's buffer before anyone read them.
        disconnects: times a live stream dropped (a read failed or timed out).
        reconnects: times a live stream was opened again after a disconnect.
        failed_connects: connection attempts that failed.
        last_error: the latest problem in words, or ``None``.
    """

    frames_read: int = 0
    frames_delivered: int = 0
    frames_dropped: int = 0
    disconnects: int = 0
    reconnects: int = 0
    failed_connects: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class SourceEvent:
    """What a live source reports to its ``on_event`` callback.

    Attributes:
        kind: ``"disconnected"``, ``"connect_failed"``, ``"reconnected"`` or ``"ended"``.
        message: a sentence for humans (also logged).
        attempt: number of the connection attempt since frames last flowed (0 if not relevant).
        retry_in: seconds until the next attempt (``None`` when no retry is planned).
    """

    kind: str
    message: str
    attempt: int = 0
    retry_in: float | None = None


@dataclass(frozen=True)
class CaptureTarget:
    """What a capture factory is asked to open (see ``capture_factory`` in :func:`open_source`).

    Attributes:
        kind: ``"file"``, ``"camera"``, ``"stream"`` or ``"gstreamer"``.
        location: what ``cv2.VideoCapture`` takes: a path, URL, device index or pipeline.
        api_preference: an OpenCV ``CAP_*`` backend constant (0 = any).
        params: OpenCV open parameters, a flat ``[prop, value, ...]`` list.
    """

    kind: str
    location: object
    api_preference: int = 0
    params: tuple = ()


class SourceEnded(VbedgeError, EOFError):
    """Raised by :meth:`VideoSource.read` once a source has ended and its buffer is empty.

    Attributes:
        reason: the source's :attr:`~VideoSource.end_reason`.
        failed: True when the end was not a normal one (damaged file, gave up, error).
    """

    def __init__(self, reason, failed=False):
        super().__init__(reason)
        self.reason = reason
        self.failed = failed


class SourceOpenError(VbedgeError, OSError):
    """A camera, stream or pipeline could not be opened."""


class SourceNotFoundError(SourceOpenError, FileNotFoundError):
    """A video file does not exist."""


# -- OpenCV helpers ------------------------------------------------------------------------------


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "video sources need OpenCV (cv2): use the system's OpenCV (JetPack's has GStreamer "
            "for CSI cameras) or install vbedge[opencv] where no cv2 is installed yet") from exc
    return cv2


def opencv_has_gstreamer() -> bool:
    """Whether the importable OpenCV was built with GStreamer (needed for pipelines and CSI)."""
    cv2 = _cv2()
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GStreamer":
            return value.strip().upper().startswith("YES")
    return False


def csi_pipeline(sensor_id=0, width=1280, height=720, framerate=30, flip_method=0) -> str:
    """The GStreamer pipeline that reads a Jetson CSI camera into OpenCV as BGR frames.

    ``nvarguscamerasrc`` captures into NVMM memory, ``nvvidconv`` converts on the VIC, and the
    appsink keeps only the newest buffer (``drop=true max-buffers=1``) so frames never queue up.
    """
    for name, value in (("sensor_id", sensor_id), ("width", width), ("height", height),
                        ("framerate", framerate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name ==
                                                                            "sensor_id" else 1):
            raise InvalidInputError(f"csi {name} must be a {'non-negative' if name == 'sensor_id' else 'positive'} "
                                    f"integer, got {value!r}")
    if isinstance(flip_method, bool) or flip_method not in range(8):
        raise InvalidInputError(f"csi flip_method must be an integer 0..7, got {flip_method!r}")
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
            f"framerate=(fraction){framerate}/1 ! nvvidconv flip-method={flip_method} ! "
            f"video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR ! "
            f"appsink drop=true max-buffers=1 sync=false")


def rtsp_pipeline(uri, latency_ms=2000) -> str:
    """The GStreamer pipeline that reads an RTSP stream into OpenCV as BGR frames.

    ``rtspsrc latency=`` sizes its jitter buffer (milliseconds; GStreamer's default is 2000, as
    is jetson-utils' ``--input-rtsp-latency``); ``decodebin`` picks the decoder (the hardware one
    on a Jetson) and the appsink keeps only the newest frame.
    """
    if not isinstance(uri, str) or '"' in uri or not uri.lower().startswith(("rtsp://", "rtsps://")):
        raise InvalidInputError(f"expected an rtsp:// or rtsps:// URL without double quotes, got {uri!r}")
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, int) or latency_ms < 0:
        raise InvalidInputError(f"rtsp latency must be a non-negative integer of milliseconds, got {latency_ms!r}")
    return (f'rtspsrc location="{uri}" latency={latency_ms} ! decodebin ! videoconvert ! '
            f"video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")


# OpenCV's property ids (stable across versions: part of its C API). Spelled out so fake
# captures in tests and custom factories work without importing cv2.
_CAP_PROP_POS_MSEC = 0
_CAP_PROP_FPS = 5
_CAP_PROP_FRAME_COUNT = 7


def _default_capture_factory(target):
    cv2 = _cv2()
    if target.params:
        return cv2.VideoCapture(target.location, target.api_preference, list(target.params))
    return cv2.VideoCapture(target.location, target.api_preference)


def _capture_get(capture, prop):
    """``capture.get(prop)`` as a float, NaN when unsupported (fake captures may lack ``get``)."""
    getter = getattr(capture, "get", None)
    if getter is None or prop is None:
        return math.nan
    try:
        return float(getter(prop))
    except (TypeError, ValueError):
        return math.nan


def _release(capture):
    release = getattr(capture, "release", None)
    if release is not None:
        try:
            release()
        except Exception as exc:  # noqa: BLE001 - a failing release must not hide the real end
            log.debug("release of a capture failed: %s", exc)


# -- options -------------------------------------------------------------------------------------

_LIVE_OPTIONS = {
    "buffer_size": 1,
    "reconnect_delay": 0.5,
    "reconnect_max_delay": 8.0,
    "give_up_after": 30.0,
    "read_timeout": 5.0,
    "open_timeout": 10.0,
    "wait_for_connection": False,
    "max_clock_drift": 2.0,
}
_COMMON_OPTIONS = {"on_event": None, "capture_factory": None, "fps": None, "live": None, "loop": 0, "rate": None,
                   "rtsp_latency": None}
_CSI_OPTIONS = {"width": 1280, "height": 720, "framerate": 30, "flip_method": 0}
_ALL_OPTIONS = {**_LIVE_OPTIONS, **_COMMON_OPTIONS, **_CSI_OPTIONS}


def _check_options(options):
    unknown = sorted(set(options) - set(_ALL_OPTIONS))
    if unknown:
        raise InvalidInputError(f"unknown source option(s) {unknown}; known options are "
                                f"{sorted(_ALL_OPTIONS)}")
    merged = {**_ALL_OPTIONS, **options}

    def positive(name, allow_none=False):
        value = merged[name]
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"{name} must be a positive number of seconds"
                                    f"{' or None' if allow_none else ''}, got {value!r}")

    for name in ("reconnect_delay", "reconnect_max_delay", "read_timeout", "open_timeout",
                 "max_clock_drift"):
        positive(name)
    positive("give_up_after", allow_none=True)
    if merged["reconnect_max_delay"] < merged["reconnect_delay"]:
        raise InvalidInputError(f"reconnect_max_delay ({merged['reconnect_max_delay']}) must be "
                                f">= reconnect_delay ({merged['reconnect_delay']})")
    size = merged["buffer_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size not in (1, 2):
        raise InvalidInputError(f"buffer_size must be 1 or 2 (a live source keeps only the "
                                f"newest frames), got {size!r}")
    fps = merged["fps"]
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not math.isfinite(fps) or fps <= 0):
        raise InvalidInputError(f"fps must be a positive number or None, got {fps!r}")
    for name in ("on_event", "capture_factory"):
        if merged[name] is not None and not callable(merged[name]):
            raise InvalidInputError(f"{name} must be callable, got {type(merged[name]).__name__}")
    if merged["live"] not in (None, True, False):
        raise InvalidInputError(f"live must be True, False or None, got {merged['live']!r}")
    loop = merged["loop"]
    if isinstance(loop, bool) or not isinstance(loop, int) or loop < -1:
        raise InvalidInputError(f"loop must be an integer: -1 (forever), 0 (no loop) or N > 0 (N plays), "
                                f"got {loop!r}")
    rate = merged["rate"]
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not math.isfinite(rate) or rate <= 0):
        raise InvalidInputError(f"rate must be a positive number of frames per second or None, got {rate!r}")
    latency = merged["rtsp_latency"]
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int) or latency < 0):
        raise InvalidInputError(f"rtsp_latency must be a non-negative integer of milliseconds or None, "
                                f"got {latency!r}")
    return merged


# -- the frame buffer between a reader thread and the consumer -----------------------------------


class _NewestFrameBuffer:
    """Keeps at most ``capacity`` frames; adding to a full buffer evicts the oldest."""

    def __init__(self, capacity):
        self._frames = collections.deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self._ended = False

    def put(self, frame) -> int:
        """Add a frame; return how many unread frames were evicted (0 or 1). A frame put after
        :meth:`end` is dropped: the reader can still be finishing a read while ``close()`` ends
        and clears the buffer, and a closed source must not hand out that frame."""
        with self._cond:
            if self._ended:
                return 0
            evicted = 0
            while len(self._frames) >= self._capacity:
                self._frames.popleft()
                evicted += 1
            self._frames.append(frame)
            self._cond.notify_all()
            return evicted

    def end(self):
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def clear(self):
        with self._cond:
            self._frames.clear()

    def get(self, timeout):
        """The oldest buffered frame; ``None`` on timeout; ``_END`` once ended and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._frames:
                if self._ended:
                    return _END
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            return self._frames.popleft()


_END = object()


# -- the source interface ------------------------------------------------------------------------


class VideoSource:
    """A stream of :class:`Frame` objects. Made by :func:`open_source`.

    Use :meth:`read` or iterate; call :meth:`close` (or use ``with``) when done. Iteration stops
    at the end of the source; :attr:`end_reason` and :attr:`failed` then say why.
    """

    def __init__(self, description, is_live, on_event=None):
        self._description = description
        self._is_live = is_live
        self._on_event = on_event
        self._lock = threading.Lock()
        self._stats = SourceStats()
        self._end_reason = None
        self._failed = False
        self._pending_error = None   # an exception to raise to the consumer at the end
        self._closed = False

    # -- public properties
    @property
    def description(self) -> str:
        """What was opened, in words (a path, URL, ``camera 0``...)."""
        return self._description

    @property
    def is_live(self) -> bool:
        """True for live sources (newest-frame buffer, reconnects), False for offline ones."""
        return self._is_live

    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters (frames read, delivered, dropped, reconnects...)."""
        with self._lock:
            return self._stats

    @property
    def end_reason(self):
        """Why the source ended (``"end of file"``, ``"closed by caller"``...), else ``None``."""
        with self._lock:
            return self._end_reason

    @property
    def failed(self) -> bool:
        """True when the source ended abnormally (damaged file, gave up, an error)."""
        with self._lock:
            return self._failed

    @property
    def ended(self) -> bool:
        """True once the source has ended (frames may still be buffered for :meth:`read`)."""
        with self._lock:
            return self._end_reason is not None

    # -- internals shared by subclasses
    def _count(self, **changes):
        with self._lock:
            values = {name: getattr(self._stats, name) + delta for name, delta in changes.items()
                      if name != "last_error"}
            if "last_error" in changes:
                values["last_error"] = changes["last_error"]
            self._stats = replace(self._stats, **values)

    def _set_end(self, reason, failed=False, error=None) -> bool:
        """Record the end (only the first reason counts); return True if this call ended it."""
        with self._lock:
            if self._end_reason is not None:
                return False
            self._end_reason = reason
            self._failed = failed
            self._pending_error = error
        log_fn = log.warning if failed else log.info
        log_fn("%s: ended: %s", self._description, reason)
        self._emit(SourceEvent("ended", reason))
        return True

    def _emit(self, event):
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - a buggy callback must not kill the reader thread
            log.exception("%s: on_event callback raised (ignored)", self._description)

    def _raise_end(self):
        with self._lock:
            reason, failed, error = self._end_reason, self._failed, self._pending_error
            self._pending_error = None
        if error is not None:
            raise error
        raise SourceEnded(reason, failed)

    # -- public API
    def read(self, timeout=None):
        """The next frame, or ``None`` if ``timeout`` seconds pass without one.

        Offline sources decode the next frame now (``timeout`` does not apply: decoding is
        bounded and nothing may be skipped). Live sources return the oldest frame in their
        newest-frames buffer (the newest one with the default ``buffer_size=1``).

        Raises:
            SourceEnded: the source has ended (or was closed) and no frame is left; its
                ``reason`` is :attr:`end_reason`.
            InvalidInputError: an iterable gave something that is not a frame.
        """
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or math.isnan(timeout) or timeout < 0):
            raise InvalidInputError(f"timeout must be None or a number of seconds >= 0, got "
                                    f"{timeout!r}")
        frame = self._next_frame(timeout)
        if frame is _END:
            self._raise_end()
        if frame is not None:
            self._count(frames_delivered=1)
        return frame

    def _next_frame(self, timeout):
        raise NotImplementedError

    def __iter__(self):
        while True:
            try:
                frame = self.read()
            except SourceEnded:
                return
            if frame is not None:
                yield frame

    def close(self):
        """Stop reading and release the capture; idempotent. ``end_reason`` becomes
        ``"closed by caller"`` unless the source had already ended."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._set_end("closed by caller")
        self._close()

    def _close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def __del__(self):
        # Best effort for sources nobody closed: stop the reader thread.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    def __repr__(self):
        state = f"ended: {self.end_reason}" if self.ended else "open"
        return (f"<{type(self).__name__} {self._description!r} "
                f"{'live' if self._is_live else 'offline'} {state}>")


# -- offline: files ------------------------------------------------------------------------------


class _FileSource(VideoSource):
    """A video file (or non-live URL) decoded on demand in the caller's thread."""

    # A container's frame count can be an estimate (duration x fps); allow this much slack
    # before calling a file truncated.
    _COUNT_SLACK_FRACTION = 0.02

    def __init__(self, target, description, factory, fps=None, on_event=None, loop=0, rate=None):
        super().__init__(description, is_live=False, on_event=on_event)
        self._target, self._factory = target, factory
        # jetson-utils' --input-loop: -1 forever, 0 or 1 one play, N plays in all.
        self._plays = None if loop == -1 else max(1, int(loop))
        self._play = 1
        self._play_start = 0        # frame index where the current play began
        self._offset = 0.0          # added to the container's timestamps from the 2nd play on
        self._limiter = _RateLimiter(rate) if rate is not None else None
        self._origin = None         # monotonic time of timestamp 0 (pacing with rate=)
        self._due = None            # a paced frame that was not due yet
        self._capture = factory(target)
        if self._capture is None or not self._capture.isOpened():
            _release(self._capture)
            self._capture = None
            raise FormatError(f"cannot decode {description}: no video stream could be opened "
                              f"(the file is corrupt, truncated, empty or in an unsupported "
                              f"format)")
        count = _capture_get(self._capture, _CAP_PROP_FRAME_COUNT)
        self._expected = int(count) if math.isfinite(count) and count > 0 else None
        native_fps = _capture_get(self._capture, _CAP_PROP_FPS)
        if fps is None:
            if math.isfinite(native_fps) and 0 < native_fps < 1000:
                fps = native_fps
            else:
                fps = 25.0
                log.warning("%s: the file gives no frame rate; timestamps that the container "
                            "lacks are computed at %g fps (pass fps= to choose)", description,
                            fps)
        self._fps = float(fps)
        self._index = 0
        self._last_ts = None
        # Decode the first frame now so a file with nothing decodable fails at open.
        first = self._decode()
        if first is None:
            _release(self._capture)
            self._capture = None
            raise FormatError(f"cannot decode {description}: the container opened but no frame "
                              f"could be decoded (corrupt, truncated or unsupported codec)")
        self._pending = first

    def _decode(self):
        ok, image = self._capture.read()
        if not ok or image is None:
            return None
        pos = _capture_get(self._capture, _CAP_PROP_POS_MSEC)
        ts = self._offset + pos / 1000.0 if math.isfinite(pos) and pos >= 0 else math.nan
        if self._last_ts is None:
            if not math.isfinite(ts):
                ts = 0.0
        elif not (math.isfinite(ts) and ts > self._last_ts):
            # Containers without (or with broken) timestamps: step by the frame rate.
            ts = self._last_ts + 1.0 / self._fps
        self._last_ts = ts
        frame = Frame(image=image, timestamp=float(ts), index=self._index)
        self._index += 1
        self._count(frames_read=1)
        return frame

    def _next_frame(self, timeout):
        if self.ended:
            return _END
        frame, self._due = self._due, None
        while frame is None:
            if self._pending is not None:
                frame, self._pending = self._pending, None
            else:
                frame = self._decode()
                if frame is None:
                    if self._next_play():
                        continue
                    return _END
            if self._limiter is not None and not self._limiter.admit(frame.timestamp):
                frame = None  # above the rate: skipped, as videorate drop-only does
        if self._limiter is not None:
            # Real-time pacing: frame t is returned at origin + t, never earlier.
            now = time.monotonic()
            if self._origin is None:
                self._origin = now - frame.timestamp
            wait = self._origin + frame.timestamp - now
            if wait > 0:
                if timeout is not None and wait > timeout:
                    time.sleep(timeout)
                    self._due = frame
                    return None
                time.sleep(wait)
        return frame

    def _next_play(self) -> bool:
        """At the end of a play: start the next one (True) or end the source (False)."""
        read = self._index - self._play_start
        expected = self._expected
        if expected is not None and read < expected - max(1, int(expected *
                                                                  self._COUNT_SLACK_FRACTION)):
            reason = (f"file ended early after {read} of {expected} frames: it is truncated "
                      f"or damaged")
            self._count(last_error=reason)
            self._set_end(reason, failed=True)
            self._close()
            return False
        if self._plays is not None and self._play >= self._plays:
            self._set_end("end of file" if self._plays == 1 else f"end of file (after {self._play} plays)")
            self._close()
            return False
        _release(self._capture)
        self._capture = self._factory(self._target)
        if self._capture is None or not self._capture.isOpened():
            reason = f"could not reopen the file for play {self._play + 1}"
            self._count(last_error=reason)
            self._set_end(reason, failed=True)
            self._close()
            return False
        self._play += 1
        self._play_start = self._index
        # Timestamps keep increasing across plays: the next play starts one frame after the last.
        self._offset = (self._last_ts if self._last_ts is not None else 0.0) + 1.0 / self._fps
        log.info("%s: play %d%s", self._description, self._play,
                 "" if self._plays is None else f" of {self._plays}")
        return True

    def _close(self):
        if self._capture is not None:
            _release(self._capture)
            self._capture = None


class _RateLimiter:
    """At most ``rate`` frames per second of timestamps (drop-only, like GStreamer's
    ``videorate drop-only=true max-rate=``): a frame passes when it is at least one period after
    the last one that passed (less a little slack for jittery timestamps)."""

    def __init__(self, rate):
        self._period = 1.0 / float(rate)
        self._next = None

    def admit(self, timestamp) -> bool:
        if self._next is not None and timestamp < self._next - 0.1 * self._period:
            return False
        # Next slot one period on; after a gap, counted from this frame (no burst to catch up).
        base = timestamp if self._next is None or timestamp > self._next + self._period else self._next
        self._next = base + self._period
        return True


# -- offline and live: iterables -----------------------------------------------------------------


class _IterableFrames:
    """Turns the items of a user's iterable into :class:`Frame` objects (validating them)."""

    def __init__(self, iterable, fps, live, start_time):
        self._iterator = iter(iterable)
        self._fps = fps
        self._live = live
        self._start = start_time
        self._index = 0
        self._last_ts = None

    def next_frame(self):
        """The next frame, or ``None`` at the end of the iterable (user errors propagate)."""
        try:
            item = next(self._iterator)
        except StopIteration:
            return None
        index = self._index
        if isinstance(item, Frame):
            ts, image = item.timestamp, item.image
        elif isinstance(item, tuple) and len(item) == 2:
            ts, image = item
            if isinstance(ts, bool) or not isinstance(ts, (int, float, np.number)) \
                    or not math.isfinite(ts):
                raise InvalidInputError(f"item {index} of the frame iterable: timestamp must be "
                                        f"a finite number of seconds, got {ts!r}")
        else:
            image, ts = item, None
        _check_frame(image, what=f"item {index} of the frame iterable")
        if ts is None:
            if self._fps is not None:
                ts = index / self._fps
            elif self._live:
                ts = time.monotonic() - self._start
            else:
                raise InvalidInputError(
                    "a frame iterable of bare images needs fps= to time them (or give "
                    "(timestamp, image) pairs or Frame objects)")
        ts = float(ts)
        if self._last_ts is not None and ts < self._last_ts:
            raise InvalidInputError(f"item {index} of the frame iterable: timestamp {ts} s is "
                                    f"earlier than the previous one ({self._last_ts} s)")
        self._last_ts = ts
        self._index += 1
        return Frame(image=image, timestamp=ts, index=index)

    def close(self):
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


class _IterableSource(VideoSource):
    """An iterable read on demand in the caller's thread (offline: nothing dropped)."""

    def __init__(self, iterable, description, fps=None, on_event=None):
        super().__init__(description, is_live=False, on_event=on_event)
        self._frames = _IterableFrames(iterable, fps, live=False, start_time=time.monotonic())

    def _next_frame(self, timeout):
        if self.ended:
            return _END
        try:
            frame = self._frames.next_frame()
        except Exception as exc:
            self._set_end(f"the frame iterable raised {type(exc).__name__}: {exc}", failed=True,
                          error=exc)
            return _END
        if frame is None:
            self._set_end("end of iterable")
            return _END
        self._count(frames_read=1)
        return frame

    def _close(self):
        self._frames.close()


# -- live sources: a reader thread and a newest-frames buffer ------------------------------------


class _LiveSource(VideoSource):
    """Base of live sources: ``_reader()`` runs in a daemon thread and calls ``_deliver``."""

    def __init__(self, description, options):
        super().__init__(description, is_live=True, on_event=options["on_event"])
        self._options = options
        self._buffer = _NewestFrameBuffer(options["buffer_size"])
        self._stop = threading.Event()
        self._start_time = time.monotonic()
        self._thread = None

    def _start(self):
        self._thread = threading.Thread(target=self._run, name=f"vbedge-source {self._description}",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        try:
            self._reader()
        except Exception as exc:  # noqa: BLE001 - reported to the consumer, never lost
            log.exception("%s: reader thread failed", self._description)
            self._count(last_error=f"{type(exc).__name__}: {exc}")
            self._set_end(f"reader failed: {type(exc).__name__}: {exc}", failed=True, error=exc)
        finally:
            self._buffer.end()

    def _deliver(self, frame):
        evicted = self._buffer.put(frame)
        if evicted:
            self._count(frames_read=1, frames_dropped=evicted)
        else:
            self._count(frames_read=1)

    def _next_frame(self, timeout):
        return self._buffer.get(timeout)

    def _close(self):
        self._stop.set()
        self._buffer.end()
        self._buffer.clear()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # The reader notices the stop flag after its current read, which the capture's read
            # timeout bounds; wait a little longer than that.
            thread.join(self._options["read_timeout"] + 2.0)
            if thread.is_alive():
                log.warning("%s: reader thread still blocked in the capture after close(); it "
                            "exits when the capture returns", self._description)


class _LiveCaptureSource(_LiveSource):
    """Cameras, network streams, GStreamer pipelines: reconnects with exponential backoff."""

    def __init__(self, target, description, factory, options):
        super().__init__(description, options)
        self._target = target
        self._factory = factory
        self._limiter = _RateLimiter(options["rate"]) if options["rate"] is not None else None
        self._last_ts = None
        self._index = 0
        capture = None
        if not options["wait_for_connection"]:
            # Fail at open for a wrong URL or a missing camera, as a user expects; retries are
            # for streams that drop later (or when wait_for_connection=True).
            capture, error = self._connect()
            if capture is None:
                raise SourceOpenError(f"cannot open {description}: {error} (pass "
                                      f"wait_for_connection=True to keep retrying)")
        self._initial_capture = capture
        self._start()

    def _connect(self):
        """(capture, None) or (None, error in words)."""
        try:
            capture = self._factory(self._target)
        except Exception as exc:  # noqa: BLE001 - any failure to open is retried/reported
            return None, f"{type(exc).__name__}: {exc}"
        if capture is None or not capture.isOpened():
            _release(capture)
            return None, "the capture did not open: unreachable, refused or no such device"
        return capture, None

    def _timestamp(self, capture, connection):
        """Seconds since the source opened; the stream's clock while sane, else the monotonic."""
        now = time.monotonic() - self._start_time
        ts = None
        if connection["use_stream_clock"]:
            pos = _capture_get(capture, _CAP_PROP_POS_MSEC)
            if math.isfinite(pos) and pos >= 0:
                if connection["origin"] is None:
                    connection["origin"] = (now, pos)
                origin_now, origin_pos = connection["origin"]
                candidate = origin_now + (pos - origin_pos) / 1000.0
                sane = abs(candidate - now) <= self._options["max_clock_drift"] and (
                    self._last_ts is None or candidate > self._last_ts)
                if sane:
                    ts = candidate
            if ts is None:
                # Once the stream's clock misbehaves, stop trusting it for this connection so
                # timestamps do not flip between two clocks.
                connection["use_stream_clock"] = False
        if ts is None:
            ts = now
        if self._last_ts is not None and ts <= self._last_ts:
            ts = self._last_ts + 1e-6
        self._last_ts = ts
        return ts

    def _wait(self, seconds):
        """Sleep unless stopped; return True if stopped."""
        return self._stop.wait(seconds)

    def _reader(self):
        options = self._options
        give_up_after = options["give_up_after"]
        delay = options["reconnect_delay"]
        capture = self._initial_capture
        self._initial_capture = None
        connected_before = capture is not None
        last_frame_time = time.monotonic()
        attempt = 0
        connection = {"use_stream_clock": True, "origin": None}
        try:
            while not self._stop.is_set():
                if capture is None:
                    waited = time.monotonic() - last_frame_time
                    if give_up_after is not None and waited >= give_up_after:
                        error = self.stats.last_error or "no frames"
                        self._set_end(f"gave up after {give_up_after:.1f} s without frames: "
                                      f"{error}", failed=True)
                        return
                    attempt += 1
                    capture, error = self._connect()
                    if self._stop.is_set():
                        break
                    if capture is None:
                        self._count(failed_connects=1, last_error=f"cannot connect: {error}")
                        retry_in = delay
                        if give_up_after is not None:
                            left = give_up_after - (time.monotonic() - last_frame_time)
                            retry_in = max(0.0, min(delay, left))
                        message = (f"{self._description}: connection attempt {attempt} failed "
                                   f"({error}); retrying in {retry_in:.2f} s")
                        log.warning(message)
                        self._emit(SourceEvent("connect_failed", message, attempt, retry_in))
                        if self._wait(retry_in):
                            break
                        delay = min(delay * 2.0, options["reconnect_max_delay"])
                        continue
                    connection = {"use_stream_clock": True, "origin": None}
                    if connected_before:
                        self._count(reconnects=1)
                        message = f"{self._description}: reconnected (attempt {attempt})"
                        log.info(message)
                        self._emit(SourceEvent("reconnected", message, attempt))
                    connected_before = True
                ok, image = capture.read()
                if self._stop.is_set():
                    break
                if not ok or image is None:
                    _release(capture)
                    capture = None
                    error = "the stream dropped (a read failed or timed out)"
                    self._count(disconnects=1, last_error=error)
                    retry_in = delay
                    if give_up_after is not None:
                        left = give_up_after - (time.monotonic() - last_frame_time)
                        retry_in = max(0.0, min(delay, left))
                    message = f"{self._description}: {error}; reconnecting in {retry_in:.2f} s"
                    log.warning(message)
                    self._emit(SourceEvent("disconnected", message, 0, retry_in))
                    attempt = 0
                    if self._wait(retry_in):
                        break
                    delay = min(delay * 2.0, options["reconnect_max_delay"])
                    continue
                # Frames flow again: the next drop starts backing off from the beginning.
                last_frame_time = time.monotonic()
                delay = options["reconnect_delay"]
                attempt = 0
                timestamp = self._timestamp(capture, connection)
                if self._limiter is not None and not self._limiter.admit(timestamp):
                    self._count(frames_read=1)  # above rate=: skipped on purpose, not a drop
                    continue
                frame = Frame(image=image, timestamp=timestamp, index=self._index)
                self._index += 1
                self._deliver(frame)
        finally:
            _release(capture)


class _LiveIterableSource(_LiveSource):
    """An iterable (e.g. frames pushed by an app's camera callback) read by a thread."""

    def __init__(self, iterable, description, options):
        super().__init__(description, options)
        self._frames = _IterableFrames(iterable, options["fps"], live=True,
                                       start_time=self._start_time)
        self._start()

    def _reader(self):
        while not self._stop.is_set():
            try:
                frame = self._frames.next_frame()
            except Exception as exc:  # noqa: BLE001 - handed to the consumer by read()
                self._count(last_error=f"{type(exc).__name__}: {exc}")
                self._set_end(f"the frame iterable raised {type(exc).__name__}: {exc}",
                              failed=True, error=exc)
                return
            if frame is None:
                self._set_end("end of iterable")
                return
            self._deliver(frame)


# -- open_source ---------------------------------------------------------------------------------

_STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


def _ffmpeg_params(options):
    cv2 = _cv2()
    params = []
    # Bounded open and read times are what let a stalled stream be noticed and reconnected.
    for name, seconds in (("CAP_PROP_OPEN_TIMEOUT_MSEC", options["open_timeout"]),
                          ("CAP_PROP_READ_TIMEOUT_MSEC", options["read_timeout"])):
        prop = getattr(cv2, name, None)
        if prop is not None:
            params += [prop, int(seconds * 1000)]
    return tuple(params)


def _require_gstreamer(what, options):
    if options["capture_factory"] is not None:
        return  # a custom factory opens the pipeline its own way
    if not opencv_has_gstreamer():
        raise MissingDependencyError(
            f"{what} needs OpenCV built with GStreamer, and the OpenCV in use "
            f"({_cv2().__file__}) has none (cv2.getBuildInformation() says 'GStreamer: NO'; "
            f"pip's opencv-python wheels never have it). On a Jetson use JetPack's OpenCV "
            f"(sudo apt install python3-opencv / nvidia-opencv) and uninstall pip's "
            f"opencv-python*, which shadows it; elsewhere build OpenCV with -DWITH_GSTREAMER=ON")


def open_source(source, **options) -> VideoSource:
    """Open a video source.

    Args:
        source: one of

            * a video file path (``str`` or ``os.PathLike``; ``file://`` URLs too): offline;
            * a camera index (``0`` or ``"0"``) or a V4L2 device ``"/dev/videoN"``: live;
            * ``"rtsp://..."``, ``"http(s)://..."``: live network streams (``live=False``
              reads an http(s) URL as an offline file);
            * a GStreamer pipeline (a string containing ``!``, ending in an ``appsink``) or
              ``"csi://N"`` (Jetson CSI camera N through ``nvarguscamerasrc``): live; needs an
              OpenCV with GStreamer (JetPack's);
            * an iterable of frames: ``(H, W, 3)`` uint8 BGR arrays, ``(timestamp, image)``
              pairs or :class:`Frame` objects; offline (read on demand) unless ``live=True``;
            * a :class:`VideoSource`, returned unchanged.
        options: keyword options; those that do not apply to the kind of source are ignored,
            so one set of options can serve any URI. Unknown names are an error.

            * ``on_event``: callable receiving a :class:`SourceEvent` for each disconnect,
              failed connection attempt, reconnect and the end (called from the reader thread
              for live sources; exceptions it raises are logged and ignored).
            * ``buffer_size`` (1): live: frames kept; 1 = always the newest, 2 = a little slack.
            * ``reconnect_delay`` (0.5 s), ``reconnect_max_delay`` (8 s): live: backoff after a
              drop, doubling per failed attempt; reset once frames flow.
            * ``give_up_after`` (30 s; ``None`` = never): live: end after this long without a
              frame, with the last error in :attr:`VideoSource.end_reason`.
            * ``read_timeout`` (5 s), ``open_timeout`` (10 s): network streams: a read that
              waits this long is a drop; a connection attempt that takes this long failed.
            * ``wait_for_connection`` (False): live: keep retrying when the first connection
              fails instead of raising :class:`SourceOpenError` at once.
            * ``max_clock_drift`` (2 s): live: how far the stream's clock may stray from the
              monotonic clock before timestamps switch to the monotonic clock.
            * ``fps``: iterables of bare images: their frame rate (timestamps ``index / fps``);
              files: the rate used where the container lacks timestamps.
            * ``live``: iterables and http(s) URLs: force live (True) or offline (False).
            * ``loop`` (0): files: plays in all, as jetson-utils' ``--input-loop``: 0 or 1 one
              play, N plays N times, -1 forever. Timestamps keep increasing across plays (each
              play starts one frame period after the last frame of the previous one).
            * ``rate``: at most this many frames per second pass (drop-only, as jetson-utils'
              ``--input-rate`` / GStreamer's ``videorate drop-only=true max-rate=``), by the
              frames' timestamps; files are also *paced in real time*: frame ``t`` is returned
              ``t`` seconds after the first (still offline: nothing else is dropped, a slow
              consumer slows it down). A rate above the file's own only paces it. Iterables
              ignore it.
            * ``rtsp_latency``: ``rtsp://`` streams: milliseconds of GStreamer ``rtspsrc``
              jitter buffer (its ``latency=``); the stream is then opened through
              :func:`rtsp_pipeline`, which needs an OpenCV with GStreamer (pip's has none:
              :class:`~vbedge.errors.MissingDependencyError`). Without it, OpenCV's FFmpeg
              backend opens the stream with FFmpeg's own buffering.
            * ``width``, ``height``, ``framerate``, ``flip_method``: ``csi://`` capture mode.
            * ``capture_factory``: callable ``factory(CaptureTarget) -> capture`` replacing
              ``cv2.VideoCapture`` (for tests or custom capture stacks); the capture needs
              ``isOpened()``, ``read() -> (ok, image)``, and optionally ``get(prop)`` and
              ``release()``. With a custom factory the GStreamer check is skipped.

    Raises:
        SourceNotFoundError: a file does not exist.
        FormatError: a file is empty, corrupt or nothing in it can be decoded.
        SourceOpenError: a camera/stream/pipeline cannot be opened (live, by default).
        MissingDependencyError: OpenCV is missing, or lacks GStreamer for a pipeline/``csi://``.
        InvalidInputError: an unknown URI scheme, source type or option.
    """
    if isinstance(source, VideoSource):
        return source
    opts = _check_options(options)
    factory = opts["capture_factory"] or _default_capture_factory

    def live_capture(target, description):
        return _LiveCaptureSource(target, description, factory, opts)

    if isinstance(source, (bool, np.bool_)):
        raise InvalidInputError(f"source must be a path, URI, camera index or iterable of "
                                f"frames, got {source!r}")
    if isinstance(source, (int, np.integer)):
        if source < 0:
            raise InvalidInputError(f"camera index must be >= 0, got {source}")
        return live_capture(CaptureTarget("camera", int(source)), f"camera {int(source)}")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    if isinstance(source, str):
        return _open_uri(source.strip(), opts, factory, live_capture)
    if hasattr(source, "__iter__") or hasattr(source, "__next__"):
        description = f"{type(source).__name__} of frames"
        if opts["live"]:
            return _LiveIterableSource(source, description, opts)
        return _IterableSource(source, description, fps=opts["fps"], on_event=opts["on_event"])
    raise InvalidInputError(f"source must be a path, URI, camera index or iterable of frames, "
                            f"got {type(source).__name__}")


def _open_uri(uri, opts, factory, live_capture):
    if not uri:
        raise InvalidInputError("source is an empty string; expected a path, URI or camera index")
    if uri.isdigit():
        return live_capture(CaptureTarget("camera", int(uri)), f"camera {int(uri)}")
    if "!" in uri:
        _require_gstreamer("a GStreamer pipeline source", opts)
        return live_capture(CaptureTarget("gstreamer", uri, _cv2_const("CAP_GSTREAMER", opts)),
                            f"GStreamer pipeline {uri!r}")
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme == "csi":
        rest = uri[len("csi://"):]
        if not rest.isdigit():
            raise InvalidInputError(f"expected csi://N with a sensor number N, got {uri!r}")
        _require_gstreamer(f"the CSI camera {uri}", opts)
        pipeline = csi_pipeline(int(rest), opts["width"], opts["height"], opts["framerate"],
                                opts["flip_method"])
        return live_capture(CaptureTarget("gstreamer", pipeline,
                                          _cv2_const("CAP_GSTREAMER", opts)), uri)
    if scheme in ("rtsp", "rtsps") and opts["rtsp_latency"] is not None:
        # FFmpeg's RTSP client has no jitter buffer to size; GStreamer's rtspsrc has (latency=).
        _require_gstreamer(f"rtsp_latency for {uri} (GStreamer's rtspsrc latency; OpenCV's FFmpeg "
                           f"backend has no such setting)", opts)
        return live_capture(CaptureTarget("gstreamer", rtsp_pipeline(uri, opts["rtsp_latency"]),
                                          _cv2_const("CAP_GSTREAMER", opts)), uri)
    if scheme in _STREAM_SCHEMES:
        params = _ffmpeg_params(opts) if opts["capture_factory"] is None else ()
        target = CaptureTarget("stream", uri, _cv2_const("CAP_FFMPEG", opts), params)
        if opts["live"] is False:
            if scheme in ("rtsp", "rtsps"):
                raise InvalidInputError(f"{uri}: an RTSP stream is always live (live=False only "
                                        f"applies to http(s) URLs of video files)")
            return _FileSource(target, uri, factory, fps=opts["fps"], on_event=opts["on_event"],
                               loop=opts["loop"], rate=opts["rate"])
        return live_capture(target, uri)
    if scheme == "file":
        uri = urlsplit(uri).path
        scheme = ""
    if scheme:
        raise InvalidInputError(f"unknown source scheme {scheme!r} in {uri!r}; expected a file "
                                f"path, a camera index, /dev/videoN, rtsp://, http(s)://, "
                                f"csi://N or a GStreamer pipeline")
    if uri.startswith("/dev/video"):
        if not os.path.exists(uri):
            raise SourceNotFoundError(f"no such V4L2 device {uri!r} (is the camera plugged in? "
                                      f"`ls /dev/video*` lists the devices)")
        return live_capture(CaptureTarget("camera", uri, _cv2_const("CAP_V4L2", opts)), uri)
    if opts["live"]:
        raise InvalidInputError(f"{uri}: a video file is read offline; live=True applies to "
                                f"iterables and http(s) URLs")
    if not os.path.exists(uri):
        raise SourceNotFoundError(f"video file not found: {uri!r}")
    if os.path.isdir(uri):
        raise InvalidInputError(f"{uri!r} is a directory; expected a video file")
    if os.path.getsize(uri) == 0:
        raise FormatError(f"video file {uri!r} is empty (0 bytes)")
    # Any backend for files: JetPack's OpenCV may decode some containers only via GStreamer.
    return _FileSource(CaptureTarget("file", uri), uri, factory, fps=opts["fps"], on_event=opts["on_event"],
                       loop=opts["loop"], rate=opts["rate"])


def _cv2_const(name, opts):
    """An OpenCV backend constant; 0 (any) with a custom factory so tests need no cv2."""
    if opts["capture_factory"] is not None:
        return 0
    return int(getattr(_cv2(), name, 0))
