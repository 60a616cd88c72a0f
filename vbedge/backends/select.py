"""Which backends can run here, and ``create_backend`` that picks one and says why.

Probing uses package metadata and ``importlib.util.find_spec`` so that asking "what is available"
does not import TensorRT, pycuda or torch (seconds of start-up, and GPU context creation).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os

from ..errors import InvalidInputError
from .base import BackendUnavailableError
from .install_hints import TENSORRT_HINT

log = logging.getLogger("vbedge")

BACKENDS = ("onnxruntime", "tensorrt", "torch")

# Device nodes that exist when an NVIDIA driver is loaded: discrete GPUs, and Jetson's integrated GPU.
_GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0")


def _has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package counts as absent
        return False


def _version(*dists):
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def gpu_status():
    """``(present, description)`` for CUDA device 0, without importing torch/pycuda/TensorRT.

    Uses vbedge's own CUDA extension when it is built (it asks the driver), else the presence of
    NVIDIA device nodes (cannot tell whether the driver works, and says so).
    """
    try:
        from .. import _kernels_cuda
    except ImportError:
        nodes = [node for node in _GPU_DEVICE_NODES if os.path.exists(node)]
        if nodes:
            return True, f"NVIDIA device node {nodes[0]} present (not verified: vbedge's CUDA extension is not built)"
        return False, "no NVIDIA GPU found (no /dev/nvidia0 or Jetson GPU device node)"
    count, reason = _kernels_cuda.probe()
    if count == 0:
        return False, f"no usable CUDA device ({reason or 'none found'})"
    major, minor = _kernels_cuda.compute_capability(0)
    return True, f"{_kernels_cuda.device_name(0)} (compute capability {major}.{minor})"


def _onnxruntime_status():
    if not _has_module("onnxruntime"):
        return False, "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
    # onnxruntime is a required, light dependency: importing it to list providers is fine.
    import onnxruntime

    providers = [p.replace("ExecutionProvider", "") for p in onnxruntime.get_available_providers()]
    return True, f"onnxruntime {onnxruntime.__version__} (execution providers: {', '.join(providers)})"


def _tensorrt_status():
    if not _has_module("tensorrt"):
        return False, f"TensorRT's Python package is not installed: {TENSORRT_HINT}"
    version = _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12") or "unknown version"
    buffers = "pycuda" if _has_module("pycuda") else ("torch" if _has_module("torch") else None)
    if buffers is None:
        return False, (
            f"TensorRT {version} is installed but neither pycuda nor torch is, and one is needed for device "
            "buffers: pip install pycuda (included in pip install 'vbedge[tensorrt]')"
        )
    present, gpu = gpu_status()
    if not present:
        return False, f"TensorRT {version} is installed but {gpu}"
    return True, f"TensorRT {version}, device buffers via {buffers}, GPU: {gpu}"


def _torch_status():
    if not _has_module("torch"):
        return False, "torch is not installed: pip install 'vbedge[export]' (the torch backend is the reference, not for deployment)"
    return True, f"torch {_version('torch') or 'unknown version'}"


def available_backends():
    """Dict backend name -> ``(available, reason)``; the reason says what was found or what is missing."""
    return {
        "onnxruntime": _onnxruntime_status(),
        "tensorrt": _tensorrt_status(),
        "torch": _torch_status(),
    }


def choose_backend(backend="auto", status=None):
    """Resolve ``backend`` ('auto' or a name) to a concrete name; return ``(name, why)``.

    'auto' prefers TensorRT (when importable with a GPU and a buffer library), else ONNX Runtime.
    Raises BackendUnavailableError for an explicit backend that cannot run here.
    """
    status = status or available_backends()
    if backend == "auto":
        trt_ok, trt_why = status["tensorrt"]
        if trt_ok:
            return "tensorrt", f"auto chose tensorrt: {trt_why}"
        ort_ok, ort_why = status["onnxruntime"]
        if ort_ok:
            return "onnxruntime", f"auto chose onnxruntime ({ort_why}) because tensorrt is unavailable: {trt_why}"
        raise BackendUnavailableError(f"no backend can run here: tensorrt: {trt_why}; onnxruntime: {ort_why}")
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    ok, why = status[backend]
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is not available: {why}")
    return backend, f"{backend} requested: {why}"


def create_backend(onnx_path, backend="auto", precision="fp32", **options):
    """Create a backend for an ONNX model; 'auto' picks the best available one and logs why.

    Args:
        onnx_path: the model's ``.onnx`` file (from the bundle).
        backend: 'auto', 'tensorrt' or 'onnxruntime'. ('torch' runs from checkpoints, not ONNX:
            use :class:`vbedge.backends.torch_eager.TorchBackend`.)
        precision: 'fp32', 'fp16' or 'int8'; for TensorRT it selects how the engine is built
            (see docs/tensorrt.md), for ONNX Runtime it describes the given file.
        options: passed to the backend: for TensorRT ``cache_dir``, ``profiles``,
            ``workspace_bytes``, ``dla_core``, ``strongly_typed``, ``device``; for ONNX Runtime
            ``device`` ('cpu', 'cuda', 'tensorrt'), ``intra_op_threads``, ``provider_options``.
    """
    if backend == "torch":
        raise InvalidInputError(
            "the torch backend runs the reference model from checkpoints, not from ONNX; "
            "use vbedge.backends.torch_eager.TorchBackend"
        )
    status = available_backends()
    status["torch"] = (False, "not selectable from an ONNX file")
    name, why = choose_backend(backend, status)
    log.info("backend for %s: %s", os.path.basename(str(onnx_path)), why)
    return _instantiate(name, onnx_path, precision, options)


def _instantiate(name, onnx_path, precision, options):
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend.from_onnx(onnx_path, precision=precision, **options)
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(onnx_path, precision=precision, **options)


def create_bundle_backend(bundle, model, backend="auto", precision="fp32", **options):
    """A backend running ``model`` ('s3d' or 'videobert') of a loaded :class:`vbedge.bundle.Bundle`.

    'torch' runs the bundle's PyTorch reference weights (bundles built with --reference-weights);
    every other choice goes through :func:`create_backend` on the bundle's ONNX file at
    ``precision``, with TensorRT engines cached in the bundle's ``engines/`` folder.
    """
    if backend == "torch":
        from .torch_eager import TorchBackend

        log.info("backend for %s: torch requested (PyTorch reference weights)", model)
        return TorchBackend.from_bundle(bundle, model, threads=options.pop("intra_op_threads", None))
    onnx_path = bundle.onnx_path(model, precision)
    name, why = choose_backend(backend, dict(available_backends(), torch=(False, "not selectable here")))
    log.info("backend for %s (%s): %s", model, precision, why)
    if name == "tensorrt":
        options.setdefault("cache_dir", bundle.engine_dir)
    cpu_form = bundle.manifest["models"][model].get("int8_cpu")
    if name == "onnxruntime" and precision == "int8" and cpu_form and options.get("device", "cpu") == "cpu":
        # The Q/DQ graph is laid out for TensorRT; ONNX Runtime's CPU kernels run the same
        # calibration's CPU form (docs/int8.md) about 2x faster, so that file is used here.
        onnx_path = bundle.file_path(cpu_form)
        log.info("backend for %s (int8): ONNX Runtime CPU form %s", model, cpu_form)
    return _instantiate(name, onnx_path, precision, options)
