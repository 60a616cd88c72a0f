"""The streaming pipeline on the CPU with ONNX Runtime's intra-op threads spinning or sleeping.

The pipeline runs S3D and VideoBERT in their own threads, each model in its own ONNX Runtime
session, beside the capture thread that decodes and preprocesses. ONNX Runtime's intra-op threads
spin for a while after each run by default (``session.intra_op.allow_spinning``); with two
sessions and a decoder on a few cores, the spinning threads of one model sit on the cores the
other model (or the decoder) needs. This runs ``vbedge bench``'s live pipeline (a synthetic camera,
640 x 480 at 30 fps; :func:`vbedge.bench.run_bench`) with the backend option ``spinning`` on and
off, alternating, for every precision and stream count asked, and prints the medians over the
rounds side by side with the ratios off / on: end-to-end and per-stage latency, the process's
CPU use, clips dropped.

    python benchmarks/bench_pipeline_spinning.py BUNDLE [--precisions fp32,int8] [--streams 1,2]
        [--rounds 2] [--seconds 20] [--json out.json]

BUNDLE: a bundle folder (e.g. ``W/bundle-int8`` of ``benchmarks/bench_demo_int8.py``, which has both
fp32 and int8 files). The camera's frames are synthetic noise-free drawings; the timing is what
matters, not the captions.
"""

import argparse
import json
import statistics
import sys


def _row(run):
    stages = run["stages"]
    return {"end_to_end_p50_ms": stages["end_to_end"]["p50_ms"], "end_to_end_p99_ms": stages["end_to_end"]["p99_ms"],
            "s3d_p50_ms": stages["s3d"]["p50_ms"], "videobert_p50_ms": stages["videobert"]["p50_ms"],
            "preprocess_p50_ms": stages["preprocess"]["p50_ms"],
            "cpu_utilization": run["cpu_utilization"], "dropped_clips": run["dropped_clips"],
            "clips": run["clips"], "realtime": run["realtime"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--streams", default="1,2")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of on and off (default 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args(argv)

    from vbedge.bench import run_bench
    from vbedge.bundle import Bundle
    from vbedge.cpu import machine_summary

    precisions = [p for p in args.precisions.split(",") if p]
    streams = [int(s) for s in args.streams.split(",") if s]
    bundle = Bundle.load(args.bundle, trusted_keys=False)
    print(machine_summary())
    print(f"bundle {args.bundle}; live synthetic camera 640x480 at 30 fps; {args.rounds} rounds of "
          f"{args.seconds:g} s per configuration, spinning on and off alternating")
    runs = {}  # (precision, streams, spinning) -> [row per round]
    for round_index in range(args.rounds):
        for spinning in ((True, False) if round_index % 2 == 0 else (False, True)):
            report = run_bench(bundle, ("onnxruntime",), precisions, streams, seconds=args.seconds,
                               warmup=args.warmup,
                               pipeline_options={"backend_options": {"spinning": spinning}})
            for skipped in report["skipped"]:
                print(f"skipped: {skipped}", file=sys.stderr)
            for run in report["runs"]:
                runs.setdefault((run["precision"], run["streams"], spinning), []).append(_row(run))
            print(f"  round {round_index + 1}, spinning {'on' if spinning else 'off'}: done", file=sys.stderr)

    def median(rows, key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    keys = ("end_to_end_p50_ms", "end_to_end_p99_ms", "s3d_p50_ms", "videobert_p50_ms", "preprocess_p50_ms",
            "cpu_utilization")
    header = f"{'precision':9s} {'streams':>7s} {'spinning':>8s} " + " ".join(f"{k:>18s}" for k in keys) \
        + f" {'dropped':>8s}"
    print(header)
    summary = []
    for precision in precisions:
        for count in streams:
            medians = {}
            for spinning in (True, False):
                rows = runs.get((precision, count, spinning), [])
                if not rows:
                    continue
                medians[spinning] = {k: median(rows, k) for k in keys}
                dropped = sum(r["dropped_clips"] for r in rows)
                print(f"{precision:9s} {count:7d} {'on' if spinning else 'off':>8s} "
                      + " ".join(f"{medians[spinning][k]:18.3f}" if medians[spinning][k] is not None
                                 else f"{'-':>18s}" for k in keys) + f" {dropped:8d}")
                summary.append({"precision": precision, "streams": count, "spinning": spinning,
                                "medians": medians[spinning], "dropped_clips": dropped, "rounds": rows})
            if len(medians) == 2:
                ratios = {k: (medians[False][k] / medians[True][k]) if medians[True][k] else None for k in keys}
                print(f"{precision:9s} {count:7d} {'off/on':>8s} "
                      + " ".join(f"{ratios[k]:17.2f}x" if ratios[k] is not None else f"{'-':>18s}" for k in keys))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine_summary(), "runs": summary}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
