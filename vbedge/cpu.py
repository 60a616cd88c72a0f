"""This machine's CPU: model name, feature flags, whether it has an int8 dot product.

Read from ``/proc/cpuinfo`` with no other import, so the backends, the quantizer and ``vbedge
info`` can all ask without importing one another (``vbedge.info`` re-exports these).
"""

import platform


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: CPU flags (``/proc/cpuinfo``) of instructions that multiply u8 x s8 and sum in int32 without an
#: int16 step: x86 VNNI (AVX-512 or AVX) and AMX, ARM's dot product. ONNX Runtime's MLAS uses them
#: for its U8S8 kernels where present; without them its x86 kernels add pairs of products in int16
#: (``vpmaddubsw``) and saturate 8-bit weights on full-range uint8 activations (docs/int8.md).
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def cpu_flags():
    """The CPU's feature flags (``flags`` on x86, ``Features`` on ARM in ``/proc/cpuinfo``), or an
    empty set where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_dot_product(flags=None):
    """The first of :data:`INT8_DOT_PRODUCT_FLAGS` this CPU has (or ``flags`` holds), else ``None``:
    whether ONNX Runtime's integer kernels can take 8-bit weights on full-range uint8 activations
    without saturating."""
    flags = cpu_flags() if flags is None else set(flags)
    return next((flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in flags), None)


#: CPU flags of instructions that multiply bfloat16 and sum in float32: AVX-512 BF16 and AMX. Where
#: one is present, PyTorch's CPU matrix multiplications under ``torch.autocast("cpu", torch.bfloat16)``
#: run on them (VideoBERT's training step 2.2x faster than float32 on an AVX-512 BF16 EPYC,
#: ``benchmarks/bench_train.py``); without them bfloat16 is emulated and slower.
BF16_MATMUL_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_matmul(flags=None):
    """The first of :data:`BF16_MATMUL_FLAGS` this CPU has (or ``flags`` holds), else ``None``."""
    flags = cpu_flags() if flags is None else set(flags)
    return next((flag for flag in BF16_MATMUL_FLAGS if flag in flags), None)


def machine_summary():
    """One line naming this machine for benchmark output: CPU model, logical cores, OS, architecture."""
    import os

    return f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"
