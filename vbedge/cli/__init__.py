"""The ``vbedge`` command line.

Each command group is one module of this package with ``register(subparsers)``; its handlers are
thin (parse, call library functions, print, return the exit code), so everything the CLI does can
also be called from Python. Building the parser imports nothing heavy: torch, the exporters and
the calibration code are imported inside the handlers. The library never imports this package.
"""

import argparse
import os
import sys

from ..errors import VbedgeError
from . import (bench, build, calibrate, caption, codebook, corpus, demo, engines, evaluate, export, features, info,
               keys, synth, train)

#: The command modules, in the order ``vbedge --help`` lists their commands.
COMMAND_MODULES = (info, features, codebook, export, build, engines, keys, caption, corpus, train, calibrate, synth,
                   evaluate, demo, bench)


def build_parser():
    """Return the argument parser of the ``vbedge`` command."""
    parser = argparse.ArgumentParser(prog="vbedge", description="Edge inference SDK for VideoBERT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
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
    except BrokenPipeError:
        # `vbedge ... | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit as a process killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
