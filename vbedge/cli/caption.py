"""``vbedge caption`` (caption a source live) and ``vbedge tokenize`` (videos to visual tokens)."""

import os
import sys

from ..errors import InvalidInputError
from .keys import add_trusted_key_option, trusted_keys


def register(subparsers):
    """Register ``vbedge caption`` and ``vbedge tokenize``."""
    from ..captioner import TEMPLATES

    p = subparsers.add_parser("caption", help="caption a video file, camera or stream live",
                              description="Caption INPUT live into each OUTPUT, chosen by its URI or "
                                          "extension: " + "; ".join(help for _, help in _output_kinds()))
    p.add_argument("source", metavar="INPUT", nargs="?",
                   help="video file, camera index, /dev/videoN, rtsp:// or http:// URL, GStreamer pipeline or csi://N "
                        "(or --config)")
    p.add_argument("outputs", metavar="OUTPUT", nargs="*",
                   help="events.jsonl, captions.srt/.vtt, out.mp4/.avi, http://@:PORT (preview page), "
                        "mqtt://HOST:PORT/TOPIC, ...")
    _add_pipeline_options(p, bundle_required=False)
    p.add_argument("--config", metavar="CAMERAS.yaml",
                   help="several cameras through one pipeline, each with its outputs and captioning "
                        "(docs/cameras.md); instead of INPUT and OUTPUT")
    _add_input_options(p)
    p.add_argument("--jsonl", help="alias of an OUTPUT ending in .jsonl")
    p.add_argument("--out", help="alias of an OUTPUT ending in .mp4 or .avi")
    p.add_argument("--template", default="howto",
                   help=f"{' or '.join(TEMPLATES)} or a text with [VERB]/[NOUN]/[MASK] slots")
    p.add_argument("--verbs", help="allowed verbs: a file (one per line) or comma-separated words")
    p.add_argument("--nouns", help="allowed nouns: a file (one per line) or comma-separated words")
    p.add_argument("--context", type=int, default=2, help="previous clips given as context (2)")
    p.add_argument("--stable", type=int, default=2,
                   help="clips a new caption must repeat before it is shown (2)")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="lowest confidence that counts towards a caption change (0)")
    p.add_argument("--forecast-step", type=int, default=1, help="forecast this many clips ahead "
                                                                "(0: off)")
    p.add_argument("--live", action="store_true", help="treat an http(s) URL as a live stream")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at "
                   "http://HOST:PORT/metrics (:PORT = every interface; pip install 'vbedge[metrics]')")
    p.set_defaults(func=run_caption)

    p = subparsers.add_parser("tokenize", help="turn videos into visual tokens (JSON lines) for corpora")
    p.add_argument("videos", nargs="+", help="video files")
    _add_pipeline_options(p)
    p.add_argument("-o", "--output", required=True, help="output .jsonl file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_tokenize)


def _add_input_options(parser):
    """jetson-utils-style input options (docs/cameras.md says what each can do with which OpenCV)."""
    parser.add_argument("--input-loop", type=int, default=0, metavar="N",
                        help="files: play N times in all (-1: forever; 0: once)")
    parser.add_argument("--input-rate", type=float, metavar="FPS",
                        help="at most FPS frames per second pass (the others are skipped); files are "
                             "also played in real time")
    parser.add_argument("--input-rtsp-latency", type=int, metavar="MS",
                        help="rtsp://: GStreamer rtspsrc jitter buffer in ms (needs an OpenCV with GStreamer)")


def _source_options(args):
    """open_source options from --live and the --input-* flags (None: all defaults)."""
    options = {"live": True} if args.live else {}
    if args.input_loop:
        options["loop"] = args.input_loop
    if args.input_rate is not None:
        options["rate"] = args.input_rate
    if args.input_rtsp_latency is not None:
        options["rtsp_latency"] = args.input_rtsp_latency
    return options or None


def _add_pipeline_options(parser, bundle_required=True):
    parser.add_argument("--bundle", required=bundle_required,
                        help="bundle folder" + ("" if bundle_required else " (or bundle: in --config)"))
    parser.add_argument("--backend", default="auto",
                        help="auto, onnxruntime, tensorrt, openvino or torch (default auto)")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16 or int8; bf16 with openvino on BF16 CPUs")
    add_trusted_key_option(parser)


def _word_list(value):
    """A ``--verbs``/``--nouns`` value: a file with one word per line, or comma-separated words."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    return [w.strip() for w in value.split(",") if w.strip()]


def _output_kinds():
    from ..outputs import output_kinds

    return output_kinds()


def run_caption(args):
    """``vbedge caption INPUT [OUTPUT ...]``: print captions live and feed every output."""
    from ..caption_job import caption_sources, format_event_line
    from ..outputs import OutputSet, open_output

    options = dict(template=args.template, context_clips=args.context, stable_clips=args.stable,
                   min_confidence=args.min_confidence, forecast_step=args.forecast_step,
                   verbs=_word_list(args.verbs), nouns=_word_list(args.nouns))
    source_options = _source_options(args)
    if args.config is not None or args.source is None:
        return _run_camera_config(args, options, source_options)
    if args.bundle is None:
        raise InvalidInputError("--bundle is required (or a bundle: key in a --config file)")
    targets = list(args.outputs) + [t for t in (args.jsonl, args.out) if t is not None]
    outputs = OutputSet()
    for target in targets:
        outputs.add(open_output(target))
    _add_metrics(outputs, args)
    source = int(args.source) if args.source.isdigit() else args.source
    result = caption_sources(args.bundle, source, outputs, backend=args.backend, precision=args.precision,
                             trusted_keys=trusted_keys(args), source_options=source_options,
                             on_event=lambda event: print(format_event_line(event), flush=True), **options)
    _report_outputs(result)
    return 0


def _run_camera_config(args, options, source_options):
    """``vbedge caption --config cameras.yaml``: every camera through one pipeline, each with its outputs."""
    from ..camera_config import load_camera_config
    from ..caption_job import caption_sources, format_event_line
    from ..outputs import OutputSet, open_output

    if args.config is None:
        raise InvalidInputError("give an INPUT (video file, camera, URL) or --config CAMERAS.yaml")
    given = [args.source, *args.outputs] if args.source is not None else list(args.outputs)
    if given or args.jsonl or args.out:
        raise InvalidInputError(f"INPUT/OUTPUT arguments and --config are mutually exclusive (inputs and outputs "
                                f"come from {args.config}); got {given + [t for t in (args.jsonl, args.out) if t]}")
    config = load_camera_config(args.config)
    bundle = args.bundle or config.bundle
    if bundle is None:
        raise InvalidInputError(f"no bundle: pass --bundle or add a bundle: key to {args.config}")
    outputs = OutputSet()
    for target in config.outputs:
        outputs.add(open_output(target))
    for camera in config.cameras:
        for target in camera.outputs:
            outputs.add(open_output(target), sources=[camera.name])
    _add_metrics(outputs, args)
    result = caption_sources(bundle, config.sources, outputs, backend=args.backend, precision=args.precision,
                             trusted_keys=trusted_keys(args), source_options=source_options,
                             per_source_options=config.source_options,
                             on_event=lambda event: print(f"{event.source_id}: {format_event_line(event)}",
                                                          flush=True),
                             captioning=config.captioning, **options)
    _report_outputs(result)
    return 0


def _add_metrics(outputs, args):
    """``--metrics HOST:PORT``: Prometheus metrics for every source, beside the outputs."""
    if args.metrics:
        from ..outputs.metrics import MetricsOutput

        outputs.add(MetricsOutput(args.metrics, on_serving=lambda url: print(
            f"vbedge: metrics at {url}", file=sys.stderr, flush=True)))


def _report_outputs(result):
    """Say on stderr which outputs failed or were never written."""
    for output, status in zip(result.output_objects, result.outputs):
        if getattr(output, "needs_frames", False) and not getattr(output, "written", True):
            print(f"vbedge: no clip was captioned, {output.target} was not written", file=sys.stderr)
        if status.failures:
            print(f"vbedge: {status.description}: {status.failures} failure(s), {status.missed} event(s) "
                  f"missed; last: {status.last_error}", file=sys.stderr)


def run_tokenize(args):
    """``vbedge tokenize VIDEO... -o tokens.jsonl``: one JSON line per clip, for corpora."""
    from tqdm import tqdm

    from ..pipeline import Pipeline
    from ..token_files import tokenize_videos

    def report(video, reason, clips_kept):
        kept = f" ({clips_kept} clip(s) before the damage written)" if clips_kept else ""
        tqdm.write(f"vbedge: {video}: {reason}{kept}", file=sys.stderr)

    with Pipeline.load(args.bundle, backend=args.backend, precision=args.precision,
                       trusted_keys=trusted_keys(args)) as pipe:
        failed = tokenize_videos(pipe, args.videos, args.output, progress=not args.quiet,
                                 on_failure=report)
    if failed:
        print(f"vbedge: {len(failed)} of {len(args.videos)} video(s) failed: "
              f"{', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0
