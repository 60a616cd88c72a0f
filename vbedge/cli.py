"""The ``vbedge`` command line.

Each subcommand is a thin argparse front over a plain function elsewhere in the package, so
everything the CLI does can also be called from Python.
"""

import argparse
import sys

from .errors import VbedgeError


def _cmd_info(args):
    from .info import collect_info, format_info

    print(format_info(collect_info()))
    return 0


def build_parser():
    """Return the argument parser of the ``vbedge`` command."""
    parser = argparse.ArgumentParser(prog="vbedge", description="Edge inference SDK for VideoBERT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_info = sub.add_parser("info", help="show backends, kernels, GPU and OpenCV capabilities")
    p_info.set_defaults(func=_cmd_info)

    p_codebook = sub.add_parser("codebook", help="fit or inspect a hierarchical visual codebook")
    codebook_sub = p_codebook.add_subparsers(dest="codebook_command", metavar="ACTION")
    codebook_sub.required = True
    from .codebook import add_codebook_commands

    add_codebook_commands(codebook_sub)

    p_export = sub.add_parser("export", help="export S3D or VideoBERT to ONNX (needs vbedge[export])")
    export_sub = p_export.add_subparsers(dest="export_command", metavar="MODEL")
    export_sub.required = True
    # Export subcommands are registered here by the export modules' add_*_command functions,
    # imported lazily inside their handlers so the CLI starts without torch.
    from vbedge.export.videobert import add_export_videobert_command

    add_export_videobert_command(export_sub)
    from vbedge.export.s3d import add_export_s3d_command

    add_export_s3d_command(export_sub)

    from vbedge.export.bundle import add_build_command

    add_build_command(sub)

    from .pipeline import add_pipeline_commands

    add_pipeline_commands(sub)
    from vbedge.calib.calibrate import add_calibrate_command

    add_calibrate_command(sub)
    from .demo import add_demo_command

    add_demo_command(sub)

    return parser


def main(argv=None):
    """Entry point of the ``vbedge`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (VbedgeError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"vbedge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vbedge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
