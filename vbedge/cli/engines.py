"""``vbedge engines build|list|verify --bundle B``: a bundle's TensorRT engines.

``build`` pre-builds the engines a pipeline with the same options will load (TensorRT and a GPU
needed; build progress shown per model); ``list`` and ``verify`` read the engine cache without
TensorRT. ``--engine-cache DIR`` (or $VBEDGE_ENGINE_CACHE) puts the cache outside the bundle, so a
read-only bundle works.
"""


from .keys import add_trusted_key_option


def register(subparsers):
    """Register ``vbedge engines`` and its three subcommands."""
    p = subparsers.add_parser("engines", help="build, list and verify a bundle's TensorRT engines")
    sub = p.add_subparsers(dest="engines_command", metavar="ACTION")
    sub.required = True

    def common(parser):
        parser.add_argument("--bundle", required=True, help="bundle folder")
        parser.add_argument("--engine-cache", default=None,
                            help="engine cache folder (default: $VBEDGE_ENGINE_CACHE, else BUNDLE/engines)")
        add_trusted_key_option(parser)

    b = sub.add_parser("build", help="build the engines a pipeline will need (TensorRT + GPU)")
    common(b)
    b.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    b.add_argument("--models", default="s3d,videobert", help="comma-separated: s3d, videobert")
    b.add_argument("--max-batch", type=int, default=4, help="S3D batch bound (use your number of sources)")
    b.add_argument("--queue-size", type=int, default=2, help="the pipeline's queue_size (VideoBERT batch bound)")
    b.add_argument("--context", type=int, default=2, help="the pipeline's context_clips")
    b.add_argument("--template", default="howto", help="caption template (sets the VideoBERT sequence bound)")
    b.add_argument("--config", metavar="CAMERAS.yaml",
                   help="also cover the per-camera captioning of a vbedge caption --config file")
    b.add_argument("--rebuild", action="store_true", help="ignore cached engines")
    b.set_defaults(func=run_build)

    for name, helptext, func in (("list", "list the cached engines and their layer precisions", run_list),
                                 ("verify", "re-hash every cached engine; exit 1 when one is damaged or stale",
                                  run_verify)):
        q = sub.add_parser(name, help=helptext)
        common(q)
        q.set_defaults(func=func)


def _bundle(args):
    from ..bundle import Bundle
    from .keys import trusted_keys

    return Bundle.load(args.bundle, trusted_keys=trusted_keys(args))


def run_build(args):
    """Handler of ``vbedge engines build``."""
    from tqdm import tqdm

    from ..engines import build_engines

    bars = {}

    def progress(model, phase, step, steps):
        # One bar per (model, phase) TensorRT reports; finished bars are closed.
        key = (model, phase)
        bar = bars.get(key)
        if bar is None:
            bar = bars[key] = tqdm(total=max(steps, 1), desc=f"{model}: {phase}", leave=False)
        bar.n = min(step, bar.total)
        bar.refresh()
        if steps and step >= steps:
            bar.close()
            bars.pop(key, None)

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.config is not None:
        from ..camera_config import load_camera_config

        captioning = load_camera_config(args.config).captioning or None
    else:
        captioning = None
    try:
        built = build_engines(_bundle(args), precision=args.precision, models=models, cache_dir=args.engine_cache,
                              progress=progress, rebuild=args.rebuild, max_batch=args.max_batch,
                              queue_size=args.queue_size, context_clips=args.context, template=args.template,
                              captioning=captioning)
    finally:
        for bar in bars.values():
            bar.close()
    from ..backends.trt_inspect import format_precisions

    for entry in built:
        print(f"{entry['model']}: {entry['engine']} (layers: {format_precisions(entry['layers'])})")
    return 0


def run_list(args):
    """Handler of ``vbedge engines list``."""
    from ..engines import list_engines

    entries = list_engines(_bundle(args), cache_dir=args.engine_cache)
    if not entries:
        print("no engines cached for this bundle")
    for entry in entries:
        print(entry.describe())
    return 0


def run_verify(args):
    """Handler of ``vbedge engines verify``."""
    from ..engines import verify_engines

    entries, bad = verify_engines(_bundle(args), cache_dir=args.engine_cache)
    for entry in entries:
        print(entry.describe())
    print(f"{len(entries)} engine(s), {len(bad)} damaged or stale")
    return 1 if bad else 0
