"""Native TensorRT backend: engines built from the bundle's ONNX on the target, cached, run from any thread.

The TensorRT code is split by job:

* :mod:`vbedge.backends.trt_onnx`: ONNX inspection (inputs, precision, what 8.x parsers misread);
* :mod:`vbedge.backends.trt_policy`: build policy and profiles (pure Python);
* :mod:`vbedge.backends.trt_builder`: the engine builder;
* :mod:`vbedge.backends.trt_memory`: device memory, streams, the CUDA context;
* this module: the runtime, :class:`TensorRTBackend` (and the names above, re-exported).

Written against the TensorRT 8.5-11 Python API documentation and checked by reading Polygraphy's
TensorRT runner and NVIDIA's samples. NOT YET RUN against a real TensorRT (it cannot be installed
on the development machines); what is tested without it is everything around it, against fake
``tensorrt`` and ``pycuda`` modules (tests/fake_tensorrt.py). See docs/tensorrt.md.

Heavy modules (tensorrt, pycuda, torch, onnx) are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..cuda_interop import DeviceArray, is_torch_tensor, stream_handle, view_device_array, wait_for_producer
from ..engine_cache import EngineCache
from ..errors import InvalidInputError
from .base import Backend, TensorSpec, validate_inputs
from .trt_builder import (DEFAULT_WORKSPACE_BYTES, TensorRTError, _import_tensorrt, _make_logger, _trt_errors,
                          build_engine, prepare_onnx_for)
from .trt_inspect import format_precisions, layer_precisions, precision_warning, read_report, write_report
from .trt_memory import describe_device_array, gpu_identity, make_buffers
from .trt_onnx import OnnxInfo, inspect_onnx
from .trt_policy import (MIN_TENSORRT, BuildPlan, check_dla, engine_key, parse_version, plan_build,
                         validate_profiles)

__all__ = [
    "TensorRTBackend", "TensorRTError", "DeviceArray", "build_engine", "prepare_onnx_for", "inspect_onnx",
    "OnnxInfo", "validate_profiles", "plan_build", "BuildPlan", "check_dla", "engine_key", "parse_version",
    "gpu_identity", "make_buffers", "describe_device_array", "stream_handle", "DEFAULT_WORKSPACE_BYTES",
    "MIN_TENSORRT",
]

log = logging.getLogger("vbedge")


class TensorRTBackend(Backend):
    """Runs a TensorRT engine: host arrays with :meth:`run`, device buffers with :meth:`run_device`.

    Args:
        engine: serialized engine bytes (from the cache) or a deserialized ``ICudaEngine``.
        device: CUDA device index.
        buffers: 'auto' (pycuda, else torch), 'pycuda', 'torch', or an object with the same methods
            as ``_PycudaBuffers`` (tests inject one).
        name: model name for messages.
        model_specs: the model's input and output specs as the ONNX declares them (from
            :func:`inspect_onnx`). TensorRT 8.x binds int64 inputs and outputs as INT32; with
            ``model_specs`` :meth:`run` still takes and returns int64 host arrays (range-checked).

    Use :meth:`from_onnx` to build-or-load from a bundle's ONNX through the engine cache. Calls may
    come from any thread (each one makes the device's primary context current for its duration);
    they are serialised, because one backend owns one execution context.
    """

    name = "tensorrt"

    def __init__(self, engine, device=0, buffers="auto", name="engine", model_specs=None):
        trt = _import_tensorrt()
        self._trt = trt
        self.model_name = name
        self.device = int(device)
        self._lock = threading.RLock()
        self._model_specs = model_specs
        self._buffers = make_buffers(buffers, device) if isinstance(buffers, str) else buffers
        self._logger = _make_logger(trt)
        self._runtime = None
        self._context = None
        try:
            self._open(engine, name)
        except BaseException:
            # Release the primary context retained for us (an injected provider stays the caller's).
            if isinstance(buffers, str):
                self._buffers.close()
            raise

    def _open(self, engine, name):
        import numpy as np

        trt = self._trt
        with self._buffers.activate():
            if isinstance(engine, (bytes, bytearray, memoryview)):
                self._runtime = trt.Runtime(self._logger)
                if not self._runtime:
                    raise TensorRTError(f"trt.Runtime could not be created.{_trt_errors(self._logger)}")
                engine = self._runtime.deserialize_cuda_engine(bytes(engine))
                if engine is None:
                    raise TensorRTError(
                        f"TensorRT could not deserialize the {name} engine (built by another TensorRT version or "
                        f"for another GPU?).{_trt_errors(self._logger)}"
                    )
            self._engine = engine
            context = engine.create_execution_context()
            if not context:
                raise TensorRTError(
                    f"could not create an execution context for {name} (out of GPU memory?).{_trt_errors(self._logger)}")
            self._stream, self._stream_handle = self._buffers.stream()
        declared = {spec.name: spec for spec in (self._model_specs or ())}
        self._inputs, self._outputs = [], []
        self._dtypes = {}  # tensor -> NumPy dtype of the binding (what TensorRT reads/writes)
        self._host_dtypes = {}  # tensor -> NumPy dtype the caller sees (int64 where 8.x binds INT32)
        for index in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor)))
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            # TensorRT 8.x has no INT64 tensors: its parser turned the ONNX int64 into INT32.
            narrowed = dtype == np.int32 and tensor in declared and declared[tensor].dtype == "int64"
            host = np.dtype(np.int64) if narrowed else dtype
            shape = tuple(d if d >= 0 else f"{tensor}_dim{axis}" for axis, d in enumerate(engine.get_tensor_shape(tensor)))
            spec = TensorSpec(tensor, host.name, shape)
            self._dtypes[tensor], self._host_dtypes[tensor] = dtype, host
            (self._inputs if is_input else self._outputs).append(spec)
        self._profiles = self._read_profiles(engine)
        self._profile = 0  # a new context starts on profile 0
        self._device_mem = {}  # tensor -> (handle, ptr, capacity)
        self._host_mem = {}  # tensor -> (handle, uint8 array, capacity)
        self._retired = []  # outgrown device allocations queued work may still read: freed at close
        self._keepalive = []  # owners of the last run_device's inputs
        self._context = context

    def _read_profiles(self, engine):
        """Per profile: input tensor -> (min, opt, max) shapes, for inputs with dynamic dimensions."""
        count = int(getattr(engine, "num_optimization_profiles", 1) or 1)
        dynamic = [spec.name for spec in self._inputs if any(not isinstance(d, int) for d in spec.shape)]
        profiles = []
        for index in range(count):
            ranges = {}
            for tensor in dynamic:
                low, opt, high = engine.get_tensor_profile_shape(tensor, index)
                ranges[tensor] = (tuple(int(d) for d in low), tuple(int(d) for d in opt), tuple(int(d) for d in high))
            profiles.append(ranges)
        return profiles

    @classmethod
    def from_onnx(cls, onnx_path, precision="fp32", profiles=None, cache_dir=None,
                  workspace_bytes=DEFAULT_WORKSPACE_BYTES, dla_core=None, strongly_typed="auto", device=0,
                  buffers="auto", rebuild=False, progress=None, manifest_sha256=None):
        """Load the cached engine for this ONNX/precision/GPU/TensorRT, or build and cache it.

        ``cache_dir`` defaults to ``<onnx folder>/engines``. A cached engine whose key differs
        (other TensorRT, GPU, ONNX hash, profiles...) or whose file is damaged is rebuilt with a
        log message, never loaded. After a build the engine's per-layer precisions are logged and
        stored beside it (``<engine>.layers.json``), with a warning when an fp16/int8 engine runs
        most layers in another precision. ``progress``: see :func:`build_engine`. ``dla_core``:
        refused for graphs with dynamic shapes (DLA has none, and no MatMul/TopK/Gather: every
        layer of vbedge's models would fall back to the GPU); a warning otherwise.
        ``manifest_sha256`` (set for bundles) binds the cache to the bundle's manifest: only engines
        that record it are loaded (vbedge.engine_cache).
        """
        onnx_path = Path(onnx_path)
        trt = _import_tensorrt()
        info = inspect_onnx(onnx_path)
        canonical_profiles = validate_profiles(info.inputs, profiles)
        check_dla(dla_core, canonical_profiles, onnx_path.name)
        plan = plan_build(trt.__version__, precision, strongly_typed, info, dla_core)
        gpu_name, capability = gpu_identity(device)
        key = engine_key(onnx_path, trt.__version__, gpu_name, capability, precision, canonical_profiles,
                         dla_core, plan, workspace_bytes)
        cache = EngineCache(cache_dir if cache_dir is not None else onnx_path.parent / "engines",
                            manifest_sha256=manifest_sha256)
        timing = cache.timing_cache_path(trt.__version__, gpu_name, capability)

        def build():
            # TensorRT 8.x misreads opset-18 graphs: build from a checked rewrite kept in the cache.
            source, _ = prepare_onnx_for(onnx_path, trt.__version__, cache.directory, profiles)
            return build_engine(source, precision, profiles, workspace_bytes, timing, dla_core, plan.strongly_typed,
                                progress=progress)

        engine, path, built = cache.get_or_build(key, build, rebuild=rebuild)
        log.info("TensorRT engine %s %s", path.name, "built" if built else "loaded from cache")
        backend = cls(engine, device=device, buffers=buffers, name=onnx_path.stem,
                      model_specs=info.inputs + info.outputs)
        backend.engine_path = path
        if built or read_report(path) is None:
            counts = backend.layer_precisions()
            try:
                write_report(path, precision, counts)
            except OSError as exc:  # a read-only cache still runs; the report is only missing
                log.warning("cannot store the layer report of %s: %s", path.name, exc)
            log.info("TensorRT engine %s layers: %s", path.name, format_precisions(counts))
            warning = precision_warning(precision, counts)
            if warning:
                log.warning("TensorRT engine %s: %s", path.name, warning)
        return backend

    def layer_precisions(self):
        """Layers per precision ({'INT8': n, 'FP16': n, 'FP32': n, 'other': n, ...}) from the engine inspector."""
        with self._lock, self._buffers.activate():
            self._check_open()
            inspector = self._engine.create_engine_inspector()
            if not inspector:
                raise TensorRTError(f"{self.model_name}: create_engine_inspector() failed.{_trt_errors(self._logger)}")
            return layer_precisions(inspector.get_engine_information(self._trt.LayerInformationFormat.JSON))

    # -- shapes, profiles and memory --

    def _select_profile(self, shapes, handle):
        """Make the first optimisation profile whose ranges hold ``shapes`` active (on stream ``handle``); return its index."""
        def fits(ranges):
            for tensor, (low, _, high) in ranges.items():
                shape = tuple(int(d) for d in shapes[tensor])
                if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                    return False
            return True

        chosen = next((index for index, ranges in enumerate(self._profiles) if fits(ranges)), None)
        if chosen is None:
            given = ", ".join(f"{t} {tuple(shapes[t])}" for t in self._profiles[0])
            described = "; ".join(
                f"profile {i}: " + ", ".join(f"{t} min {lo} max {hi}" for t, (lo, _, hi) in ranges.items())
                for i, ranges in enumerate(self._profiles))
            raise InvalidInputError(
                f"{self.model_name} input shapes ({given}) are outside the engine's optimisation profiles "
                f"({described}); rebuild with a wider profile"
            )
        if chosen != self._profile:
            # Switching profiles is ordered on the stream the next execution runs on.
            if not self._context.set_optimization_profile_async(chosen, handle):
                raise TensorRTError(f"{self.model_name}: set_optimization_profile_async({chosen}) was refused."
                                    f"{_trt_errors(self._logger)}")
            self._profile = chosen
        return chosen

    def _set_input_shapes(self, shapes, handle):
        profile = self._select_profile(shapes, handle) if self._profiles and self._profiles[0] else 0
        for tensor, shape in shapes.items():
            if not self._context.set_input_shape(tensor, tuple(int(d) for d in shape)):
                low, _, high = self._engine.get_tensor_profile_shape(tensor, profile)
                raise InvalidInputError(
                    f"{self.model_name} input {tensor!r} shape {tuple(shape)} is outside the engine's optimisation "
                    f"profile {profile} (min {tuple(low)}, max {tuple(high)}); rebuild with a wider profile."
                    f"{_trt_errors(self._logger)}"
                )
        if hasattr(self._context, "infer_shapes"):
            unresolved = self._context.infer_shapes()
            if unresolved:
                raise TensorRTError(f"{self.model_name}: TensorRT could not infer the shapes of {list(unresolved)}")
        out = {}
        for spec in self._outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise TensorRTError(
                    f"{self.model_name} output {spec.name!r} has data-dependent shape {shape}; vbedge's TensorRT "
                    "backend supports outputs whose shape follows from the input shapes only"
                )
            out[spec.name] = shape
        return out

    def _device_buffer(self, tensor, nbytes):
        handle, ptr, capacity = self._device_mem.get(tensor, (None, 0, -1))
        if capacity < nbytes:
            if handle is not None:
                # Work queued on another stream may still read or write the old buffer: keep it
                # until close (buffers only grow, a few times, to the largest shape seen).
                self._retired.append(handle)
            handle, ptr = self._buffers.alloc(nbytes)
            self._device_mem[tensor] = (handle, ptr, nbytes)
        return handle, ptr

    def _host_buffer(self, tensor, nbytes):
        handle, array, capacity = self._host_mem.get(tensor, (None, None, -1))
        if capacity < nbytes:
            handle, array = self._buffers.host(nbytes)
            self._host_mem[tensor] = (handle, array, nbytes)
        return handle, array

    def _bind(self, tensor, ptr):
        if not self._context.set_tensor_address(tensor, int(ptr)):
            raise TensorRTError(f"{self.model_name}: set_tensor_address({tensor!r}) was refused.{_trt_errors(self._logger)}")

    def _execute(self, handle):
        if not self._context.execute_async_v3(handle):
            raise TensorRTError(f"{self.model_name}: execute_async_v3 failed.{_trt_errors(self._logger)}")

    def _check_open(self):
        if self._context is None:
            raise InvalidInputError(f"{self.model_name}: backend is closed")

    def _to_binding(self, tensor, array):
        """A host array in the binding's dtype (int64 -> INT32 on TensorRT 8.x, range-checked)."""
        import numpy as np

        want = self._dtypes[tensor]
        if array.dtype == want:
            return array
        info = np.iinfo(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidInputError(
                f"{self.model_name} input {tensor!r} has values outside int32, which this TensorRT binds it as "
                f"(TensorRT 8.x has no int64 tensors): range [{array.min()}, {array.max()}]"
            )
        return np.ascontiguousarray(array.astype(want))

    # -- execution --

    def run(self, inputs):
        """Host arrays in, host arrays out (validated, copied through pinned buffers, synchronised)."""
        import numpy as np

        with self._lock:
            self._check_open()
            arrays = validate_inputs(self._inputs, inputs, model=self.model_name)
            arrays = {name: self._to_binding(name, a) for name, a in arrays.items()}
            with self._buffers.activate():
                return self._run_locked(arrays, np)

    def run_to_device(self, inputs):
        """Host arrays in (validated, copied through pinned buffers), :class:`DeviceArray` outputs out.

        Nothing is synchronised: the outputs are produced on the backend's own stream, which their
        ``__cuda_array_interface__`` names, so the CUDA tokenizer waits for it. The memory is the
        backend's and is overwritten by its next call: consume it (on any stream) before then.
        On TensorRT 8.x, int64 outputs come back as int32 device arrays.
        """
        import numpy as np

        with self._lock:
            self._check_open()
            arrays = validate_inputs(self._inputs, inputs, model=self.model_name)
            arrays = {name: self._to_binding(name, a) for name, a in arrays.items()}
            with self._buffers.activate():
                return self._run_locked(arrays, np, to_host=False)

    def _run_locked(self, arrays, np, to_host=True):
        stream = self._stream
        out_shapes = self._set_input_shapes({name: a.shape for name, a in arrays.items()}, self._stream_handle)
        for tensor, array in arrays.items():
            raw = array.reshape(-1).view(np.uint8)
            dev_handle, ptr = self._device_buffer(tensor, raw.nbytes)
            host_handle, host = self._host_buffer(tensor, raw.nbytes)
            host[: raw.nbytes] = raw
            self._buffers.htod(dev_handle, host_handle, raw.nbytes, stream)
            self._bind(tensor, ptr)
        sizes = {}
        for tensor, shape in out_shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[tensor].itemsize
            sizes[tensor] = nbytes
            _, ptr = self._device_buffer(tensor, nbytes)
            self._bind(tensor, ptr)
        self._execute(self._stream_handle)
        if not to_host:
            outputs = {}
            for tensor, shape in out_shapes.items():
                owner, ptr = self._device_buffer(tensor, sizes[tensor])
                outputs[tensor] = DeviceArray(ptr, shape, self._dtypes[tensor], self._stream_handle, owner=owner,
                                              device=self.device)
            return outputs
        for tensor, nbytes in sizes.items():
            dev_handle, _ = self._device_buffer(tensor, nbytes)
            host_handle, _ = self._host_buffer(tensor, nbytes)
            self._buffers.dtoh(host_handle, dev_handle, nbytes, stream)
        self._buffers.synchronize(stream)
        result = {}
        for tensor, shape in out_shapes.items():
            _, host = self._host_buffer(tensor, sizes[tensor])
            # Copy out of the reused pinned buffer so the caller's array survives the next run.
            value = host[: sizes[tensor]].view(self._dtypes[tensor]).reshape(shape)
            result[tensor] = value.astype(self._host_dtypes[tensor]) if self._host_dtypes[tensor] != value.dtype \
                else value.copy()
        return result

    def run_device(self, device_inputs, stream=None):
        """Device buffers in, device buffers out, asynchronously on ``stream``; no host copy, no sync.

        ``device_inputs``: dict input name -> torch CUDA tensor, CuPy array, :class:`DeviceArray`,
        any ``__cuda_array_interface__`` object, or ``(pointer, shape)``. Their producer streams
        (the interface's ``stream``, torch's current stream) are waited on, on the device, before the
        engine reads them; torch tensors are also marked used on ``stream`` (``record_stream``).
        Other objects must stay alive until the work on ``stream`` has run (the backend keeps a
        reference until its next call). ``stream``: int cudaStream_t or a pycuda/torch/CuPy stream;
        None uses the backend's own stream. Returns dict output name -> :class:`DeviceArray` on
        that stream (backend-owned memory, overwritten by the next call), ready for the CUDA
        tokenizer. On TensorRT 8.x, int64 inputs must be given as int32 device arrays.
        """
        import numpy as np

        with self._lock:
            self._check_open()
            if not isinstance(device_inputs, dict):
                raise InvalidInputError(f"{self.model_name} device inputs must be a dict name -> device array")
            expected = {spec.name: spec for spec in self._inputs}
            missing, unexpected = sorted(set(expected) - set(device_inputs)), sorted(set(device_inputs) - set(expected))
            if missing or unexpected:
                raise InvalidInputError(
                    f"{self.model_name} expects inputs {sorted(expected)}; missing {missing}, unexpected {unexpected}")
            handle = self._stream_handle if stream is None else stream_handle(stream)
            views, shapes = {}, {}
            for tensor, obj in device_inputs.items():
                label = f"{self.model_name} input {tensor!r}"
                view = view_device_array(obj, name=label)
                if not view.is_c_contiguous():
                    raise InvalidInputError(f"{label} must be C-contiguous, got strides {view.strides} for shape {view.shape}")
                spec, binding = expected[tensor], self._dtypes[tensor]
                if view.dtype is not None and view.dtype != binding.name:
                    hint = " (TensorRT 8.x binds int64 as int32: pass int32 device arrays)" if binding == np.int32 \
                        and view.dtype == "int64" else ""
                    raise InvalidInputError(f"{label} must be {binding.name}, got {view.dtype}{hint}")
                if len(view.shape) != len(spec.shape) or any(isinstance(w, int) and w != g
                                                             for w, g in zip(spec.shape, view.shape)):
                    raise InvalidInputError(f"{label} must have shape {spec.shape}, got {view.shape}")
                views[tensor], shapes[tensor] = view, view.shape
            with self._buffers.activate():
                for view in views.values():
                    # Protocol v3: wait for the producer's queued work before the engine reads.
                    wait_for_producer(handle, view.stream, self.device)
                    if is_torch_tensor(view.owner) and stream is not None:
                        import torch

                        view.owner.record_stream(torch.cuda.ExternalStream(handle, device=view.owner.device)
                                                 if handle not in (0, 1) else torch.cuda.default_stream(view.owner.device))
                out_shapes = self._set_input_shapes(shapes, handle)
                for tensor, view in views.items():
                    self._bind(tensor, view.ptr)
                outputs = {}
                for tensor, shape in out_shapes.items():
                    nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[tensor].itemsize
                    owner, ptr = self._device_buffer(tensor, nbytes)
                    self._bind(tensor, ptr)
                    outputs[tensor] = DeviceArray(ptr, shape, self._dtypes[tensor], handle, owner=owner,
                                                  device=self.device)
                self._execute(handle)
            self._keepalive = [view.owner for view in views.values()]
            return outputs

    def close(self):
        with self._lock:
            if self._context is None:
                return
            with self._buffers.activate():
                # Queued work (run_device on other streams) may still use the buffers.
                self._buffers.synchronize_device()
                # Release in dependency order: context before engine before runtime, then memory.
                self._context = None
                self._engine = None
                self._runtime = None
                for handle, _, _ in self._device_mem.values():
                    self._buffers.free(handle)
                for handle in self._retired:
                    self._buffers.free(handle)
                self._device_mem.clear()
                self._retired.clear()
                self._host_mem.clear()
                self._keepalive = []
                self._stream = None
            self._buffers.close()
