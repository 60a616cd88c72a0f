"""``vbedge calibrate``: INT8 calibration of a bundle's models, Q/DQ graphs and the accuracy report."""

from pathlib import Path

from .keys import add_trusted_key_option, trusted_keys


def register(subparsers):
    """Register ``vbedge calibrate`` (nothing heavy imported until it runs)."""
    p = subparsers.add_parser(
        "calibrate", help="INT8: calibrate a bundle's models on videos, write Q/DQ graphs and an accuracy report",
        description="Calibrate the bundle's FP32 S3D and VideoBERT on clips from VIDEOS (held-out clips are "
                    "never calibrated on), write INT8 Q/DQ graphs into -o and print the accuracy/speed report "
                    "(also written as int8_report.json).")
    p.add_argument("bundle", help="bundle folder (its fp32 models, codebook, vocabulary, preprocessing)")
    p.add_argument("--videos", nargs="+", required=True, metavar="CLIPS", help="video files or folders")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the INT8 graphs and the report")
    p.add_argument("--method", default="minmax", help="calibration method: minmax, entropy or percentile")
    p.add_argument("--holdout", type=float, default=0.25, help="fraction of videos held out for the report")
    p.add_argument("--max-clips", type=int, default=64, help="clips decoded in total (default 64)")
    p.add_argument("--clips-per-video", type=int, help="at most this many clips per video")
    p.add_argument("--corpus", metavar="JSONL", help="tokenized VideoBERT corpus instead of templates")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model (median)")
    p.add_argument("--s3d-only", action="store_true", help="skip VideoBERT")
    p.add_argument("--s3d-cpu-range", choices=("full", "same"), default="full",
                   help="S3D CPU form: 'full' spreads each calibrated range over uint8's 256 codes (default), "
                        "'same' keeps the Q/DQ graph's scale (codes 0..127)")
    p.add_argument("--cpu-weight-bits", choices=("auto", "7", "8"), default="auto",
                   help="weight bits of both CPU forms (default auto: 8 where this CPU has VNNI, AMX or ARM's int8 "
                        "dot product, else 7, because ONNX Runtime's U8S8 kernels saturate int16 sums with 8-bit "
                        "weights on x86 CPUs without VNNI; name it when the bundle is for other CPUs; docs/int8.md)")
    p.add_argument("--cpu-float", metavar="PARTS",
                   help="VideoBERT CPU form: comma-separated parts kept in float, from mlm_transform, pooler, "
                        "ffn_out, or 'none' (default mlm_transform,pooler; adding ffn_out keeps the FFN output "
                        "projections float, as until 2026-12-06: slower, docs/int8.md)")
    p.add_argument("--per-token", metavar="PARTS",
                   help="VideoBERT CPU form: comma-separated parts whose MatMul inputs get one int8 scale per token "
                        "instead of one uint8 range per tensor, from qkv, attention_out, ffn_in, head, ffn_out, or "
                        "'all' or 'none' (default ffn_in,ffn_out, less ffn_out when --cpu-float keeps it; the report "
                        "times per-tensor beside it, docs/int8.md)")
    p.add_argument("--openvino", action="store_true",
                   help="also report OpenVINO (FP32 graph and Q/DQ graph as INT8) beside ONNX Runtime; needs "
                        "vbedge[openvino]")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_trusted_key_option(p)
    p.set_defaults(func=run_calibrate)
    return p


def parse_parts(text, option, allowed, allow_all=False):
    """A comma-separated list of ``allowed`` names: None when not given, () for 'none', every name
    for 'all' (when ``allow_all``); anything else is an error naming ``option``."""
    from vbedge.errors import InvalidInputError

    if text is None:
        return None
    word = text.strip().lower()
    if word == "none":
        return ()
    if allow_all and word == "all":
        return tuple(allowed)
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in allowed]
    if unknown or not parts:
        raise InvalidInputError(f"{option}: unknown part(s) {unknown or [text]}; expected a comma-separated list "
                                f"of {', '.join(allowed)}{', ' if allow_all else ' or '}'none'"
                                + (" or 'all'" if allow_all else ""))
    return parts


def parse_cpu_float(text):
    """``--cpu-float``: the VideoBERT CPU form's float parts (None: the default)."""
    from vbedge.calib.quantize import CPU_FORM_FLOAT_PARTS

    return parse_parts(text, "--cpu-float", CPU_FORM_FLOAT_PARTS)


def parse_per_token(text):
    """``--per-token``: the VideoBERT CPU form's per-token parts (None: the default)."""
    from vbedge.calib.quantize import PER_TOKEN_PARTS

    if text is not None and text.strip().lower() == "all":
        # Every part the CPU form quantizes (calib.quantize.resolve_per_token leaves out ffn_out
        # when --cpu-float keeps it).
        return "all"
    return parse_parts(text, "--per-token", PER_TOKEN_PARTS, allow_all=True)


def run_calibrate(args):
    """Handler of ``vbedge calibrate``."""
    from vbedge.bundle import Bundle
    from vbedge.calib.calibrate import calibrate_models
    from vbedge.calib.report import format_report
    from vbedge.errors import InvalidInputError
    from vbedge.preprocess import PreprocessSpec

    if not 0.0 < args.holdout < 1.0:
        raise InvalidInputError(f"--holdout must be in (0, 1), got {args.holdout}")
    bundle = Bundle.load(args.bundle, trusted_keys=trusted_keys(args))
    report = calibrate_models(
        args.output, videos=args.videos, spec=PreprocessSpec.from_dict(bundle.preprocessing),
        codebook=bundle.codebook, vocab=bundle.vocab, s3d_fp32=bundle.onnx_path("s3d", "fp32"),
        videobert_fp32=None if args.s3d_only else bundle.onnx_path("videobert", "fp32"), method=args.method,
        holdout=args.holdout, max_clips=args.max_clips, clips_per_video=args.clips_per_video, corpus=args.corpus,
        repeats=args.repeats, progress=not args.quiet, videobert_cpu_float=parse_cpu_float(args.cpu_float),
        videobert_per_token=parse_per_token(args.per_token), openvino=args.openvino,
        s3d_cpu_u8_range=args.s3d_cpu_range, cpu_weight_bits=args.cpu_weight_bits if args.cpu_weight_bits == "auto" else int(args.cpu_weight_bits))
    print(format_report(report))
    print(f"wrote {Path(args.output) / 'int8_report.json'}")
    return 0
