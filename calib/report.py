"""The INT8 accuracy/speed report: held-out clips, FP32 as the reference, timings side by side.

Metrics (all on inputs never used for calibration):

- S3D: cosine between the INT8 and FP32 features (mean, worst); **visual-token agreement**: the
  fraction of clips whose token (``codebook.tokenize`` of the feature) equals the FP32 token;
- VideoBERT: at every masked position, **top-1 agreement** (FP32 scores INT8's best id as high as
  its own best, within :data:`TIE_TOLERANCE`: exactly tied ids are interchangeable) and **top-5
  agreement** (one of INT8's best 5 is such an id; ``min(5, k)`` for smaller k):
  text metrics at masked words, visual metrics at masked visual tokens (the visual segment,
  token type 1); and top-1 agreement split by how decisive FP32 was:
  at **decisive** positions (FP32's best logit beats its second by at least ``ln 2``, i.e. its
  top word is at least twice as likely as the runner-up) and at **near ties** (the rest). A
  flip between two words FP32 itself rates almost equally is a different failure from a flip of
  a clear answer; the split shows which one INT8 causes (docs/int8.md);
- speed: FP32 and INT8 sessions created in one process and run interleaved (FP32, INT8, FP32...)
  on the same input, median of the repeats, with the load average before and after (the
  machines are shared; interleaving spreads load changes over both), and the quartiles of the
  per-round FP32/INT8 ratios (``speedup_quartiles``: how far the load moved the figure).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vbedge.errors import InvalidInputError
from vbedge.export.verify import reference_scores_at

#: The issue's goals; the report states which are met.
GOALS = {"token_agreement": 0.95, "videobert_top1_agreement": 0.97, "speedup": 1.5}

#: A masked position is *decisive* when FP32's best logit exceeds its second best by this much:
#: ln 2, the top word at least twice as likely as the runner-up.
DECISIVE_MARGIN = math.log(2.0)

#: FP32 logits closer than this are tied: INT8 choosing either of two tied ids agrees with FP32
#: (duplicate codebook leaves give exactly tied visual words; their order is arbitrary).
TIE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Contender:
    """A graph run by another runtime, reported beside ONNX Runtime's variants.

    ``runtime``: ``"onnxruntime"`` or ``"openvino"``; ``precision``: the backend's precision
    (OpenVINO: ``fp32``, ``bf16`` or ``int8`` for a Q/DQ graph); ``conv2d_form``: ONNX Runtime
    runs the graph's separable 3D convolutions as 2D ones (what vbedge runs for S3D FP32 on the
    CPU, :mod:`vbedge.backends.conv2d_form`). Plain paths in ``int8_paths`` mean ONNX Runtime.
    """

    path: Path
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    conv2d_form: bool = False
    #: ONNX Runtime runs a Q/DQ graph's QuantizeLinear/DequantizeLinear as they are, in float
    #: (``make_session(optimization="basic")``), not fused into its integer kernels: TensorRT's
    #: arithmetic up to rounding, and the same on every CPU (fused U8S8 kernels saturate int16 sums
    #: on x86 without VNNI). Its time says nothing about a deployment.
    emulated: bool = False


class _BackendRunner:
    """ONNX Runtime's ``run(names, feeds)`` shape over a vbedge backend: OpenVINO, or ONNX
    Runtime running the 2D form of a graph."""

    def __init__(self, contender, threads):
        if contender.runtime == "openvino":
            from vbedge.backends.openvino import OpenVinoBackend

            self.backend = OpenVinoBackend(contender.path, precision=contender.precision, intra_op_threads=threads)
        else:
            from vbedge.backends.onnxruntime import OnnxRuntimeBackend

            self.backend = OnnxRuntimeBackend(contender.path, precision=contender.precision,
                                              intra_op_threads=threads, conv2d_form=contender.conv2d_form,
                                              spinning=False)

    def run(self, names, feeds):
        out = self.backend.run(feeds)
        return [out[name] for name in names]


def _session(spec, threads=None):
    """A runner with ONNX Runtime's ``run(names, feeds)`` for a path or a :class:`Contender`."""
    if isinstance(spec, Contender) and spec.runtime not in ("onnxruntime", "openvino"):
        raise InvalidInputError(f"unknown contender runtime {spec.runtime!r}; expected onnxruntime or openvino")
    if isinstance(spec, Contender) and (spec.runtime == "openvino" or spec.conv2d_form):
        return _BackendRunner(spec, threads)
    from vbedge.export.verify import make_session

    # Timed in turn in one process: no session's idle threads may spin on the next one's cores.
    if isinstance(spec, Contender):
        return make_session(spec.path, threads=threads, optimization="basic" if spec.emulated else "all",
                            spinning=False)
    return make_session(spec, threads=threads, spinning=False)


def _runtime_of(spec, runner):
    """``{"runtime", "precision"}`` of a variant: what ran (OpenVINO reports its compute layers)."""
    if isinstance(runner, _BackendRunner) and runner.backend.name == "openvino":
        return {"runtime": "openvino", "precision": runner.backend.actual_precision,
                "compute_layers": runner.backend.precision_report["compute_layers"]}
    if isinstance(runner, _BackendRunner):
        return {"runtime": "onnxruntime", "precision": runner.backend.precision, "graph_form": runner.backend.graph_form}
    if isinstance(spec, Contender) and spec.emulated:
        return {"runtime": "onnxruntime", "emulated": True}
    return {"runtime": "onnxruntime"}


def openvino_contenders(fp32_path, qdq_path):
    """The OpenVINO variants the report adds when asked: FP32 on the FP32 graph, INT8 on the Q/DQ
    graph. Raises :class:`vbedge.backends.base.BackendUnavailableError` when OpenVINO is missing."""
    from vbedge.backends.openvino import import_openvino

    import_openvino()
    return {"ov-fp32": Contender(Path(fp32_path), "openvino", "fp32"),
            "ov-int8": Contender(Path(qdq_path), "openvino", "int8")}


def _interleaved_times(runs, repeats):
    """Seconds of each callable in ``runs`` ({name: fn}) per round, run interleaved (one warm-up)."""
    if repeats < 1:
        raise InvalidInputError(f"repeats must be >= 1, got {repeats}")
    for fn in runs.values():
        fn()  # warm-up (first-run allocations, weight pre-packing)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def _interleaved_medians(runs, repeats):
    """Median seconds of each callable in ``runs`` ({name: fn}), run interleaved."""
    return {name: float(np.median(t)) for name, t in _interleaved_times(runs, repeats).items()}


def _speed(times, label):
    """Median seconds of ``label``, its speedup over FP32 (ratio of medians) and the quartiles of
    the per-round ratios: FP32 and INT8 of one round ran back to back, so the spread of those ratios
    shows how far the machine's load moved the figure."""
    ratios = times["fp32"] / times[label]
    return {"seconds": float(np.median(times[label])),
            "speedup": float(np.median(times["fp32"]) / np.median(times[label])),
            "speedup_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]}


def machine_description():
    """CPU model, logical cores, ONNX Runtime version and OpenVINO's where installed (for the report)."""
    import onnxruntime

    from vbedge.info import cpu_model

    machine = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        machine["openvino"] = openvino.get_version()
    except ImportError:
        pass
    return machine


def _cos(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def evaluate_s3d(fp32_path, int8_paths, clips, codebook, repeats=5, threads=None) -> dict:
    """Compare INT8 S3D graphs with FP32 on held-out ``clips`` ((3, T, H, W) arrays).

    ``int8_paths``: {label: path or :class:`Contender`}, e.g. {"qdq": ..., "cpu": ...,
    "ov-int8": Contender(qdq, "openvino", "int8")}. Returns a JSON-ready dict.
    """
    clips = list(clips)
    if not clips:
        raise InvalidInputError("no held-out clips to evaluate on")
    sessions = {"fp32": _session(fp32_path, threads)}
    sessions.update({label: _session(p, threads) for label, p in int8_paths.items()})
    feats = {label: np.concatenate([s.run(["feature"], {"clip": c[None]})[0] for c in clips])
             for label, s in sessions.items()}
    ref_tokens = np.asarray(codebook.tokenize(feats["fp32"]))
    result = {"clips": len(clips), "variants": {}}
    load_before = os.getloadavg()
    times = _interleaved_times({label: (lambda s=s: s.run(["feature"], {"clip": clips[0][None]}))
                                for label, s in sessions.items()}, repeats)
    for label in int8_paths:
        cos = _cos(feats["fp32"], feats[label])
        tokens = np.asarray(codebook.tokenize(feats[label]))
        result["variants"][label] = {
            "cosine_mean": float(cos.mean()), "cosine_worst": float(cos.min()),
            "token_agreement": float(np.mean(tokens == ref_tokens)), **_speed(times, label),
            **_runtime_of(int8_paths[label], sessions[label]),
        }
    result["fp32_seconds"] = float(np.median(times["fp32"]))
    result["timing"] = {"repeats": repeats, "input_shape": list(clips[0][None].shape),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()}
    return result


def top1_agreement_by_margin(ref_ids, ref_scores, got_ids, margin=DECISIVE_MARGIN, tie_tolerance=TIE_TOLERANCE) -> dict:
    """Top-1 agreement overall, at decisive positions and at near ties of the reference.

    Args:
        ref_ids: (positions, k) the reference's top-k ids, best first (k >= 2).
        ref_scores: (positions, k) the reference's top-k logits, best first.
        got_ids: (positions,) or (positions, k') the other model's ids (column 0 is its best).
        margin: logit gap between the reference's best and second best that makes a position decisive.

    Returns ``{"top1", "decisive_fraction", "decisive_top1", "near_tie_top1"}``; an agreement over
    no positions is ``None``.
    """
    ref_ids, ref_scores = np.asarray(ref_ids), np.asarray(ref_scores, dtype=np.float64)
    got = np.asarray(got_ids)
    got = got[:, 0] if got.ndim == 2 else got
    if (ref_ids.ndim != 2 or ref_ids.shape[1] < 2 or ref_scores.shape != ref_ids.shape
            or got.shape != ref_ids[:, 0].shape):
        raise InvalidInputError(f"expected (positions, k >= 2) reference ids and scores and (positions,) ids, got "
                                f"{ref_ids.shape}, {ref_scores.shape}, {got.shape}")
    if not np.all(np.isfinite(ref_scores)):
        raise InvalidInputError("reference scores contain NaN or infinity")
    # Tie-aware: the other model's best id agrees when FP32 scores it within tie_tolerance of
    # FP32's own best (an id outside FP32's top-k scores below it).
    same = reference_scores_at(ref_ids, ref_scores, got[:, None])[:, 0] >= ref_scores[:, 0] - tie_tolerance
    decisive = (ref_scores[:, 0] - ref_scores[:, 1]) >= margin

    def mean(mask):
        return float(np.mean(same[mask])) if mask.any() else None

    return {"top1": mean(np.ones(same.shape, dtype=bool)),
            "decisive_fraction": float(np.mean(decisive)) if same.size else None,
            "decisive_top1": mean(decisive), "near_tie_top1": mean(~decisive)}


def masked_position_kinds(feeds) -> dict:
    """``{"text": mask, "visual": mask}`` over the predict positions of ``feeds``, in output order.

    A [MASK] in the visual segment (token type 1, as ``caption_inputs`` and the readers build it)
    hides a visual word; any other position a text word.
    """
    segment = np.concatenate([np.take_along_axis(np.asarray(f.get("token_type_ids", np.zeros_like(f["input_ids"]))),
                                                 np.asarray(f["predict_positions"]), axis=1).ravel() for f in feeds])
    return {"text": segment != 1, "visual": segment == 1}


def evaluate_videobert(fp32_path, int8_paths, feeds, repeats=10, threads=None) -> dict:
    """Compare INT8 VideoBERT graphs with FP32 at the masked positions of held-out ``feeds``.

    ``int8_paths``: {label: path or :class:`Contender`}, as in :func:`evaluate_s3d`."""
    feeds = list(feeds)
    if not feeds:
        raise InvalidInputError("no held-out VideoBERT sequences to evaluate on")
    names = ["text_topk_ids", "visual_topk_ids", "text_topk_scores", "visual_topk_scores"]
    sessions = {"fp32": _session(fp32_path, threads)}
    sessions.update({label: _session(p, threads) for label, p in int8_paths.items()})
    outs = {label: [s.run(names, f) for f in feeds] for label, s in sessions.items()}
    k = int(outs["fp32"][0][0].shape[-1])
    top = min(5, k)
    result = {"sequences": len(feeds), "positions": int(sum(f["predict_positions"].size for f in feeds)),
              "k": k, "top_n": top, "decisive_margin": DECISIVE_MARGIN, "variants": {}}
    load_before = os.getloadavg()
    times = _interleaved_times({label: (lambda s=s: s.run(names, feeds[0])) for label, s in sessions.items()},
                               repeats)
    # The text metrics use text positions only and the visual ones visual positions only: the text
    # ranking at a masked visual token (or the visual ranking at a masked word) means nothing.
    where = masked_position_kinds(feeds)
    result["text_positions"], result["visual_positions"] = int(where["text"].sum()), int(where["visual"].sum())

    def stacked(label, index, width):
        return np.concatenate([o[index][..., :width].reshape(-1, width) for o in outs[label]])

    for label in int8_paths:
        entry = {}
        for part, index in (("text", 0), ("visual", 1)):
            at = where[part]
            if not at.any():
                for key in ("top1", f"top{top}", "decisive_top1", "near_tie_top1"):
                    entry[f"{part}_{key}_agreement"] = None
                entry[f"{part}_decisive_fraction"] = None
                continue
            ref_ids, ref_scores = stacked("fp32", index, k)[at], stacked("fp32", index + 2, k)[at]
            got_top1 = stacked(label, index, 1)[at, 0]
            got_topn = stacked(label, index, top)[at]
            # Tie-aware (TIE_TOLERANCE): an id FP32 scores as high as its best counts as FP32's best.
            tied_best = reference_scores_at(ref_ids, ref_scores, got_topn) >= ref_scores[:, :1] - TIE_TOLERANCE
            entry[f"{part}_top1_agreement"] = float(np.mean(tied_best[:, 0]))
            entry[f"{part}_top{top}_agreement"] = float(np.mean(tied_best.any(axis=1)))
            entry[f"{part}_top1_id_agreement"] = float(np.mean(ref_ids[:, 0] == got_top1))
            if k >= 2:
                split = top1_agreement_by_margin(stacked("fp32", index, k)[at], stacked("fp32", index + 2, k)[at],
                                                 got_top1)
                entry[f"{part}_decisive_fraction"] = split["decisive_fraction"]
                entry[f"{part}_decisive_top1_agreement"] = split["decisive_top1"]
                entry[f"{part}_near_tie_top1_agreement"] = split["near_tie_top1"]
        entry["top1_agreement"] = min(entry[f"{part}_top1_agreement"] for part in ("text", "visual")
                                      if entry[f"{part}_top1_agreement"] is not None)
        entry.update(_speed(times, label))
        entry.update(_runtime_of(int8_paths[label], sessions[label]))
        result["variants"][label] = entry
    result["fp32_seconds"] = float(np.median(times["fp32"]))
    result["timing"] = {"repeats": repeats, "sequence_length": int(feeds[0]["input_ids"].shape[1]),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()}
    return result


def goals_met(report) -> dict:
    """Which of :data:`GOALS` the runtime (CPU-form) variants meet."""
    met = {}
    s3d = report.get("s3d")
    if s3d:
        best = s3d["variants"].get("cpu") or s3d["variants"]["qdq"]
        met["s3d_token_agreement"] = best["token_agreement"] >= GOALS["token_agreement"]
        # Against the fastest FP32 ONNX Runtime runs: the 2D form where the report timed it.
        fp32 = min([s3d["fp32_seconds"]] + [v["seconds"] for v in s3d["variants"].values()
                                             if v.get("precision") == "fp32" and v.get("runtime") == "onnxruntime"])
        met["s3d_speedup"] = fp32 / best["seconds"] >= GOALS["speedup"]
    vb = report.get("videobert")
    if vb:
        best = vb["variants"].get("cpu") or vb["variants"]["qdq"]
        # The goal is defined at the caption template's masked *words* (text top-1); visual-token
        # top-1 is reported beside it, not folded in (31 masked visual tokens on the demo's set).
        text = best.get("text_top1_agreement")
        met["videobert_top1"] = (best["top1_agreement"] if text is None else text) >= GOALS["videobert_top1_agreement"]
        met["videobert_speedup"] = best["speedup"] >= GOALS["speedup"]
    return met


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def _quartiles(variant):
    """'1.31-1.58x': the middle half of the per-round FP32/INT8 ratios ('' when not recorded)."""
    q = variant.get("speedup_quartiles")
    return f"{q[0]:.2f}-{q[1]:.2f}x" if q else ""


def _ran(variant):
    """'  openvino, ran int8' for another runtime's variant ('' for ONNX Runtime's)."""
    if variant.get("emulated"):
        return "  Q/DQ emulated in float (TensorRT's arithmetic; its time is not a deployment's)"
    if variant.get("runtime", "onnxruntime") == "onnxruntime":
        return ""
    return f"  {variant['runtime']}, ran {variant.get('precision')}"


def format_report(report) -> str:
    """The report as a plain-text table."""
    lines = []
    machine = report.get("machine", {})
    if machine:
        lines.append(f"machine: {machine.get('cpu')}, {machine.get('logical_cores')} logical cores, "
                     f"onnxruntime {machine.get('onnxruntime')}"
                     + (f", openvino {machine['openvino']}" if machine.get("openvino") else ""))
    s3d = report.get("s3d")
    if s3d:
        t = s3d["timing"]
        lines.append(f"S3D: {s3d['clips']} held-out clips, input {tuple(t['input_shape'])}, median of "
                     f"{t['repeats']} interleaved runs, load {t['load_average_before'][0]:.2f} -> "
                     f"{t['load_average_after'][0]:.2f}")
        rewrite = report.get("s3d_quantization", {}).get("cpu_rewrite", {})
        if rewrite.get("u8_range"):
            lines.append(f"  cpu: ONNX Runtime's form, uint8 activations on the {rewrite['u8_range']} range, "
                         f"{rewrite.get('weight_bits', 8)}-bit weights"
                         + (f" ({rewrite['weight_bits_why']})" if rewrite.get("weight_bits_why") else ""))
        lines.append(f"  {'variant':<8} {'cos mean':>9} {'cos worst':>9} {'tokens':>7} {'ms':>9} {'vs FP32':>8} "
                     f"{'per-run IQR':>12}")
        lines.append(f"  {'fp32':<8} {1.0:9.5f} {1.0:9.5f} {1.0:7.3f} {s3d['fp32_seconds'] * 1e3:9.1f} {1.0:7.2f}x")
        for label, v in s3d["variants"].items():
            lines.append(f"  {label:<8} {v['cosine_mean']:9.5f} {v['cosine_worst']:9.5f} {v['token_agreement']:7.3f} "
                         f"{v['seconds'] * 1e3:9.1f} {v['speedup']:7.2f}x {_quartiles(v):>12}{_ran(v)}")
    vb = report.get("videobert")
    if vb:
        t = vb["timing"]
        n = vb["top_n"]
        split = (f" ({vb['text_positions']} words, {vb['visual_positions']} visual tokens)"
                 if "text_positions" in vb else "")
        lines.append(f"VideoBERT: {vb['sequences']} held-out sequences, {vb['positions']} masked positions{split}, "
                     f"seq {t['sequence_length']}, median of {t['repeats']} interleaved runs, load "
                     f"{t['load_average_before'][0]:.2f} -> {t['load_average_after'][0]:.2f}")
        form = report.get("videobert_quantization", {}).get("cpu_form", {})
        if form.get("weight_bits"):
            lines.append(f"  cpu: ONNX Runtime's dynamic INT8 form, {form['weight_bits']}-bit weights"
                         + (f" ({form['weight_bits_why']})" if form.get("weight_bits_why") else ""))
        lines.append(f"  {'variant':<8} {'text top1':>9} {f'text top{n}':>9} {'vis top1':>9} {f'vis top{n}':>9} "
                     f"{'ms':>8} {'vs FP32':>8} {'per-run IQR':>12}")
        lines.append(f"  {'fp32':<8} {1.0:9.3f} {1.0:9.3f} {1.0:9.3f} {1.0:9.3f} "
                     f"{vb['fp32_seconds'] * 1e3:8.2f} {1.0:7.2f}x")
        for label, v in vb["variants"].items():
            lines.append(f"  {label:<8} {_fmt(v['text_top1_agreement']):>9} {_fmt(v[f'text_top{n}_agreement']):>9} "
                         f"{_fmt(v['visual_top1_agreement']):>9} {_fmt(v[f'visual_top{n}_agreement']):>9} "
                         f"{v['seconds'] * 1e3:8.2f} {v['speedup']:7.2f}x {_quartiles(v):>12}{_ran(v)}")
        if any("text_decisive_fraction" in v for v in vb["variants"].values()):
            lines.append(f"  top-1 agreement where FP32 is decisive (best logit >= second + "
                         f"{vb.get('decisive_margin', DECISIVE_MARGIN):.3f}) / at FP32's near ties:")
            for label, v in vb["variants"].items():
                parts = []
                for part in ("text", "visual"):
                    if v.get(f"{part}_decisive_fraction") is not None:
                        parts.append(f"{part} {_fmt(v[f'{part}_decisive_top1_agreement'])} on "
                                     f"{v[f'{part}_decisive_fraction']:.0%} of positions / "
                                     f"{_fmt(v[f'{part}_near_tie_top1_agreement'])}")
                lines.append(f"  {label:<8} " + "; ".join(parts))
    goals = report.get("goals_met")
    if goals:
        lines.append("goals (token >= 95%, VideoBERT text top-1 >= 97%, INT8 >= 1.5x FP32): " +
                     ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))
    for warning in report.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def write_report(report, path):
    """Write ``report`` as indented JSON to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
