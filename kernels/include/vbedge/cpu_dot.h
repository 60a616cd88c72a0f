// Float32 dot-product kernels for the screening pass of the CPU tokenizer.
//
// Three implementations sit behind one set of function pointers: AVX2+FMA (x86-64, chosen at run
// time with __builtin_cpu_supports so the same binary runs on CPUs without AVX2), NEON (aarch64:
// Jetson; always present in ARMv8-A, so chosen whenever the build targets aarch64) and a portable one
// that the compiler can auto-vectorise (old x86, other CPUs; forced anywhere with
// VBEDGE_CPU_SIMD=portable). Results only feed the screening distance, whose error budget
// (docs/tokenizer.md) allows any summation order and FMA.
#pragma once

#include <cstdint>

namespace vbedge {
namespace cpu {

// out[j] = dot(x, rows + j * dim) for j < num_rows.
using DotRowsFn = void (*)(const float* x, const float* rows, int64_t num_rows, int64_t dim, float* out);

// out[i * 4 + j] += dot(x_i[0:len], (rows + j * stride)[0:len]) for i < 3, j < 4: a 3-feature x
// 4-centroid tile. Accumulating into `out` lets callers split D into cache-sized chunks.
using Dot3x4Fn = void (*)(const float* x0, const float* x1, const float* x2, const float* rows, int64_t stride,
                          int64_t len, float* out);

// dst[d] = float(src[d]) for IEEE binary16 bits, exactly.
using HalfRowFn = void (*)(const uint16_t* src, float* dst, int64_t dim);

// Squared norm accumulated in float64 (any order): finite iff every element is finite.
using Norm2Fn = double (*)(const float* x, int64_t dim);

// out[f * 16 + j] = dot(x_f, leaf j of the panel) for f < 6, j < 16, where `panel` holds 16
// centroids interleaved (panel[d * 16 + j] = centroid j, element d). The outer-product form keeps
// 12 accumulators for the whole length and needs 8 loads per 12 FMAs from contiguous memory.
// nullptr where the CPU has no fast path (callers fall back to Dot3x4Fn).
using Gemm6x16Fn = void (*)(const float* const* xs, const float* panel, int64_t dim, float* out);

struct DotKernels {
    DotRowsFn dot_rows;
    Dot3x4Fn dot_3x4;
    HalfRowFn half_row;
    Norm2Fn norm2;
    Gemm6x16Fn gemm_6x16;
    const char* name;
};

// The kernels picked for this CPU (resolved once, thread-safe).
const DotKernels& dot_kernels();

// The portable kernels, always available (tests compare both paths).
const DotKernels& portable_dot_kernels();

}  // namespace cpu
}  // namespace vbedge
