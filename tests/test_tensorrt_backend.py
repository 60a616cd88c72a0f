"""TensorRT backend: what can be checked without TensorRT, and real-TensorRT tests that skip here.

Three kinds of tests, clearly separated:

1. Pure Python logic (profile validation, ONNX inspection, the TRT 10/11 precision/typing plan,
   engine keys) - real checks of vbedge code.
2. CONTROL-FLOW tests with a FAKE ``tensorrt`` module (``FakeTRT``) put in ``sys.modules``: they
   check the order of our calls, our error handling and our use of the cache. They prove nothing
   about TensorRT itself: the fake only mimics the documented API surface we call.
3. ``@pytest.mark.tensorrt`` tests that build and run a real engine; skipped with a reason when
   ``tensorrt`` cannot be imported (always, on the development machines).
"""

import importlib.util
import json
import logging
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vbedge.backends import tensorrt as trtb  # noqa: E402
from vbedge.backends.base import BackendUnavailableError, TensorSpec  # noqa: E402
from vbedge.engine_cache import EngineCache, EngineKey, read_engine_file  # noqa: E402
from vbedge.errors import FormatError, InvalidInputError  # noqa: E402

# ---- small ONNX models ------------------------------------------------------------------------------


def save_model(path, kind="fp32", batch="batch"):
    """y = x * 2 (+ Q/DQ or FP16 variants), x of shape (batch, 4)."""
    elem = TensorProto.FLOAT16 if kind == "fp16" else TensorProto.FLOAT
    dtype = np.float16 if kind == "fp16" else np.float32
    x = helper.make_tensor_value_info("x", elem, [batch, 4])
    y = helper.make_tensor_value_info("y", elem, [batch, 4])
    inits = [numpy_helper.from_array(np.array(2, dtype=dtype), "two")]
    if kind == "int8":
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "zero")]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"]),
            helper.make_node("Mul", ["xdq", "two"], ["y"]),
        ]
    else:
        nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
    graph = helper.make_graph(nodes, "double", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


SPECS = [TensorSpec("video", "float32", ("batch", 3, 30, 224, 224)), TensorSpec("mask", "int64", ("batch", "seq"))]
GOOD = {
    "video": ((1, 3, 30, 224, 224), (4, 3, 30, 224, 224), (8, 3, 30, 224, 224)),
    "mask": ((1, 1), (4, 64), (8, 128)),
}

# ---- 1. pure Python -----------------------------------------------------------------------------------


def test_validate_profiles_accepts_and_canonicalises():
    canon = trtb.validate_profiles(SPECS, GOOD)
    assert canon == (
        (("mask", ((1, 1), (4, 64), (8, 128))),
         ("video", ((1, 3, 30, 224, 224), (4, 3, 30, 224, 224), (8, 3, 30, 224, 224)))),
    )
    assert trtb.validate_profiles(SPECS, [GOOD, GOOD]) == canon * 2
    static = [TensorSpec("x", "float32", (1, 4))]
    assert trtb.validate_profiles(static, None) == ()


def _with(name, ranges):
    profile = dict(GOOD)
    profile[name] = ranges
    return profile


@pytest.mark.parametrize(
    "profiles, message",
    [
        (None, "\\['mask', 'video'\\] have dynamic dimensions"),
        ({"video": GOOD["video"]}, "no shape range for dynamic inputs \\['mask'\\]"),
        (dict(GOOD, audio=((1,), (1,), (1,))), "inputs \\['audio'\\] that the model does not have"),
        (_with("mask", ((1, 1), (4, 64))), "\\(min, opt, max\\)"),
        (_with("mask", ((1, 1), (4, 64, 1), (8, 128))), "opt shape \\(4, 64, 1\\) has rank 3"),
        (_with("video", ((1, 3, 30, 224, 224), (4, 3, 32, 224, 224), (8, 3, 30, 224, 224))),
         "static dimension 30 on axis 2"),
        (_with("mask", ((1, 1), (4, 256), (8, 128))), "axis 1 has 1, 256, 128"),
        (_with("mask", ((0, 1), (4, 64), (8, 128))), "positive ints"),
        (_with("mask", ((1.5, 1), (4, 64), (8, 128))), "positive ints"),
        ([], "empty list"),
        ("video", "dict input name"),
    ],
)
def test_validate_profiles_errors_name_input_and_shape(profiles, message):
    with pytest.raises(InvalidInputError, match=message):
        trtb.validate_profiles(SPECS, profiles)


def test_inspect_onnx_detects_precision_carriers(tmp_path):
    fp32 = trtb.inspect_onnx(save_model(tmp_path / "a.onnx", "fp32"))
    assert fp32.inputs == (TensorSpec("x", "float32", ("batch", 4)),)
    assert (fp32.has_fp16, fp32.has_qdq) == (False, False)
    fp16 = trtb.inspect_onnx(save_model(tmp_path / "b.onnx", "fp16"))
    assert (fp16.has_fp16, fp16.has_qdq) == (True, False) and fp16.inputs[0].dtype == "float16"
    int8 = trtb.inspect_onnx(save_model(tmp_path / "c.onnx", "int8"))
    assert (int8.has_fp16, int8.has_qdq) == (False, True)
    with pytest.raises(FormatError, match="not found"):
        trtb.inspect_onnx(tmp_path / "missing.onnx")


FP32, FP16, QDQ = (trtb.OnnxInfo((), False, False), trtb.OnnxInfo((), True, False), trtb.OnnxInfo((), False, True))
UNKNOWN = trtb.OnnxInfo((), None, None)


@pytest.mark.parametrize(
    "version, precision, typed, info, expected",
    [
        # TensorRT 10 (JetPack 6): strongly typed where the ONNX carries the precision...
        ("10.3.0", "fp32", "auto", FP32, (True, ())),
        ("10.3.0", "fp16", "auto", FP16, (True, ())),
        ("10.3.0", "int8", "auto", QDQ, (True, ())),
        # ...else weakly typed with builder flags.
        ("10.3.0", "fp16", "auto", FP32, (False, ("FP16",))),
        ("10.3.0", "fp16", "auto", UNKNOWN, (False, ("FP16",))),
        ("10.3.0", "int8", "auto", UNKNOWN, (False, ("INT8",))),
        ("10.0.1.6", "fp16", False, FP16, (False, ("FP16",))),
        ("10.3.0", "int8", False, QDQ, (False, ("INT8",))),
        ("10.3.0", "fp16", True, FP16, (True, ())),
        # TensorRT 8.5/8.6 (JetPack 5.1 / 6.0): weakly typed only, precision flags, INT8 flag for Q/DQ.
        ("8.5.2", "fp16", "auto", FP16, (False, ("FP16",))),
        ("8.6.1", "fp32", "auto", FP32, (False, ())),
        ("8.6.1", "int8", "auto", QDQ, (False, ("INT8",))),
        # TensorRT 11: always strongly typed, never precision flags.
        ("11.0.0", "fp32", "auto", FP32, (True, ())),
        ("11.0.0", "fp16", "auto", FP16, (True, ())),
        ("11.4.1", "int8", True, QDQ, (True, ())),
        ("11.0.0", "fp16", "auto", UNKNOWN, (True, ())),
    ],
)
def test_precision_plan_table(version, precision, typed, info, expected):
    plan = trtb.plan_build(version, precision, typed, info)
    assert (plan.strongly_typed, plan.builder_flags) == expected
    assert plan.reason


@pytest.mark.parametrize(
    "version, precision, typed, info, dla, error, message",
    [
        ("11.0.0", "fp16", False, FP16, None, InvalidInputError, "only strongly typed"),
        ("11.0.0", "fp16", "auto", FP32, None, InvalidInputError, "must come from the ONNX.*fp16 model"),
        ("10.3.0", "int8", "auto", FP32, None, InvalidInputError, "Q/DQ.*calibrators"),
        ("11.0.0", "int8", "auto", FP16, None, InvalidInputError, "Q/DQ"),
        ("10.3.0", "fp16", True, FP32, None, InvalidInputError, "strongly_typed=True"),
        ("10.3.0", "bf16", "auto", FP32, None, InvalidInputError, "precision must be one of"),
        ("10.3.0", "fp16", "yes", FP16, None, InvalidInputError, "strongly_typed must be"),
        ("10.3.0", "fp32", "auto", FP32, 0, InvalidInputError, "DLA runs FP16 or INT8"),
        ("8.4.3", "fp16", "auto", FP16, None, BackendUnavailableError, "needs TensorRT 8.5 or newer"),
        ("8.6.1", "fp16", True, FP16, None, InvalidInputError, "no strongly typed networks"),
        ("banana", "fp16", "auto", FP16, None, InvalidInputError, "cannot read a TensorRT version"),
    ],
)
def test_precision_plan_refusals(version, precision, typed, info, dla, error, message):
    with pytest.raises(error, match=message):
        trtb.plan_build(version, precision, typed, info, dla)


def test_dla_adds_gpu_fallback_on_both_versions():
    assert trtb.plan_build("10.3.0", "fp16", "auto", FP32, dla_core=0).builder_flags == ("FP16", "GPU_FALLBACK")
    assert trtb.plan_build("11.4.1", "fp16", "auto", FP16, dla_core=1).builder_flags == ("GPU_FALLBACK",)


def test_engine_key_reflects_plan_and_onnx_hash(tmp_path):
    path = save_model(tmp_path / "m.onnx")
    plan = trtb.plan_build("10.3.0", "fp16", "auto", FP32)
    canon = trtb.validate_profiles(trtb.inspect_onnx(path).inputs, {"x": ((1, 4), (2, 4), (8, 4))})
    key = trtb.engine_key(path, "10.3.0", "Orin", "8.7", "fp16", canon, None, plan, 1 << 30)
    assert key.strongly_typed is False and ("builder_flags", ("FP16",)) in key.builder_options
    import hashlib

    assert key.onnx_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    save_model(path, "int8")  # different ONNX bytes -> different key
    key2 = trtb.engine_key(path, "10.3.0", "Orin", "8.7", "fp16", canon, None, plan, 1 << 30)
    assert key2 != key and key2.file_name() != key.file_name()


# ---- 2. control flow against a FAKE tensorrt + pycuda (tests our code, not TensorRT) -----------------------
# tests/fake_tensorrt.py says what the fakes model; each test below checks vbedge's calls, not TensorRT's.


@pytest.fixture()
def fake_trt(monkeypatch):
    import fake_tensorrt

    def install(**kwargs):
        return fake_tensorrt.install(monkeypatch, **kwargs)

    return install


PROFILE = {"x": ((1, 4), (2, 4), (8, 4))}


def _pushed(fake):
    """Every TensorRT-facing block ran between a push and a pop of the primary context."""
    pushes = [kind for _, kind in fake.state.pushes]
    return pushes.count("push") == pushes.count("pop") and pushes.count("push") > 0


def test_fake_build_call_order_trt10_weakly_typed_fp16(tmp_path, fake_trt):
    """Control flow only (fake TensorRT): weakly typed network, FP16 flag, profile, timing cache."""
    fake = fake_trt(version="10.3.0")
    onnx_path = save_model(tmp_path / "m.onnx")
    timing = tmp_path / "engines" / "timing.cache"
    engine = trtb.build_engine(onnx_path, "fp16", PROFILE, 1 << 28, timing, None, "auto")
    assert engine.startswith(b"FAKE-TRT-ENGINE")
    assert [n for n in fake.names() if not n.startswith("config.")] == [
        "Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
        "set_memory_pool_limit", "set_flag", "add_optimization_profile", "create_timing_cache",
        "set_timing_cache", "build_serialized_network",
    ]
    assert ("create_network", 0) in fake.calls and ("set_flag", "FP16") in fake.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 28) in fake.calls
    assert ("add_optimization_profile", {"x": ((1, 4), (2, 4), (8, 4))}) in fake.calls
    assert timing.read_bytes() == b"+timed"  # written back after the build
    fake.calls.clear()
    trtb.build_engine(onnx_path, "fp16", PROFILE, 1 << 28, timing, None, "auto")
    assert ("create_timing_cache", b"+timed") in fake.calls  # reloaded on the next build


def test_fake_build_trt10_strongly_typed_sets_network_flag_not_precision_flag(tmp_path, fake_trt):
    fake = fake_trt(version="10.3.0")
    trtb.build_engine(save_model(tmp_path / "m.onnx", "fp16"), "fp16", PROFILE, 1 << 28, None, None, "auto")
    assert ("create_network", 1 << 1) in fake.calls  # STRONGLY_TYPED is bit 1 in the fake, as in TensorRT 10
    assert not [c for c in fake.calls if c[0] == "set_flag"]


def test_fake_build_trt11_never_uses_removed_flags(tmp_path, fake_trt):
    fake = fake_trt(version="11.0.0")
    trtb.build_engine(save_model(tmp_path / "m.onnx", "int8"), "int8", PROFILE, 1 << 28, None, None, "auto")
    assert ("create_network", 0) in fake.calls  # STRONGLY_TYPED is ignored/deprecated in 11: not passed
    assert not [c for c in fake.calls if c[0] == "set_flag"]
    with pytest.raises(InvalidInputError, match="must come from the ONNX"):
        trtb.build_engine(save_model(tmp_path / "f.onnx"), "fp16", PROFILE, 1 << 28, None, None, "auto")


def test_fake_build_several_profiles_in_order(tmp_path, fake_trt):
    fake = fake_trt()
    small, large = {"x": ((1, 4), (1, 4), (2, 4))}, {"x": ((3, 4), (6, 4), (16, 4))}
    trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", [small, large], 1 << 28, None, None, "auto")
    added = [c[1] for c in fake.calls if c[0] == "add_optimization_profile"]
    assert added == [small, large]


def test_fake_parser_failure_reports_node_and_description(tmp_path, fake_trt):
    fake = fake_trt(parse_ok=False)
    with pytest.raises(FormatError, match="node 3 '/s3d/foo' \\(Foo\\): unsupported op Foo"):
        trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", PROFILE, 1 << 28, None, None, "auto")
    assert "build_serialized_network" not in fake.names()


def test_fake_build_returning_none_raises_with_tensorrt_message(tmp_path, fake_trt):
    fake_trt(build_ok=False)
    timing = tmp_path / "t.cache"
    with pytest.raises(trtb.TensorRTError, match="could not build a fp32 engine.*out of workspace"):
        trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", PROFILE, 1 << 28, timing, None, "auto")
    assert not timing.exists()


def test_fake_refused_timing_cache_falls_back_to_empty(tmp_path, fake_trt, caplog):
    fake = fake_trt(timing_accept=False)
    timing = tmp_path / "t.cache"
    timing.write_bytes(b"from-another-gpu")
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", PROFILE, 1 << 28, timing, None, "auto")
    assert ("set_timing_cache", b"", False) in fake.calls
    assert "refused the timing cache" in caplog.text


def test_fake_profile_errors_before_tensorrt_is_touched(tmp_path, fake_trt):
    fake = fake_trt()
    with pytest.raises(InvalidInputError, match="static dimension 4"):
        trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", {"x": ((1, 4), (2, 5), (8, 4))}, 1 << 28,
                          None, None, "auto")
    assert fake.calls == []
    with pytest.raises(InvalidInputError, match="workspace_bytes"):
        trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", PROFILE, 0, None, None, "auto")


def _backend(tmp_path, fake, profiles=PROFILE, kind="fp32"):
    onnx_path = save_model(tmp_path / f"double-{kind}.onnx", kind)
    engine = trtb.build_engine(onnx_path, kind, profiles, 1 << 28, None, None, "auto")
    fake.calls.clear()
    info = trtb.inspect_onnx(onnx_path)
    return trtb.TensorRTBackend(engine, buffers="pycuda", name="double", model_specs=info.inputs + info.outputs)


def test_fake_backend_run_control_flow(tmp_path, fake_trt):
    """Control flow only: shapes set before output shapes are read, every IO tensor bound, contexts pushed."""
    fake = fake_trt()
    backend = _backend(tmp_path, fake)
    assert backend.inputs == [TensorSpec("x", "float32", ("x_dim0", 4))]
    assert backend.outputs == [TensorSpec("y", "float32", ("y_dim0", 4))]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = backend.run({"x": x})
    np.testing.assert_array_equal(out["y"], x * 2)
    assert [n for n in fake.names() if n != "deserialize_cuda_engine"] == [
        "set_input_shape", "set_tensor_address", "set_tensor_address", "execute_async_v3"]
    # Reused buffers: a second, smaller run must not see the first run's data, and results survive.
    first = out["y"]
    out2 = backend.run({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(out2["y"], np.full((1, 4), 2, np.float32))
    np.testing.assert_array_equal(first, x * 2)
    backend.close()
    assert _pushed(fake) and fake.state.stack() == [] and fake.state.primary_retained == 0


def test_fake_backend_calls_from_other_threads_push_the_context_there(tmp_path, fake_trt):
    """The review's bug: a context pushed only on the building thread left the stage threads without one."""
    import threading

    fake = fake_trt()
    backend = _backend(tmp_path, fake)
    results, errors = {}, []

    def worker(name, rows):
        try:
            results[name] = backend.run({"x": np.full((rows, 4), rows, np.float32)})["y"]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"stage-{i}", i + 1), name=f"stage-{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(3):
        np.testing.assert_array_equal(results[f"stage-{i}"], np.full((i + 1, 4), 2 * (i + 1), np.float32))
    assert {f"stage-{i}" for i in range(3)} <= fake.contexts[0].threads
    assert {name for name, kind in fake.state.pushes if kind == "push"} >= {f"stage-{i}" for i in range(3)}
    assert fake.state.stack() == []  # nothing left pushed on this thread either


def test_fake_backend_selects_the_profile_that_holds_the_shapes(tmp_path, fake_trt):
    fake = fake_trt()
    small, large = {"x": ((1, 4), (1, 4), (2, 4))}, {"x": ((3, 4), (6, 4), (16, 4))}
    backend = _backend(tmp_path, fake, profiles=[small, large])
    np.testing.assert_array_equal(backend.run({"x": np.ones((10, 4), np.float32)})["y"], np.full((10, 4), 2))
    np.testing.assert_array_equal(backend.run({"x": np.ones((2, 4), np.float32)})["y"], np.full((2, 4), 2))
    backend.run({"x": np.ones((1, 4), np.float32)})  # still profile 0: no switch
    switches = [c for c in fake.calls if c[0] == "set_optimization_profile_async"]
    assert [c[1] for c in switches] == [1, 0]
    assert all(c[2] == backend._stream_handle for c in switches)  # on the stream the run uses
    with pytest.raises(InvalidInputError, match="outside the engine's optimisation profiles.*profile 0: x min "
                                                "\\(1, 4\\) max \\(2, 4\\); profile 1: x min \\(3, 4\\) max \\(16, 4\\)"):
        backend.run({"x": np.zeros((17, 4), np.float32)})


def test_fake_backend_run_refusals(tmp_path, fake_trt):
    backend = _backend(tmp_path, fake_trt())
    with pytest.raises(InvalidInputError, match="outside the engine's optimisation profiles.*min \\(1, 4\\) max \\(8, 4\\)"):
        backend.run({"x": np.zeros((9, 4), np.float32)})
    with pytest.raises(InvalidInputError, match="must be float32"):
        backend.run({"x": np.zeros((2, 4), np.float64)})
    with pytest.raises(InvalidInputError, match="NaN"):
        backend.run({"x": np.full((2, 4), np.nan, np.float32)})
    backend.close()
    backend.close()
    with pytest.raises(InvalidInputError, match="closed"):
        backend.run({"x": np.zeros((2, 4), np.float32)})


class _CAI:
    def __init__(self, shape, ptr, typestr="<f4", stream=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "strides": None, "version": 3, "stream": stream}


class _Stream:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_fake_backend_run_device_waits_for_the_producer_and_stays_on_device(tmp_path, fake_trt, monkeypatch):
    fake = fake_trt()
    backend = _backend(tmp_path, fake)
    waits = []
    monkeypatch.setattr(trtb, "wait_for_producer", lambda consumer, producer, device: waits.append((consumer, producer)))
    with _pushed_context(fake):
        ptr = fake.state.alloc(2 * 4 * 4)
    fake.state.memory[ptr][:] = np.arange(8, dtype=np.float32).tobytes()
    fake.calls.clear()
    x = _CAI((2, 4), ptr, stream=900)
    out = backend.run_device({"x": x}, stream=_Stream(cuda_stream=5))
    assert waits == [(5, 900)]  # the engine's stream waits for the producer's before reading
    assert ("execute_async_v3", 5) in fake.calls
    y = out["y"]
    assert isinstance(y, trtb.DeviceArray) and y.shape == (2, 4) and y.stream == 5 and y.owner is not None
    assert y.__cuda_array_interface__["stream"] == 5  # the tokenizer will wait on it in turn
    np.testing.assert_array_equal(np.frombuffer(bytes(fake.state.memory[y.ptr][:32]), np.float32), np.arange(8) * 2)
    assert backend._keepalive == [x]  # the input is referenced until the next call
    with pytest.raises(InvalidInputError, match="must be float32, got float16"):
        backend.run_device({"x": _CAI((2, 4), ptr, typestr="<f2")})
    with pytest.raises(InvalidInputError, match="missing \\['x'\\]"):
        backend.run_device({})


class _pushed_context:
    """Make the fake primary context current on this thread (test set-up of fake device memory)."""

    def __init__(self, fake):
        self.fake = fake

    def __enter__(self):
        self.fake.state.stack().append("test")

    def __exit__(self, *exc):
        self.fake.state.stack().pop()


def test_fake_backend_outgrown_buffers_live_until_close(tmp_path, fake_trt):
    fake = fake_trt()
    backend = _backend(tmp_path, fake)
    backend.run({"x": np.ones((1, 4), np.float32)})
    first = dict(backend._device_mem)
    backend.run({"x": np.ones((8, 4), np.float32)})  # both buffers grow
    assert len(backend._retired) == 2 and all(not h.freed for h, _, _ in first.values())
    backend.close()
    assert all(h.freed for h, _, _ in first.values())


def test_fake_trt8_binds_int64_as_int32_and_run_converts(tmp_path, fake_trt):
    """TensorRT 8.x (JetPack 5.1 / 6.0) has no INT64 tensors: int64 inputs/outputs are INT32 bindings."""
    fake = fake_trt(version="8.6.1")
    path = tmp_path / "ids.onnx"
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])
    y = helper.make_tensor_value_info("next", TensorProto.INT64, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Add", ["ids", "one"], ["next"])], "inc", [x], [y],
                              [numpy_helper.from_array(np.array(1, np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    profile = {"ids": ((1, 3), (2, 3), (4, 3))}
    engine = trtb.build_engine(path, "fp32", profile, 1 << 28, None, None, "auto")
    info = trtb.inspect_onnx(path)
    backend = trtb.TensorRTBackend(engine, buffers="pycuda", model_specs=info.inputs + info.outputs)
    assert backend.inputs[0].dtype == "int64" and backend._dtypes["ids"] == np.int32
    out = backend.run({"ids": np.array([[1, 2, 3], [4, 5, 6]], np.int64)})
    assert out["next"].dtype == np.int64
    np.testing.assert_array_equal(out["next"], [[2, 3, 4], [5, 6, 7]])
    with pytest.raises(InvalidInputError, match="outside int32"):
        backend.run({"ids": np.array([[1, 2, 1 << 40]], np.int64)})
    with _pushed_context(fake):
        ptr = fake.state.alloc(24)
    with pytest.raises(InvalidInputError, match="binds int64 as int32: pass int32"):
        backend.run_device({"ids": _CAI((1, 3), ptr, typestr="<i8")})


def test_fake_trt8_network_is_explicit_batch(tmp_path, fake_trt):
    fake = fake_trt(version="8.5.2")
    trtb.build_engine(save_model(tmp_path / "m.onnx", "fp16"), "fp16", PROFILE, 1 << 28, None, None, "auto")
    assert ("create_network", 1 << 0) in fake.calls  # EXPLICIT_BATCH: the 8.x ONNX parser needs it
    assert ("set_flag", "FP16") in fake.calls  # weakly typed with the precision flag (no strong typing in 8.x)


def test_fake_deserialize_failure_is_a_clear_error(fake_trt):
    fake_trt()
    with pytest.raises(trtb.TensorRTError, match="could not deserialize"):
        trtb.TensorRTBackend(b"garbage", buffers="pycuda")


def test_fake_from_onnx_builds_once_then_uses_cache_and_rebuilds_damaged(tmp_path, fake_trt, caplog):
    fake = fake_trt(version="10.3.0", gpu=("Orin", "8.7"))
    onnx_path = save_model(tmp_path / "s3d.onnx")
    kwargs = dict(precision="fp16", profiles=PROFILE, buffers="pycuda")
    trtb.TensorRTBackend.from_onnx(onnx_path, **kwargs)
    assert fake.names().count("build_serialized_network") == 1
    engines = list((tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 1 and engines[0].name.startswith("s3d-fp16-sm87-trt10.3.0-")
    metadata, _ = read_engine_file(engines[0])
    assert EngineKey.from_dict(metadata["key"]).strongly_typed is False
    assert list((tmp_path / "engines").glob("timing-trt10.3.0-Orin-sm87.cache"))
    trtb.TensorRTBackend.from_onnx(onnx_path, **kwargs)
    assert fake.names().count("build_serialized_network") == 1  # loaded from the cache
    raw = bytearray(engines[0].read_bytes())
    raw[-1] ^= 0xFF
    engines[0].write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        trtb.TensorRTBackend.from_onnx(onnx_path, **kwargs)
    assert fake.names().count("build_serialized_network") == 2 and "sha256" in caplog.text


def test_fake_from_onnx_other_tensorrt_version_builds_a_new_engine(tmp_path, monkeypatch, caplog):
    import fake_tensorrt

    onnx_path = save_model(tmp_path / "s3d.onnx")
    fake_tensorrt.install(monkeypatch, version="10.3.0")
    trtb.TensorRTBackend.from_onnx(onnx_path, precision="fp16", profiles=PROFILE, buffers="pycuda")
    fake_tensorrt.install(monkeypatch, version="10.4.0")
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        trtb.TensorRTBackend.from_onnx(onnx_path, precision="fp16", profiles=PROFILE, buffers="pycuda")
    assert "tensorrt_version" in caplog.text and len(list((tmp_path / "engines").glob("*.engine"))) == 2
    assert EngineCache(tmp_path / "engines")  # folder is the cache


def test_without_tensorrt_backend_raises_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(BackendUnavailableError, match="vbedge\\[tensorrt\\]"):
        trtb.TensorRTBackend(b"x", buffers=object())


# ---- 3. real TensorRT (skipped where it cannot be imported) ------------------------------------------------

_HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not _HAS_TRT, reason="TensorRT is not installed (cannot be installed on the dev machines)")


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_build_and_run_matches_numpy(tmp_path, precision):
    onnx_path = save_model(tmp_path / "double.onnx", "fp16" if precision == "fp16" else "fp32")
    backend = trtb.TensorRTBackend.from_onnx(onnx_path, precision=precision, profiles=PROFILE, cache_dir=tmp_path / "e")
    dtype = np.float16 if precision == "fp16" else np.float32
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(dtype)
    np.testing.assert_allclose(backend.run({"x": x})["y"], x * 2, rtol=1e-3)
    backend.close()
    again = trtb.TensorRTBackend.from_onnx(onnx_path, precision=precision, profiles=PROFILE, cache_dir=tmp_path / "e")
    np.testing.assert_allclose(again.run({"x": x})["y"], x * 2, rtol=1e-3)


@pytest.mark.tensorrt
@needs_trt
def test_real_tensorrt_run_device_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    onnx_path = save_model(tmp_path / "double.onnx")
    backend = trtb.TensorRTBackend.from_onnx(onnx_path, profiles=PROFILE, cache_dir=tmp_path / "e", buffers="torch")
    x = torch.arange(8, dtype=torch.float32, device="cuda").reshape(2, 4)
    stream = torch.cuda.current_stream()
    out = backend.run_device({"x": x}, stream=stream)
    y = torch.as_tensor(out["y"], device="cuda")
    stream.synchronize()
    assert torch.equal(y.cpu(), (x * 2).cpu())


def _reduce_mean_opset18(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], "mean", [x], [y],
                              [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fake_trt8_build_refuses_an_opset18_graph_and_from_onnx_builds_from_the_checked_rewrite(tmp_path, fake_trt,
                                                                                                caplog):
    fake = fake_trt(version="8.6.1")
    path = _reduce_mean_opset18(tmp_path / "mean.onnx")
    profile = {"x": ((1, 4, 3), (2, 4, 3), (4, 4, 3))}
    with pytest.raises(FormatError, match="would misread mean.onnx: .*ReduceMean.*reduces over every axis"):
        trtb.build_engine(path, "fp32", profile, 1 << 28, None, None, "auto")
    with caplog.at_level(logging.INFO, logger="vbedge"):
        backend = trtb.TensorRTBackend.from_onnx(path, profiles=profile, buffers="pycuda")
    parsed = [c[1] for c in fake.calls if c[0] == "parse_from_file"][-1]
    assert "mean.trt8.6-v1-" in parsed and parsed.endswith(".onnx")
    assert "outputs match the original in ONNX Runtime" in caplog.text
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], x.mean(axis=2), rtol=1e-5)
    key_file = next((tmp_path / "engines").glob("mean-*.engine"))
    assert ["trt8_rewrite", 1] in EngineKey.from_dict(read_engine_file(key_file)[0]["key"]).to_dict()["builder_options"]


# ---- layer precisions, build progress, DLA (fake TensorRT for the engine side) -----------------------------


def test_layer_precision_reads_tensorrt_datatype_strings():
    from vbedge.backends.trt_inspect import format_precisions, layer_precision, layer_precisions

    def layer(*datatypes):
        return {"Name": "l", "Inputs": [{"Format/Datatype": d} for d in datatypes], "Outputs": []}

    assert layer_precision(layer("Row major linear Int8 format")) == "INT8"
    assert layer_precision(layer("Channel major FP16 format where channel % 8 == 0")) == "FP16"
    assert layer_precision(layer("Half")) == "FP16" and layer_precision(layer("Float")) == "FP32"
    assert layer_precision(layer("Row major linear FP32")) == "FP32"
    assert layer_precision(layer("Int32")) == "other" and layer_precision(layer()) == "other"
    assert layer_precision("conv1 + relu1") == "unknown"  # built without detailed verbosity
    info = {"Layers": [layer("Int8"), layer("Int8"), layer("Half"), "bare", layer("Int32")]}
    counts = layer_precisions(json.dumps(info))
    assert counts == {"INT8": 2, "FP16": 1, "other": 1, "unknown": 1}
    assert format_precisions(counts) == "INT8 2, FP16 1, other 1, unknown 1"


def test_fake_build_reports_layer_precisions_and_warns_on_a_quietly_fp32_int8_engine(tmp_path, fake_trt, caplog):
    from vbedge.backends.trt_inspect import read_report

    fake_trt(layer_precisions={"Row major linear Int8 format": 1, "Float": 6})
    path = save_model(tmp_path / "q.onnx", "int8")
    with caplog.at_level(logging.INFO, logger="vbedge"):
        backend = trtb.TensorRTBackend.from_onnx(path, precision="int8", profiles=PROFILE, buffers="pycuda")
    assert backend.layer_precisions() == {"INT8": 1, "FP32": 6, "other": 1}
    assert "layers: INT8 1, FP32 6, other 1" in caplog.text
    assert "runs only 1 of 7 compute layers in INT8" in caplog.text
    assert read_report(backend.engine_path) == {"precision": "int8", "layers": {"INT8": 1, "FP32": 6, "other": 1}}


def test_fake_build_progress_reaches_the_callback_on_trt10_only(tmp_path, monkeypatch):
    import fake_tensorrt

    steps = []
    fake_tensorrt.install(monkeypatch, version="10.3.0")
    trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", PROFILE, 1 << 28, None, None, "auto",
                      progress=lambda *a: steps.append(a))
    assert steps == [("Building", 0, 2), ("Building", 1, 2), ("Building", 2, 2), ("Building", 2, 2)]
    fake = fake_tensorrt.install(monkeypatch, version="8.6.1")  # no IProgressMonitor before 10
    steps.clear()
    trtb.build_engine(save_model(tmp_path / "m.onnx"), "fp32", PROFILE, 1 << 28, None, None, "auto",
                      progress=lambda *a: steps.append(a))
    assert steps == [] and "config.progress_monitor" not in fake.names()


def test_dla_is_refused_for_dynamic_shapes_and_warned_otherwise(caplog):
    dynamic = trtb.validate_profiles(SPECS, GOOD)
    with pytest.raises(InvalidInputError, match="DLA supports no dynamic shapes.*'mask', 'video'"):
        trtb.check_dla(0, dynamic, "s3d.onnx")
    static = trtb.validate_profiles([TensorSpec("x", "float32", ("b", 4))], {"x": ((2, 4), (2, 4), (2, 4))})
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        trtb.check_dla(0, static, "m.onnx")
    assert "fall back to the GPU" in caplog.text
    trtb.check_dla(None, dynamic)  # no DLA: nothing to say


def test_fake_run_to_device_leaves_outputs_on_the_device_on_the_backends_stream(tmp_path, fake_trt):
    fake = fake_trt()
    backend = _backend(tmp_path, fake)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = backend.run_to_device({"x": x})["y"]
    assert isinstance(out, trtb.DeviceArray) and out.stream == backend._stream_handle
    assert backend._stream.synchronized == 0  # nothing waited on the host
    np.testing.assert_array_equal(np.frombuffer(bytes(fake.state.memory[out.ptr][:32]), np.float32), x.ravel() * 2)


def test_fake_failed_open_releases_the_retained_primary_context(fake_trt):
    fake = fake_trt()
    with pytest.raises(trtb.TensorRTError, match="could not deserialize"):
        trtb.TensorRTBackend(b"garbage", buffers="pycuda")
    assert fake.state.primary_retained == 0 and fake.state.stack() == []
