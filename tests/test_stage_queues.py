"""The pipeline's stage queues, called directly (no pipeline threads, no models).

Every wait here is bounded: blocking calls run in a helper thread joined with a timeout, and a
"still blocked" check waits at most 0.15 s on an Event.
"""

import threading
import types

import pytest

from vbedge.pipeline import _Slot
from vbedge.stage_queues import ClipQueue, Handoff, SourceEnd

POLL = 0.02          # short stop-flag polling keeps the tests fast
BLOCKED = 0.15       # how long a call must stay blocked to count as blocked
DONE = 2.0           # generous bound for a call that must finish


def slot(name, live):
    """The pipeline's real per-source state, over a stand-in source that only says if it is live."""
    return _Slot(name, types.SimpleNamespace(is_live=live), owned=False)


def queue(*slots, pending_live=2, pending_offline=3, in_flight_live=8, stop=None):
    q = ClipQueue(stop or threading.Event(), pending_live, pending_offline, in_flight_live, poll=POLL)
    for s in slots:
        q.add_slot(s)
    return q


class Call:
    """Runs ``fn(*args)`` in a thread; ``finished(t)`` says whether it returned within ``t`` s."""

    def __init__(self, fn, *args):
        self.result, self._done = None, threading.Event()

        def run():
            self.result = fn(*args)
            self._done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finished(self, timeout):
        return self._done.wait(timeout)


# -- ClipQueue ------------------------------------------------------------------------------------


def test_offline_batches_keep_order_and_lose_nothing():
    a = slot("a", live=False)
    q = queue(a, pending_offline=10)
    for i in range(5):
        q.put(a, i)
    assert q.get_batch(3, 0.0) == [0, 1, 2]
    assert q.get_batch(3, 0.0) == [3, 4]
    assert a.dropped == 0 and a.in_flight == 0   # offline clips are not counted in flight


def test_round_robin_over_sources_and_turns_rotate():
    a, b = slot("a", live=False), slot("b", live=False)
    q = queue(a, b, pending_offline=10)
    for item in ("a0", "a1", "a2"):
        q.put(a, item)
    for item in ("b0", "b1"):
        q.put(b, item)
    assert q.get_batch(4, 0.0) == ["a0", "b0", "a1", "b1"]
    q.put(a, "a3")
    q.put(b, "b2")
    # The next batch starts at the other source: no source is always served first.
    assert q.get_batch(2, 0.0) == ["b2", "a2"]
    assert q.get_batch(2, 0.0) == ["a3"]


def test_end_marker_follows_the_sources_clips_and_is_never_held_back():
    a = slot("a", live=False)
    q = queue(a, pending_offline=10)
    end = SourceEnd(a, "end of file", False)
    q.put(a, 0)
    q.put(a, 1)
    q.put_end(a, end)
    assert q.get_batch(1, 0.0) == [0]
    assert not a.end_taken
    # The marker rides along with the last clip although the batch is already full.
    assert q.get_batch(1, 0.0) == [1, end]
    assert a.end_taken


def test_end_marker_of_a_live_source_passes_the_in_flight_limit():
    a = slot("a", live=True)
    q = queue(a, in_flight_live=1)
    end = SourceEnd(a, "stream closed", True)
    q.put(a, 0)
    q.put(a, 1)
    q.put_end(a, end)
    assert q.get_batch(4, 0.0) == [0]            # one clip in flight at most
    assert q.get_batch(4, 0.0) is None           # clip 1 waits for a release ...
    q.release(a)
    assert q.get_batch(4, 0.0) == [1, end]       # ... then goes, with the end right after it


def test_live_put_drops_the_oldest_and_counts_it_without_blocking():
    a = slot("a", live=True)
    q = queue(a, pending_live=2)
    call = Call(lambda: [q.put(a, i) for i in range(6)])
    assert call.finished(DONE), "a live put blocked"
    assert a.dropped == 4
    assert q.get_batch(8, 0.0) == [4, 5]         # the newest survive


def test_live_in_flight_limit_and_release():
    a = slot("a", live=True)
    q = queue(a, pending_live=5, in_flight_live=2)
    for i in range(4):
        q.put(a, i)
    assert q.get_batch(8, 0.0) == [0, 1]
    assert a.in_flight == 2
    assert q.get_batch(8, 0.0) is None
    q.release(a)
    assert a.in_flight == 1
    assert q.get_batch(8, 0.0) == [2]
    assert a.dropped == 0


def test_offline_put_blocks_when_full_until_a_batch_is_taken():
    a = slot("a", live=False)
    q = queue(a, pending_offline=2)
    q.put(a, 0)
    q.put(a, 1)
    call = Call(q.put, a, 2)
    assert not call.finished(BLOCKED), "an offline put into a full queue must wait (backpressure)"
    assert q.get_batch(1, 0.0) == [0]
    assert call.finished(DONE)
    assert q.get_batch(8, 0.0) == [1, 2]
    assert a.dropped == 0


def test_stop_releases_a_blocked_offline_put():
    stop = threading.Event()
    a = slot("a", live=False)
    q = queue(a, pending_offline=1, stop=stop)
    q.put(a, 0)
    call = Call(q.put, a, 1)
    assert not call.finished(BLOCKED)
    stop.set()
    assert call.finished(DONE), "the stop flag did not release a blocked put"
    assert q.get_batch(8, 0.0) == [0]            # the late clip was not queued after the stop


def test_get_batch_returns_none_when_nothing_is_ready():
    a = slot("a", live=False)
    q = queue(a)
    call = Call(q.get_batch, 4, 5.0)
    assert call.finished(DONE), "an empty get_batch must give up after one poll period"
    assert call.result is None


def test_get_batch_waits_for_the_other_running_sources():
    a, b = slot("a", live=False), slot("b", live=False)
    q = queue(a, b)
    q.put(a, "a0")
    call = Call(q.get_batch, 2, 30.0)
    assert not call.finished(BLOCKED), "the batch did not wait for source b"
    q.put(b, "b0")
    assert call.finished(DONE)
    assert call.result == ["a0", "b0"]


def test_get_batch_with_no_timeout_does_not_wait():
    a, b = slot("a", live=False), slot("b", live=False)
    q = queue(a, b)
    q.put(a, "a0")
    call = Call(q.get_batch, 2, 0.0)
    assert call.finished(DONE)
    assert call.result == ["a0"]


def test_get_batch_does_not_wait_for_an_ended_source():
    a, b = slot("a", live=False), slot("b", live=False)
    q = queue(a, b)
    end = SourceEnd(b, "end of file", False)
    q.put_end(b, end)
    assert q.get_batch(2, 0.0) == [end]
    q.put(a, "a0")
    call = Call(q.get_batch, 2, 30.0)
    assert call.finished(DONE), "get_batch waited for a source that has ended"
    assert call.result == ["a0"]


def test_stop_ends_the_wait_for_other_sources():
    stop = threading.Event()
    a, b = slot("a", live=False), slot("b", live=False)
    q = queue(a, b, stop=stop)
    q.put(a, "a0")
    call = Call(q.get_batch, 2, 30.0)
    assert not call.finished(BLOCKED)
    stop.set()
    assert call.finished(DONE)
    assert call.result == ["a0"]


# -- Handoff --------------------------------------------------------------------------------------


def test_handoff_is_fifo_and_get_all_honours_the_limit():
    h = Handoff(threading.Event(), 5, poll=POLL)
    for i in range(4):
        assert h.put(i) is True
    assert h.get_all(limit=1) == [0]
    assert h.get_all(limit=2) == [1, 2]
    assert h.get_all() == [3]
    assert h.get_all() == []                     # empty: [] after one poll period


def test_handoff_put_blocks_when_full_until_taken():
    h = Handoff(threading.Event(), 2, poll=POLL)
    h.put("x")
    h.put("y")
    call = Call(h.put, "z")
    assert not call.finished(BLOCKED), "a put into a full handoff must wait"
    assert h.get_all(limit=1) == ["x"]
    assert call.finished(DONE) and call.result is True
    assert h.get_all() == ["y", "z"]


def test_handoff_force_never_waits():
    h = Handoff(threading.Event(), 1, poll=POLL)
    h.put("x")
    call = Call(h.put, "error report", True)
    assert call.finished(DONE) and call.result is True
    assert h.get_all() == ["x", "error report"]


def test_stop_releases_a_blocked_handoff_put():
    stop = threading.Event()
    h = Handoff(stop, 1, poll=POLL)
    h.put("x")
    call = Call(h.put, "y")
    assert not call.finished(BLOCKED)
    stop.set()
    assert call.finished(DONE)
    assert call.result is False
    assert h.get_all() == ["x"]


@pytest.mark.parametrize("live", [False, True])
def test_clip_queue_and_handoff_in_two_threads_deliver_every_clip_in_order(live):
    # A producer and a consumer thread through both queues, as the pipeline chains them; an
    # offline source must arrive complete and in order, a live one in order with drops counted.
    stop = threading.Event()
    a = slot("a", live=live)
    q = queue(a, pending_live=2, pending_offline=2, in_flight_live=100, stop=stop)
    h = Handoff(stop, 2, poll=POLL)
    received = []

    def produce():
        for i in range(200):
            q.put(a, i)
        q.put_end(a, SourceEnd(a, "end", False))

    def move():
        while not a.end_taken:
            for item in q.get_batch(3, 0.0) or []:
                h.put(item)

    def consume():
        while True:
            for item in h.get_all():
                if isinstance(item, SourceEnd):
                    return
                received.append(item)

    threads = [threading.Thread(target=f, daemon=True) for f in (produce, move, consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a stage thread hung"
    assert received == sorted(received) and received[-1] == 199
    if live:
        assert len(received) + a.dropped == 200
    else:
        assert received == list(range(200)) and a.dropped == 0
