// Shared pieces of the visual-tokenizer contract (docs/tokenizer.md) used by the C++ CPU kernel
// and the CUDA kernel, so that both derive the tree layout, the screening tolerance and the float16
// conversion from one definition.
//
// Everything here is header-only, free of the standard library beyond <cstdint>, and marked
// host+device under nvcc.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VBEDGE_HD __host__ __device__
#else
#define VBEDGE_HD
#endif

namespace vbedge {

// Version of the tokenizer contract the kernels implement; bump when the metric or tie rules change.
constexpr int kTokenizerContractVersion = 1;

// 2^-24: the unit roundoff of float32.
constexpr double kFloat32UnitRoundoff = 1.0 / 16777216.0;

// Largest finite float32; a feature whose squared norm exceeds it is rejected (docs/tokenizer.md).
constexpr double kFloat32Max = 3.4028234663852886e38;

// tol(x) = tolerance_scale(D) * (|x|^2 + C_max). The factor 8 * (D + 8) * 2^-24 bounds twice the
// float32 error of a screening distance |c|^2 - 2 x.c summed in any order (error of a length-D dot
// product is at most D * 2^-24 * |x||c| <= D * 2^-24 * (|x|^2 + |c|^2) / 2, plus a few roundings).
VBEDGE_HD constexpr double tolerance_scale(int64_t dim) {
    return 8.0 * (static_cast<double>(dim) + 8.0) * kFloat32UnitRoundoff;
}

VBEDGE_HD constexpr double tolerance(double x_norm2, double c_max, int64_t dim) {
    return tolerance_scale(dim) * (x_norm2 + c_max);
}

// k^e for the small exponents of a tree (k^L must fit in int64; callers validate first).
VBEDGE_HD constexpr int64_t int_pow(int64_t k, int e) {
    int64_t r = 1;
    for (int i = 0; i < e; ++i) r *= k;
    return r;
}

// Row of the first centroid of level `level` in the stacked centroid array:
// sum_{m < level} k^(m+1).
VBEDGE_HD constexpr int64_t level_offset(int64_t branching, int level) {
    int64_t off = 0;
    int64_t width = 1;
    for (int m = 0; m < level; ++m) {
        width *= branching;
        off += width;
    }
    return off;
}

// Total number of centroid rows of a tree: level_offset(k, L).
VBEDGE_HD constexpr int64_t total_centroids(int64_t branching, int levels) {
    return level_offset(branching, levels);
}

// IEEE binary16 bits -> float32, exact for every input (subnormals, infinities, NaN payload kept
// non-NaN-ness). Portable: used where no hardware conversion is available.
VBEDGE_HD inline float half_bits_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    uint32_t bits;
    if (exponent == 0x1Fu) {
        bits = sign | 0x7F800000u | (mantissa << 13);  // inf / NaN
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // normal: rebias 15 -> 127
    } else if (mantissa == 0) {
        bits = sign;  // signed zero
    } else {
        // Subnormal half: normalise the mantissa into a normal float.
        uint32_t e = 113u;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --e;
        }
        bits = sign | (e << 23) | ((mantissa & 0x3FFu) << 13);
    }
    float out;
    // memcpy-free bit cast that also compiles under nvcc.
    union {
        uint32_t u;
        float f;
    } pun;
    pun.u = bits;
    out = pun.f;
    return out;
}

}  // namespace vbedge
