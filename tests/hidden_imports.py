"""Make an installed package look absent for one test (its ImportError paths)."""

import builtins
import sys


def hide_package(monkeypatch, package):
    """``import package`` (and its submodules) raises ImportError until ``monkeypatch`` undoes it;
    already imported modules of it are dropped from ``sys.modules`` for the test."""
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
