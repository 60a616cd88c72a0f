"""The installed code runs on the oldest Python that pyproject.toml's requires-python admits.

Checked statically with vermin (the `test` extra) over vbedge/, export/ and calib/: JetPack 6 ships
Python 3.10 (JetPack 5: 3.8), while development and CI run 3.11, so a 3.11-only construct (tomllib,
`except*`, `match` on 3.9, ...) would pass every other test and break on the board.

vermin's union-type detection (`X | Y`, Python 3.10) is a heuristic that also flags annotations; in
a module with ``from __future__ import annotations`` those are never evaluated at run time (the
package has no typing.get_type_hints caller), so exactly those are accepted. A union anywhere else
(``isinstance(x, int | str)``, an annotation without the future import) is reported.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vermin", reason="vermin (pip install -e '.[test]') is not installed")

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vbedge", "export", "calib")
UNION_FEATURE = "union types as `X | Y`"


def required_python():
    """(major, minor) of pyproject.toml's ``requires-python = ">=X.Y"``."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)\s*"', text, re.M)
    if match is None:
        pytest.fail('pyproject.toml has no requires-python = ">=X.Y" line')
    return int(match.group(1)), int(match.group(2))


def postponed_annotation_lines(path):
    """Lines covered by annotations in a module that postpones their evaluation (PEP 563), else empty."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    postponed = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                    and any(alias.name == "annotations" for alias in node.names) for node in tree.body)
    if not postponed:
        return set()
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    return {line for a in annotations for line in range(a.lineno, a.end_lineno + 1)}


def incompatibilities(paths, target):
    """``path:line: feature requires X.Y`` for every construct newer than ``target`` in ``paths``."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
         f"-t={target[0]}.{target[1]}-", "--violations", "--format", "parsable", "--feature", "union-types",
         "--no-parse-comments", "--no-config-file", *map(str, paths)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    found = []
    for row in proc.stdout.splitlines():
        # path:line:column:py2:py3:feature (rows without a line are per-file totals)
        path, line, _column, _py2, py3, feature = row.split(":", 5)
        if not line:
            continue
        if feature == UNION_FEATURE and int(line) in postponed_annotation_lines(path):
            continue
        found.append(f"{Path(path).resolve().relative_to(ROOT) if ROOT in Path(path).resolve().parents else path}"
                     f":{line}: {feature} requires Python {py3}")
    return found


def test_installed_code_runs_on_the_required_python():
    target = required_python()
    assert target <= (3, 10), "JetPack 6 ships Python 3.10: requires-python must admit it"
    found = incompatibilities([ROOT / p for p in PACKAGES if (ROOT / p).is_dir()], target)
    assert not found, (f"newer than requires-python >={target[0]}.{target[1]}:\n  " + "\n  ".join(found))


def test_the_check_reports_newer_constructs_with_file_and_line(tmp_path):
    """The check itself can fail: 3.10/3.11 constructs are named by file:line, and only postponed
    annotations are let through."""
    new = tmp_path / "new.py"
    new.write_text(
        "import tomllib\n"                           # 1: 3.11 module
        "\n"
        "def f(x):\n"
        "    match x:\n"                              # 4: pattern matching, 3.10
        "        case 1:\n"
        "            return isinstance(x, int | str)\n"  # 6: run-time union, 3.10
        "\n"
        "def g(a: int | None) -> None:\n"             # 8: evaluated annotation, 3.10
        "    pass\n")
    postponed = tmp_path / "postponed.py"
    postponed.write_text("from __future__ import annotations\n\ndef g(a: int | None) -> str | None:\n    return None\n")
    found = incompatibilities([new, postponed], (3, 9))
    lines = sorted(int(item.split(":")[1]) for item in found if item.startswith(str(new)))
    assert lines == [1, 4, 6, 8], found
    assert any("'tomllib' module requires Python 3.11" in item for item in found), found
    assert not [item for item in found if item.startswith(str(postponed))], found
    # 3.11 as the target accepts all of it.
    assert incompatibilities([new, postponed], (3, 11)) == []
