"""Package-level promises: light import, CLI entry points, info."""

import json
import subprocess
import sys

HEAVY = ["torch", "torchvision", "tensorrt", "pycuda", "cupy", "onnx", "transformers", "cv2"]


def _heavy_modules_after(code):
    """The HEAVY modules loaded once ``code`` has run in a fresh interpreter."""
    probe = code + f"import sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    return json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                     check=True).stdout)


def test_import_vbedge_imports_nothing_heavy():
    code = (
        "import sys, json, vbedge, vbedge.codebook, vbedge.cli, vbedge.info\n"
        "import vbedge.tokenize_reference\n"
        "for name in ('vbedge.vocab', 'vbedge.preprocess', 'vbedge.cuda_tokenizer'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != name: raise\n"
    )
    assert _heavy_modules_after(code) == []


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "vbedge.cli", "info"], capture_output=True, text=True, check=True)
    assert "C++ kernel" in out.stdout and "onnxruntime" in out.stdout
    assert "backend onnxruntime  yes" in out.stdout
    assert "backend tensorrt     no" in out.stdout or "backend tensorrt     yes" in out.stdout


def test_cli_parser_imports_nothing_heavy():
    # `vbedge info` / `vbedge --help` must start fast on a device without torch: building the
    # parser registers every subcommand (export, build, calibrate...) without importing them.
    code = (
        "import sys, json\n"
        "from vbedge.cli import build_parser\n"
        "build_parser()\n"
    )
    assert _heavy_modules_after(code) == []


def test_cli_codebook_roundtrip(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    run = lambda *a: subprocess.run([sys.executable, "-m", "vbedge.cli", *a], capture_output=True, text=True)  # noqa: E731
    fit = run("codebook", "fit", str(tmp_path / "f.npy"), "-o", str(tmp_path / "cb.npz"), "--levels", "2", "--branching", "3")
    assert fit.returncode == 0, fit.stderr
    tok = run("codebook", "tokenize", str(tmp_path / "cb.npz"), str(tmp_path / "f.npy"), "-o", str(tmp_path / "ids.npy"))
    assert tok.returncode == 0, tok.stderr
    from vbedge import HierarchicalCodebook

    cb = HierarchicalCodebook.load(tmp_path / "cb.npz")
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), cb.tokenize(feats, device="numpy"))
    bad = run("codebook", "info", str(tmp_path / "f.npy"))
    assert bad.returncode == 2 and "not a vbedge codebook" in bad.stderr
