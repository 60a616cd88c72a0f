"""Which VideoBERT MatMul inputs gain from per-token INT8 activation scales? (a study)

Writes the ONNX Runtime CPU form of the bundle's FP32 VideoBERT once per variant, each giving one
group of run-time activation quantizers one int8 scale per token
(``transformer_cpu_form(per_token=...)``, the rest per-tensor as ``quantize_dynamic`` writes them),
and reports each against FP32 on the held-out feeds ``vbedge calibrate --holdout 0.5`` makes
(caption templates over the held-out half of VIDEOS' clips, held-out kitchen sentences): text and
visual top-1 agreement at the masked positions, and speed at two sequence lengths, every variant
interleaved with FP32 in one process.

Usage: python benchmarks/study_videobert_per_token.py W   (W: a ``vbedge demo --workdir`` folder;
uses W/bundle and W/world-test)
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from vbedge.info import machine_summary

#: variant -> (the per-token parts (vbedge.calib.quantize.PER_TOKEN_PARTS), the parts kept float).
#: Until 2026-12-06 the FFN output projections stayed float (``ffn_out`` in the float parts).
OLD_FLOAT = ("mlm_transform", "pooler", "ffn_out")
NEW_FLOAT = ("mlm_transform", "pooler")
VARIANTS = {
    "per-tensor": ((), OLD_FLOAT),
    "ffn_in": (("ffn_in",), OLD_FLOAT),
    "qkv": (("qkv",), OLD_FLOAT),
    "attention_out": (("attention_out",), OLD_FLOAT),
    "head": (("head",), OLD_FLOAT),
    "all": (("qkv", "attention_out", "ffn_in", "head"), OLD_FLOAT),
    # The FFN outputs quantized too (after the colon: the per-token parts):
    "int8 ffn_out: per-tensor": ((), NEW_FLOAT),
    "int8 ffn_out: ffn_in": (("ffn_in",), NEW_FLOAT),
    "int8 ffn_out: ffn_out": (("ffn_out",), NEW_FLOAT),
    "int8 ffn_out: ffn_in+ffn_out (default)": (("ffn_in", "ffn_out"), NEW_FLOAT),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--max-clips", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=60, help="interleaved timing rounds per sequence length")
    parser.add_argument("--lengths", default="15,40", help="sequence lengths timed")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from: " + "; ".join(VARIANTS))
    parser.add_argument("--judge-videos", type=int, default=0,
                        help="judge on W/world-judge of this many videos, as bench_demo_int8.py renders it (144 "
                             "judged clips at 36), instead of W/world-test")
    args = parser.parse_args(argv)

    from vbedge.bundle import Bundle
    from vbedge.calib.calibrate import videobert_feeds
    from vbedge.calib.quantize import transformer_cpu_form
    from vbedge.calib.readers import collect_clips
    from vbedge.calib.report import _interleaved_times, _session, evaluate_videobert
    from vbedge.preprocess import PreprocessSpec

    bundle = Bundle.load(args.workdir / "bundle", trusted_keys=False)
    spec = PreprocessSpec.from_dict(bundle.preprocessing)
    if args.judge_videos:
        from bench_demo_int8 import judge_world

        world, count = judge_world(args.workdir, args.judge_videos)
    else:
        world, count = args.workdir / "world-test", args.max_clips
    clips = collect_clips([world], spec, max_clips=count, progress=False)
    calib, held = clips.split(0.5, seed=0)
    _, feeds = videobert_feeds(bundle.onnx_path("s3d", "fp32"), calib, held, bundle.codebook, bundle.vocab)
    fp32 = bundle.onnx_path("videobert", "fp32")
    out = Path(tempfile.mkdtemp(prefix="videobert-per-token-study-"))
    paths = {}
    for i, name in enumerate(args.variants.split(",")):
        parts, float_parts = VARIANTS[name]
        paths[name] = out / f"variant-{i}.onnx"
        transformer_cpu_form(fp32, paths[name], per_token=parts, float_parts=float_parts)
    report = evaluate_videobert(fp32, paths, feeds, repeats=3)

    sessions = {"fp32": _session(fp32)} | {name: _session(path) for name, path in paths.items()}
    outputs = [o.name for o in sessions["fp32"].get_outputs()]
    rng = np.random.default_rng(0)
    speed = {}
    for length in (int(x) for x in args.lengths.split(",")):
        feed = {"input_ids": rng.integers(1000, 2000, (1, length)).astype(np.int64),
                "attention_mask": np.ones((1, length), np.int64), "token_type_ids": np.zeros((1, length), np.int64),
                "predict_positions": np.array([[1, length // 2]], np.int64)}
        times = _interleaved_times({name: (lambda s=s: s.run(outputs, feed)) for name, s in sessions.items()},
                                   args.repeats)
        fp32_times = np.asarray(times["fp32"])
        speed[length] = {name: (float(np.median(t)), float(np.median(fp32_times / np.asarray(t))))
                         for name, t in times.items()}
    print(f"machine: {machine_summary()}; {report['sequences']} held-out sequences, "
          f"{report['text_positions']} masked words, {report['visual_positions']} masked visual tokens")
    lengths = list(speed)
    print("| per-token parts | text top-1 | text top-5 | visual top-1 | "
          + " | ".join(f"ms at {n} (vs FP32)" for n in lengths) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(lengths))
    print("| FP32 | 1.000 | 1.000 | 1.000 | " + " | ".join(f"{speed[n]['fp32'][0] * 1e3:.2f}" for n in lengths) + " |")
    for name, v in report["variants"].items():
        timing = " | ".join(f"{speed[n][name][0] * 1e3:.2f} ({speed[n][name][1]:.2f}x)" for n in lengths)
        print(f"| {name} | {v['text_top1_agreement']:.3f} | {v['text_top5_agreement']:.3f} | "
              f"{v['visual_top1_agreement']:.3f} | {timing} |")
    print("(speed: median per-round ratio FP32 / variant over interleaved rounds; synthetic-world bundle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
