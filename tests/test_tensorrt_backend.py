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
import logging
import sys
import types

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
        ("8.6.1", "fp16", "auto", FP16, None, BackendUnavailableError, "TensorRT 10 or newer"),
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


class _Stream:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_stream_handle_accepts_int_and_stream_objects():
    assert trtb.stream_handle(123) == 123
    assert trtb.stream_handle(_Stream(cuda_stream=7)) == 7  # torch / CuPy
    assert trtb.stream_handle(_Stream(handle=9)) == 9  # pycuda
    with pytest.raises(InvalidInputError, match="stream"):
        trtb.stream_handle("default")
    with pytest.raises(InvalidInputError, match="stream"):
        trtb.stream_handle(True)


class _CAI:
    def __init__(self, shape, typestr="<f4", strides=None, ptr=4096):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "strides": strides, "version": 3}


def test_describe_device_array():
    assert trtb.describe_device_array(_CAI((2, 4))) == (4096, (2, 4), "float32")
    assert trtb.describe_device_array(_CAI((2, 4), strides=(16, 4))) == (4096, (2, 4), "float32")
    with pytest.raises(InvalidInputError, match="C-contiguous"):
        trtb.describe_device_array(_CAI((2, 4), strides=(4, 8)))
    assert trtb.describe_device_array((1234, [2, 4])) == (1234, (2, 4), None)
    with pytest.raises(InvalidInputError, match="CUDA array"):
        trtb.describe_device_array(np.zeros((2, 4), np.float32))
    arr = trtb.DeviceArray(4096, (2, 4), np.float16, 55)
    cai = arr.__cuda_array_interface__
    assert cai["typestr"] == "<f2" and cai["data"] == (4096, False) and cai["stream"] == 55 and arr.nbytes == 16
    assert trtb.describe_device_array(arr) == (4096, (2, 4), "float16")


def test_cpu_torch_tensor_refused_for_run_device():
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidInputError, match="CPU torch tensor"):
        trtb.describe_device_array(torch.zeros(2, 4))


# ---- 2. control flow against a FAKE tensorrt module (tests our code, not TensorRT) -------------------------


class FakeTRT(types.ModuleType):
    """Mimics the documented TensorRT Python API surface vbedge calls; records the calls in order."""

    def __init__(self, version="10.3.0", parse_ok=True, build_ok=True, dla_cores=0, timing_accept=True,
                 engine_io=None):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls = []
        self.memory = {}  # fake device memory: ptr -> bytearray (shared with FakeBuffers)
        fake = self
        major = int(version.split(".")[0])

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class ILogger:
            pass

        ILogger.Severity = Severity
        ILogger.__init__ = lambda self: None
        self.ILogger = ILogger
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        flags = {"GPU_FALLBACK": "GPU_FALLBACK"}
        if major < 11:  # TensorRT 11 removed the precision flags
            flags.update(FP16="FP16", INT8="INT8")
        self.BuilderFlag = types.SimpleNamespace(**flags)
        self.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.nptype = lambda dt: np.dtype(dt).type

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timed"

        class Config:
            def __init__(self):
                object.__setattr__(self, "cache", None)

            def __setattr__(self, name, value):
                fake.calls.append(("config." + name, value))
                object.__setattr__(self, name, value)

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile", dict(profile.shapes)))
                return 0

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", cache.data, ignore_mismatch))
                ok = timing_accept or cache.data == b""
                if ok:
                    object.__setattr__(self, "cache", cache)
                return ok

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Parser:
            def __init__(self, network, logger):
                fake.calls.append(("OnnxParser",))
                self.logger = logger
                self.num_errors = 0

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                if not parse_ok:
                    self.num_errors = 1
                return parse_ok

            def get_error(self, index):
                return types.SimpleNamespace(node=lambda: 3, desc=lambda: "unsupported op Foo",
                                             node_name=lambda: "/s3d/foo", node_operator=lambda: "Foo")

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                fake.calls.append(("Builder",))
                self.logger = logger

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                fake.calls.append(("create_builder_config",))
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                if not build_ok:
                    self.logger.log(Severity.ERROR, "out of workspace for tactic X")
                    return None
                return memoryview(b"SERIALIZED-ENGINE")

        self.Builder = Builder
        self.OnnxParser = Parser

        io = engine_io or [("x", "INPUT", "float32", (-1, 4)), ("y", "OUTPUT", "float32", (-1, 4))]

        class Context:
            def __init__(self):
                self.shapes, self.addresses = {}, {}

            def set_input_shape(self, name, shape):
                fake.calls.append(("set_input_shape", name, tuple(shape)))
                if not 1 <= shape[0] <= 8:
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def infer_shapes(self):
                return []

            def get_tensor_shape(self, name):
                return self.shapes["x"]  # y has x's shape

            def set_tensor_address(self, name, ptr):
                fake.calls.append(("set_tensor_address", name))
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream):
                fake.calls.append(("execute_async_v3", stream))
                src = fake.memory[self.addresses["x"]]
                n = int(np.prod(self.shapes["x"])) * 4
                x = np.frombuffer(bytes(src[:n]), np.float32)
                fake.memory[self.addresses["y"]][:n] = (x * 2).astype(np.float32).tobytes()
                return True

        class Engine:
            num_io_tensors = len(io)

            def get_tensor_name(self, i):
                return io[i][0]

            def get_tensor_mode(self, name):
                return {n: m for n, m, _, _ in io}[name]

            def get_tensor_dtype(self, name):
                return {n: d for n, _, d, _ in io}[name]

            def get_tensor_shape(self, name):
                return {n: s for n, _, _, s in io}[name]

            def get_tensor_profile_shape(self, name, index):
                return [(1, 4), (4, 4), (8, 4)]

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize_cuda_engine", bytes(data)))
                return Engine() if bytes(data) == b"SERIALIZED-ENGINE" else None

        self.Runtime = Runtime

    def names(self):
        return [c[0] for c in self.calls]


class FakeBuffers:
    """Host-memory stand-in for pycuda/torch buffers (pointers are dict keys into fake.memory)."""

    kind = "fake"

    def __init__(self, fake):
        self.memory = fake.memory
        self.next_ptr = 0x1000
        self.synced = 0

    def alloc(self, nbytes):
        buf = bytearray(nbytes)
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + 0x1000 + nbytes
        self.memory[ptr] = buf
        return buf, ptr

    def host(self, nbytes):
        array = np.zeros(nbytes, np.uint8)
        return array, array

    def stream(self):
        return "own-stream", 77

    def htod(self, dev, host, nbytes, stream):
        dev[:nbytes] = host[:nbytes].tobytes()

    def dtoh(self, host, dev, nbytes, stream):
        host[:nbytes] = np.frombuffer(bytes(dev[:nbytes]), np.uint8)

    def synchronize(self, stream):
        self.synced += 1

    def close(self):
        pass


@pytest.fixture()
def fake_trt(monkeypatch):
    def install(**kwargs):
        fake = FakeTRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    return install


PROFILE = {"x": ((1, 4), (2, 4), (8, 4))}


def test_fake_build_call_order_trt10_weakly_typed_fp16(tmp_path, fake_trt):
    """Control flow only (fake TensorRT): weakly typed network, FP16 flag, profile, timing cache."""
    fake = fake_trt(version="10.3.0")
    onnx_path = save_model(tmp_path / "m.onnx")
    timing = tmp_path / "engines" / "timing.cache"
    engine = trtb.build_engine(onnx_path, "fp16", PROFILE, 1 << 28, timing, None, "auto")
    assert engine == b"SERIALIZED-ENGINE"
    assert fake.names() == [
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
    assert ("create_network", 1) in fake.calls
    assert not [c for c in fake.calls if c[0] == "set_flag"]


def test_fake_build_trt11_never_uses_removed_flags(tmp_path, fake_trt):
    fake = fake_trt(version="11.0.0")
    trtb.build_engine(save_model(tmp_path / "m.onnx", "int8"), "int8", PROFILE, 1 << 28, None, None, "auto")
    assert ("create_network", 0) in fake.calls  # STRONGLY_TYPED is ignored/deprecated in 11: not passed
    assert not [c for c in fake.calls if c[0] == "set_flag"]
    with pytest.raises(InvalidInputError, match="must come from the ONNX"):
        trtb.build_engine(save_model(tmp_path / "f.onnx"), "fp16", PROFILE, 1 << 28, None, None, "auto")


def test_fake_build_dla(tmp_path, fake_trt):
    fake = fake_trt(version="10.3.0", dla_cores=2)
    trtb.build_engine(save_model(tmp_path / "m.onnx", "fp16"), "fp16", PROFILE, 1 << 28, None, 1, "auto")
    assert ("config.default_device_type", "DLA") in fake.calls and ("config.DLA_core", 1) in fake.calls
    assert ("set_flag", "GPU_FALLBACK") in fake.calls
    with pytest.raises(InvalidInputError, match="has 2 DLA core"):
        trtb.build_engine(save_model(tmp_path / "m.onnx", "fp16"), "fp16", PROFILE, 1 << 28, None, 2, "auto")


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


def _backend(fake):
    return trtb.TensorRTBackend(b"SERIALIZED-ENGINE", buffers=FakeBuffers(fake), name="double")


def test_fake_backend_run_control_flow(fake_trt):
    """Control flow only: shapes set before output shapes are read, every IO tensor bound, sync once."""
    fake = fake_trt()
    backend = _backend(fake)
    assert backend.inputs == [TensorSpec("x", "float32", ("x_dim0", 4))]
    assert backend.outputs == [TensorSpec("y", "float32", ("y_dim0", 4))]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fake.calls.clear()
    out = backend.run({"x": x})
    np.testing.assert_array_equal(out["y"], x * 2)
    assert fake.names() == ["set_input_shape", "set_tensor_address", "set_tensor_address", "execute_async_v3"]
    assert ("execute_async_v3", 77) in fake.calls
    # Reused buffers: a second, smaller run must not see the first run's data, and results survive.
    first = out["y"]
    out2 = backend.run({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(out2["y"], np.full((1, 4), 2, np.float32))
    np.testing.assert_array_equal(first, x * 2)


def test_fake_backend_run_refusals(fake_trt):
    backend = _backend(fake_trt())
    with pytest.raises(InvalidInputError, match="outside the engine's optimisation profile.*min \\(1, 4\\), max \\(8, 4\\)"):
        backend.run({"x": np.zeros((9, 4), np.float32)})
    with pytest.raises(InvalidInputError, match="must be float32"):
        backend.run({"x": np.zeros((2, 4), np.float64)})
    with pytest.raises(InvalidInputError, match="NaN"):
        backend.run({"x": np.full((2, 4), np.nan, np.float32)})
    backend.close()
    backend.close()
    with pytest.raises(InvalidInputError, match="closed"):
        backend.run({"x": np.zeros((2, 4), np.float32)})


def test_fake_backend_run_device_stays_on_device_and_uses_callers_stream(fake_trt):
    fake = fake_trt()
    buffers = FakeBuffers(fake)
    backend = trtb.TensorRTBackend(b"SERIALIZED-ENGINE", buffers=buffers, name="double")
    buf, ptr = buffers.alloc(2 * 4 * 4)
    buf[:] = np.arange(8, dtype=np.float32).tobytes()
    fake.calls.clear()
    out = backend.run_device({"x": _CAI((2, 4), ptr=ptr)}, stream=_Stream(cuda_stream=5))
    assert ("execute_async_v3", 5) in fake.calls and buffers.synced == 0  # no host sync
    y = out["y"]
    assert isinstance(y, trtb.DeviceArray) and y.shape == (2, 4) and y.stream == 5
    np.testing.assert_array_equal(np.frombuffer(bytes(fake.memory[y.ptr][:32]), np.float32), np.arange(8) * 2)
    with pytest.raises(InvalidInputError, match="must be float32, got float16"):
        backend.run_device({"x": _CAI((2, 4), typestr="<f2", ptr=ptr)})
    with pytest.raises(InvalidInputError, match="missing \\['x'\\]"):
        backend.run_device({})


def test_fake_deserialize_failure_is_a_clear_error(fake_trt):
    fake = fake_trt()
    with pytest.raises(trtb.TensorRTError, match="could not deserialize"):
        trtb.TensorRTBackend(b"garbage", buffers=FakeBuffers(fake))


def test_fake_from_onnx_builds_once_then_uses_cache_and_rebuilds_damaged(tmp_path, fake_trt, monkeypatch, caplog):
    fake = fake_trt(version="10.3.0")
    monkeypatch.setattr(trtb, "gpu_identity", lambda device=0: ("Orin", "8.7"))
    onnx_path = save_model(tmp_path / "s3d.onnx")
    kwargs = dict(precision="fp16", profiles=PROFILE, buffers=FakeBuffers(fake))
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
    # Another TensorRT version on the same bundle: a new engine, the old one explained and kept.
    caplog.clear()
    fake2 = fake_trt(version="10.4.0")
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        trtb.TensorRTBackend.from_onnx(onnx_path, precision="fp16", profiles=PROFILE, buffers=FakeBuffers(fake2))
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
