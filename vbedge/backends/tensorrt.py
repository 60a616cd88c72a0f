"""Native TensorRT backend: engines built from the bundle's ONNX on the target, cached beside it.

Written against the TensorRT 10/11 Python API documentation. NOT YET RUN against a real TensorRT
(it cannot be installed on the development machines); what is tested here without TensorRT is
everything around it: profile validation, the precision/typing decision, the cache, and the
control flow of :func:`build_engine` and :class:`TensorRTBackend` against a fake ``tensorrt``
module. See docs/tensorrt.md.

Precision (decided by :func:`plan_build`):

* TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrators: networks are always
  strongly typed and precision comes from the ONNX (the bundle's FP16 graph, or its Q/DQ INT8 graph).
* TensorRT 10 (JetPack 6) supports both: strongly typed when the ONNX carries the precision (or
  for fp32), else weakly typed with the FP16 builder flag. INT8 always needs a Q/DQ graph:
  calibrators are deprecated since 10.1 and vbedge does not use them.

Heavy modules (tensorrt, pycuda, torch, onnx) are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine_cache import PRECISIONS, EngineCache, EngineKey, _canonical_profiles, atomic_write_bytes, file_sha256
from ..errors import FormatError, InvalidInputError, VbedgeError
from .base import Backend, BackendUnavailableError, TensorSpec, validate_inputs

log = logging.getLogger("vbedge")

DEFAULT_WORKSPACE_BYTES = 1 << 30


class TensorRTError(VbedgeError, RuntimeError):
    """A TensorRT step failed (network creation, engine build, deserialization, execution).

    The message names the step and the tensor/shape involved, plus TensorRT's own last errors.
    """


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        from .install_hints import TENSORRT_HINT

        raise BackendUnavailableError(f"TensorRT's Python package cannot be imported ({exc}); {TENSORRT_HINT}") from exc
    return tensorrt


def parse_version(version):
    """'10.3.0.26' -> (10, 3). Raises InvalidInputError for a string without major.minor."""
    match = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise InvalidInputError(f"cannot read a TensorRT version from {version!r} (expected 'major.minor...')")
    return int(match.group(1)), int(match.group(2))


# ---- ONNX inspection and profiles (pure Python) ---------------------------------------------------


@dataclass(frozen=True)
class OnnxInfo:
    """What the builder needs to know about an ONNX file before TensorRT sees it.

    ``has_fp16``: the graph holds FP16 tensors (an FP16 export). ``has_qdq``: it has
    QuantizeLinear/DequantizeLinear nodes (an explicitly quantized INT8 export). Either is None
    when unknown (the ``onnx`` package is not installed and only ONNX Runtime could be asked).
    """

    inputs: tuple
    has_fp16: bool | None
    has_qdq: bool | None


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool",
                16: "bfloat16"}


def _walk_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def inspect_onnx(onnx_path):
    """Read inputs (as TensorSpec), FP16-ness and Q/DQ-ness of an ONNX file, without TensorRT."""
    path = Path(onnx_path)
    if not path.is_file():
        raise FormatError(f"ONNX model not found: {path}")
    try:
        import onnx
    except ImportError:
        return _inspect_with_onnxruntime(path)
    try:
        # External weights are not needed to read the graph structure.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise FormatError(f"cannot read ONNX model {path}: {exc}") from exc
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializer_names:
            continue  # old exporters list weights as inputs too
        tensor_type = value.type.tensor_type
        shape = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or f"{value.name}_dim{axis}")
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type, f"onnx_type_{tensor_type.elem_type}")
        inputs.append(TensorSpec(value.name, dtype, tuple(shape)))
    fp16 = 10
    has_fp16 = any(init.data_type == fp16 for init in graph.initializer) or any(
        v.type.tensor_type.elem_type == fp16 for v in list(graph.input) + list(graph.output)
    )
    has_qdq = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in _walk_nodes(graph))
    return OnnxInfo(tuple(inputs), has_fp16, has_qdq)


def _inspect_with_onnxruntime(path):
    from .onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path)
    inputs = tuple(backend.inputs)
    backend.close()
    has_fp16 = True if any(spec.dtype == "float16" for spec in inputs) else None
    return OnnxInfo(inputs, has_fp16, None)


def _as_shape(value, what):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInputError(f"{what} must be a sequence of ints, got {value!r}")
    shape = tuple(value)
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(f"{what} must contain positive ints, got {value!r}")
    return shape


def validate_profiles(input_specs, profiles):
    """Check optimisation profiles against the model's inputs; return them canonical (for the cache key).

    ``profiles``: a dict input name -> (min, opt, max) shapes, or a list of such dicts (one per
    profile), or None when every input is static. Every input with a dynamic dimension needs a
    range in every profile; static dimensions must be repeated exactly; min <= opt <= max.
    Raises InvalidInputError naming the input, the shape and what was expected.
    """
    specs = {spec.name: spec for spec in input_specs}
    dynamic = sorted(name for name, spec in specs.items() if any(not isinstance(d, int) for d in spec.shape))
    if profiles is None:
        if dynamic:
            example = {name: "((min...), (opt...), (max...))" for name in dynamic}
            raise InvalidInputError(
                f"inputs {dynamic} have dynamic dimensions, so TensorRT needs optimisation profiles: "
                f"pass profiles={example}"
            )
        return ()
    profile_list = [profiles] if isinstance(profiles, dict) else list(profiles)
    if not profile_list:
        raise InvalidInputError("profiles is an empty list; pass None for a static model or at least one profile")
    canonical = []
    for index, profile in enumerate(profile_list):
        label = f"profile {index}" if len(profile_list) > 1 else "profile"
        if not isinstance(profile, dict):
            raise InvalidInputError(f"{label} must be a dict input name -> (min, opt, max), got {type(profile).__name__}")
        unknown = sorted(set(profile) - set(specs))
        if unknown:
            raise InvalidInputError(f"{label} names inputs {unknown} that the model does not have (inputs: {sorted(specs)})")
        missing = [name for name in dynamic if name not in profile]
        if missing:
            raise InvalidInputError(f"{label} has no shape range for dynamic inputs {missing}")
        entry = {}
        for name, ranges in profile.items():
            spec = specs[name]
            if isinstance(ranges, (str, bytes)) or not hasattr(ranges, "__len__") or len(ranges) != 3:
                raise InvalidInputError(f"{label}: {name!r} needs (min, opt, max) shapes, got {ranges!r}")
            shapes = [_as_shape(s, f"{label}: {name!r} {which} shape") for s, which in zip(ranges, ("min", "opt", "max"))]
            for shape, which in zip(shapes, ("min", "opt", "max")):
                if len(shape) != len(spec.shape):
                    raise InvalidInputError(
                        f"{label}: {name!r} {which} shape {shape} has rank {len(shape)}; the model input has shape "
                        f"{spec.shape} (rank {len(spec.shape)})"
                    )
                for axis, (want, got) in enumerate(zip(spec.shape, shape)):
                    if isinstance(want, int) and want != got:
                        raise InvalidInputError(
                            f"{label}: {name!r} {which} shape {shape} differs from the model's static dimension "
                            f"{want} on axis {axis} (model shape {spec.shape})"
                        )
            low, opt, high = shapes
            for axis in range(len(low)):
                if not low[axis] <= opt[axis] <= high[axis]:
                    raise InvalidInputError(
                        f"{label}: {name!r} needs min <= opt <= max on every axis; axis {axis} has "
                        f"{low[axis]}, {opt[axis]}, {high[axis]} (min {low}, opt {opt}, max {high})"
                    )
            entry[name] = (low, opt, high)
        canonical.append(entry)
    return _canonical_profiles(canonical)


# ---- precision / typing decision (pure Python) ----------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    """How to build: strongly typed or not, and which BuilderFlag names to set."""

    strongly_typed: bool
    builder_flags: tuple
    reason: str


def plan_build(tensorrt_version, precision, strongly_typed="auto", onnx_info=None, dla_core=None):
    """Decide network typing and builder flags for a TensorRT version, precision and ONNX graph.

    Args:
        tensorrt_version: e.g. ``tensorrt.__version__``.
        precision: 'fp32', 'fp16' or 'int8'.
        strongly_typed: True, False or 'auto'.
        onnx_info: :class:`OnnxInfo` of the graph (whether it carries FP16 / Q/DQ); None = unknown.
        dla_core: DLA core index or None.

    Raises InvalidInputError for combinations that cannot work, naming what to use instead
    (never silently switches precision or typing behind the caller's back).
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if strongly_typed not in (True, False, "auto"):
        raise InvalidInputError(f"strongly_typed must be True, False or 'auto', got {strongly_typed!r}")
    major, _ = parse_version(tensorrt_version)
    if major < 10:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt_version} is too old: vbedge needs TensorRT 10 or newer (JetPack 6 on Jetson)"
        )
    has_fp16 = onnx_info.has_fp16 if onnx_info is not None else None
    has_qdq = onnx_info.has_qdq if onnx_info is not None else None
    carries = {"fp32": True, "fp16": has_fp16, "int8": has_qdq}[precision]
    if dla_core is not None and precision == "fp32":
        raise InvalidInputError("DLA runs FP16 or INT8 only: use precision 'fp16' or 'int8' with dla_core")
    fallback = ("GPU_FALLBACK",) if dla_core is not None else ()

    if precision == "int8" and has_qdq is False:
        raise InvalidInputError(
            "precision 'int8' needs an explicitly quantized (Q/DQ) ONNX graph, and this graph has no "
            "QuantizeLinear/DequantizeLinear nodes; use the bundle's int8 model (INT8 calibrators are "
            "deprecated in TensorRT 10.1 and removed in 11, so vbedge does not calibrate inside TensorRT)"
        )

    if major >= 11:
        if strongly_typed is False:
            raise InvalidInputError(
                f"TensorRT {tensorrt_version} builds only strongly typed networks (the FP16/INT8 builder flags "
                "were removed in 11); drop strongly_typed=False and pass the ONNX of the wanted precision"
            )
        if carries is False:
            raise InvalidInputError(
                f"precision {precision!r} on TensorRT {tensorrt_version} must come from the ONNX, but this graph "
                f"has no {'FP16 tensors' if precision == 'fp16' else 'Q/DQ nodes'}; use the bundle's {precision} model"
            )
        why = f"TensorRT {major} is always strongly typed; precision comes from the ONNX"
        if carries is None:
            why += f" (could not check that the graph is {precision}: install onnx to check)"
        return BuildPlan(True, fallback, why)

    # TensorRT 10: both modes exist.
    if strongly_typed is True:
        if carries is False:
            raise InvalidInputError(
                f"strongly_typed=True takes precision from the ONNX, but this graph has no "
                f"{'FP16 tensors' if precision == 'fp16' else 'Q/DQ nodes'} for precision {precision!r}; "
                f"use the bundle's {precision} model or strongly_typed='auto'/False"
            )
        return BuildPlan(True, fallback, "strongly typed as requested")
    if strongly_typed == "auto" and carries is True:
        return BuildPlan(True, fallback, f"strongly typed: the ONNX carries the {precision} precision")
    # Weakly typed: the builder may pick lower precision kernels where the flag allows it.
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    why = "weakly typed as requested" if strongly_typed is False else (
        f"weakly typed with precision flags: could not confirm the ONNX carries {precision}")
    return BuildPlan(False, flags + fallback, why)


# ---- engine building (TensorRT) ---------------------------------------------------------------------


def _make_logger(trt):
    """A TensorRT logger that forwards to logging.getLogger('vbedge') and remembers recent errors."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors = (self.errors + [msg])[-5:]
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == sev.INFO:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _trt_errors(logger):
    return f" TensorRT said: {' | '.join(logger.errors)}" if getattr(logger, "errors", None) else ""


def _parser_errors(parser):
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node, desc = error.node(), error.desc()
        # node_name/node_operator exist in TensorRT >= 8.6; older parsers give only the index.
        name = error.node_name() if hasattr(error, "node_name") else ""
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f"node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        lines.append(f"{where}: {desc}")
    return lines


def build_engine(onnx_path, precision="fp32", profiles=None, workspace_bytes=DEFAULT_WORKSPACE_BYTES,
                 timing_cache_path=None, dla_core=None, strongly_typed="auto"):
    """Build a serialized TensorRT engine (bytes) from an ONNX file.

    Profiles and the precision/typing plan are validated in pure Python first (see
    :func:`validate_profiles`, :func:`plan_build`). Every TensorRT call that reports failure
    (None/False/negative) raises TensorRTError naming the step. The timing cache at
    ``timing_cache_path`` is loaded when present and written back after the build.
    """
    onnx_path = Path(onnx_path)
    if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes <= 0:
        raise InvalidInputError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
    info = inspect_onnx(onnx_path)
    canonical_profiles = validate_profiles(info.inputs, profiles)
    trt = _import_tensorrt()
    plan = plan_build(trt.__version__, precision, strongly_typed, info, dla_core)
    major, _ = parse_version(trt.__version__)
    log.info("building TensorRT %s engine for %s: %s", precision, onnx_path.name, plan.reason)

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    if not builder:
        raise TensorRTError(f"trt.Builder could not be created (no CUDA device or driver?).{_trt_errors(logger)}")
    flags = 0
    if plan.strongly_typed and major < 11:
        # In TensorRT 11 the flag is deprecated and ignored (always strongly typed), so we pass 0 there.
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if not network:
        raise TensorRTError(f"builder.create_network(flags={flags}) failed.{_trt_errors(logger)}")
    parser = trt.OnnxParser(network, logger)
    if not parser:
        raise TensorRTError(f"trt.OnnxParser could not be created.{_trt_errors(logger)}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or ["no error recorded by the parser"]
        raise FormatError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors))

    config = builder.create_builder_config()
    if not config:
        raise TensorRTError(f"builder.create_builder_config() failed.{_trt_errors(logger)}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if dla_core is not None:
        available = builder.num_DLA_cores
        if not 0 <= dla_core < available:
            raise InvalidInputError(f"dla_core {dla_core} does not exist: this device has {available} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core

    for index, profile in enumerate(canonical_profiles):
        trt_profile = builder.create_optimization_profile()
        if not trt_profile:
            raise TensorRTError(f"builder.create_optimization_profile() failed for profile {index}")
        for name, (low, opt, high) in profile:
            if trt_profile.set_shape(name, low, opt, high) is False:
                raise TensorRTError(f"profile {index}: set_shape({name!r}, min={low}, opt={opt}, max={high}) was refused.{_trt_errors(logger)}")
        if config.add_optimization_profile(trt_profile) < 0:
            raise TensorRTError(f"profile {index} ({dict(profile)}) was refused by the builder config.{_trt_errors(logger)}")

    timing_cache = _load_timing_cache(config, timing_cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        shapes = {name: rng for profile in canonical_profiles for name, rng in profile}
        raise TensorRTError(
            f"TensorRT could not build a {precision} engine for {onnx_path.name} "
            f"({'strongly' if plan.strongly_typed else 'weakly'} typed, workspace {workspace_bytes} bytes, "
            f"profiles {shapes or 'static'}, dla_core {dla_core}).{_trt_errors(logger)}"
        )
    if timing_cache_path is not None and timing_cache is not None:
        _save_timing_cache(config, timing_cache_path)
    return bytes(memoryview(serialized))


def _load_timing_cache(config, path):
    """Attach a timing cache (from ``path`` when it exists) to ``config``; return it, or None."""
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    if not cache and data:
        log.warning("TensorRT could not read the timing cache %s; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    if not cache:
        log.warning("TensorRT could not create a timing cache; building without one")
        return None
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another device/version is refused by TensorRT; start fresh rather than fail.
        log.warning("TensorRT refused the timing cache %s (other device or version?); starting an empty one", path)
        cache = config.create_timing_cache(b"")
        if not cache or not config.set_timing_cache(cache, ignore_mismatch=False):
            return None
    return cache


def _save_timing_cache(config, path):
    cache = config.get_timing_cache()
    if not cache:
        log.warning("TensorRT returned no timing cache to save to %s", path)
        return
    blob = cache.serialize()
    if blob is None:
        log.warning("TensorRT could not serialize the timing cache for %s", path)
        return
    atomic_write_bytes(path, [bytes(memoryview(blob))])


# ---- GPU identity and device buffers -----------------------------------------------------------------


def gpu_identity(device=0):
    """(name, 'major.minor') of CUDA device ``device``: via vbedge's CUDA extension, pycuda or torch."""
    try:
        from .. import _kernels_cuda

        count, reason = _kernels_cuda.probe()
        if count > device:
            major, minor = _kernels_cuda.compute_capability(device)
            return _kernels_cuda.device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    raise BackendUnavailableError(f"cannot identify CUDA device {device}: no working CUDA extension, pycuda or torch")


class _PycudaBuffers:
    """Device/pinned memory and streams through pycuda, on the device's primary context.

    The primary context is the one the CUDA runtime (TensorRT, vbedge's CUDA tokenizer, torch)
    uses, so pointers are valid across all of them.
    """

    kind = "pycuda"

    def __init__(self, device):
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._context = cuda.Device(device).retain_primary_context()
        self._context.push()

    def alloc(self, nbytes):
        mem = self._cuda.mem_alloc(max(int(nbytes), 1))
        return mem, int(mem)

    def host(self, nbytes):
        import numpy as np

        array = self._cuda.pagelocked_empty(max(int(nbytes), 1), dtype=np.uint8)
        return array, array

    def stream(self):
        stream = self._cuda.Stream()
        return stream, stream.handle

    def htod(self, device_handle, host_handle, nbytes, stream):
        self._cuda.memcpy_htod_async(device_handle, host_handle[:nbytes], stream)

    def dtoh(self, host_handle, device_handle, nbytes, stream):
        self._cuda.memcpy_dtoh_async(host_handle[:nbytes], device_handle, stream)

    def synchronize(self, stream):
        stream.synchronize()

    def close(self):
        if self._context is not None:
            self._context.pop()
            self._context = None


class _TorchBuffers:
    """Device/pinned memory and streams through torch (used when pycuda is not installed)."""

    kind = "torch"

    def __init__(self, device):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch is installed without a usable CUDA device")
        self._torch = torch
        self._device = torch.device("cuda", device)

    def alloc(self, nbytes):
        tensor = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, device=self._device)
        return tensor, tensor.data_ptr()

    def host(self, nbytes):
        tensor = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, pin_memory=True)
        return tensor, tensor.numpy()

    def stream(self):
        stream = self._torch.cuda.Stream(device=self._device)
        return stream, stream.cuda_stream

    def htod(self, device_handle, host_handle, nbytes, stream):
        with self._torch.cuda.stream(stream):
            device_handle[:nbytes].copy_(host_handle[:nbytes], non_blocking=True)

    def dtoh(self, host_handle, device_handle, nbytes, stream):
        with self._torch.cuda.stream(stream):
            host_handle[:nbytes].copy_(device_handle[:nbytes], non_blocking=True)

    def synchronize(self, stream):
        stream.synchronize()

    def close(self):
        pass


def make_buffers(kind="auto", device=0):
    """Device-buffer provider: 'pycuda', 'torch', or 'auto' (pycuda, else torch)."""
    import importlib.util

    if kind == "auto":
        if importlib.util.find_spec("pycuda") is not None:
            kind = "pycuda"
        elif importlib.util.find_spec("torch") is not None:
            kind = "torch"
        else:
            raise BackendUnavailableError(
                "TensorRT needs pycuda or torch for device buffers: pip install pycuda (part of 'vbedge[tensorrt]')"
            )
    if kind == "pycuda":
        return _PycudaBuffers(device)
    if kind == "torch":
        return _TorchBuffers(device)
    raise InvalidInputError(f"buffers must be 'auto', 'pycuda' or 'torch', got {kind!r}")


class DeviceArray:
    """A device buffer owned by a :class:`TensorRTBackend`: pointer, shape, dtype, stream.

    Exposes ``__cuda_array_interface__`` (v3, with the stream the data is produced on), so torch,
    CuPy and vbedge's CUDA tokenizer consume it without a copy. The memory is reused by the next
    ``run``/``run_device`` of the same backend: consume or copy it before then.
    """

    def __init__(self, ptr, shape, dtype, stream_handle):
        import numpy as np

        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.stream = int(stream_handle)

    @property
    def nbytes(self):
        import math

        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self):
        # CAI v3 forbids stream 0; the legacy default stream (handle 0) is spelled 1 there.
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": self.stream if self.stream else 1}

    def __repr__(self):
        return f"DeviceArray(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype.name})"


def describe_device_array(obj, name="input"):
    """(pointer, shape, dtype name or None) of a device array: torch CUDA tensor, any
    ``__cuda_array_interface__`` object, or a ``(pointer, shape)`` tuple (dtype then comes from the engine).

    Only C-contiguous arrays are accepted (TensorRT reads linear buffers).
    """
    import numpy as np

    if type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr"):
        if not obj.is_cuda:
            raise InvalidInputError(f"{name} is a CPU torch tensor; run_device needs CUDA memory (use run for host arrays)")
        if not obj.is_contiguous():
            raise InvalidInputError(f"{name} must be contiguous (call .contiguous())")
        return int(obj.data_ptr()), tuple(obj.shape), str(obj.dtype).replace("torch.", "")
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        shape = tuple(int(d) for d in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        strides = cai.get("strides")
        if strides is not None:
            expected, step = [], dtype.itemsize
            for dim in reversed(shape):
                expected.append(step)
                step *= dim
            if tuple(strides) != tuple(reversed(expected)):
                raise InvalidInputError(f"{name} must be C-contiguous, got strides {tuple(strides)} for shape {shape}")
        return int(cai["data"][0]), shape, dtype.name
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], int) and not isinstance(obj[0], bool):
        return obj[0], tuple(int(d) for d in obj[1]), None
    raise InvalidInputError(
        f"{name} must be a CUDA array (torch CUDA tensor, CuPy, DeviceArray or any __cuda_array_interface__) "
        f"or a (pointer, shape) tuple, got {type(obj).__name__}"
    )


def stream_handle(stream):
    """Integer cudaStream_t of ``stream``: an int, a pycuda Stream (.handle) or torch/CuPy stream (.cuda_stream / .ptr)."""
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    for attr in ("cuda_stream", "handle", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise InvalidInputError(
        f"stream must be an int cudaStream_t or a pycuda/torch/CuPy stream object, got {type(stream).__name__}"
    )


# ---- the backend -----------------------------------------------------------------------------------------


class TensorRTBackend(Backend):
    """Runs a TensorRT engine: host arrays with :meth:`run`, device buffers with :meth:`run_device`.

    Args:
        engine: serialized engine bytes (from the cache) or a deserialized ``ICudaEngine``.
        device: CUDA device index.
        buffers: 'auto' (pycuda, else torch), 'pycuda', 'torch', or an object with the same methods
            as ``_PycudaBuffers`` (tests inject one).
        name: model name for messages.

    Use :meth:`from_onnx` to build-or-load from a bundle's ONNX through the engine cache. One
    backend = one execution context: do not call it from several threads at once.
    """

    name = "tensorrt"

    def __init__(self, engine, device=0, buffers="auto", name="engine"):
        import numpy as np

        trt = _import_tensorrt()
        self._trt = trt
        self.model_name = name
        self._buffers = make_buffers(buffers, device) if isinstance(buffers, str) else buffers
        self._logger = _make_logger(trt)
        self._runtime = None
        if isinstance(engine, (bytes, bytearray, memoryview)):
            self._runtime = trt.Runtime(self._logger)
            if not self._runtime:
                raise TensorRTError(f"trt.Runtime could not be created.{_trt_errors(self._logger)}")
            engine = self._runtime.deserialize_cuda_engine(bytes(engine))
            if engine is None:
                raise TensorRTError(
                    f"TensorRT could not deserialize the {name} engine (built by another TensorRT version or for "
                    f"another GPU?).{_trt_errors(self._logger)}"
                )
        self._engine = engine
        self._context = engine.create_execution_context()
        if not self._context:
            raise TensorRTError(f"could not create an execution context for {name} (out of GPU memory?).{_trt_errors(self._logger)}")
        self._inputs, self._outputs, self._dtypes = [], [], {}
        for index in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor)))
            shape = tuple(d if d >= 0 else f"{tensor}_dim{axis}" for axis, d in enumerate(engine.get_tensor_shape(tensor)))
            spec = TensorSpec(tensor, dtype.name, shape)
            self._dtypes[tensor] = dtype
            if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
            else:
                self._outputs.append(spec)
        self._stream, self._stream_handle = self._buffers.stream()
        self._device_mem = {}  # tensor -> (handle, ptr, capacity)
        self._host_mem = {}  # tensor -> (handle, uint8 array, capacity)

    @classmethod
    def from_onnx(cls, onnx_path, precision="fp32", profiles=None, cache_dir=None,
                  workspace_bytes=DEFAULT_WORKSPACE_BYTES, dla_core=None, strongly_typed="auto", device=0,
                  buffers="auto", rebuild=False):
        """Load the cached engine for this ONNX/precision/GPU/TensorRT, or build and cache it.

        ``cache_dir`` defaults to ``<onnx folder>/engines``. A cached engine whose key differs
        (other TensorRT, GPU, ONNX hash, profiles...) or whose file is damaged is rebuilt with a
        log message, never loaded.
        """
        onnx_path = Path(onnx_path)
        trt = _import_tensorrt()
        info = inspect_onnx(onnx_path)
        canonical_profiles = validate_profiles(info.inputs, profiles)
        plan = plan_build(trt.__version__, precision, strongly_typed, info, dla_core)
        gpu_name, capability = gpu_identity(device)
        key = engine_key(onnx_path, trt.__version__, gpu_name, capability, precision, canonical_profiles,
                         dla_core, plan, workspace_bytes)
        cache = EngineCache(cache_dir if cache_dir is not None else onnx_path.parent / "engines")
        timing = cache.timing_cache_path(trt.__version__, gpu_name, capability)

        def build():
            return build_engine(onnx_path, precision, profiles, workspace_bytes, timing, dla_core, plan.strongly_typed)

        engine, path, built = cache.get_or_build(key, build, rebuild=rebuild)
        log.info("TensorRT engine %s %s", path.name, "built" if built else "loaded from cache")
        return cls(engine, device=device, buffers=buffers, name=onnx_path.stem)

    # -- shapes and memory --

    def _set_input_shapes(self, shapes):
        for tensor, shape in shapes.items():
            if not self._context.set_input_shape(tensor, tuple(int(d) for d in shape)):
                low, _, high = self._engine.get_tensor_profile_shape(tensor, 0)
                raise InvalidInputError(
                    f"{self.model_name} input {tensor!r} shape {tuple(shape)} is outside the engine's optimisation "
                    f"profile (min {tuple(low)}, max {tuple(high)}); rebuild with a wider profile"
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
            handle, ptr = self._buffers.alloc(nbytes)  # the old handle is released with its last reference
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

    # -- execution --

    def run(self, inputs):
        """Host arrays in, host arrays out (validated, copied through pinned buffers, synchronised)."""
        import numpy as np

        self._check_open()
        arrays = validate_inputs(self._inputs, inputs, model=self.model_name)
        out_shapes = self._set_input_shapes({name: a.shape for name, a in arrays.items()})
        stream = self._stream
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
        for tensor, nbytes in sizes.items():
            dev_handle, _ = self._device_buffer(tensor, nbytes)
            host_handle, _ = self._host_buffer(tensor, nbytes)
            self._buffers.dtoh(host_handle, dev_handle, nbytes, stream)
        self._buffers.synchronize(stream)
        result = {}
        for tensor, shape in out_shapes.items():
            _, host = self._host_buffer(tensor, sizes[tensor])
            # Copy out of the reused pinned buffer so the caller's array survives the next run.
            result[tensor] = host[: sizes[tensor]].view(self._dtypes[tensor]).reshape(shape).copy()
        return result

    def run_device(self, device_inputs, stream=None):
        """Device buffers in, device buffers out, asynchronously on ``stream``; no host copy, no sync.

        ``device_inputs``: dict input name -> torch CUDA tensor, CuPy array, :class:`DeviceArray`,
        any ``__cuda_array_interface__`` object, or ``(pointer, shape)``. They must stay alive
        until the work on ``stream`` has run. ``stream``: int cudaStream_t or a pycuda/torch/CuPy
        stream; None uses the backend's own stream. Returns dict output name -> :class:`DeviceArray`
        (backend-owned, reused by the next call), ready for the CUDA tokenizer on the same stream.
        """
        import numpy as np

        self._check_open()
        if not isinstance(device_inputs, dict):
            raise InvalidInputError(f"{self.model_name} device inputs must be a dict name -> device array")
        expected = {spec.name: spec for spec in self._inputs}
        missing, unexpected = sorted(set(expected) - set(device_inputs)), sorted(set(device_inputs) - set(expected))
        if missing or unexpected:
            raise InvalidInputError(f"{self.model_name} expects inputs {sorted(expected)}; missing {missing}, unexpected {unexpected}")
        handle = self._stream_handle if stream is None else stream_handle(stream)
        pointers, shapes = {}, {}
        for tensor, obj in device_inputs.items():
            ptr, shape, dtype = describe_device_array(obj, name=f"{self.model_name} input {tensor!r}")
            spec = expected[tensor]
            if dtype is not None and dtype != spec.dtype:
                raise InvalidInputError(f"{self.model_name} input {tensor!r} must be {spec.dtype}, got {dtype}")
            if len(shape) != len(spec.shape) or any(isinstance(w, int) and w != g for w, g in zip(spec.shape, shape)):
                raise InvalidInputError(f"{self.model_name} input {tensor!r} must have shape {spec.shape}, got {shape}")
            pointers[tensor], shapes[tensor] = ptr, shape
        out_shapes = self._set_input_shapes(shapes)
        for tensor, ptr in pointers.items():
            self._bind(tensor, ptr)
        outputs = {}
        for tensor, shape in out_shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[tensor].itemsize
            _, ptr = self._device_buffer(tensor, nbytes)
            self._bind(tensor, ptr)
            outputs[tensor] = DeviceArray(ptr, shape, self._dtypes[tensor], handle)
        self._execute(handle)
        return outputs

    def close(self):
        if self._context is None:
            return
        # Release in dependency order: context before engine before runtime, then memory.
        self._context = None
        self._engine = None
        self._runtime = None
        self._device_mem.clear()
        self._host_mem.clear()
        self._buffers.close()


def engine_key(onnx_path, tensorrt_version, gpu_name, compute_capability, precision, canonical_profiles,
               dla_core, plan, workspace_bytes):
    """The :class:`EngineKey` for building ``onnx_path`` with these settings (pure Python)."""
    return EngineKey(
        model=Path(onnx_path).stem,
        tensorrt_version=str(tensorrt_version),
        gpu_name=str(gpu_name),
        compute_capability=str(compute_capability),
        precision=precision,
        onnx_sha256=file_sha256(onnx_path),
        profiles=canonical_profiles,
        dla_core=dla_core,
        strongly_typed=plan.strongly_typed,
        builder_options={"workspace_bytes": int(workspace_bytes), "builder_flags": list(plan.builder_flags)},
    )
