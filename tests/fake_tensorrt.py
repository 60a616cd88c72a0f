"""FAKE ``tensorrt`` and ``pycuda`` modules for testing vbedge's plain-Python TensorRT wiring.

THESE ARE FAKES. They mimic the documented API surface vbedge calls (TensorRT 8.5-11 Python API,
pycuda's driver module) closely enough to run vbedge's code paths, and nothing more. A test that
passes with them proves the order of vbedge's calls, its error handling, its profile and option
plumbing, its CUDA-context discipline and its use of the cache; it proves nothing about TensorRT
or CUDA themselves.

What the fakes model, so that the wiring bugs of issue 13 fail here:

* ``FakeTRT``: a builder that records network flags, builder flags and optimisation profiles; an
  "engine" that remembers its ONNX file and profiles and *executes with ONNX Runtime* on the bytes
  at the bound addresses (so a pipeline over it gives real outputs to compare with the ONNX Runtime
  pipeline); a context that refuses shapes outside the *active* profile, switches profiles only
  through ``set_optimization_profile_async``, and refuses every call made on a thread where no
  CUDA context is current. TensorRT 8.x engines bind int64 tensors as INT32, as the 8.x parser does.
* ``FakePycuda``: ``pycuda.driver`` with a per-thread context stack, a primary context that must be
  retained and pushed, allocations in host memory keyed by fake device pointers, and streams.
"""

from __future__ import annotations

import importlib.machinery
import json
import threading
import types

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


class FakeCudaState:
    """Per-thread context stacks and fake device memory shared by the fake TensorRT and pycuda."""

    def __init__(self):
        self.memory = {}  # ptr -> bytearray
        self.next_ptr = 0x10000
        self._local = threading.local()
        self.lock = threading.Lock()
        self.pushes = []  # (thread name, 'push'/'pop')
        self.primary_retained = 0

    def stack(self):
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def require_context(self, what):
        if not self.stack():
            raise RuntimeError(f"{what}: no CUDA context is current on thread {threading.current_thread().name}")

    def alloc(self, nbytes):
        with self.lock:
            ptr = self.next_ptr
            self.next_ptr += 0x1000 + ((int(nbytes) + 0xFFF) // 0x1000) * 0x1000
            self.memory[ptr] = bytearray(int(nbytes))
        return ptr


def make_fake_pycuda(state):
    """``(pycuda, pycuda.driver)`` fake modules over ``state``."""
    driver = types.ModuleType("pycuda.driver")
    package = types.ModuleType("pycuda")
    package.__spec__ = importlib.machinery.ModuleSpec("pycuda", None, is_package=True)
    driver.__spec__ = importlib.machinery.ModuleSpec("pycuda.driver", None)
    package.driver = driver

    class Context:
        def __init__(self, device):
            self.device = device
            self.detached = False

        def push(self):
            if self.detached:
                raise RuntimeError("push of a detached context")
            state.stack().append(self)
            state.pushes.append((threading.current_thread().name, "push"))

        @staticmethod
        def pop():
            stack = state.stack()
            if not stack:
                raise RuntimeError("cuCtxPopCurrent: no current context")
            stack.pop()
            state.pushes.append((threading.current_thread().name, "pop"))

        @staticmethod
        def synchronize():
            state.require_context("cuCtxSynchronize")

        def detach(self):
            self.detached = True
            state.primary_retained -= 1

    class Device:
        def __init__(self, index):
            self.index = index

        def retain_primary_context(self):
            state.primary_retained += 1
            return Context(self.index)

        def compute_capability(self):
            return (9, 0)

        def name(self):
            return "Fake H200"

    class DeviceAllocation:
        def __init__(self, nbytes):
            state.require_context("cuMemAlloc")
            self.ptr = state.alloc(nbytes)
            self.freed = False

        def __int__(self):
            return self.ptr

        def free(self):
            state.require_context("cuMemFree")
            self.freed = True

    class Stream:
        _next = [0x5000]

        def __init__(self):
            state.require_context("cuStreamCreate")
            self.handle = Stream._next[0]
            Stream._next[0] += 8
            self.synchronized = 0

        def synchronize(self):
            state.require_context("cuStreamSynchronize")
            self.synchronized += 1

    def memcpy_htod_async(dest, src, stream=None):
        state.require_context("cuMemcpyHtoDAsync")
        data = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        state.memory[int(dest)][: data.nbytes] = data.tobytes()

    def memcpy_dtoh_async(dest, src, stream=None):
        state.require_context("cuMemcpyDtoHAsync")
        view = dest.view(np.uint8).reshape(-1)
        view[:] = np.frombuffer(bytes(state.memory[int(src)][: view.nbytes]), np.uint8)

    driver.init = lambda: None
    driver.Device = Device
    driver.Context = Context
    driver.Stream = Stream
    driver.mem_alloc = DeviceAllocation
    driver.pagelocked_empty = lambda n, dtype: np.zeros(n, dtype=dtype)
    driver.memcpy_htod_async = memcpy_htod_async
    driver.memcpy_dtoh_async = memcpy_dtoh_async
    return package, driver


def _np_dtype_of_onnx(ort_type):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32, "tensor(bool)": np.bool_}[ort_type]


class FakeTRT(types.ModuleType):
    """A fake ``tensorrt`` module (see the module docstring); ``calls`` records vbedge's calls in order."""

    def __init__(self, version="10.3.0", state=None, parse_ok=True, build_ok=True, dla_cores=0,
                 timing_accept=True, layer_precisions=None):
        super().__init__("tensorrt")
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.__version__ = version
        self.state = state or FakeCudaState()
        self.calls = []
        self.contexts = []
        self.layer_precisions = layer_precisions or {"Float": 3}
        fake = self
        major = int(version.split(".")[0])
        self.major = major

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class ILogger:
            pass

        ILogger.Severity = Severity
        ILogger.__init__ = lambda self: None
        self.ILogger = ILogger
        if major >= 10:
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
        else:  # 8.x: EXPLICIT_BATCH must be set for ONNX; no strong typing yet
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        flags = {"GPU_FALLBACK": "GPU_FALLBACK"}
        if major < 11:  # TensorRT 11 removed the precision flags
            flags.update(FP16="FP16", INT8="INT8")
        self.BuilderFlag = types.SimpleNamespace(**flags)
        self.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.ProfilingVerbosity = types.SimpleNamespace(LAYER_NAMES_ONLY="LAYER_NAMES_ONLY", DETAILED="DETAILED")
        self.LayerInformationFormat = types.SimpleNamespace(ONELINE="ONELINE", JSON="JSON")
        self.nptype = lambda dt: np.dtype(dt).type

        if major >= 10:
            class IProgressMonitor:
                def __init__(self):
                    pass

            self.IProgressMonitor = IProgressMonitor

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timed"

        class Config:
            def __init__(self):
                object.__setattr__(self, "cache", None)
                object.__setattr__(self, "profiles", [])

            def __setattr__(self, name, value):
                fake.calls.append(("config." + name, value))
                object.__setattr__(self, name, value)

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile", dict(profile.shapes)))
                self.profiles.append(dict(profile.shapes))
                return len(self.profiles) - 1

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

        class Network:
            def __init__(self, flags):
                self.flags = flags
                self.onnx = None

        class Parser:
            def __init__(self, network, logger):
                fake.calls.append(("OnnxParser",))
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                self.network.onnx = str(path)
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
                return Network(flags)

            def create_builder_config(self):
                fake.calls.append(("create_builder_config",))
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                monitor = getattr(config, "progress_monitor", None)
                if monitor is not None:
                    monitor.phase_start("Building", None, 2)
                    monitor.step_complete("Building", 1)
                    monitor.step_complete("Building", 2)
                    monitor.phase_finish("Building")
                if not build_ok:
                    self.logger.log(Severity.ERROR, "out of workspace for tactic X")
                    return None
                blob = json.dumps({"onnx": network.onnx, "profiles": config.profiles,
                                   "verbosity": getattr(config, "profiling_verbosity", None)})
                return memoryview(ENGINE_MAGIC + blob.encode())

        self.Builder = Builder
        self.OnnxParser = Parser

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.state.require_context("deserialize_cuda_engine")
                data = bytes(data)
                fake.calls.append(("deserialize_cuda_engine",))
                if not data.startswith(ENGINE_MAGIC):
                    return None
                return FakeEngine(fake, json.loads(data[len(ENGINE_MAGIC):]))

        self.Runtime = Runtime

    def names(self):
        return [c[0] for c in self.calls]


class FakeEngine:
    """An "engine" that runs its ONNX file with ONNX Runtime on the fake device memory."""

    def __init__(self, fake, blob):
        import onnxruntime as ort

        self.fake = fake
        self.session = ort.InferenceSession(blob["onnx"], providers=["CPUExecutionProvider"])
        self.profiles = [{k: tuple(tuple(s) for s in v) for k, v in p.items()} for p in blob["profiles"]]
        self.verbosity = blob.get("verbosity")
        self.num_optimization_profiles = max(1, len(self.profiles))
        self.io = []
        for mode, values in (("INPUT", self.session.get_inputs()), ("OUTPUT", self.session.get_outputs())):
            for value in values:
                dtype = np.dtype(_np_dtype_of_onnx(value.type))
                if dtype == np.int64 and fake.major < 10:
                    dtype = np.dtype(np.int32)  # the 8.x parser binds int64 as INT32
                shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
                self.io.append((value.name, mode, dtype, shape))
        self.num_io_tensors = len(self.io)
        self.num_layers = 3

    def _find(self, name):
        return next(entry for entry in self.io if entry[0] == name)

    def get_tensor_name(self, index):
        return self.io[index][0]

    def get_tensor_mode(self, name):
        return self._find(name)[1]

    def get_tensor_dtype(self, name):
        return self._find(name)[2]

    def get_tensor_shape(self, name):
        return self._find(name)[3]

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profiles[index][name]]

    def create_execution_context(self):
        self.fake.state.require_context("create_execution_context")
        context = FakeContext(self)
        self.fake.contexts.append(context)
        return context

    def create_engine_inspector(self):
        return FakeInspector(self)


class FakeInspector:
    def __init__(self, engine):
        self.engine = engine

    def get_engine_information(self, fmt):
        if self.engine.verbosity != "DETAILED":
            return json.dumps({"Layers": [f"layer{i}" for i in range(3)], "Bindings": []})
        layers = []
        for datatype, count in self.engine.fake.layer_precisions.items():
            for i in range(count):
                layers.append({"Name": f"{datatype}-{i}", "LayerType": "CaskConvolution",
                               "Inputs": [{"Name": "in", "Format/Datatype": f"Row major linear {datatype}"}],
                               "Outputs": [{"Name": "out", "Format/Datatype": f"Row major linear {datatype}"}]})
        layers.append({"Name": "shape-only", "LayerType": "Shuffle", "Inputs": [], "Outputs": []})
        return json.dumps({"Layers": layers, "Bindings": []})


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.fake = engine.fake
        self.profile = 0
        self.shapes, self.addresses = {}, {}
        self.profile_switches = []
        self.threads = set()

    def _check(self, what):
        self.fake.state.require_context(what)
        self.threads.add(threading.current_thread().name)

    def set_optimization_profile_async(self, index, stream):
        self._check("set_optimization_profile_async")
        self.fake.calls.append(("set_optimization_profile_async", index, stream))
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile = index
        self.profile_switches.append(index)
        return True

    def set_input_shape(self, name, shape):
        self._check("set_input_shape")
        self.fake.calls.append(("set_input_shape", name, tuple(shape)))
        if self.engine.profiles:
            low, _, high = self.engine.profiles[self.profile][name]
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                return False
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def infer_shapes(self):
        return []

    def _zero_feeds(self):
        feeds = {}
        for name, mode, dtype, _ in self.engine.io:
            if mode == "INPUT":
                onnx_dtype = np.int64 if dtype == np.int32 and self.fake.major < 10 else dtype
                feeds[name] = np.zeros(self.shapes[name], dtype=onnx_dtype)
        return feeds

    def get_tensor_shape(self, name):
        if self.engine.get_tensor_mode(name) == "INPUT":
            return self.shapes[name]
        outputs = self.engine.session.run([name], self._zero_feeds())
        return tuple(outputs[0].shape)

    def set_tensor_address(self, name, ptr):
        self._check("set_tensor_address")
        self.fake.calls.append(("set_tensor_address", name))
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream):
        self._check("execute_async_v3")
        self.fake.calls.append(("execute_async_v3", stream))
        memory = self.fake.state.memory
        feeds = {}
        for name, mode, dtype, _ in self.engine.io:
            if mode != "INPUT":
                continue
            count = int(np.prod(self.shapes[name], dtype=np.int64))
            raw = bytes(memory[self.addresses[name]][: count * dtype.itemsize])
            array = np.frombuffer(raw, dtype).reshape(self.shapes[name])
            feeds[name] = array.astype(np.int64) if dtype == np.int32 and self.fake.major < 10 else array
        names = [entry[0] for entry in self.engine.io if entry[1] == "OUTPUT"]
        for name, value in zip(names, self.engine.session.run(names, feeds)):
            value = np.ascontiguousarray(value.astype(self.engine.get_tensor_dtype(name)))
            memory[self.addresses[name]][: value.nbytes] = value.tobytes()
        return True


def install(monkeypatch, version="10.3.0", gpu=("Fake H200", "9.0"), **kwargs):
    """Put a fake ``tensorrt`` and ``pycuda`` into ``sys.modules`` and make vbedge see a GPU.

    Returns the :class:`FakeTRT`; its ``state`` is the shared :class:`FakeCudaState`.
    """
    import sys

    from vbedge.backends import select
    from vbedge.backends import tensorrt as trt_backend

    fake = FakeTRT(version=version, **kwargs)
    package, driver = make_fake_pycuda(fake.state)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setattr(select, "gpu_status", lambda: (True, f"{gpu[0]} (fake)"))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=0: gpu)
    return fake
