"""``vbedge caption`` (caption a source live) and ``vbedge tokenize`` (videos to visual tokens)."""

import os
import sys

from .keys import add_trusted_key_option, trusted_keys


def register(subparsers):
    """Register ``vbedge caption`` and ``vbedge tokenize``."""
    from ..captioner import TEMPLATES

    p = subparsers.add_parser("caption", help="caption a video file, camera or stream live",
                              description="Caption INPUT live into each OUTPUT, chosen by its URI or "
                                          "extension: " + "; ".join(help for _, help in _output_kinds()))
    p.add_argument("source", metavar="INPUT", help="video file, camera index, /dev/videoN, rtsp:// or http:// URL, "
                                                   "GStreamer pipeline or csi://N")
    p.add_argument("outputs", metavar="OUTPUT", nargs="*",
                   help="events.jsonl, captions.srt/.vtt, out.mp4/.avi, http://@:PORT (preview page), "
                        "mqtt://HOST:PORT/TOPIC, ...")
    _add_pipeline_options(p)
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


def _add_pipeline_options(parser):
    parser.add_argument("--bundle", required=True, help="bundle folder")
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
    source_options = {"live": True} if args.live else None
    targets = list(args.outputs) + [t for t in (args.jsonl, args.out) if t is not None]
    outputs = OutputSet()
    for target in targets:
        outputs.add(open_output(target))
    if args.metrics:
        from ..outputs.metrics import MetricsOutput

        outputs.add(MetricsOutput(args.metrics, on_serving=lambda url: print(
            f"vbedge: metrics at {url}", file=sys.stderr, flush=True)))
    source = int(args.source) if args.source.isdigit() else args.source
    result = caption_sources(args.bundle, source, outputs, backend=args.backend, precision=args.precision,
                             trusted_keys=trusted_keys(args), source_options=source_options,
                             on_event=lambda event: print(format_event_line(event), flush=True), **options)
    for output, status in zip(result.output_objects, result.outputs):
        if getattr(output, "needs_frames", False) and not getattr(output, "written", True):
            print(f"vbedge: no clip was captioned, {output.target} was not written", file=sys.stderr)
        if status.failures:
            print(f"vbedge: {status.description}: {status.failures} failure(s), {status.missed} event(s) "
                  f"missed; last: {status.last_error}", file=sys.stderr)
    return 0


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
