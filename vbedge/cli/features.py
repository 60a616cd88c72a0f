"""``vbedge features VIDEO... -o FEATS``: one S3D feature per clip, for fitting a codebook."""

import sys

from .keys import add_trusted_key_option, trusted_keys


def register(subparsers):
    """Register ``vbedge features``."""
    p = subparsers.add_parser(
        "features", help="S3D features of videos, one per clip (for vbedge codebook fit)",
        description="Cut videos into clips as vbedge tokenize does (20 fps, 30-frame clips by "
                    "default), run S3D on each and write FEATS/features.npy (N, 1024 float32), "
                    "FEATS/index.jsonl (video, start, end, row per clip) and "
                    "FEATS/features.json. A damaged video is reported and skipped past; the "
                    "exit code is then 1.")
    p.add_argument("videos", nargs="+", help="video files")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--s3d", metavar="W.pth",
                       help="torchvision S3D state dict (exported to a temporary ONNX; needs "
                            "vbedge[export])")
    model.add_argument("--s3d-onnx", metavar="S3D.onnx",
                       help="exported S3D (its s3d.json beside it gives the preprocessing)")
    model.add_argument("--bundle", metavar="B", help="bundle folder: its S3D and preprocessing")
    p.add_argument("-o", "--output", required=True, metavar="FEATS", help="output folder")
    p.add_argument("--backend", default="auto",
                   help="auto, onnxruntime, tensorrt or torch (default auto)")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or int8 (bundles)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per S3D run (default 8)")
    p.add_argument("--hop", type=int,
                   help="sampled frames between clip starts (default: the clip length)")
    p.add_argument("--frames", type=int, help="clip length in frames (--s3d, or an .onnx "
                                              "without s3d.json; default 30)")
    p.add_argument("--crop", type=int, help="crop side in pixels (default 224)")
    p.add_argument("--resize", choices=("short_side", "square"),
                   help="resize rule (default: the weights' recipe; see docs/export.md)")
    p.add_argument("--short-side", type=int, help="resize size (default 256)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing features.npy")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_trusted_key_option(p)
    p.set_defaults(func=run_features)


def _spec(args):
    """The spec the options ask for, or None to use the model's own."""
    changes = {k: v for k, v in (("clip_frames", args.frames), ("crop", args.crop),
                                 ("short_side", args.short_side), ("resize", args.resize))
               if v is not None}
    if not changes:
        return None
    if args.bundle is not None:
        from ..errors import InvalidInputError

        raise InvalidInputError("--frames, --crop, --resize and --short-side set the "
                                "preprocessing for --s3d or --s3d-onnx; a bundle's is fixed "
                                "(its manifest)")
    if args.s3d is not None:
        from ..export.s3d import spec_for_weights

        resize = changes.pop("resize", None)
        return spec_for_weights(args.s3d, resize=resize, **changes)[0]
    from ..preprocess import PreprocessSpec

    return PreprocessSpec(**changes)


def run_features(args):
    """Handler of ``vbedge features``."""
    from tqdm import tqdm

    from ..features import extract_features, open_feature_model

    def report(entry):
        if entry.failed:
            kept = f" ({entry.clips} clip(s) before the damage written)" if entry.clips else ""
            tqdm.write(f"vbedge: {entry.video}: {entry.error}{kept}", file=sys.stderr)

    with open_feature_model(bundle=args.bundle, s3d_onnx=args.s3d_onnx, s3d_weights=args.s3d,
                            backend=args.backend, precision=args.precision, spec=_spec(args),
                            progress=not args.quiet, trusted_keys=trusted_keys(args)) as model:
        print(f"vbedge features: S3D {model.description}; preprocessing: "
              f"{model.spec.describe_resize()}, {model.spec.clip_frames} frames at "
              f"{model.spec.fps:g} fps ({model.spec_source})", file=sys.stderr)
        result = extract_features(args.videos, args.output, model, batch_size=args.batch_size,
                                  hop=args.hop, progress=not args.quiet,
                                  overwrite=args.overwrite, on_video=report)
    print(f"wrote {result.rows} feature(s) of {result.feature_dim} from "
          f"{len(result.videos) - len(result.failed)} video(s) to {result.output_dir}")
    if result.failed:
        print(f"vbedge: {len(result.failed)} of {len(result.videos)} video(s) failed: "
              f"{', '.join(v.video for v in result.failed)}", file=sys.stderr)
        return 1
    return 0
