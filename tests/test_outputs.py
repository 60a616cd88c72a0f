"""vbedge.outputs: the registry, the fan-out, and an output that fails without stopping captioning."""

import json
import logging

import pytest

from vbedge.errors import InvalidInputError
from vbedge.outputs import Output, OutputContext, OutputSet, open_output
from vbedge.outputs.files import JsonlOutput, VideoFileOutput
from vbedge.pipeline import ClipEvent


def event(i, source="cam0"):
    return ClipEvent(source_id=source, clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=i,
                     token_id=100 + i, token=f"[V:{i}]", caption=f"caption {i}", clip_caption=f"clip {i}")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Flaky(Output):
    """Fails every write while ``broken``; counts opens."""

    kind = "flaky"

    def __init__(self):
        super().__init__("flaky")
        self.broken = False
        self.fail_open = False
        self.written, self.opens = [], []

    def open(self, context, resume=False):
        if self.fail_open:
            raise OSError("still down")
        self.opens.append(resume)

    def write(self, e):
        if self.broken:
            raise OSError("No space left on device")
        self.written.append(e.clip_index)


def test_open_output_picks_by_extension_and_names_the_known_kinds(tmp_path):
    assert isinstance(open_output(tmp_path / "e.jsonl"), JsonlOutput)
    assert isinstance(open_output("out.MP4"), VideoFileOutput)
    with pytest.raises(InvalidInputError, match=r"no output kind for 'events.txt'.*events.jsonl"):
        open_output("events.txt")


def test_a_failing_output_is_counted_logged_once_retried_and_never_stops_the_others(tmp_path, caplog):
    clock = Clock()
    outputs = OutputSet(retry_delay=1.0, retry_max_delay=4.0, clock=clock)
    flaky = outputs.add(Flaky())
    jsonl = outputs.add(JsonlOutput(tmp_path / "e.jsonl"))
    outputs.open(OutputContext(fps=20, sources=("cam0",)))
    outputs.write(event(0))
    flaky.broken = True
    with caplog.at_level(logging.WARNING, logger="vbedge.outputs"):
        for i in range(1, 4):          # fails at 1; 2 and 3 come before the retry time: missed
            outputs.write(event(i))
        clock.now = 1.5                # retry: reopens (resume), the write fails again -> backoff 2 s
        outputs.write(event(4))
        flaky.broken = False
        clock.now = 2.0                # before 1.5 + 2.0: still missed
        outputs.write(event(5))
        clock.now = 3.6                # retry works
        outputs.write(event(6))
    outputs.close()
    status = outputs.status()[0]
    assert flaky.written == [0, 6] and flaky.opens == [False, True, True]
    assert (status.state, status.events, status.failures, status.missed) == ("closed", 2, 2, 5)
    assert "No space left" in status.last_error
    failed_lines = [r for r in caplog.records if "failed while" in r.message]
    assert len(failed_lines) == 1 and "works again" in caplog.records[-1].message
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["clip"] for r in rows] == list(range(7))  # the healthy output missed nothing


def test_a_failing_reopen_backs_off_and_the_first_open_error_propagates(tmp_path):
    clock = Clock()
    outputs = OutputSet(retry_delay=1.0, retry_max_delay=2.0, clock=clock)
    flaky = outputs.add(Flaky())
    outputs.open(OutputContext(fps=20, sources=("cam0",)))
    flaky.broken = flaky.fail_open = True
    outputs.write(event(0))
    for t in (1.0, 3.0, 5.0):         # each retry's reopen fails; delay capped at 2 s
        clock.now = t
        outputs.write(event(1))
    assert outputs.status()[0].failures == 4
    with pytest.raises(InvalidInputError, match="does not exist"):
        bad = OutputSet()
        bad.add(VideoFileOutput(tmp_path / "missing" / "out.mp4"))
        bad.open(OutputContext(fps=20, sources=("cam0",)))


def test_outputs_serve_only_their_sources(tmp_path):
    outputs = OutputSet()
    a, b = outputs.add(Flaky(), sources=["a"]), outputs.add(Flaky())
    outputs.open(OutputContext(fps=20, sources=("a", "b")))
    for i, source in enumerate("abab"):
        outputs.write(event(i, source))
    assert a.written == [0, 2] and b.written == [0, 1, 2, 3]


def test_jsonl_truncates_at_first_open_and_appends_on_resume(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("old\n")
    out = JsonlOutput(path)
    out.open(OutputContext(fps=20))
    out.write(event(0))
    out.close()
    out.open(OutputContext(fps=20), resume=True)
    out.write(event(1))
    out.close()
    assert [json.loads(line)["clip"] for line in path.read_text().splitlines()] == [0, 1]


def test_what_an_unnamed_source_reports_while_opening_reaches_the_outputs_with_its_id(small_bundle, monkeypatch):
    """A live source's failed first connection is reported during open_source, before its id (its
    description) is known: caption_sources hands it on under that id, not as None."""
    import numpy as np

    import vbedge.sources as sources
    from vbedge.caption_job import caption_sources
    from vbedge.sources import SourceEvent

    real_open = sources.open_source

    def open_reporting(spec, on_event=None, **options):
        on_event(SourceEvent("connect_failed", "camera not there yet", attempt=1, retry_in=0.5))
        return real_open(spec, **options)

    class Recorder(Output):
        kind = "recorder"

        def __init__(self):
            super().__init__("recorder")
            self.reports, self.events = [], []

        def write(self, e):
            self.events.append(e.source_id)

        def source_event(self, source_id, e):
            self.reports.append((source_id, e.kind))

    monkeypatch.setattr(sources, "open_source", open_reporting)
    frames = [np.full((120, 160, 3), i, np.uint8) for i in range(40)]
    recorder = Recorder()
    result = caption_sources(small_bundle, frames, [recorder], backend="onnxruntime", source_options={"fps": 20})
    assert result.events >= 1 and set(recorder.events) == {result.sources[0].source_id}
    assert recorder.reports == [(result.sources[0].source_id, "connect_failed")]
