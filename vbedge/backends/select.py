"""Which backends can run here, and ``create_backend`` that picks one and says why.

Probing uses package metadata and ``importlib.util.find_spec`` so that asking "what is available"
does not import TensorRT, pycuda or torch (seconds of start-up, and GPU context creation).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform

from ..errors import InvalidInputError
from ..versions import package_version
from .base import BackendUnavailableError
from .install_hints import TENSORRT_HINT

log = logging.getLogger("vbedge")

BACKENDS = ("onnxruntime", "tensorrt", "openvino", "torch")
# Processors where auto prefers OpenVINO over ONNX Runtime (OpenVINO's CPU plugin targets x86).
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")

# Device nodes that exist when an NVIDIA driver is loaded: discrete GPUs, and Jetson's integrated GPU.
_GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0")


def _has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package counts as absent
        return False


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
    version = package_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12") or "unknown version"
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


def _openvino_status():
    if not _has_module("openvino"):
        return False, "OpenVINO is not installed: pip install 'vbedge[openvino]'"
    return True, f"OpenVINO {package_version('openvino') or 'unknown version'} (CPU)"


def _torch_status():
    if not _has_module("torch"):
        return False, "torch is not installed: pip install 'vbedge[export]' (the torch backend is the reference, not for deployment)"
    return True, f"torch {package_version('torch') or 'unknown version'}"


def available_backends():
    """Dict backend name -> ``(available, reason)``; the reason says what was found or what is missing."""
    return {
        "onnxruntime": _onnxruntime_status(),
        "tensorrt": _tensorrt_status(),
        "openvino": _openvino_status(),
        "torch": _torch_status(),
    }


def choose_backend(backend="auto", status=None, precision="fp32", device="cpu"):
    """Resolve ``backend`` ('auto' or a name) to a concrete name; return ``(name, why)``.

    'auto' prefers TensorRT (when importable with a GPU and a buffer library), else OpenVINO (when
    installed, on an x86 CPU, for precision fp32/bf16/int8 on device 'cpu'), else ONNX Runtime.
    Raises BackendUnavailableError for an explicit backend that cannot run here.
    """
    status = status or available_backends()
    if backend == "auto":
        trt_ok, trt_why = status["tensorrt"]
        if trt_ok:
            return "tensorrt", f"auto chose tensorrt: {trt_why}"
        ov_ok, ov_why = _openvino_fits(status.get("openvino", (False, "not probed")), precision, device)
        if ov_ok:
            return "openvino", f"auto chose openvino ({ov_why}) because tensorrt is unavailable: {trt_why}"
        ort_ok, ort_why = status["onnxruntime"]
        if ort_ok:
            return "onnxruntime", (f"auto chose onnxruntime ({ort_why}) because tensorrt is unavailable: {trt_why}; "
                                   f"openvino not chosen: {ov_why}")
        raise BackendUnavailableError(f"no backend can run here: tensorrt: {trt_why}; onnxruntime: {ort_why}")
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    ok, why = status[backend]
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is not available: {why}")
    return backend, f"{backend} requested: {why}"


def _openvino_fits(status, precision, device):
    """``(ok, why)``: whether auto should take OpenVINO for this request."""
    ok, why = status
    if not ok:
        return False, why
    if platform.machine().lower() not in _X86:
        return False, f"{why} is installed but this is a {platform.machine()} CPU, where ONNX Runtime is the default"
    # A numbered device is TensorRT's CUDA index: not a request OpenVINO must refuse.
    if precision not in ("fp32", "bf16", "int8") or (isinstance(device, str) and device != "cpu"):
        return False, f"{why} does not run precision {precision!r} on device {device!r}"
    return True, why


#: Options each backend takes (see create_backend). ``device`` is a CUDA index (int) for TensorRT, a
#: device name (str: 'cpu', 'cuda', 'tensorrt') for ONNX Runtime, either for torch ('cuda:0' or 0).
BACKEND_OPTIONS = {
    "onnxruntime": frozenset({"device", "intra_op_threads", "provider_options", "conv2d_form", "spinning"}),
    "tensorrt": frozenset({"cache_dir", "profiles", "workspace_bytes", "dla_core", "strongly_typed", "device",
                           "buffers", "rebuild", "progress", "manifest_sha256"}),
    "openvino": frozenset({"device", "intra_op_threads", "cache_dir", "model_name"}),
    "torch": frozenset({"device", "intra_op_threads"}),
}

#: Environment variable naming the folder TensorRT engines are cached in (instead of ``BUNDLE/engines``),
#: so that a read-only bundle still gets its engines built and kept.
ENGINE_CACHE_ENV = "VBEDGE_ENGINE_CACHE"


def options_for(name, options, requested, defaults=None):
    """The subset of ``options`` backend ``name`` takes, over the ``defaults`` it takes.

    With an explicit backend (``requested`` == ``name``) an option it does not take is the caller's
    error (InvalidInputError naming the options it does take). With 'auto' the options meant for the
    other backends are left out and said so in the log, so one options dict can serve whichever
    backend 'auto' picks. ``defaults`` are vbedge's own choices for some backends (the bundle's
    S3D in the 2D-convolution form, the pipeline's sleeping ONNX Runtime threads): a backend that
    does not take one just goes without it, neither an error nor a log line about the user's options.
    """
    known = BACKEND_OPTIONS[name]
    kept, dropped = {k: v for k, v in (defaults or {}).items() if k in known}, []
    for key, value in options.items():
        fits = key in known
        if fits and key == "device" and name != "torch":
            # ONNX Runtime names devices ('cpu', 'cuda'); TensorRT numbers them; torch takes either.
            fits = isinstance(value, str) if name in ("onnxruntime", "openvino") else not isinstance(value, str)
        if fits:
            kept[key] = value
        else:
            dropped.append(key)
    if dropped and requested == name:
        raise InvalidInputError(
            f"backend {name!r} does not take option(s) {sorted(dropped)} (or not with these values); "
            f"it takes {sorted(known)}"
        )
    if dropped:
        log.info("backend options %s do not apply to %s and are left out", sorted(dropped), name)
    return kept


def engine_cache_dir(bundle=None, cache_dir=None):
    """Where TensorRT engines go: ``cache_dir``, else $VBEDGE_ENGINE_CACHE, else the bundle's ``engines/``.

    With the environment variable, each bundle gets its own subfolder (named by its manifest hash
    prefix) so that two bundles never share one cache folder by accident.
    """
    if cache_dir is not None:
        return cache_dir
    env = os.environ.get(ENGINE_CACHE_ENV)
    if env:
        from pathlib import Path

        if bundle is None:
            return Path(env)
        import hashlib

        digest = hashlib.sha256((bundle.root / "manifest.json").read_bytes()).hexdigest()[:12]
        return Path(env) / f"{bundle.root.name}-{digest}"
    return bundle.engine_dir if bundle is not None else None


def create_backend(onnx_path, backend="auto", precision="fp32", **options):
    """Create a backend for an ONNX model; 'auto' picks the best available one and logs why.

    Args:
        onnx_path: the model's ``.onnx`` file (from the bundle).
        backend: 'auto', 'tensorrt', 'openvino' or 'onnxruntime'. ('torch' runs from checkpoints, not ONNX:
            use :class:`vbedge.backends.torch_eager.TorchBackend`.)
        precision: 'fp32', 'fp16' or 'int8'; for TensorRT it selects how the engine is built
            (see docs/tensorrt.md), for ONNX Runtime it describes the given file.
        options: passed to the backend: for TensorRT ``cache_dir``, ``profiles``,
            ``workspace_bytes``, ``dla_core``, ``strongly_typed``, ``device``, ``buffers``,
            ``rebuild``; for ONNX Runtime ``device`` ('cpu', 'cuda', 'tensorrt'),
            ``intra_op_threads``, ``provider_options``, ``conv2d_form`` (S3D's separable 3D
            convolutions as 2D ones on the CPU: :mod:`vbedge.backends.conv2d_form`); for OpenVINO ``intra_op_threads``,
            ``cache_dir`` (default ``$VBEDGE_OPENVINO_CACHE``, else none). With 'auto', options of the backend not
            chosen are left out (logged); with an explicit backend they are an error.

    With 'auto', a TensorRT engine that cannot be built or loaded (TensorRT too old, parser or
    builder failure, no GPU memory...) falls back to ONNX Runtime with the reason logged as a
    warning and kept in the backend's ``selection`` attribute; an explicit 'tensorrt' raises.
    """
    if backend == "torch":
        raise InvalidInputError(
            "the torch backend runs the reference model from checkpoints, not from ONNX; "
            "use vbedge.backends.torch_eager.TorchBackend"
        )
    status = available_backends()
    status["torch"] = (False, "not selectable from an ONNX file")
    name, why = choose_backend(backend, status, precision, options.get("device", "cpu"))
    log.info("backend for %s: %s", os.path.basename(str(onnx_path)), why)
    return _open(name, why, backend, onnx_path, precision, options, os.path.basename(str(onnx_path)))


def _open(name, why, requested, onnx_path, precision, options, label, cpu_form=None, cpu_form_weight_bits=None,
          defaults=None):
    """Instantiate ``name``; with 'auto', fall back from TensorRT to ONNX Runtime on failure.

    ``defaults``: see :func:`options_for`."""
    from ..errors import VbedgeError

    if name == "tensorrt":
        from . import tensorrt as trt_backend

        trt_options = options_for("tensorrt", options, requested, defaults)
        if "profiles" in trt_options and trt_options["profiles"] is not None:
            # The caller's own profiles: a mistake in them is theirs to see, not a reason to fall back.
            trt_backend.validate_profiles(trt_backend.inspect_onnx(onnx_path).inputs, trt_options["profiles"])
        try:
            try:
                opened = trt_backend.TensorRTBackend.from_onnx(onnx_path, precision=precision, **trt_options)
            except OSError as exc:
                # Typically a read-only bundle: the engine cannot be stored beside it.
                raise trt_backend.TensorRTError(
                    f"cannot use the engine cache ({exc}); point ${ENGINE_CACHE_ENV} or cache_dir at a writable "
                    "folder"
                ) from exc
        except VbedgeError as exc:
            name, why = _fall_back_to_onnxruntime(requested, "TensorRT", label, exc)
        else:
            opened.selection = why
            return opened
    if name == "openvino":
        from ..openvino_cache import CACHE_ENV
        from .openvino import OpenVinoBackend

        ov_options = options_for("openvino", options, requested, defaults)
        ov_options.setdefault("cache_dir", os.environ.get(CACHE_ENV) or None)
        try:
            opened = OpenVinoBackend(onnx_path, precision=precision, **ov_options)
        except VbedgeError as exc:
            name, why = _fall_back_to_onnxruntime(requested, "OpenVINO", label, exc)
        else:
            opened.selection = why
            return opened
    from .onnxruntime import OnnxRuntimeBackend

    ort_options = options_for("onnxruntime", options, requested, defaults)
    if cpu_form is not None and precision == "int8" and ort_options.get("device", "cpu") == "cpu":
        # The Q/DQ graph is laid out for TensorRT; ONNX Runtime's CPU kernels run the same
        # calibration's CPU form (docs/int8.md) about 2x faster, so that file is used here.
        onnx_path = cpu_form
        log.info("backend for %s (int8): ONNX Runtime CPU form %s", label, os.path.basename(str(cpu_form)))
        check_cpu_form_bits(label, cpu_form_weight_bits)
    opened = OnnxRuntimeBackend(onnx_path, precision=precision, **ort_options)
    opened.selection = why if opened.graph_form == "file" else f"{why}; S3D's 3D convolutions as 2D ones"
    return opened


def _fall_back_to_onnxruntime(requested, runtime, label, exc):
    """Under ``auto``, log why ``runtime`` failed and return ONNX Runtime's ``(name, why)``;
    re-raise ``exc`` when the backend was asked for explicitly."""
    if requested != "auto":
        raise exc
    reason = f"{runtime} failed for {label} ({type(exc).__name__}: {exc})"
    log.warning("backend for %s: %s; falling back to ONNX Runtime", label, reason)
    return "onnxruntime", f"auto fell back to onnxruntime: {reason}"


def create_bundle_backend(bundle, model, backend="auto", precision="fp32", limits=None, defaults=None, **options):
    """A backend running ``model`` ('s3d' or 'videobert') of a loaded :class:`vbedge.bundle.Bundle`.

    'torch' runs the bundle's PyTorch reference weights (bundles built with --reference-weights), on
    the CPU or, with ``device='cuda'``, on the GPU (``precision='fp16'`` there runs under autocast);
    every other choice goes through the bundle's ONNX file at ``precision`` (see
    :func:`create_backend` for ``options`` and the 'auto' fallback). For TensorRT, engines are
    cached in :func:`engine_cache_dir` and, unless ``profiles`` is given, the optimisation profile
    is derived from the manifest's input shapes and ``limits`` (axis name -> max or (opt, max),
    e.g. ``{"batch": 4}``; see :mod:`vbedge.backends.trt_policy`). ``defaults`` are options the
    caller wants wherever the chosen backend takes them and ``options`` does not set them (the
    pipeline's ``{"spinning": False}``); a backend that does not take one goes without it silently.
    """
    if backend == "torch":
        from .torch_eager import TorchBackend

        log.info("backend for %s: torch requested (PyTorch reference weights)", model)
        torch_options = options_for("torch", options, "torch")
        opened = TorchBackend.from_bundle(bundle, model, threads=torch_options.get("intra_op_threads"),
                                          device=torch_options.get("device", "cpu"), precision=precision)
        opened.selection = f"torch requested on {opened.device} at {precision}"
        return opened
    name, why = choose_backend(backend, dict(available_backends(), torch=(False, "not selectable here")),
                               precision, options.get("device", "cpu"))
    entry = bundle.manifest["models"][model]
    if (backend, name, precision) == ("auto", "openvino", "int8") and entry.get("int8_cpu") \
            and available_backends()["onnxruntime"][0]:
        # Measured on the demo bundle (docs/int8.md, 2026-12-06): ONNX Runtime's CPU form kept S3D's
        # tokens 0.951 against OpenVINO INT8's 0.868 on the Q/DQ graph at the same speed, and
        # VideoBERT's text top-1 0.990 against 0.949, faster. An explicit 'openvino' still runs it.
        name, why = "onnxruntime", (f"auto chose onnxruntime's INT8 CPU form over openvino: the bundle has one, and "
                                    f"it agrees with FP32 better than OpenVINO's INT8 on the Q/DQ graph "
                                    f"(docs/int8.md); {why}")
    log.info("backend for %s (%s): %s", model, precision, why)
    # OpenVINO's bf16 is a compile-time hint on the FP32 graph (docs/openvino.md).
    onnx_path = bundle.onnx_path(model, "fp32" if (name, precision) == ("openvino", "bf16") else precision)
    options = dict(options)
    if name == "openvino":
        from ..openvino_cache import default_cache_dir

        options.setdefault("model_name", model)
        if options.get("cache_dir") is None:
            options["cache_dir"] = default_cache_dir(bundle.engine_dir)
    if name == "tensorrt":
        from .trt_policy import bundle_profiles

        options["cache_dir"] = engine_cache_dir(bundle, options.get("cache_dir"))
        if options.get("profiles") is None:
            options["profiles"] = bundle_profiles(bundle, model, limits)
            log.info("TensorRT profile for %s from the manifest and limits %s: %s", model, limits or "default",
                     options["profiles"])
        # Engines are tied to this bundle's (signed) manifest: one built for another is never loaded.
        options.setdefault("manifest_sha256", bundle.manifest_sha256)
    defaults = dict(defaults or {})
    if model == "s3d" and precision == "fp32":
        # ONNX Runtime's CPU runs 2D convolutions in faster kernels than 3D ones (docs/benchmarks.md).
        defaults.setdefault("conv2d_form", True)
    cpu_form = entry.get("int8_cpu")
    return _open(name, why, backend, onnx_path, precision, options, model,
                 cpu_form=bundle.file_path(cpu_form) if cpu_form else None,
                 cpu_form_weight_bits=entry.get("int8_cpu_weight_bits"), defaults=defaults)


def check_cpu_form_bits(label, weight_bits, flags=None):
    """Warn (and return the warning) when an INT8 CPU form with 8-bit weights is about to run on a
    CPU without VNNI or an int8 dot product, where ONNX Runtime's U8S8 kernels saturate int16 sums
    and the answers drift (docs/int8.md); ``None`` when the bits suit this CPU or are unknown."""
    from ..cpu import int8_dot_product

    if weight_bits != 8 or int8_dot_product(flags):
        return None
    message = (f"{label}: the INT8 CPU form has 8-bit weights, but this CPU has no VNNI or int8 dot product, so "
               "ONNX Runtime's integer kernels saturate and its answers drift from FP32; calibrate for this CPU "
               "(vbedge calibrate --cpu-weight-bits 7, or auto on it)")
    log.warning(message)
    return message
