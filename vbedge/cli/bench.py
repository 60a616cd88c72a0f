"""``vbedge bench``: per-stage latency, throughput and the live stream sweep; model timing;
``--compare`` of two reports."""

import json
import sys

from ..errors import InvalidInputError
from .keys import add_trusted_key_option, trusted_keys


def register(subparsers):
    """Register ``vbedge bench``."""
    p = subparsers.add_parser(
        "bench", help="latency report: per-stage percentiles, clips/s, live streams held",
        description="Times every requested backend x precision x stream count in one run "
                    "(after a warm-up) on a synthetic live camera by default; --model times one "
                    "backend call alone; --compare A.json B.json prints the ratios B / A.")
    p.add_argument("--bundle", help="bundle folder (needed unless --compare)")
    p.add_argument("--backend", default="onnxruntime",
                   help="comma-separated: onnxruntime, tensorrt, torch (default onnxruntime)")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated: fp32, fp16, int8 (default fp32)")
    p.add_argument("--streams", default="1", help="comma-separated live stream counts (default 1)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="measured seconds per configuration (default 20)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds run before measuring, not counted (default 5); with "
                        "--model: untimed calls")
    p.add_argument("--source", default="synthetic",
                   help="'synthetic' (a live camera made up in real time; default), a video "
                        "file (offline: read as fast as possible) or a URI (camera, rtsp://)")
    p.add_argument("--fps", type=float, default=30.0, help="synthetic camera frame rate (30)")
    p.add_argument("--frame-size", default="640x480", help="synthetic frame WIDTHxHEIGHT")
    p.add_argument("--max-batch", type=int, help="pipeline max_batch (clips per S3D run)")
    p.add_argument("--threads", type=int, help="backend intra-op threads")
    p.add_argument("--model", choices=("s3d", "videobert"),
                   help="time one backend call of this model alone (like trtexec)")
    p.add_argument("--iterations", type=int, default=50, help="--model: timed calls (50)")
    p.add_argument("--batch", type=int, default=1, help="--model: batch size (1)")
    p.add_argument("--json", help="write the report to this JSON file")
    p.add_argument("--plot", help="write a PNG of the stage latencies and the stream sweep "
                                  "(needs matplotlib: vbedge[plot])")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print the ratios B / A of two bench reports and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_trusted_key_option(p)
    p.set_defaults(func=run_bench_command)


def _list(value, what):
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidInputError(f"--{what} is empty")
    return items


def _streams(value):
    try:
        return [int(v) for v in _list(value, "streams")]
    except ValueError:
        raise InvalidInputError(f"--streams must be comma-separated integers, got {value!r}") from None


def _frame_size(value):
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"--frame-size must be WIDTHxHEIGHT, got {value!r}") from None
    return width, height


def run_bench_command(args):
    """Handler of ``vbedge bench``."""
    from ..bench import (check_choices, compare_reports, format_comparison, format_report,
                         plot_report, run_bench, run_model_bench)
    from ..errors import MissingDependencyError
    from ..jsonfile import read_json_object

    if args.compare:
        a, b = (read_json_object(path) for path in args.compare)
        print(format_comparison(compare_reports(a, b), args.compare[0], args.compare[1]))
        return 0
    if not args.bundle:
        raise InvalidInputError("vbedge bench needs --bundle (or --compare A.json B.json)")
    backends, precisions, streams = check_choices(_list(args.backend, "backend"),
                                                  _list(args.precision, "precision"),
                                                  _streams(args.streams))
    progress = None if args.quiet else _progress()
    from ..bundle import Bundle

    bundle = Bundle.load(args.bundle, trusted_keys=trusted_keys(args))  # checked once, before any timing
    if args.model:
        report = run_model_bench(bundle, args.model, backends, precisions,
                                 iterations=args.iterations, warmup=max(1, int(args.warmup)),
                                 batch=args.batch, progress=progress)
    else:
        options = {}
        if args.max_batch is not None:
            options["max_batch"] = args.max_batch
        if args.threads is not None:
            options["backend_options"] = {"intra_op_threads": args.threads}
        report = run_bench(bundle, backends, precisions, streams, seconds=args.seconds,
                           warmup=args.warmup, source=args.source, fps=args.fps,
                           frame_size=_frame_size(args.frame_size), pipeline_options=options,
                           progress=progress)
    if progress is not None:
        progress.close()
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        try:
            plot_report(report, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
        except MissingDependencyError as exc:
            print(f"vbedge bench: plot skipped: {exc}", file=sys.stderr)
    return 0 if report["runs"] else 1


class _progress:
    """One tqdm bar per configuration, counting measured clips (or calls)."""

    def __init__(self):
        self._bar = None
        self._label = None

    def __call__(self, label, count):
        from tqdm import tqdm

        if label != self._label:
            self.close()
            self._label = label
            self._bar = tqdm(desc=label, unit="clip", file=sys.stderr, mininterval=0.5)
        self._bar.n = count
        self._bar.refresh() if count % 10 == 0 else None

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
