"""The bounded queues between the pipeline's stages (see :mod:`vbedge.pipeline`).

:class:`ClipQueue` holds the clips waiting for S3D, one FIFO per source, and hands them out in
batches, round robin over the sources. Its policy is the pipeline's promise: an offline source
never loses a clip (``put`` blocks while the source's queue is full: backpressure); a live source
never falls behind (``put`` drops the *oldest* pending clip and counts it, and at most
``in_flight_live`` of its clips are between S3D and the consumer). :class:`Handoff` is a bounded
FIFO between two later stages. Every blocking wait polls the stop flag (a
:class:`threading.Event`) every ``poll`` seconds, so a shutdown never hangs on a full or empty
queue.

A *slot* is the per-source state the queues read and update (the pipeline's ``_Slot``): any
object with ``live`` (bool), and the counters ``dropped``, ``in_flight`` and ``end_taken``, which
the clip queue writes under its lock.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

__all__ = ["ClipQueue", "Handoff", "POLL_SECONDS", "SourceEnd"]

#: How often blocked waits look at the stop flag (seconds): bounds shutdown latency.
POLL_SECONDS = 0.05


@dataclass
class SourceEnd:
    """The end marker of a source: queued after its last clip, it ends the source downstream."""

    slot: object
    reason: str
    failed: bool


class ClipQueue:
    """Clips waiting for S3D, per source; drops a live source's oldest pending clip.

    Args:
        stop: the pipeline's stop flag (:class:`threading.Event`).
        pending_live: clips a live source may have waiting; a new one evicts the oldest.
        pending_offline: clips an offline source may have waiting; ``put`` blocks beyond.
        in_flight_live: clips of a live source allowed between ``get_batch`` and ``release``.
        poll: seconds between looks at ``stop`` while blocked.
    """

    def __init__(self, stop, pending_live, pending_offline, in_flight_live, poll=POLL_SECONDS):
        self._cond = threading.Condition()
        self._poll = poll
        self._items = collections.OrderedDict()   # slot -> deque of clips and SourceEnd markers
        self._stop = stop
        self._pending_live = pending_live
        self._pending_offline = pending_offline
        self._in_flight_live = in_flight_live
        self._turn = 0

    def add_slot(self, slot):
        """Give ``slot`` (a source) its own FIFO; sources are served in the order added."""
        with self._cond:
            self._items[slot] = collections.deque()

    def put(self, slot, item):
        """Queue a clip; offline: wait for room; live: evict the oldest pending clip.

        An offline ``put`` blocked on a full queue returns without queuing once ``stop`` is set.
        """
        with self._cond:
            queue = self._items[slot]
            if slot.live:
                while len(queue) >= self._pending_live:
                    queue.popleft()
                    slot.dropped += 1
            else:
                while len(queue) >= self._pending_offline:
                    if self._stop.is_set():
                        return
                    self._cond.wait(self._poll)
            queue.append(item)
            self._cond.notify_all()

    def put_end(self, slot, end):
        """Queue the :class:`SourceEnd` of ``slot`` after its clips (never blocks, never dropped)."""
        with self._cond:
            self._items[slot].append(end)
            self._cond.notify_all()

    def release(self, slot):
        """A live clip left the pipeline (delivered or lost): admit the next one."""
        with self._cond:
            slot.in_flight -= 1
            self._cond.notify_all()

    def _ready(self, slot, queue):
        if not queue:
            return False
        if isinstance(queue[0], SourceEnd) or not slot.live:
            return True
        return slot.in_flight < self._in_flight_live

    def get_batch(self, max_batch, batch_timeout):
        """Up to ``max_batch`` clips (round robin over sources) plus end markers, in order.

        Waits for a first item (``None`` after one poll period without any), then up to
        ``batch_timeout`` seconds for the other sources still running to have a clip too.
        """
        with self._cond:
            if not any(self._ready(s, q) for s, q in self._items.items()):
                self._cond.wait(self._poll)
                if not any(self._ready(s, q) for s, q in self._items.items()):
                    return None
            deadline = time.monotonic() + batch_timeout
            while not self._stop.is_set():
                running = [(s, q) for s, q in self._items.items() if not s.end_taken]
                ready = sum(1 for s, q in running if self._ready(s, q))
                queued = sum(len(q) for s, q in self._items.items() if self._ready(s, q))
                remaining = deadline - time.monotonic()
                if ready >= len(running) or queued >= max_batch or remaining <= 0:
                    break
                self._cond.wait(min(remaining, self._poll))
            taken, clips = [], 0
            slots = list(self._items)
            progress = True
            while progress and clips < max_batch:
                progress = False
                for k in range(len(slots)):
                    slot = slots[(self._turn + k) % len(slots)]
                    queue = self._items[slot]
                    while queue and isinstance(queue[0], SourceEnd):
                        slot.end_taken = True
                        taken.append(queue.popleft())
                    if clips < max_batch and self._ready(slot, queue):
                        item = queue.popleft()
                        if slot.live:
                            slot.in_flight += 1
                        taken.append(item)
                        clips += 1
                        progress = True
                    while queue and isinstance(queue[0], SourceEnd):
                        slot.end_taken = True
                        taken.append(queue.popleft())
            self._turn += 1
            self._cond.notify_all()
            return taken


class Handoff:
    """A bounded FIFO between two stages whose waits poll the stop flag."""

    def __init__(self, stop, size, poll=POLL_SECONDS):
        self._stop = stop
        self._poll = poll
        self._size = size
        self._items = collections.deque()
        self._cond = threading.Condition()

    def put(self, item, force=False):
        """Append ``item``, waiting while full; ``False`` if ``stop`` was set meanwhile.

        ``force`` appends even when full (an error report must never wait or be lost).
        """
        with self._cond:
            while not force and len(self._items) >= self._size:
                if self._stop.is_set():
                    return False
                self._cond.wait(self._poll)
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get_all(self, limit=None):
        """All items queued now (at most ``limit``); ``[]`` after one poll period."""
        with self._cond:
            if not self._items:
                self._cond.wait(self._poll)
            taken = []
            while self._items and (limit is None or len(taken) < limit):
                taken.append(self._items.popleft())
            self._cond.notify_all()
            return taken
