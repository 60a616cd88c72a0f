"""Build script for vbedge.

Always builds the C++ tokenizer extension ``vbedge._kernels`` (pybind11). Builds the CUDA
extension ``vbedge._kernels_cuda`` whenever ``nvcc`` is found; ``VBEDGE_CUDA=1`` forces it (and
fails loudly if it cannot be built), ``VBEDGE_CUDA=0`` skips it. A CUDA build that fails on its own
(not forced) is reported and skipped, so the CPU install never breaks. ``VBEDGE_CUDA_ARCHS``
(e.g. ``"87;90"``) overrides the architecture list. The build prints what it built.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

# Jetson Xavier (72), Orin (87); A100 (80), Ampere consumer (86), Ada (89), Hopper (90).
WANTED_ARCHS = ["72", "87", "80", "86", "89", "90"]


def _pybind11_include():
    import pybind11

    return pybind11.get_include()


def _log(msg):
    print(f"[vbedge build] {msg}", flush=True)


def _find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def _cuda_home(nvcc):
    """Toolkit root holding include/cuda_runtime_api.h (nvcc may be a wrapper script elsewhere)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _nvcc_supported_archs(nvcc):
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({m.group(1) for m in re.finditer(r"sm_(\d+)", out)}, key=int)


def _cuda_mode():
    value = os.environ.get("VBEDGE_CUDA", "auto").strip().lower()
    if value in ("1", "on", "true", "yes", "force"):
        return "force"
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("", "auto"):
        return "auto"
    raise SystemExit(f"VBEDGE_CUDA must be 0, 1 or auto, got {value!r}")


class BuildExtWithCuda(build_ext):
    """build_ext that compiles ``.cu`` sources with nvcc and links the CUDA runtime statically."""

    def build_extensions(self):
        cpp_flags = ["-O3", "-std=c++17", "-fvisibility=hidden", "-ffp-contract=off"]
        built, skipped = [], []
        for ext in list(self.extensions):
            if ext.name.endswith("_kernels_cuda"):
                ok, why = self._build_cuda_extension(ext)
                (built if ok else skipped).append((ext.name, why))
                if not ok:
                    # An extension left in the list is expected on disk: editable installs copy
                    # every listed output and fail on the one that was never built.
                    self.extensions.remove(ext)
                continue
            ext.extra_compile_args = cpp_flags + ["-fopenmp"]
            ext.extra_link_args = ["-fopenmp"]
            self.build_extension(ext)
            built.append((ext.name, "C++ (OpenMP)"))
        for name, why in built:
            _log(f"built {name}: {why}")
        for name, why in skipped:
            _log(f"skipped {name}: {why}")

    def _build_cuda_extension(self, ext):
        mode = _cuda_mode()
        nvcc = _find_nvcc()
        if mode == "off":
            return False, "VBEDGE_CUDA=0"
        if nvcc is None:
            if mode == "force":
                raise SystemExit("VBEDGE_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
            return False, "nvcc not found (set VBEDGE_CUDA=1 to require it)"
        try:
            archs = self._cuda_archs(nvcc)
            self._compile_cuda(ext, nvcc, archs)
            return True, "CUDA for sm_" + ", sm_".join(archs) + f" (+PTX compute_{archs[-1]})"
        except Exception as exc:  # a CUDA failure must not break the CPU install unless forced
            if mode == "force":
                raise
            return False, f"CUDA build failed: {exc}"

    def _cuda_archs(self, nvcc):
        requested = os.environ.get("VBEDGE_CUDA_ARCHS")
        wanted = [a.strip() for a in requested.replace(",", ";").split(";") if a.strip()] if requested else WANTED_ARCHS
        supported = _nvcc_supported_archs(nvcc)
        if supported is None:
            return sorted(wanted, key=int)
        archs = sorted((a for a in wanted if a in supported), key=int)
        dropped = [a for a in wanted if a not in supported]
        if dropped:
            _log(
                "this nvcc cannot build sm_" + ", sm_".join(dropped)
                + " (CUDA 13 dropped them; build on the device with its own nvcc, e.g. JetPack 5 for Xavier sm_72)"
            )
        if not archs:
            raise RuntimeError("none of the wanted CUDA architectures is supported by this nvcc")
        return archs

    def _compile_cuda(self, ext, nvcc, archs):
        build_temp = os.path.join(self.build_temp, "cuda")
        os.makedirs(build_temp, exist_ok=True)
        include_dirs = list(ext.include_dirs) + [sysconfig.get_paths()["include"]]
        gencode = []
        for arch in archs:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        objects = []
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        cpp_sources = [s for s in ext.sources if not s.endswith(".cu")]
        for src in cu_sources:
            obj = os.path.join(build_temp, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden",
                   "--expt-relaxed-constexpr", *gencode] + [f"-I{d}" for d in include_dirs]
            _log(" ".join(cmd))
            subprocess.run(cmd, check=True)
            objects.append(obj)
        cuda_home = _cuda_home(nvcc)
        lib_dirs = [os.path.join(cuda_home, d) for d in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib",
                                                           "targets/aarch64-linux/lib")]  # the last: JetPack
        lib_dirs = [d for d in lib_dirs if os.path.isdir(d)]
        ext.sources = cpp_sources
        ext.extra_objects = objects
        ext.include_dirs = include_dirs + [os.path.join(cuda_home, "include")]
        ext.library_dirs = lib_dirs
        ext.libraries = ["cudart_static", "dl", "rt", "pthread"]
        ext.extra_compile_args = ["-O3", "-std=c++17", "-fvisibility=hidden"]
        self.build_extension(ext)


def _extensions():
    include = [os.path.join("kernels", "include"), _pybind11_include()]
    cpu_sources = sorted(glob.glob("kernels/cpu/*.cpp")) + ["kernels/bindings/cpu_module.cpp"]
    cuda_sources = sorted(glob.glob("kernels/cuda/*.cu")) + ["kernels/bindings/cuda_module.cpp"]
    exts = [Extension("vbedge._kernels", cpu_sources, include_dirs=include, language="c++")]
    if os.path.exists("kernels/bindings/cuda_module.cpp"):
        exts.append(Extension("vbedge._kernels_cuda", cuda_sources, include_dirs=include, language="c++"))
    return exts


os.chdir(HERE)

# export/ and calib/ are installed as vbedge.export and vbedge.calib (the fixed repository layout
# keeps them at the top level). Only folders that hold a package are mapped: setuptools refuses a
# package_dir that does not exist (git does not keep empty folders).
_MAPPED = {f"vbedge.{name}": name for name in ("export", "calib") if os.path.isfile(os.path.join(name, "__init__.py"))}

setup(
    packages=find_packages(include=["vbedge", "vbedge.*"]) + sorted(_MAPPED),
    package_dir=_MAPPED,
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtWithCuda},
)
