"""The whole pipeline on the GPU (torch backend on CUDA, FP16, CUDA tokenizer) beside the CPU path, one run.

SYNTHETIC: random-init S3D at the real clip size (30 x 224 x 224), a random 4 x 12 codebook
(20,736 leaves), a random-init 6-layer BERT (384 hidden) as VideoBERT when ``transformers`` is
installed (else captions are off and only S3D + tokenizer are timed), and a synthetic moving
pattern as the video. Timings of real checkpoints scale with their size, not with their weights;
token agreement on random weights is a check of the arithmetic, not of captioning quality.

For each path it streams the same frames through :class:`vbedge.pipeline.Pipeline` (one source,
``max_batch=1``) and reports per clip:

* ``clip->caption``: the compute a clip costs once it is complete, S3D + tokenizer (one timing on
  the device path: the host waits once, for the leaf ids) + VideoBERT, from the events'
  ``latency_ms`` (median and 90th percentile over clips after the warm-up);
* ``total``: the pipeline's own clip-ready-to-event time, which also holds queueing (offline
  frames arrive faster than real time, so clips wait for the stage before them);
* visual-token agreement of each GPU path with the CPU FP32 path, clip by clip.

Goal on an H100/H200: clip->caption under 20 ms at FP16, tokens equal to the CPU path's on at
least 99% of clips. Prints a table, ratios and the machine; ``--json`` writes the figures.

    python3 benchmarks/bench_pipeline_gpu.py [--clips 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout with the in-place build

GOAL_MS = 20.0
GOAL_AGREEMENT = 0.99
TEMPLATE_WORDS = "now let me show you how to cut the onion pan stir add pour mix chop fry water".split()


def _vocab_txt(path):
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = TEMPLATE_WORDS + [f"word{i}" for i in range(200)] + list("abcdefghijklmnopqrstuvwxyz")
    path.write_text("\n".join(specials + words + [".", ","]) + "\n")
    return path


def make_bundle(folder, seed=0):
    """A synthetic bundle for the torch backend: reference weights only (see the module docstring)."""
    import torch

    from vbedge import HierarchicalCodebook
    from vbedge.bundle import write_manifest
    from vbedge.models.s3d import build_s3d_feature_extractor
    from vbedge.preprocess import PreprocessSpec

    folder = Path(folder)
    ref = folder / "reference"
    ref.mkdir(parents=True)
    spec = PreprocessSpec()
    rng = np.random.default_rng(seed)
    extractor = build_s3d_feature_extractor(random_init=True, seed=seed)
    torch.save(extractor.state_dict(), ref / "s3d.pth")
    # A tree codebook laid around where this S3D's features fall on synthetic clips (children =
    # parent + noise of the features' spread, halving per level), so clips land on different
    # leaves and near ties exist: a random codebook far from the features maps every clip to one leaf.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.from_numpy(rng.normal(size=(4, 3, spec.clip_frames, spec.crop, spec.crop)).astype(np.float32))
    with torch.inference_mode():
        feats = extractor.to(device)(probe.to(device)).float().cpu().numpy()
    mean, spread = feats.mean(0), feats.std(0) + 1e-3 * np.abs(feats).mean()
    levels = [np.repeat(mean[None], 12, 0) + rng.normal(size=(12, 1024)) * spread]
    for level in range(1, 4):
        parents = np.repeat(levels[-1], 12, 0)
        levels.append(parents + rng.normal(size=parents.shape) * spread * 0.5 ** level)
    codebook = HierarchicalCodebook(np.concatenate(levels).astype(np.float32), levels=4, branching=12)
    codebook.save(folder / "codebook.npz")
    # The manifest must list an ONNX file per model; this bundle is for the torch backend only and
    # lives in a temporary folder, so a placeholder stands in (it is never opened).
    placeholder = "placeholder: benchmark bundle for the torch backend, no ONNX exported\n"
    clip_shape = ["batch", 3, spec.clip_frames, spec.crop, spec.crop]
    models = {"s3d": {"onnx": {"fp32": "s3d.onnx"}, "inputs": [{"name": "clip", "dtype": "float32", "shape": clip_shape}],
                      "outputs": [{"name": "feature", "dtype": "float32", "shape": ["batch", 1024]}],
                      "feature_dim": 1024, "reference": "reference/s3d.pth", "extra_files": ["reference/s3d.pth"]}}
    (folder / "s3d.onnx").write_text(placeholder)
    captions = False
    try:
        import transformers
    except ImportError:
        transformers = None
    vocab_txt = _vocab_txt(folder / "words.txt")
    if transformers is not None:
        from vbedge.models.videobert import VideoBert

        bert = folder / "bert"
        bert.mkdir()
        lines = vocab_txt.read_text().split()
        config = transformers.BertConfig(vocab_size=len(lines), hidden_size=384, num_hidden_layers=6,
                                         num_attention_heads=12, intermediate_size=1536)
        torch.manual_seed(seed)
        transformers.BertForPreTraining(config).save_pretrained(str(bert), safe_serialization=True)
        (bert / "vocab.txt").write_text(vocab_txt.read_text())
        videobert = VideoBert.from_bert(bert, codebook, seed=seed)
        vb_dir = videobert.save(ref / "videobert")
        vocab = videobert.vocab
        top_k = 10
        seq, pos = ["batch", "sequence"], ["batch", "positions"]
        models["videobert"] = {
            "onnx": {"fp32": "videobert.onnx"},
            "inputs": [{"name": n, "dtype": "int64", "shape": seq} for n in ("input_ids", "attention_mask",
                                                                               "token_type_ids")]
            + [{"name": "predict_positions", "dtype": "int64", "shape": pos}],
            "outputs": [{"name": "text_topk_ids", "dtype": "int64", "shape": pos + [top_k]},
                        {"name": "text_topk_scores", "dtype": "float32", "shape": pos + [top_k]},
                        {"name": "visual_topk_ids", "dtype": "int64", "shape": pos + [top_k]},
                        {"name": "visual_topk_scores", "dtype": "float32", "shape": pos + [top_k]},
                        {"name": "alignment_logit", "dtype": "float32", "shape": ["batch"]}],
            "top_k": top_k, "vocab_size": vocab.size, "codebook_sha256": codebook.sha256,
            "reference": "reference/videobert",
            "extra_files": sorted(f"reference/videobert/{p.name}" for p in Path(vb_dir).iterdir() if p.is_file()),
        }
        (folder / "videobert.onnx").write_text(placeholder)
        captions = True
    else:
        from vbedge.vocab import VideoBertVocab

        vocab = VideoBertVocab.for_codebook(vocab_txt, codebook)
    vocab.save(folder)
    write_manifest(folder, models, "codebook.npz", {"vocab_file": "vocab.txt", "layout_file": "vocab_layout.json"},
                   spec.to_dict())
    return captions


def synthetic_frames(clips, fps=20, size=(320, 240), seed=1):
    """(timestamp, BGR frame) pairs: per clip its own random texture, tint and drift (so clips differ)."""
    rng = np.random.default_rng(seed)
    frames = []
    for clip in range(clips):
        base = rng.integers(0, 256, (size[1] // 8, size[0] // 4, 3)).astype(np.float32)
        base = np.kron(base, np.ones((8, 8, 1), np.float32)) * rng.uniform(0.2, 1.0, 3)  # blocky, tinted
        step = int(rng.integers(1, 9))
        for i in range(30):
            shift = (i * step) % size[0]
            frame = np.roll(base, shift, axis=1)[:, : size[0]]
            frames.append(((clip * 30 + i) / fps, np.ascontiguousarray(frame.clip(0, 255).astype(np.uint8))))
    return frames


def run_path(bundle, frames, captions, label, **load):
    from vbedge.pipeline import Pipeline

    t0 = time.monotonic()
    with Pipeline.load(bundle, backend="torch", max_batch=1, captions=captions, **load) as pipe:
        ready = time.monotonic() - t0
        device = pipe.device_features
        t1 = time.monotonic()
        events = list(pipe.stream(frames))
        wall = time.monotonic() - t1
    leaves = [e.leaf for e in events]
    compute = [sum(v for k, v in e.latency_ms.items() if k in ("s3d", "tokenize", "s3d+tokenize", "videobert"))
               for e in events]
    total = [e.latency_ms.get("total", float("nan")) for e in events]
    return {"label": label, "leaves": leaves, "compute_ms": compute, "total_ms": total, "wall_s": wall,
            "load_s": ready, "device_features": device, "clips": len(events)}


def _stats(values, warmup):
    kept = values[warmup:] or values
    if not kept:
        return float("nan"), float("nan")
    ordered = sorted(kept)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3, help="clips left out of the latency statistics")
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from vbedge.info import machine_summary

    if not torch.cuda.is_available():
        print("FAIL: torch has no CUDA device; this benchmark needs a GPU")
        return 2
    with tempfile.TemporaryDirectory(prefix="vbedge-gpu-bench-") as tmp:
        t0 = time.monotonic()
        captions = make_bundle(Path(tmp) / "bundle")
        print(f"synthetic bundle built in {time.monotonic() - t0:.1f} s; captions "
              f"{'on (random 6-layer BERT)' if captions else 'OFF (transformers missing): S3D + tokenizer only'}")
        frames = synthetic_frames(args.clips)
        bundle = Path(tmp) / "bundle"
        results = [
            run_path(bundle, frames, captions, "cpu fp32 (torch)", backend_options={"intra_op_threads": args.cpu_threads}),
            run_path(bundle, frames, captions, "gpu fp32 (torch cuda)", backend_options={"device": "cuda"}),
            run_path(bundle, frames, captions, "gpu fp16 (torch cuda)", precision="fp16", backend_options={"device": "cuda"}),
        ]
    reference = results[0]["leaves"]
    print()
    print(f"machine: {machine_summary()}; GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"{args.clips} clips of 30 x 224 x 224 (synthetic), one source, max_batch 1, warm-up {args.warmup} clips")
    print("| path | device features | clip->caption median ms | p90 ms | total median ms | clips/s | tokens = CPU |")
    print("|---|---|---|---|---|---|---|")
    summary = []
    for r in results:
        med, p90 = _stats(r["compute_ms"], args.warmup)
        tot, _ = _stats(r["total_ms"], args.warmup)
        agree = float(np.mean([a == b for a, b in zip(r["leaves"], reference)])) if reference else float("nan")
        rate = r["clips"] / r["wall_s"] if r["wall_s"] else float("nan")
        print(f"| {r['label']} | {r['device_features']} | {med:.2f} | {p90:.2f} | {tot:.1f} | {rate:.1f} | {agree:.3f} |")
        summary.append(dict(label=r["label"], device_features=r["device_features"], compute_median_ms=med,
                            compute_p90_ms=p90, total_median_ms=tot, clips_per_s=rate, token_agreement=agree,
                            clips=r["clips"], load_s=r["load_s"]))
    fp16 = summary[2]
    cpu_med = summary[0]["compute_median_ms"]
    print(f"ratios: gpu fp16 vs cpu fp32 clip->caption {cpu_med / fp16['compute_median_ms']:.1f}x; "
          f"gpu fp16 vs gpu fp32 {summary[1]['compute_median_ms'] / fp16['compute_median_ms']:.2f}x")
    latency_ok = fp16["compute_median_ms"] < GOAL_MS
    tokens_ok = fp16["token_agreement"] >= GOAL_AGREEMENT
    print(f"goal: clip->caption < {GOAL_MS:.0f} ms at fp16: {'PASS' if latency_ok else 'FAIL'} "
          f"({fp16['compute_median_ms']:.2f} ms); tokens equal to CPU on >= {GOAL_AGREEMENT:.0%} of clips: "
          f"{'PASS' if tokens_ok else 'FAIL'} ({fp16['token_agreement']:.3f})"
          + ("" if captions else "; captions were OFF, so VideoBERT is not in these figures"))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_summary(), "gpu": torch.cuda.get_device_name(0),
                                               "captions": captions, "clips": args.clips, "paths": summary,
                                               "goal_latency_ok": latency_ok, "goal_tokens_ok": tokens_ok}, indent=2))
    return 0 if (latency_ok and tokens_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
