"""``vbedge info``: backends, kernels, GPU and OpenCV capabilities."""


def register(subparsers):
    """Register ``vbedge info``."""
    p = subparsers.add_parser("info", help="show backends, kernels, GPU and OpenCV capabilities")
    p.set_defaults(func=run_info)


def run_info(args):
    """Handler of ``vbedge info``."""
    from ..info import collect_info, format_info

    print(format_info(collect_info()))
    return 0
