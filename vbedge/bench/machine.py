"""The machine state a benchmark depends on: CPU, GPU, library versions, Jetson power mode.

Nothing is imported to find versions (package metadata only); GPUs are asked through
``nvidia-smi`` when it is on the PATH. On a Jetson the board model, the nvpmodel power mode and
whether the clocks are at their maximum (what ``jetson_clocks`` sets) are read from
``/proc/device-tree/model``, ``nvpmodel -q`` and the cpufreq / devfreq files in ``/sys``.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from ..cpu import cpu_model
from ..versions import package_version


def _run(command, timeout=5.0):
    """stdout of ``command`` or ``None`` when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def usable_cores():
    """Logical cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def nvidia_smi_gpus():
    """``[{"index", "name", "driver", "memory_total_mb"}]`` from ``nvidia-smi`` (``[]`` without one)."""
    out = _run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"index": int(parts[0]) if parts[0].isdigit() else parts[0],
                         "name": parts[1], "driver": parts[2],
                         "memory_total_mb": float(parts[3]) if _is_number(parts[3]) else None})
    return gpus


def nvidia_smi_usage():
    """``[{"index", "memory_used_mb", "utilization_pct"}]`` now, from ``nvidia-smi`` (``[]`` without)."""
    out = _run(["nvidia-smi", "--query-gpu=index,memory.used,utilization.gpu",
                "--format=csv,noheader,nounits"], timeout=3.0)
    usage = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(_is_number(p) for p in parts):
            usage.append({"index": int(parts[0]), "memory_used_mb": float(parts[1]),
                          "utilization_pct": float(parts[2])})
    return usage


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cuda_version():
    # The driver's CUDA version, from nvidia-smi's banner; torch's build, when torch is loaded.
    banner = _run(["nvidia-smi"]) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    if match:
        return match.group(1)
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "version", None), "cuda", None) if torch else None


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().replace("\x00", "").strip()
    except OSError:
        return None


def _read_int(path):
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def jetson_state(root="/", nvpmodel_output=None):
    """The Jetson board, power mode and clocks, or ``None`` when this is not a Jetson.

    Args:
        root: filesystem root to read ``proc/device-tree/model`` and ``sys/`` under (tests
            point it at a hand-made tree).
        nvpmodel_output: the text of ``nvpmodel -q`` (default: run it).

    Returns a dict: ``model``; ``nvpmodel`` (``{"name", "id"}`` or ``None``); ``cpu_clocks`` and
    ``gpu_clocks`` (``[{"name", "cur_hz"/"cur_khz", "max_..."}]``); ``full_clocks`` (True when
    every CPU and GPU clock read is at its maximum, as after ``sudo jetson_clocks``; ``None``
    when none could be read); ``warnings``.
    """
    model = _read(os.path.join(root, "proc/device-tree/model"))
    if not model or not any(word in model.lower() for word in ("jetson", "nvidia", "orin", "xavier")):
        return None
    if nvpmodel_output is None:
        nvpmodel_output = _run(["nvpmodel", "-q"])
    mode = None
    if nvpmodel_output:
        name = re.search(r"NV Power Mode:\s*(\S+)", nvpmodel_output)
        ident = re.search(r"^\s*(\d+)\s*$", nvpmodel_output, re.MULTILINE)
        mode = {"name": name.group(1) if name else None,
                "id": int(ident.group(1)) if ident else None}
    cpu = []
    for folder in sorted(glob.glob(os.path.join(root, "sys/devices/system/cpu/cpu[0-9]*/cpufreq"))):
        cur = _read_int(os.path.join(folder, "scaling_cur_freq"))
        top = _read_int(os.path.join(folder, "cpuinfo_max_freq"))
        if cur is not None and top is not None:
            cpu.append({"name": os.path.basename(os.path.dirname(folder)), "cur_khz": cur,
                        "max_khz": top})
    gpu = []
    for folder in sorted(glob.glob(os.path.join(root, "sys/class/devfreq/*"))):
        name = os.path.basename(folder)
        if not any(tag in name for tag in ("gpu", "ga10b", "gv11b", "gp10b")):
            continue
        cur = _read_int(os.path.join(folder, "cur_freq"))
        top = _read_int(os.path.join(folder, "max_freq"))
        if cur is not None and top is not None:
            gpu.append({"name": name, "cur_hz": cur, "max_hz": top})
    clocks = [(c["cur_khz"], c["max_khz"]) for c in cpu] + [(g["cur_hz"], g["max_hz"]) for g in gpu]
    full = all(cur >= top for cur, top in clocks) if clocks else None
    warnings = []
    if full is False:
        slow = [c["name"] for c in cpu if c["cur_khz"] < c["max_khz"]] + \
               [g["name"] for g in gpu if g["cur_hz"] < g["max_hz"]]
        warnings.append(f"Jetson clocks are not at their maximum ({', '.join(slow)} below max): "
                        f"run `sudo jetson_clocks` before benchmarking, or the figures cannot be "
                        f"compared with published ones")
    elif full is None:
        warnings.append("could not read the Jetson's CPU/GPU clocks from /sys: the clock state "
                        "is unknown")
    if mode is None:
        warnings.append("could not read the nvpmodel power mode (`nvpmodel -q`)")
    elif mode["name"] and "MAXN" not in mode["name"].upper():
        warnings.append(f"nvpmodel power mode is {mode['name']}, not MAXN: figures are for that "
                        f"power mode")
    return {"model": model, "nvpmodel": mode, "cpu_clocks": cpu, "gpu_clocks": gpu,
            "full_clocks": full, "warnings": warnings}


def machine_info():
    """A dict describing the machine for a report: CPU, cores, GPUs, versions, Jetson state."""
    from .. import __version__

    gpus = nvidia_smi_gpus()
    jetson = jetson_state()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "architecture": platform.machine(),
        "gpus": gpus,
        "gpu_driver": gpus[0]["driver"] if gpus else None,
        "versions": {
            "vbedge": __version__,
            "python": sys.version.split()[0],
            "numpy": package_version("numpy"),
            "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
            "openvino": package_version("openvino"),
            "tensorrt": package_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13",
                                 "tensorrt_cu12"),
            "torch": package_version("torch"),
            "cuda": _cuda_version() if gpus else None,
        },
        "jetson": jetson,
        "warnings": list(jetson["warnings"]) if jetson else [],
    }
