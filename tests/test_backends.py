"""ONNX Runtime backend on small graphs made here (checked against NumPy), input validation, and
backend selection (availability reasons, 'auto', errors for unavailable backends).
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vbedge.backends import select  # noqa: E402
from vbedge.backends.base import BackendUnavailableError  # noqa: E402
from vbedge.backends.onnxruntime import OnnxRuntimeBackend, providers_for  # noqa: E402
from vbedge.errors import FormatError, InvalidInputError  # noqa: E402

RNG = np.random.default_rng(0)
W = RNG.normal(size=(8, 4)).astype(np.float32)
B = RNG.normal(size=(4,)).astype(np.float32)


def save_matmul_add(path, batch="batch"):
    """y = x @ W + b with x of shape (batch, 8), plus ids (batch,) int64 -> ids + 1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [batch])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    ids_out = helper.make_tensor_value_info("ids_next", TensorProto.INT64, [batch])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("Add", ["ids", "one"], ["ids_next"]),
    ]
    inits = [
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(B, "b"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
    ]
    graph = helper.make_graph(nodes, "matmul_add", [x, ids], [y, ids_out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def model_path(tmp_path):
    return save_matmul_add(tmp_path / "mm.onnx")


def test_onnxruntime_matches_numpy_for_several_batch_sizes(model_path):
    with OnnxRuntimeBackend(model_path) as backend:
        for n in (1, 3, 17):
            x = RNG.normal(size=(n, 8)).astype(np.float32)
            ids = RNG.integers(0, 1000, size=n).astype(np.int64)
            out = backend.run({"x": x, "ids": ids})
            assert set(out) == {"y", "ids_next"}
            np.testing.assert_allclose(out["y"], x.astype(np.float64) @ W + B, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(out["ids_next"], ids + 1)


def test_onnxruntime_specs_from_session(model_path):
    backend = OnnxRuntimeBackend(model_path)
    inputs = {s.name: s for s in backend.inputs}
    assert inputs["x"].dtype == "float32" and inputs["x"].shape == ("batch", 8)
    assert inputs["ids"].dtype == "int64" and inputs["ids"].shape == ("batch",)
    assert [s.name for s in backend.outputs] == ["y", "ids_next"]
    assert backend.providers == ["CPUExecutionProvider"] and backend.name == "onnxruntime"


def _good():
    return {"x": np.zeros((2, 8), np.float32), "ids": np.zeros(2, np.int64)}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("ids"), "missing \\['ids'\\]"),
        (lambda d: d.update(extra=np.zeros(1)), "unexpected \\['extra'\\]"),
        (lambda d: d.update(x=d["x"].astype(np.float64)), "'x' must be float32"),
        (lambda d: d.update(x=np.zeros((2, 8, 1), np.float32)), "rank 2"),
        (lambda d: d.update(x=np.zeros((2, 7), np.float32)), "axis 1"),
        (lambda d: d["x"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda d: d.update(x=[[0.0] * 8] * 2), "NumPy array"),
    ],
)
def test_onnxruntime_input_validation(model_path, mutate, message):
    backend = OnnxRuntimeBackend(model_path)
    feeds = _good()
    mutate(feeds)
    with pytest.raises(InvalidInputError, match=message):
        backend.run(feeds)


def test_onnxruntime_not_a_dict(model_path):
    with pytest.raises(InvalidInputError, match="dict"):
        OnnxRuntimeBackend(model_path).run([np.zeros((1, 8), np.float32)])


def test_onnxruntime_missing_or_corrupt_file(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(FormatError, match="cannot load"):
        OnnxRuntimeBackend(bad)


def test_onnxruntime_closed_backend_refuses(model_path):
    backend = OnnxRuntimeBackend(model_path)
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(InvalidInputError, match="closed"):
        backend.run(_good())


def test_providers_for_devices():
    assert providers_for("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    full = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("tensorrt", full) == full
    assert providers_for("cuda", full) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider"):
        providers_for("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(InvalidInputError, match="device must be one of"):
        providers_for("gpu", full)


def test_onnxruntime_cuda_device_unavailable_here_names_the_fix(model_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the refusal path cannot be shown here")
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime-gpu"):
        OnnxRuntimeBackend(model_path, device="cuda")


# ---- selection -------------------------------------------------------------------------------


def test_available_backends_reports_every_backend_with_a_reason():
    status = select.available_backends()
    assert set(status) == {"onnxruntime", "tensorrt", "openvino", "torch"}
    for name, (ok, reason) in status.items():
        assert isinstance(ok, bool) and reason, name
    assert status["onnxruntime"][0] and "CPU" in status["onnxruntime"][1]


def _fake_find_spec(present):
    def find(name):
        return object() if name.split(".")[0] in present else None

    return find


@pytest.mark.parametrize(
    "present, gpu, expected",
    [
        (set(), (True, "H100"), (False, "vbedge[tensorrt]")),
        ({"tensorrt"}, (True, "H100"), (False, "pip install pycuda")),
        ({"tensorrt", "pycuda"}, (False, "no NVIDIA GPU found"), (False, "no NVIDIA GPU found")),
        ({"tensorrt", "pycuda"}, (True, "H100 (compute capability 9.0)"), (True, "via pycuda")),
        ({"tensorrt", "torch"}, (True, "Orin"), (True, "via torch")),
    ],
)
def test_tensorrt_status_reasons(monkeypatch, present, gpu, expected):
    monkeypatch.setattr(select.importlib.util, "find_spec", _fake_find_spec(present | {"onnxruntime"}))
    monkeypatch.setattr(select, "gpu_status", lambda: gpu)
    ok, reason = select.available_backends()["tensorrt"]
    assert ok == expected[0]
    assert expected[1] in reason
    if not present:
        assert "JetPack" in reason


def test_auto_picks_tensorrt_when_available_else_onnxruntime_and_says_why():
    ort = (True, "onnxruntime 1.x (execution providers: CPU)")
    name, why = select.choose_backend("auto", {"tensorrt": (True, "TensorRT 10.3"), "onnxruntime": ort, "torch": (False, "")})
    assert name == "tensorrt" and "TensorRT 10.3" in why
    name, why = select.choose_backend("auto", {"tensorrt": (False, "no GPU"), "onnxruntime": ort, "torch": (False, "")})
    assert name == "onnxruntime" and "no GPU" in why
    with pytest.raises(BackendUnavailableError, match="no backend"):
        select.choose_backend("auto", {"tensorrt": (False, "a"), "onnxruntime": (False, "b"), "torch": (False, "")})


def test_explicit_unavailable_backend_names_what_is_missing():
    status = {"tensorrt": (False, "TensorRT's Python package is not installed: pip install 'vbedge[tensorrt]'"),
              "onnxruntime": (True, "x"), "torch": (False, "")}
    with pytest.raises(BackendUnavailableError, match="vbedge\\[tensorrt\\]"):
        select.choose_backend("tensorrt", status)
    with pytest.raises(ImportError):  # BackendUnavailableError is also an ImportError for callers
        select.choose_backend("tensorrt", status)
    with pytest.raises(InvalidInputError, match="one of"):
        select.choose_backend("tflite", status)


def test_create_backend_auto_logs_and_falls_back_to_onnxruntime(model_path, monkeypatch, caplog):
    monkeypatch.setattr(select, "_tensorrt_status", lambda: (False, "TensorRT's Python package is not installed"))
    monkeypatch.setattr(select, "_openvino_status", lambda: (False, "OpenVINO is not installed"))
    with caplog.at_level(logging.INFO, logger="vbedge"):
        backend = select.create_backend(model_path)
    assert isinstance(backend, OnnxRuntimeBackend)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "auto chose onnxruntime" in text and "not installed" in text


def test_create_backend_tensorrt_here_raises_with_install_hint(model_path):
    if select.available_backends()["tensorrt"][0]:
        pytest.skip("TensorRT is available on this machine")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        select.create_backend(model_path, backend="tensorrt")


def test_create_backend_torch_is_refused_with_guidance(model_path):
    with pytest.raises(InvalidInputError, match="TorchBackend"):
        select.create_backend(model_path, backend="torch")


def test_gpu_status_without_extension_uses_device_nodes(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cuda_ext(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_kernels_cuda" in fromlist:
            raise ImportError("not built")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_cuda_ext)
    monkeypatch.setattr(select.os.path, "exists", lambda p: p == "/dev/nvhost-ctrl-gpu")
    ok, why = select.gpu_status()
    assert ok and "/dev/nvhost-ctrl-gpu" in why and "not verified" in why
    monkeypatch.setattr(select.os.path, "exists", lambda p: False)
    ok, why = select.gpu_status()
    assert not ok and "no NVIDIA GPU" in why


def test_backend_modules_import_nothing_heavy():
    code = (
        "import sys, json\n"
        "import vbedge, vbedge.backends, vbedge.backends.select, vbedge.backends.onnxruntime\n"
        "import vbedge.backends.tensorrt, vbedge.engine_cache\n"
        "vbedge.backends.select.available_backends()\n"
        "print(json.dumps([m for m in ('tensorrt', 'pycuda', 'torch', 'onnx', 'cupy') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
