"""What this installation can do: backends, kernels, GPU, OpenCV capture support.

Everything here is probed without importing torch or TensorRT (package metadata only), so
``vbedge info`` is fast and works on a bare device.
"""

import importlib.util
import platform
import sys

# The CPU probes live in vbedge.cpu (imported by the backends and the quantizer too); re-exported.
from .cpu import (BF16_MATMUL_FLAGS, INT8_DOT_PRODUCT_FLAGS, bf16_matmul, cpu_flags, cpu_model,  # noqa: F401
                  int8_dot_product, machine_summary)
from .versions import package_version


def _onnxruntime_info():
    if importlib.util.find_spec("onnxruntime") is None:
        return {"installed": False}
    import onnxruntime

    return {"installed": True, "version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def _opencv_info():
    if importlib.util.find_spec("cv2") is None:
        return {"installed": False, "hint": "pip install 'vbedge[opencv]' (not on Jetson: use JetPack's OpenCV)"}
    import cv2

    build = cv2.getBuildInformation()
    gstreamer = ffmpeg = False
    for line in build.splitlines():
        stripped = line.strip()
        if stripped.startswith("GStreamer:"):
            gstreamer = "YES" in stripped
        elif stripped.startswith("FFMPEG:"):
            ffmpeg = "YES" in stripped
    return {"installed": True, "version": cv2.__version__, "gstreamer": gstreamer, "ffmpeg": ffmpeg}


def _kernel_info():
    from .codebook import cpu_kernel_available

    info = {"cpu": cpu_kernel_available()}
    try:
        from . import _kernels_cuda
    except ImportError as exc:
        info["cuda"] = False
        info["cuda_reason"] = f"CUDA extension not built ({exc})"
        return info, []
    info["cuda"] = True
    gpus = []
    try:
        for i in range(_kernels_cuda.device_count()):
            major, minor = _kernels_cuda.compute_capability(i)
            gpus.append({"index": i, "name": _kernels_cuda.device_name(i), "compute_capability": f"{major}.{minor}"})
    except RuntimeError as exc:  # built, but no driver/device on this machine
        info["cuda_reason"] = str(exc)
    if not gpus and "cuda_reason" not in info:
        count, why = _kernels_cuda.probe()
        info["cuda_reason"] = f"no usable CUDA device: {why or 'none found'}"
    return info, gpus


def collect_info():
    """Return a dict describing this installation (versions, kernels, GPUs, OpenCV)."""
    from . import __version__

    kernels, gpus = _kernel_info()
    return {
        "vbedge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy": package_version("numpy"),
        "onnxruntime": _onnxruntime_info(),
        "tensorrt": package_version("tensorrt"),
        "pycuda": package_version("pycuda"),
        "torch": package_version("torch"),
        "int8_dot_product": int8_dot_product(),
        "bf16_matmul": bf16_matmul(),
        "kernels": kernels,
        "gpus": gpus,
        "opencv": _opencv_info(),
        "backends": {name: {"available": ok, "reason": why} for name, (ok, why) in _backend_status().items()},
    }


def _backend_status():
    from .backends.select import available_backends

    return available_backends()


def format_info(info):
    """Human-readable multi-line rendering of :func:`collect_info`'s result."""
    ort = info["onnxruntime"]
    cv = info["opencv"]
    k = info["kernels"]
    lines = [
        f"vbedge {info['vbedge']}  (Python {info['python']}, {info['platform']})",
        f"numpy        {info['numpy']}",
        "onnxruntime  " + (f"{ort['version']} providers={','.join(ort['providers'])}" if ort["installed"] else "not installed"),
        "tensorrt     " + (info["tensorrt"] or "not installed (pip install 'vbedge[tensorrt]' or JetPack)"),
        "pycuda       " + (info["pycuda"] or "not installed"),
        "torch        " + (info["torch"] or "not installed (needed only for export: vbedge[export])"),
        "int8 CPU     " + (f"{info['int8_dot_product']} (8-bit weights in the INT8 CPU forms)"
                             if info.get("int8_dot_product") else
                             "no VNNI/dot product (7-bit weights in the INT8 CPU forms)"),
        "bf16 CPU     " + (f"{info['bf16_matmul']} (vbedge demo trains VideoBERT in bf16 autocast)"
                             if info.get("bf16_matmul") else "no native bfloat16 multiply (training stays fp32)"),
        "C++ kernel   " + ("built" if k["cpu"] else "NOT built (reinstall vbedge)"),
        "CUDA kernel  " + ("built" if k["cuda"] else "not built") + (f" ({k['cuda_reason']})" if k.get("cuda_reason") else ""),
    ]
    for name, status in info["backends"].items():
        lines.append(f"backend {name:<13}{'yes' if status['available'] else 'no '}  {status['reason']}")
    for gpu in info["gpus"]:
        lines.append(f"GPU {gpu['index']}        {gpu['name']} (compute capability {gpu['compute_capability']})")
    if cv["installed"]:
        lines.append(
            f"opencv       {cv['version']} GStreamer={'yes' if cv['gstreamer'] else 'NO (no csi:// or GStreamer pipelines)'}"
            f" FFmpeg={'yes' if cv['ffmpeg'] else 'no'}"
        )
    else:
        lines.append(f"opencv       not installed ({cv['hint']})")
    return "\n".join(lines)
