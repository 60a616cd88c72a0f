"""``vbedge demo``: build a demo bundle and caption a synthetic video."""


def register(subparsers):
    """Register ``vbedge demo``."""
    p = subparsers.add_parser("demo", help="build a demo bundle and caption a synthetic video (needs "
                                           "vbedge[opencv,export,demo])")
    p.add_argument("--workdir", default="vbedge-demo", help="folder for the video, bundle and outputs")
    p.add_argument("--full", action="store_true", help="full-size S3D input (30 frames, 224x224): slower")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, tensorrt or torch")
    p.set_defaults(func=run_demo)


def run_demo(args):
    """Handler of ``vbedge demo``."""
    from ..demo import run_demo as demo

    return demo(args.workdir, full=args.full, backend=args.backend)
