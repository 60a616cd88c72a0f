"""``vbedge demo``: train the whole model path on a synthetic kitchen and show its captions are right."""


def register(subparsers):
    """Register ``vbedge demo``."""
    from ..demo import DEMO_SIZES
    p = subparsers.add_parser("demo", help="train S3D, a codebook and VideoBERT on a SYNTHETIC kitchen world, build "
                                           "a bundle, caption a held-out video and score it zero-shot (needs "
                                           "vbedge[opencv,export,demo])")
    p.add_argument("--workdir", default="vbedge-demo", help="folder for the worlds, models and bundle; a second "
                                                            "run reuses what is there")
    p.add_argument("--s3d", default=None, help="your torchvision S3D state dict (.pth) instead of pretraining one "
                                               "on the synthetic world")
    p.add_argument("--size", default="default", choices=tuple(DEMO_SIZES),
                   help="large: S3D's window phase also trains on a zoomed-out copy of every clip (better "
                        "nouns, about 4 minutes more: over 10 minutes on 2 cores); tiny: a small world with "
                        "S3D's stem left random, trained in a short time (tests)")
    p.add_argument("--backend", default="onnxruntime", help="auto, onnxruntime, tensorrt, openvino or torch")
    p.set_defaults(func=run_demo)


def run_demo(args):
    """Handler of ``vbedge demo``."""
    from ..demo import run_demo as demo

    demo(args.workdir, s3d=args.s3d, backend=args.backend, size=args.size, echo=lambda line: print(line, flush=True))
    return 0
