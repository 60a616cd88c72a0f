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


def test_cli_info_reports_what_is_installed():
    """Each line of `vbedge info` against facts found independently in this interpreter."""
    import importlib.util
    import platform

    import numpy
    import onnxruntime

    out = subprocess.run([sys.executable, "-m", "vbedge.cli", "info"], capture_output=True, text=True, check=True)
    lines = {line.split()[0] if not line.startswith("backend") else " ".join(line.split()[:2]): line
             for line in out.stdout.splitlines() if line.strip()}
    assert f"Python {platform.python_version()}" in lines["vbedge"]
    assert lines["numpy"].split()[1] == numpy.__version__
    assert lines["onnxruntime"].split()[1] == onnxruntime.__version__
    assert lines["backend onnxruntime"].split()[2] == "yes"
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    assert ("not installed" in lines["tensorrt"]) == (not has_tensorrt)
    if not has_tensorrt:
        assert lines["backend tensorrt"].split()[2] == "no" and "not installed" in lines["backend tensorrt"]
    kernel_built = importlib.util.find_spec("vbedge._kernels") is not None
    assert lines["C++"].startswith("C++ kernel   built" if kernel_built else "C++ kernel   not built")
    has_torch = importlib.util.find_spec("torch") is not None
    assert lines["backend torch"].split()[2] == ("yes" if has_torch else "no")
    if has_torch:  # torch's own CPU detection: does this CPU multiply bfloat16 natively?
        import torch

        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        assert ("no native bfloat16" in lines["bf16"]) == (not native), lines["bf16"]


def test_bundle_is_public():
    import vbedge
    from vbedge.bundle import Bundle

    assert vbedge.Bundle is Bundle and callable(vbedge.Bundle.load) and "Bundle" in vbedge.__all__


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
