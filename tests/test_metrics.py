"""vbedge.outputs.metrics: /metrics scraped over real HTTP and read back with prometheus_client's
own text parser (not vbedge code), checked against the events that were fed in."""

import json
import socket
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from vbedge.errors import InvalidInputError, MissingDependencyError  # noqa: E402
from vbedge.outputs import Output, OutputContext, OutputSet  # noqa: E402
from vbedge.outputs.metrics import LATENCY_BUCKETS, QUEUES, STAGES, MetricsOutput, parse_host_port  # noqa: E402
from vbedge.pipeline import ClipEvent  # noqa: E402
from vbedge.sources import SourceEvent, SourceStats  # noqa: E402


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode("utf-8")


def samples(text):
    """``{(sample name, frozenset(labels.items())): value}`` from Prometheus text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    return out


def value(parsed, name, **labels):
    return parsed[(name, frozenset(labels.items()))]


class Broken(Output):
    kind = "broken"

    def __init__(self):
        super().__init__("broken.out")

    def write(self, event):
        raise OSError("disk full")


def make_events(rng, source, count, drop_every=3):
    events, dropped_clips, dropped_frames = [], 0, 0
    for i in range(count):
        if i and i % drop_every == 0:
            dropped_clips += 1
            dropped_frames += 7
        # log-uniform 0.5 ms .. 12 s: every bucket and the +Inf overflow get some
        latency = {stage: float(np.exp(rng.uniform(np.log(0.5), np.log(12000)))) for stage in STAGES}
        waits = {stage: float(rng.uniform(0, 3000)) for stage in QUEUES}
        events.append(ClipEvent(source_id=source, clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=i,
                                token_id=100 + i, token=f"[V:{i}]", caption=f"c{i // 2}",
                                caption_changed=i % 2 == 0, latency_ms=latency,
                                dropped_clips=dropped_clips, dropped_frames=dropped_frames,
                                timings={"queue_ms": waits, "batch": {}}))
    return events


@pytest.fixture
def running():
    """An OutputSet with the metrics, a failing output, two sources with live stats."""
    stats = {"cam0": SourceStats(), "cam1": SourceStats()}
    outputs = OutputSet(retry_delay=1000.0)
    served = []
    metrics = outputs.add(MetricsOutput("127.0.0.1:0", on_serving=served.append))
    outputs.add(Broken())
    outputs.open(OutputContext(fps=20, sources=("cam0", "cam1"), source_stats=lambda s: stats.get(s),
                               info={"bundle": "/b/small", "backend": "onnxruntime", "precision": "fp16"}))
    yield outputs, metrics, stats, served
    outputs.close()


def check_histograms(parsed, events, source):
    for stage in STAGES:
        observed = np.array([e.latency_ms[stage] / 1000.0 for e in events])
        labels = {"stage": stage, "source": source}
        count = value(parsed, "vbedge_stage_latency_seconds_count", **labels)
        assert count == len(events)
        assert value(parsed, "vbedge_stage_latency_seconds_sum", **labels) == pytest.approx(observed.sum())
        previous = 0
        for le in LATENCY_BUCKETS:
            bucket = value(parsed, "vbedge_stage_latency_seconds_bucket", le=f"{le}", **labels)
            assert bucket >= previous  # cumulative
            assert bucket == np.count_nonzero(observed <= le), (stage, le)
            previous = bucket
        assert value(parsed, "vbedge_stage_latency_seconds_bucket", le="+Inf", **labels) == count
    for stage in QUEUES:
        waited = np.array([e.timings["queue_ms"][stage] / 1000.0 for e in events])
        labels = {"stage": stage, "source": source}
        assert value(parsed, "vbedge_queue_wait_seconds_count", **labels) == len(events)
        assert value(parsed, "vbedge_queue_wait_seconds_sum", **labels) == pytest.approx(waited.sum())
        assert value(parsed, "vbedge_queue_wait_seconds_bucket", le="1.0", **labels) == np.count_nonzero(waited <= 1.0)


def test_scrapes_during_and_after_follow_the_events(running):
    outputs, metrics, stats, served = running
    assert metrics.port and served == [f"http://127.0.0.1:{metrics.port}/metrics"]
    rng = np.random.default_rng(0)
    cam0, cam1 = make_events(rng, "cam0", 12), make_events(rng, "cam1", 5, drop_every=2)

    before = samples(scrape(served[0]))       # every series exists at 0 before the first event
    assert value(before, "vbedge_clips_total", source="cam1") == 0
    assert value(before, "vbedge_stage_latency_seconds_count", stage="s3d", source="cam0") == 0
    assert value(before, "vbedge_info", bundle="/b/small", backend="onnxruntime", precision="fp16",
                 version=__import__("vbedge").__version__) == 1

    for e in cam0[:6]:
        outputs.write(e)
    during = samples(scrape(served[0]))
    check_histograms(during, cam0[:6], "cam0")
    assert value(during, "vbedge_clips_total", source="cam0") == 6
    assert value(during, "vbedge_dropped_clips_total", source="cam0") == cam0[5].dropped_clips == 1

    for e in cam0[6:] + cam1:
        outputs.write(e)
    after = samples(scrape(served[0]))
    for source, events in (("cam0", cam0), ("cam1", cam1)):
        check_histograms(after, events, source)
        assert value(after, "vbedge_clips_total", source=source) == len(events)
        assert value(after, "vbedge_caption_changes_total", source=source) == sum(e.caption_changed for e in events)
        assert value(after, "vbedge_dropped_clips_total", source=source) == events[-1].dropped_clips
        assert value(after, "vbedge_dropped_frames_total", source=source) == events[-1].dropped_frames
        assert value(after, "vbedge_last_clip_end_seconds", source=source) == events[-1].end
    assert value(after, "vbedge_dropped_clips_total", source="cam0") == 3   # 12 clips, one drop per 3
    # The failing peer output: every event failed once then was missed while waiting to retry.
    broken = "broken broken.out"
    assert value(after, "vbedge_output_failures_total", output=broken) == 1
    assert value(after, "vbedge_output_missed_events_total", output=broken) == len(cam0) + len(cam1)
    assert value(after, "vbedge_output_state", output=broken, state="failing") == 1
    assert value(after, "vbedge_output_state", output=broken, state="ok") == 0
    metrics_name = f"metrics {metrics.target}"
    assert value(after, "vbedge_output_events_total", output=metrics_name) == len(cam0) + len(cam1)


def test_source_state_and_live_stats_are_read_at_scrape_time(running):
    outputs, metrics, stats, served = running
    parsed = samples(scrape(served[0]))
    assert value(parsed, "vbedge_source_up", source="cam0") == 1
    assert value(parsed, "vbedge_source_reconnects_total", source="cam0") == 0
    outputs.source_event("cam0", SourceEvent("disconnected", "read timed out", 0, 1.0))
    stats["cam0"] = SourceStats(disconnects=1)   # a snapshot, as VideoSource.stats gives
    outputs.source_event("cam1", SourceEvent("ended", "end of file"))
    parsed = samples(scrape(served[0]))
    assert value(parsed, "vbedge_source_up", source="cam0") == 0
    assert value(parsed, "vbedge_source_state", source="cam0", state="disconnected") == 1
    assert value(parsed, "vbedge_source_state", source="cam0", state="connected") == 0
    assert value(parsed, "vbedge_source_state", source="cam1", state="ended") == 1
    assert value(parsed, "vbedge_source_disconnects_total", source="cam0") == 1
    outputs.source_event("cam0", SourceEvent("reconnected", "back", 2))
    stats["cam0"] = SourceStats(disconnects=1, reconnects=1, failed_connects=2)
    parsed = samples(scrape(served[0]))
    assert value(parsed, "vbedge_source_up", source="cam0") == 1
    assert value(parsed, "vbedge_source_reconnects_total", source="cam0") == 1
    assert value(parsed, "vbedge_source_failed_connects_total", source="cam0") == 2


def test_each_instance_has_its_own_registry_and_close_stops_the_server():
    a, b = MetricsOutput("127.0.0.1:0"), MetricsOutput("127.0.0.1:0")
    for m in (a, b):
        m.open(OutputContext(fps=20, sources=("cam0",)))
    try:
        a.write(make_events(np.random.default_rng(1), "cam0", 1)[0])
        assert value(samples(scrape(a.url)), "vbedge_clips_total", source="cam0") == 1
        assert value(samples(scrape(b.url)), "vbedge_clips_total", source="cam0") == 0
    finally:
        b.close()
    url, port = a.url, a.port
    a.close()
    a.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        scrape(url)
    a.open(OutputContext(fps=20, sources=("cam0",)), resume=True)   # a retry: same port, counters kept
    try:
        assert a.port == port
        assert value(samples(scrape(a.url)), "vbedge_clips_total", source="cam0") == 1
    finally:
        a.close()


def test_a_port_in_use_fails_at_open_with_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outputs = OutputSet()
        outputs.add(MetricsOutput(f"127.0.0.1:{port}"))
        with pytest.raises(InvalidInputError, match=rf"cannot serve metrics on 127.0.0.1:{port}: .*in use"):
            outputs.open(OutputContext(fps=20, sources=("cam0",)))


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9108", ("127.0.0.1", 9108)), (":0", ("0.0.0.0", 0)),
                                            ("[::1]:80", ("::1", 80)), ("host.lan:65535", ("host.lan", 65535))])
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["9108", "host:", "host:http", "host:70000", "::1:80", ""])
def test_parse_host_port_refuses_with_the_expected_form(text):
    with pytest.raises(InvalidInputError, match="expected HOST:PORT"):
        parse_host_port(text)


def test_missing_prometheus_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'vbedge\[metrics\]'"):
        MetricsOutput("127.0.0.1:0")


# -- end to end: a real bundle, a synthetic video ----------------------------------------------------


def test_caption_sources_with_metrics_end_to_end(small_bundle, tmp_path):
    pytest.importorskip("cv2")
    from test_pipeline import write_video

    from vbedge.caption_job import caption_sources
    from vbedge.outputs.files import JsonlOutput

    video = write_video(tmp_path / "v.avi", 40, seed=5)
    outputs = OutputSet()
    metrics = outputs.add(MetricsOutput("127.0.0.1:0"))
    outputs.add(JsonlOutput(tmp_path / "e.jsonl"))
    scrapes = []
    result = caption_sources(small_bundle, {"cam0": str(video)}, outputs, backend="onnxruntime",
                             on_event=lambda event: scrapes.append(scrape(metrics.url)))
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert result.events == len(rows) == len(scrapes) == 3
    for n, text in enumerate(scrapes, start=1):  # the scrape after event n has seen n events
        parsed = samples(text)
        assert value(parsed, "vbedge_clips_total", source="cam0") == n
        for stage in STAGES:
            assert value(parsed, "vbedge_stage_latency_seconds_count", stage=stage, source="cam0") == n
            assert value(parsed, "vbedge_stage_latency_seconds_sum", stage=stage, source="cam0") == pytest.approx(
                sum(r["latency_ms"][stage] for r in rows[:n]) / 1000.0, rel=1e-3, abs=1e-5)
        for stage in QUEUES:
            assert value(parsed, "vbedge_queue_wait_seconds_count", stage=stage, source="cam0") == n
        assert value(parsed, "vbedge_source_frames_read_total", source="cam0") >= 1
    assert value(samples(scrapes[-1]), "vbedge_caption_changes_total", source="cam0") == sum(
        r["caption_changed"] for r in rows)
    with pytest.raises(urllib.error.URLError):  # the run closed the server
        scrape(metrics.url)


def test_cli_metrics_port_in_use_fails_before_models_load(small_bundle, tmp_path, capsys, monkeypatch):
    pytest.importorskip("cv2")
    from test_pipeline import write_video

    from vbedge.cli import main
    from vbedge.pipeline import Pipeline

    video = write_video(tmp_path / "v.avi", 20, seed=6)
    args = ["caption", str(video), "--bundle", str(small_bundle.root), "--backend", "onnxruntime"]
    assert main(args + ["--metrics", "127.0.0.1:x"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err

    def no_load(*args, **kwargs):
        raise AssertionError("the models were loaded before the port was checked")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with monkeypatch.context() as patch:
            patch.setattr(Pipeline, "load", no_load)
            assert main(args + ["--metrics", f"127.0.0.1:{port}"]) == 2
        assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err

    assert main(args + ["--metrics", "127.0.0.1:0"]) == 0
    err = capsys.readouterr().err
    assert "vbedge: metrics at http://127.0.0.1:" in err and "/metrics" in err
