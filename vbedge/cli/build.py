"""``vbedge build``: export S3D + VideoBERT into a verified bundle folder (needs vbedge[export])."""


def register(subparsers):
    """Register ``vbedge build`` (imports nothing heavy; torch loads in the handler)."""
    p = subparsers.add_parser(
        "build",
        help="export S3D + VideoBERT into a verified bundle folder (needs vbedge[export])",
        description="Export S3D and VideoBERT to ONNX (fp32, fp16), check them against PyTorch, and "
                    "write a bundle: manifest.json with every file's sha256, the models, the codebook "
                    "and the vocabulary.",
    )
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--s3d", metavar="W.pth", help="torchvision S3D state dict")
    weights.add_argument("--s3d-random-init", action="store_true", help="random S3D weights (demos and tests)")
    p.add_argument("--videobert", required=True, metavar="DIR",
                   help="VideoBERT folder (VideoBert.save) or plain Hugging Face BERT folder to extend")
    p.add_argument("--codebook", required=True, metavar="C.npz", help="hierarchical codebook")
    p.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32,fp16,int8 (default fp32,fp16)")
    p.add_argument("--calib", metavar="CLIPS", nargs="+", help="calibration videos/folders for int8")
    p.add_argument("--calib-method", default="minmax", help="int8 calibration: minmax, entropy or percentile")
    p.add_argument("--frames", type=int, help="clip length in frames (default 30)")
    p.add_argument("--crop", type=int, help="crop side in pixels (default 224)")
    p.add_argument("--resize", choices=("short_side", "square"),
                   help="resize rule: square (torchvision's S3D recipe, 256x256; the default for "
                        "--s3d) or short_side (aspect ratio kept; the default for --s3d-random-init)")
    p.add_argument("--short-side", type=int,
                   help="short side frames are resized to (both sides with --resize square; "
                        "default 256)")
    p.add_argument("--top-k", type=int, help="k of VideoBERT's top-k outputs (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of random S3D weights / new BERT embeddings")
    p.add_argument("--reference-weights", action="store_true",
                   help="also store PyTorch weights so the torch backend can run the bundle")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--sign", metavar="PRIVATE.pem",
                   help="sign the bundle with this Ed25519 private key (vbedge keys new; needs vbedge[signing])")
    p.add_argument("--passphrase-env", metavar="VAR", help="passphrase of an encrypted --sign key (env var name)")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder to create")
    p.set_defaults(func=run_build)
    return p


def run_build(args):
    """Handler of ``vbedge build``."""
    from vbedge.codebook import HierarchicalCodebook
    from vbedge.errors import InvalidInputError
    from vbedge.export.bundle import build_bundle
    from vbedge.export.videobert import load_videobert_checkpoint
    from vbedge.export.s3d import spec_for_weights

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if args.calib and "int8" not in precisions:
        raise InvalidInputError("--calib is only used with --precision ...,int8")
    sign_key = None
    if args.sign:
        from vbedge.signing import load_private_key

        from .keys import passphrase

        # Read first: a wrong key or passphrase fails now, not after minutes of export.
        sign_key = load_private_key(args.sign, password=passphrase(args.passphrase_env))
    elif args.passphrase_env:
        raise InvalidInputError("--passphrase-env is for the --sign key; no --sign was given")
    codebook = HierarchicalCodebook.load(args.codebook)
    videobert = load_videobert_checkpoint(args.videobert, codebook, seed=args.seed)
    spec_changes = {k: v for k, v in (("clip_frames", args.frames), ("crop", args.crop),
                                      ("short_side", args.short_side)) if v is not None}
    spec = why = None
    if spec_changes or args.resize:
        spec, why = spec_for_weights(args.s3d, args.s3d_random_init, resize=args.resize, **spec_changes)
    bundle = build_bundle(args.output, videobert=videobert, codebook=codebook, s3d_weights=args.s3d,
                          s3d_random_init=args.s3d_random_init, seed=args.seed, precisions=precisions, spec=spec,
                          top_k=args.top_k, reference_weights=args.reference_weights, overwrite=args.overwrite,
                          calib_videos=args.calib, calib_method=args.calib_method,
                          spec_reason=why, sign_key=sign_key)
    print(f"wrote {bundle!r}")
    s3d = bundle.manifest["models"]["s3d"]
    print(f"  preprocessing: {bundle.preprocess_spec.describe_resize()}"
          + (f" ({s3d['preprocessing_recipe']})" if s3d.get("preprocessing_recipe") else ""))
    if bundle.signature is not None:
        print(f"  signed by key {bundle.signature.key_id[:16]} ({bundle.root / 'manifest.sig'})")
    for name, entry in sorted(bundle.manifest["files"].items()):
        print(f"  {name:<34} {entry['size'] / 1e6:9.2f} MB  sha256 {entry['sha256'][:16]}")
    return 0
