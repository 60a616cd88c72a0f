"""The output contract, the registry that picks an output from its URI, and the fan-out that keeps a
failing output from stopping captioning.

An :class:`Output` receives, on the consumer's thread and in order:

* :meth:`Output.open` once before the first event (and again on each retry after a failure,
  with ``resume=True``);
* :meth:`Output.write` for every :class:`~vbedge.pipeline.ClipEvent` of the sources it serves;
* :meth:`Output.source_event` for each disconnect / reconnect / end a live source reports
  (from the source's reader thread: implementations keep it short and thread-safe);
* :meth:`Output.close` once at the end (and after a failure, before the retry).

:class:`OutputSet` wraps each output: an exception from ``write`` is counted, logged once per
failure episode, the output is closed and reopened (``resume=True``) after a backoff, and
captioning goes on. Only an error from the *first* ``open`` propagates: a bad path or a port in
use is the caller's error and must show at once, before any model is loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import InvalidInputError

log = logging.getLogger("vbedge.outputs")

__all__ = ["Output", "OutputContext", "OutputSet", "OutputStatus", "open_output", "register_output",
           "output_kinds"]


@dataclass
class OutputContext:
    """What an output is told when it opens.

    Attributes:
        fps: frame rate of the frames in events (the bundle's ``spec.fps``).
        sources: ids of the sources this output serves, in order.
        source_stats: ``source_stats(source_id)`` -> the source's current
            :class:`~vbedge.sources.SourceStats` (``None`` for an unknown id).
        status: ``status()`` -> list of every output's :class:`OutputStatus` (for pages and
            metrics that report on their peers).
        info: free-form facts for display (``bundle``, ``backend``, ``precision``...).
    """

    fps: float
    sources: tuple = ()
    source_stats: Callable = field(default=lambda source_id: None)
    status: Callable = field(default=lambda: [])
    info: dict = field(default_factory=dict)


class Output:
    """Base class of every output. Subclasses set ``kind`` and implement :meth:`write`.

    ``needs_frames``: the output draws frames, so the pipeline must keep them
    (``keep_frames=True``).
    """

    kind = "output"
    needs_frames = False

    def __init__(self, target):
        self.target = str(target)

    @property
    def description(self) -> str:
        return f"{self.kind} {self.target}"

    def open(self, context: OutputContext, resume: bool = False):
        """Prepare to receive events. ``resume``: a retry after a failure (append, do not truncate)."""

    def write(self, event):
        raise NotImplementedError

    def source_event(self, source_id, event):
        """A :class:`~vbedge.sources.SourceEvent` of ``source_id`` (reader thread)."""

    def close(self):
        """Release files, sockets and threads; idempotent."""

    def __repr__(self):
        return f"<{type(self).__name__} {self.target!r}>"


@dataclass
class OutputStatus:
    """How one output is doing (:meth:`OutputSet.status`).

    Attributes:
        description: e.g. ``"subtitles captions.srt"``.
        state: ``"ok"``, ``"failing"`` (waiting to retry), ``"retrying"`` (reopened, no write
            has worked yet) or ``"closed"``.
        events: events written successfully.
        failures: writes or reopens that raised.
        missed: events not written because the output was failing.
        last_error: the latest failure in words, or ``None``.
    """

    description: str
    state: str = "ok"
    events: int = 0
    failures: int = 0
    missed: int = 0
    last_error: str | None = None


class _Guarded:
    """One output inside an :class:`OutputSet`: its sources, state and retry clock."""

    def __init__(self, output, sources, retry_delay, retry_max_delay):
        self.output = output
        self.sources = None if sources is None else frozenset(sources)
        self.status = OutputStatus(output.description)
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.delay = retry_delay
        self.retry_at = None
        self.context = None

    def serves(self, source_id):
        return self.sources is None or source_id in self.sources


class OutputSet:
    """Fans caption events out to outputs; a failing output is counted, logged once and retried.

    ``retry_delay`` (1 s) doubles per failed retry up to ``retry_max_delay`` (30 s) and resets
    once the output works again. Thread-safe for :meth:`source_event`; :meth:`write` is called
    from one thread.
    """

    def __init__(self, retry_delay=1.0, retry_max_delay=30.0, clock=time.monotonic):
        self._items: list[_Guarded] = []
        self._retry = (float(retry_delay), float(retry_max_delay))
        self._clock = clock
        self._lock = threading.Lock()
        self._opened = False

    def add(self, output: Output, sources=None) -> Output:
        """Add ``output``, serving ``sources`` (ids; ``None`` = every source)."""
        if self._opened:
            raise RuntimeError("outputs must be added before OutputSet.open()")
        self._items.append(_Guarded(output, sources, *self._retry))
        return output

    @property
    def outputs(self) -> list:
        return [item.output for item in self._items]

    @property
    def needs_frames(self) -> bool:
        return any(item.output.needs_frames for item in self._items)

    def status(self) -> list:
        """A copy of every output's :class:`OutputStatus`, in the order they were added."""
        with self._lock:
            return [OutputStatus(**vars(item.status)) for item in self._items]

    def open(self, context: OutputContext):
        """Open every output (errors propagate: they are the caller's, e.g. a bad path); on an
        error the outputs already opened are closed again."""
        opened = []
        try:
            for item in self._items:
                sources = tuple(s for s in context.sources if item.serves(s))
                item.context = OutputContext(fps=context.fps, sources=sources,
                                             source_stats=context.source_stats, status=self.status,
                                             info=dict(context.info))
                item.output.open(item.context, resume=False)
                opened.append(item)
        except BaseException:
            for item in opened:
                _close_quietly(item.output)
            raise
        self._opened = True

    def write(self, event):
        """Write ``event`` to every output serving its source."""
        now = self._clock()
        for item in self._items:
            if not item.serves(event.source_id) or item.status.state == "closed":
                continue
            if item.status.state == "failing":
                if now < item.retry_at or not self._reopen(item, now):
                    with self._lock:
                        item.status.missed += 1
                    continue
            try:
                item.output.write(event)
            except Exception as error:  # noqa: BLE001 - an output never stops captioning
                self._failed(item, error, now, while_="writing")
                with self._lock:
                    item.status.missed += 1
            else:
                with self._lock:
                    item.status.events += 1
                    recovered = item.status.state == "retrying"
                    item.status.state = "ok"
                    item.delay = item.retry_delay
                if recovered:
                    log.warning("%s works again after %d failure(s)", item.output.description,
                                item.status.failures)

    def source_event(self, source_id, event):
        for item in self._items:
            if item.serves(source_id) and item.status.state == "ok":
                try:
                    item.output.source_event(source_id, event)
                except Exception:  # noqa: BLE001
                    log.exception("%s: source_event raised (ignored)", item.output.description)

    def close(self):
        """Close every output (errors are logged, never raised); idempotent."""
        for item in self._items:
            if item.status.state != "closed":
                _close_quietly(item.output)
                with self._lock:
                    item.status.state = "closed"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- failures ------------------------------------------------------------------------------

    def _failed(self, item, error, now, while_):
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            first = item.status.state == "ok"
            item.status.state = "failing"
            item.status.failures += 1
            item.status.last_error = reason
            item.retry_at = now + item.delay
            retry_in = item.delay
            item.delay = min(item.delay * 2.0, item.retry_max_delay)
        if first:  # once per failure episode; the counters keep the rest
            log.warning("%s failed while %s (%s); captioning goes on, retrying in %.1f s",
                        item.output.description, while_, reason, retry_in)
        _close_quietly(item.output)

    def _reopen(self, item, now):
        try:
            item.output.open(item.context, resume=True)
        except Exception as error:  # noqa: BLE001
            self._failed(item, error, now, while_="reopening")
            return False
        with self._lock:
            item.status.state = "retrying"  # "ok" (and logged) once a write works
        return True


def _close_quietly(output):
    try:
        output.close()
    except Exception:  # noqa: BLE001
        log.exception("%s: close raised (ignored)", output.description)


# -- the registry --------------------------------------------------------------------------------

# (kind, matches(target) -> bool, factory(target) -> Output, help), tried in order.
_REGISTRY: list = []


def register_output(kind: str, matches: Callable, factory: Callable, help: str):
    """Make ``open_output`` pick ``factory(target)`` for targets where ``matches(target)``."""
    _REGISTRY.append((kind, matches, factory, help))


def output_kinds() -> list:
    """``(kind, help)`` of every registered output, in the order they are tried."""
    return [(kind, help) for kind, _, _, help in _REGISTRY]


def open_output(target) -> Output:
    """The output a URI or file name names (``events.jsonl``, ``captions.srt``, ``out.mp4``,
    ``http://@:8080``, ``mqtt://host/topic``...). Nothing is opened yet: see :meth:`Output.open`."""
    if isinstance(target, Output):
        return target
    text = str(target)
    for _kind, matches, factory, _help in _REGISTRY:
        if matches(text):
            return factory(text)
    known = "; ".join(f"{help}" for _, help in output_kinds())
    raise InvalidInputError(f"no output kind for {text!r}: known outputs are {known}")
