"""vbedge bench: statistics, report structure, --compare arithmetic, machine state, errors.

Timings are never asserted: only that every stage was measured and lands in the report.
"""

import importlib.util
import json
import math
import types

import numpy as np
import pytest

from vbedge.bench import (BENCH_STAGES, QUEUE_STAGES, check_choices, compare_reports,
                          format_comparison, format_report, jetson_state, percentile, summarize,
                          summarize_events)
from vbedge.cli import main
from vbedge.errors import FormatError, InvalidInputError

STAT_KEYS = {"count", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"}


# -- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(n):
    values = np.random.default_rng(n).exponential(30.0, size=n)
    for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert percentile(values.tolist(), q) == pytest.approx(float(np.percentile(values, q)),
                                                               rel=1e-12, abs=1e-12)


def test_percentile_rejects_empty_and_bad_q():
    with pytest.raises(InvalidInputError, match="empty"):
        percentile([], 50)
    with pytest.raises(InvalidInputError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_summarize_keys_and_values():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    s = summarize(values)
    assert set(s) == STAT_KEYS
    assert (s["count"], s["min_ms"], s["max_ms"], s["mean_ms"], s["p50_ms"]) == (5, 1.0, 5.0, 3.0, 3.0)
    assert s["p90_ms"] == pytest.approx(np.percentile(values, 90))
    empty = summarize([])
    assert empty["count"] == 0 and empty["p99_ms"] is None


def _event(latency, queue, batch):
    return types.SimpleNamespace(latency_ms=latency, timings={"queue_ms": queue, "batch": batch})


def test_summarize_events_shares_batched_stage_time_for_the_rtf():
    lat = {"capture": 1.0, "preprocess": 9.0, "s3d": 400.0, "tokenize": 2.0, "videobert": 40.0,
           "total": 600.0}
    batch_a = {"s3d": 2, "tokenize": 2, "videobert": 1}
    batch_b = {"s3d": 1, "tokenize": 1, "videobert": 1}
    queue = {name: 5.0 for name in QUEUE_STAGES}
    events = [_event(lat, queue, batch_a), _event(dict(lat, total=800.0), queue, batch_b)]
    stages, waits, rtf, batch_mean = summarize_events(events, clip_seconds=1.5)
    # By hand (decode left out): clip a: 9 + 400/2 + 2/2 + 40 = 250 ms; clip b: 9 + 400 + 2 + 40.
    assert rtf == pytest.approx((250 + 451) / 1000 / (2 * 1.5), abs=1e-4)
    assert set(stages) == set(BENCH_STAGES) and stages["end_to_end"]["max_ms"] == 800.0
    assert set(waits) == set(QUEUE_STAGES) and waits["s3d"]["count"] == 2
    assert batch_mean == {"s3d": 1.5, "tokenize": 1.5, "videobert": 1.0}


# -- choices -----------------------------------------------------------------------------------


def test_unknown_backend_or_precision_names_the_valid_ones(capsys):
    with pytest.raises(InvalidInputError, match="onnxruntime, tensorrt, openvino, torch"):
        check_choices(["onnxruntime", "tflite"], ["fp32"])
    with pytest.raises(InvalidInputError, match="fp32, fp16, int8"):
        check_choices(["onnxruntime"], ["fp8"])
    with pytest.raises(InvalidInputError, match="positive integers"):
        check_choices(["onnxruntime"], ["fp32"], [0])
    # The command says the same, before loading anything.
    assert main(["bench", "--bundle", "nowhere", "--backend", "cuda"]) == 2
    assert "valid backends are onnxruntime, tensorrt, openvino, torch" in capsys.readouterr().err
    assert main(["bench", "--bundle", "nowhere", "--precision", "fp8"]) == 2
    assert "valid precisions are fp32, fp16, int8, bf16" in capsys.readouterr().err


# -- --compare on hand-made reports ------------------------------------------------------------


def _run(backend, precision, streams, p50, p99, clips_per_s, rtf, rss, dropped):
    return {"backend": backend, "precision": precision, "streams": streams,
            "stages": {"s3d": {"p50_ms": p50, "p99_ms": p99},
                       "end_to_end": {"p50_ms": 2 * p50, "p99_ms": 2 * p99}},
            "clips_per_s": clips_per_s, "rtf": rtf, "peak_rss_mb": rss, "dropped_clips": dropped}


def test_compare_ratios_of_hand_made_reports(tmp_path, capsys):
    a = {"runs": [_run("onnxruntime", "fp32", 1, 400.0, 500.0, 0.66, 0.4, 700.0, 0),
                  _run("onnxruntime", "fp32", 2, 800.0, 1000.0, 1.2, 0.8, 800.0, 4),
                  _run("onnxruntime", "fp16", 1, 1.0, 1.0, 1.0, 1.0, 1.0, 0)]}
    b = {"runs": [_run("onnxruntime", "fp32", 1, 200.0, 400.0, 1.32, 0.2, 350.0, 0),
                  _run("onnxruntime", "fp32", 2, 1000.0, 1500.0, 0.6, 1.0, 1200.0, 1),
                  _run("tensorrt", "int8", 1, 1.0, 1.0, 1.0, 1.0, 1.0, 0)]}
    comparison = compare_reports(a, b)
    rows = {r["label"]: r for r in comparison["rows"]}
    assert set(rows) == {"onnxruntime fp32 x1", "onnxruntime fp32 x2"}
    one, two = rows["onnxruntime fp32 x1"], rows["onnxruntime fp32 x2"]
    assert one["stages"]["s3d"] == {"p50": 0.5, "p99": 0.8}
    assert one["stages"]["end_to_end"] == {"p50": 0.5, "p99": 0.8}
    assert one["clips_per_s"] == pytest.approx(2.0) and one["rtf"] == pytest.approx(0.5)
    assert one["peak_rss_mb"] == 0.5
    assert one["dropped_clips"] is None          # 0 in a: no ratio
    assert two["stages"]["s3d"] == {"p50": 1.25, "p99": 1.5}
    assert two["clips_per_s"] == pytest.approx(0.5) and two["dropped_clips"] == 0.25
    assert comparison["only_in_a"] == ["onnxruntime fp16 x1"]
    assert comparison["only_in_b"] == ["tensorrt int8 x1"]
    text = format_comparison(comparison, "a.json", "b.json")
    assert "ratios b.json / a.json" in text and "1.250" in text and "only in b.json" in text
    # The command reads the two files and prints the same table.
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main(["bench", "--compare", str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime fp32 x2" in out and "1.500" in out


def test_compare_rejects_a_file_that_is_not_a_report(tmp_path, capsys):
    with pytest.raises(FormatError, match="runs"):
        compare_reports({"runs": []}, {"machine": {}})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["bench", "--compare", str(bad), str(bad)]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


# -- Jetson state, read from a hand-made /proc and /sys tree -----------------------------------


def _jetson_tree(root, cpu_cur, gpu_cur):
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    for i, cur in enumerate(cpu_cur):
        folder = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        folder.mkdir(parents=True)
        (folder / "scaling_cur_freq").write_text(f"{cur}\n")
        (folder / "cpuinfo_max_freq").write_text("2201600\n")
    gpu = root / "sys/class/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text(f"{gpu_cur}\n")
    (gpu / "max_freq").write_text("1300500000\n")
    (root / "sys/class/devfreq/3d00000.nvdla").mkdir()   # not a GPU: ignored


def test_jetson_state_full_clocks(tmp_path):
    _jetson_tree(tmp_path, [2201600, 2201600], 1300500000)
    state = jetson_state(str(tmp_path), nvpmodel_output="NV Power Mode: MAXN\n0\n")
    assert state["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert state["nvpmodel"] == {"name": "MAXN", "id": 0}
    assert state["full_clocks"] is True and state["warnings"] == []
    assert [c["name"] for c in state["cpu_clocks"]] == ["cpu0", "cpu1"]
    assert [g["name"] for g in state["gpu_clocks"]] == ["17000000.ga10b"]


def test_jetson_state_warns_below_full_clocks_and_power_mode(tmp_path):
    _jetson_tree(tmp_path, [2201600, 729600], 306000000)
    state = jetson_state(str(tmp_path), nvpmodel_output="NV Power Mode: MODE_15W\n2\n")
    assert state["full_clocks"] is False
    assert any("jetson_clocks" in w and "cpu1" in w and "ga10b" in w for w in state["warnings"])
    assert any("MODE_15W" in w for w in state["warnings"])


def test_jetson_state_is_none_off_a_jetson(tmp_path):
    assert jetson_state(str(tmp_path), nvpmodel_output="") is None


# -- real runs on the small bundle -------------------------------------------------------------


def _check_stats(stats):
    assert set(stats) == STAT_KEYS and stats["count"] > 0
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p95_ms"] \
        <= stats["p99_ms"] <= stats["max_ms"]


def test_bench_command_measures_every_stage_into_the_json(small_bundle, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--bundle", str(small_bundle.root), "--backend", "onnxruntime,tensorrt",
                 "--streams", "1,2", "--seconds", "2.5", "--warmup", "1", "--fps", "20",
                 "--frame-size", "160x120", "--threads", "1", "--json", str(out),
                 "--plot", str(png), "-q"])
    assert code == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["format"] == "vbedge-bench/1"
    machine = report["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1
    assert {"onnxruntime", "tensorrt", "torch", "cuda"} <= set(machine["versions"])
    ort_runs = [r for r in report["runs"] if r["backend"] == "onnxruntime"]
    assert [(r["precision"], r["streams"]) for r in ort_runs] == [("fp32", 1), ("fp32", 2)]
    # TensorRT either ran or is listed as skipped with the reason (never silently missing).
    assert any(r["backend"] == "tensorrt" for r in report["runs"]) or \
        any(s["backend"] == "tensorrt" and s["reason"] for s in report["skipped"])
    for run in ort_runs:
        assert set(run["stages"]) == set(BENCH_STAGES)
        for stats in run["stages"].values():
            _check_stats(stats)
        for name in QUEUE_STAGES:
            _check_stats(run["queue_wait"][name])
        assert run["live"] is True and run["clips"] > 0 and run["clips_per_s"] > 0
        assert run["rtf"] > 0 and run["dropped_clips"] >= 0 and run["peak_rss_mb"] > 0
        assert 0 < run["cpu_utilization"] and run["clip_seconds"] == small_bundle_clip_seconds(small_bundle)
        assert isinstance(run["realtime"], bool)
        assert run["realtime"] == (run["dropped_clips"] == 0 and
                                   run["stages"]["end_to_end"]["p99_ms"] < run["clip_seconds"] * 1000)
    thin = {f"onnxruntime fp32 x{r['streams']}" for r in ort_runs if r["clips"] < 10}
    assert thin == {w.split(":")[0] for w in report["warnings"] if "clip(s) measured" in w}
    sweep = next(s for s in report["sweeps"] if s["backend"] == "onnxruntime")
    held = [r["streams"] for r in ort_runs if r["realtime"]]
    assert sweep["max_realtime_streams"] == max(held, default=0)
    assert "onnxruntime fp32 x2" in text and "end_to_end" in text and "wait>s3d" in text
    assert png.stat().st_size > 1000 if _has_matplotlib() else not png.exists()


def small_bundle_clip_seconds(bundle):
    from vbedge.preprocess import PreprocessSpec

    return PreprocessSpec.from_dict(bundle.preprocessing).clip_seconds


def _has_matplotlib():
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


@pytest.mark.parametrize("model", ["s3d", "videobert"])
def test_model_bench_times_one_backend_call(small_bundle, model):
    from vbedge.bench import run_model_bench

    if model == "s3d":
        # The small bundle has no INT8 graphs: skipped with the bundle's reason, not lost.
        report = run_model_bench(small_bundle, model, ["onnxruntime"], ["fp32", "int8"],
                                 iterations=3, warmup=1)
        assert [(r["backend"], r["precision"]) for r in report["runs"]] == [("onnxruntime", "fp32")]
        assert [(s["precision"], "no int8" in s["reason"]) for s in report["skipped"]] == \
            [("int8", True)]
    else:
        report = run_model_bench(small_bundle, model, ["onnxruntime", "torch"], ["fp32", "fp16"],
                                 iterations=3, warmup=1)
        labels = [(r["backend"], r["precision"]) for r in report["runs"]]
        assert ("onnxruntime", "fp32") in labels and ("torch", "fp32") in labels
        assert any(s["backend"] == "torch" and s["precision"] == "fp16" for s in report["skipped"])
    for run in report["runs"]:
        assert run["model"] == model and run["stages"]["compute"]["count"] == 3
        _check_stats(run["stages"]["compute"])
        assert run["split"].startswith("not split")
    assert model in format_report(report)
    json.dumps(report)


def test_pipeline_events_carry_queue_waits_and_batch_sizes(small_bundle):
    from vbedge.pipeline import Pipeline

    frames = [np.full((120, 160, 3), i % 255, np.uint8) for i in range(40)]
    with Pipeline.load(small_bundle, backend="onnxruntime", source_options={"fps": 20}) as pipe:
        events = list(pipe.stream(frames))
    assert events
    for event in events:
        assert set(event.timings["queue_ms"]) == set(QUEUE_STAGES)
        assert all(v >= 0 and math.isfinite(v) for v in event.timings["queue_ms"].values())
        assert event.timings["batch"]["s3d"] == event.s3d_batch_size
        assert set(event.timings["batch"]) == {"s3d", "tokenize", "videobert"}
        assert "timings" not in event.to_dict()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_model_bench_runs_openvino_beside_onnxruntime(small_bundle, tmp_path, monkeypatch):
    """Issue 17: `vbedge bench --model s3d --backend onnxruntime,openvino` times both in one run
    (BF16 only where the CPU reports it: otherwise skipped with the reason)."""
    from vbedge.bench import run_model_bench
    from vbedge.openvino_cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "ov-cache"))
    report = run_model_bench(small_bundle, "s3d", ["onnxruntime", "openvino"], ["fp32", "bf16"],
                             iterations=3, warmup=1)
    labels = [(r["backend"], r["precision"]) for r in report["runs"]]
    assert ("onnxruntime", "fp32") in labels and ("openvino", "fp32") in labels, report["skipped"]
    assert ("openvino", "bf16") in labels or any(
        s["backend"] == "openvino" and s["precision"] == "bf16" and s["reason"] for s in report["skipped"])
    assert ("onnxruntime", "bf16") not in labels
    for run in report["runs"]:
        assert run["stages"]["compute"]["count"] == 3
    assert "openvino" in format_report(report)
