"""S3D clip feature on the CPU: PyTorch eager vs ONNX Runtime FP32 (and FP16), in one run.

One clip of 1 x 3 x 30 x 224 x 224 (the default preprocessing spec), batch 1, same weights and
same input for every contender:
  torch eager   the S3DFeatureExtractor module, torch.inference_mode
  ORT FP32      s3d.onnx in ONNX Runtime, CPU execution provider, all graph optimisations
  ORT FP32 2D   the same file with its separable 3D convolutions rewritten as 2D ones
                (vbedge.backends.conv2d_form: what vbedge runs on ONNX Runtime's CPU)
  ORT FP16      s3d.fp16.onnx (for information: x86 CPUs without AVX-512 FP16 run it slowly)

The contenders are timed round-robin (one run of each per round), so load from other processes
on a shared machine hits them alike. Prints the median and p90 per contender, ratios to eager,
the machine and the library versions, then the peak resident memory of each ONNX Runtime FP32
form, each measured alone in a fresh child process (one session, three runs).

Usage: python benchmarks/bench_s3d_cpu.py [--rounds 7] [--threads N] [--weights W.pth] [--no-fp16]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from vbedge.info import machine_summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per contender")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", help="torchvision S3D state dict (default: random init)")
    parser.add_argument("--no-fp16", action="store_true", help="skip the ORT FP16 contender")
    parser.add_argument("--keep", metavar="DIR", help="export into DIR instead of a temp folder")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from vbedge.export.s3d import export_s3d
    from vbedge.models.s3d import build_s3d_feature_extractor
    from vbedge.preprocess import PreprocessSpec

    torch.set_num_threads(args.threads)
    spec = PreprocessSpec(clip_frames=args.frames, crop=args.size,
                          short_side=max(256, args.size))
    random_init = args.weights is None
    out = args.keep or tempfile.mkdtemp(prefix="bench_s3d_")
    print(f"exporting S3D ({'random init' if random_init else args.weights}) to {out} ...",
          file=sys.stderr)
    result = export_s3d(out, args.weights, random_init=random_init, spec=spec,
                        fp16=not args.no_fp16, check_batches=(1,), progress=False)
    model = build_s3d_feature_extractor(args.weights, random_init=random_init)

    clip = np.random.default_rng(0).standard_normal(spec.clip_shape(batch=1), dtype=np.float32)
    clip_t = torch.from_numpy(clip)

    from vbedge.backends.onnxruntime import OnnxRuntimeBackend, session_options

    def session(path):
        # Idle threads sleep: the sessions are timed in turn, and a spinning one's threads would sit
        # on the cores the next contender runs on (benchmarks/bench_ort_spinning.py).
        options = session_options(args.threads, spinning=False)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def eager():
        with torch.inference_mode():
            return model(clip_t).numpy()

    contenders = {"torch eager": eager}
    fp32 = session(result.onnx_path)
    contenders["ORT FP32"] = lambda: fp32.run(["feature"], {"clip": clip})[0]
    fp32_2d = OnnxRuntimeBackend(result.onnx_path, intra_op_threads=args.threads, conv2d_form=True, spinning=False)
    assert fp32_2d.graph_form == "conv2d form", fp32_2d.graph_form
    contenders["ORT FP32 2D"] = lambda: fp32_2d.run({"clip": clip})["feature"]
    if not args.no_fp16:
        fp16 = session(result.fp16_path)
        contenders["ORT FP16"] = lambda: fp16.run(["feature"], {"clip": clip})[0]

    outputs = {name: fn() for name, fn in contenders.items()}  # also first-run warm-up
    for _ in range(args.warmup - 1):
        for fn in contenders.values():
            fn()
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    ref = outputs["torch eager"]
    eager_median = statistics.median(times["torch eager"])
    print(f"\nS3D clip feature, input {tuple(clip.shape)} float32, batch 1")
    print(f"machine: {machine_summary()}; threads: {args.threads}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"python {platform.python_version()}; {args.rounds} rounds, round-robin; ORT threads sleep when idle\n")
    print(f"| {'contender':<12} | {'median s':>9} | {'p90 s':>7} | {'vs eager':>8} | "
          f"{'max abs diff vs eager':>21} |")
    print(f"|{'-' * 14}|{'-' * 10}:|{'-' * 8}:|{'-' * 9}:|{'-' * 22}:|")
    for name, ts in times.items():
        median = statistics.median(ts)
        p90 = float(np.percentile(ts, 90))
        diff = float(np.max(np.abs(outputs[name] - ref)))
        print(f"| {name:<12} | {median:9.3f} | {p90:7.3f} | {eager_median / median:7.2f}x | "
              f"{diff:21.2e} |")
    print("\npeak RSS of one ONNX Runtime FP32 session, three runs, alone in a child process:")
    for form in (False, True):
        print(f"  {'2D form' if form else 'file   '}: {_peak_rss_mb(result.onnx_path, args.threads, spec, form)} MB")
    return 0


_CHILD = """
import sys, numpy as np
from vbedge.backends.onnxruntime import OnnxRuntimeBackend
path, threads, shape, form = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3]), sys.argv[4] == "1"
backend = OnnxRuntimeBackend(path, intra_op_threads=threads, conv2d_form=form)
clip = np.zeros(shape, np.float32)
for _ in range(3):
    backend.run({"clip": clip})
print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024)
"""


def _peak_rss_mb(onnx_path, threads, spec, conv2d_form):
    import subprocess

    done = subprocess.run([sys.executable, "-c", _CHILD, str(onnx_path), str(threads),
                           repr(tuple(spec.clip_shape(batch=1))), "1" if conv2d_form else "0"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
