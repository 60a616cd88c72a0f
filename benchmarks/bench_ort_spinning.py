"""Timing several ONNX Runtime sessions in one process: with and without intra-op thread spinning.

ONNX Runtime's intra-op threads spin for a while after each run (``session.intra_op.allow_spinning``,
on by default). Timed in turn in one process, each session's spinning threads then sit on the cores
the next session runs on. This prints the S3D of a demo bundle (FP32 file, FP32 2D form, INT8 CPU
form) timed four ways, side by side, in one run:

- interleaved, spinning on (how ``calib.report`` timed until 2026-12-04);
- interleaved, spinning off (how it times now);
- each session alone, spinning on and off (the others closed).

Usage: python benchmarks/bench_ort_spinning.py W [--rounds 20]
(W: a ``vbedge demo --workdir`` folder after ``benchmarks/bench_demo_int8.py``, which writes
W/int8-report/s3d.int8.cpu.onnx)
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _session(path, spinning):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)

    import numpy as np

    from vbedge.backends.conv2d_form import write_conv2d_form
    from vbedge.bundle import Bundle
    from vbedge.info import machine_summary

    bundle = Bundle.load(args.workdir / "bundle", trusted_keys=False)
    fp32 = bundle.onnx_path("s3d", "fp32")
    cpu = args.workdir / "int8-report" / "s3d.int8.cpu.onnx"
    if not cpu.is_file():
        sys.exit(f"{cpu} is missing: run benchmarks/bench_demo_int8.py --workdir {args.workdir} first")
    two_d = Path(tempfile.mkdtemp(prefix="ort-spinning-")) / "s3d.2d.onnx"
    write_conv2d_form(fp32, two_d)
    paths = {"FP32 file": fp32, "FP32 2D form": two_d, "INT8 CPU form": cpu}
    session = _session(fp32, True)
    shape = [1] + [int(d) for d in session.get_inputs()[0].shape[1:]]  # the export's static C, T, H, W
    del session
    clip = np.random.default_rng(0).normal(size=shape).astype(np.float32)

    def timed(session):
        start = time.perf_counter()
        session.run(None, {"clip": clip})
        return time.perf_counter() - start

    rows = {}
    for spinning in (True, False):
        sessions = {name: _session(path, spinning) for name, path in paths.items()}
        for session in sessions.values():
            timed(session)
        times = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                times[name].append(timed(session))
        rows[f"interleaved, spinning {'on' if spinning else 'off'}"] = {n: statistics.median(t) for n, t in times.items()}
        del sessions
    for spinning in (True, False):
        alone = {}
        for name, path in paths.items():
            session = _session(path, spinning)
            for _ in range(3):
                timed(session)
            alone[name] = statistics.median(timed(session) for _ in range(args.rounds))
            del session
        rows[f"alone, spinning {'on' if spinning else 'off'}"] = alone
    print(f"machine: {machine_summary()}; S3D input {tuple(shape)}; median of {args.rounds} runs (ms)")
    print("| how timed | " + " | ".join(paths) + " | INT8 vs file | INT8 vs 2D form |")
    print("|---|" + "---:|" * (len(paths) + 2))
    for how, row in rows.items():
        print(f"| {how} | " + " | ".join(f"{row[n] * 1e3:.1f}" for n in paths)
              + f" | {row['FP32 file'] / row['INT8 CPU form']:.2f}x | {row['FP32 2D form'] / row['INT8 CPU form']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
