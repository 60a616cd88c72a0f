"""``vbedge export s3d|videobert``: export a model to checked ONNX graphs (needs vbedge[export]).

The parsers read their defaults from the export modules, whose module level is light; torch and
onnx load inside the handlers.
"""


def register(subparsers):
    """Register ``vbedge export`` with its ``videobert`` and ``s3d`` models."""
    p_export = subparsers.add_parser("export", help="export S3D or VideoBERT to ONNX (needs vbedge[export])")
    models = p_export.add_subparsers(dest="export_command", metavar="MODEL")
    models.required = True
    _register_videobert(models)
    _register_s3d(models)


def _register_videobert(models):
    from vbedge.export.videobert import DEFAULT_OPSET, DEFAULT_TOP_K

    p = models.add_parser(
        "videobert", help="export VideoBERT to ONNX (fp32 + fp16), checked against PyTorch",
        description="Export a VideoBERT checkpoint (a folder written by VideoBert.save, or a plain "
                    "Hugging Face BERT folder together with --codebook) to videobert.onnx, "
                    "videobert.fp16.onnx and videobert.json.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="VideoBERT folder (videobert.json) or Hugging Face BERT folder (config.json, "
                        "model.safetensors, vocab.txt)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--codebook", metavar="C.npz",
                   help="codebook (.npz): required for a plain BERT folder, verified against a VideoBERT folder")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"k of the top-k outputs (default {DEFAULT_TOP_K})")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 variant")
    p.add_argument("--no-check", action="store_true", help="skip the PyTorch comparison and readiness check")
    p.add_argument("--seed", type=int, default=0, help="seed of new embeddings/heads for a plain BERT folder")
    p.set_defaults(func=run_export_videobert)
    return p


def _register_s3d(models):
    from vbedge.export.s3d import DEFAULT_OPSET

    p = models.add_parser(
        "s3d", help="export the S3D feature extractor to ONNX (FP32 + FP16), checked vs PyTorch",
        description="Export a torchvision S3D checkpoint to s3d.onnx, s3d.fp16.onnx and s3d.json, "
                    "checked against PyTorch with ONNX Runtime and for TensorRT readiness.")
    p.add_argument("--weights", metavar="W.pth", help="torchvision S3D state dict (.pth)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--random-init", action="store_true",
                   help="export a seeded random model instead of a checkpoint (tests, demos)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 variant")
    p.add_argument("--frames", type=int, default=30, help="frames per clip T (default 30)")
    p.add_argument("--size", type=int, default=224, help="crop size H = W (default 224)")
    p.add_argument("--resize", choices=("short_side", "square"),
                   help="resize rule: square (torchvision's S3D recipe, 256x256; the default for "
                        "--weights) or short_side (aspect ratio kept; the default for "
                        "--random-init)")
    # Both resize rules share these defaults (256, crop 224), so giving them never changes
    # which rule --resize's default picks.
    p.add_argument("--short-side", type=int, default=256,
                   help="short side frames are resized to before cropping; both sides with "
                        "--resize square (default 256)")
    p.add_argument("--fps", type=float, default=20.0, help="clip frame rate (default 20)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (18..20)")
    p.add_argument("--check-batches", type=int, nargs="+", default=[1, 3], metavar="N",
                   help="batch sizes checked against PyTorch (default 1 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_export_s3d)
    return p


def run_export_videobert(args):
    """Handler of ``vbedge export videobert``; imports torch only here."""
    from vbedge.codebook import HierarchicalCodebook
    from vbedge.export.videobert import export_videobert, format_summary, load_videobert_checkpoint

    codebook = HierarchicalCodebook.load(args.codebook) if args.codebook else None
    videobert = load_videobert_checkpoint(args.checkpoint, codebook, seed=args.seed)
    meta = export_videobert(videobert, args.output, top_k=args.top_k, opset=args.opset,
                            fp16=not args.no_fp16, check=not args.no_check)
    print(format_summary(meta, args.output))
    return 0


def run_export_s3d(args):
    """Handler of ``vbedge export s3d``; imports torch only here."""
    import logging

    from vbedge.errors import InvalidInputError
    from vbedge.export.s3d import export_s3d, format_summary, spec_for_weights

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.weights is None and not args.random_init:
        raise InvalidInputError("vbedge export s3d needs --weights W.pth (a torchvision S3D state "
                                "dict), or --random-init for a random model")
    if args.weights is not None and args.random_init:
        raise InvalidInputError("give either --weights or --random-init, not both")
    changes = {k: v for k, v in (("fps", args.fps), ("clip_frames", args.frames),
                                 ("short_side", args.short_side), ("crop", args.size))
               if v is not None}
    spec, why = spec_for_weights(args.weights, args.random_init, resize=args.resize, **changes)
    result = export_s3d(args.output, args.weights, random_init=args.random_init, seed=args.seed,
                        spec=spec, fp16=not args.no_fp16, check_batches=args.check_batches,
                        opset=args.opset, progress=not args.quiet, spec_reason=why)
    print(format_summary(result))
    return 0
