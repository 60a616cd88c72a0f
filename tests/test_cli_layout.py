"""The command line lives in vbedge/cli/ only: the library never imports it or argparse."""

import ast
from pathlib import Path

import vbedge.cli as cli

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = [p for folder in ("vbedge", "export", "calib") for p in sorted((ROOT / folder).rglob("*.py"))
           if (ROOT / "vbedge" / "cli") not in p.parents]


def _imports(path):
    """Absolute names of the modules ``path`` imports (relative imports resolved), anywhere in it."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("export", "calib"):
        parts = ["vbedge"] + parts
    package = parts[:-1]    # the package a relative import starts from (also for __init__.py)
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_library_modules_never_import_the_cli_or_argparse():
    assert len(LIBRARY) > 20 and ROOT / "vbedge" / "pipeline.py" in LIBRARY
    offenders = {}
    for path in LIBRARY:
        bad = [n for n in _imports(path) if n == "argparse" or n == "vbedge.cli" or n.startswith("vbedge.cli.")]
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_the_import_scan_sees_a_cli_import():
    # The scan above must be able to fail: the CLI's own __init__ imports its modules relatively.
    names = _imports(ROOT / "vbedge" / "cli" / "__init__.py")
    assert "vbedge.cli.caption" in names and "argparse" in names


def test_every_command_module_registers_its_commands_in_order():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == ["info", "features", "codebook", "export", "build", "engines", "keys", "sign",
                                 "caption", "tokenize", "corpus", "train", "calibrate", "synth", "eval", "demo",
                                 "bench"]
    for module in cli.COMMAND_MODULES:
        assert callable(module.register) and module.__name__.startswith("vbedge.cli.")
    for name, command in sub.choices.items():
        if name in ("codebook", "export", "engines", "keys", "eval"):
            continue    # groups: their actions carry the handlers
        handler = command.get_default("func")
        assert callable(handler) and handler.__module__.startswith("vbedge.cli."), name


def test_a_closed_pipe_on_stdout_ends_quietly():
    """`vbedge info | head -1`: no BrokenPipeError traceback, SIGPIPE's exit status."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from vbedge.cli import main\n"
            "sys.exit(main(['info']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
