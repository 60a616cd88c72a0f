// Screening dot products for the CPU tokenizer: portable code plus an AVX2+FMA path (x86-64) and a
// NEON path (aarch64), picked at run time. See kernels/include/vbedge/cpu_dot.h.
#include "vbedge/cpu_dot.h"

#include "vbedge/tokenizer_common.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define VBEDGE_X86 1
#include <immintrin.h>
#endif

// Advanced SIMD (NEON) with float64 lanes and the float16 conversions is part of every ARMv8-A
// core (Cortex-A57 on Jetson Nano/TX2, Carmel on Xavier, Cortex-A78AE on Orin), so an aarch64 build
// compiles it unconditionally; 32-bit ARM keeps the portable path.
#if defined(__aarch64__) && defined(__ARM_NEON)
#define VBEDGE_NEON 1
#include <arm_neon.h>
#endif

namespace vbedge {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Portable path. Eight independent partial sums per dot product let the compiler map the inner
// loop onto whatever SIMD width the target has (NEON, SSE2) without -ffast-math.

float dot_portable(const float* x, const float* c, int64_t dim) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += x[d + j] * c[d + j];
    }
    for (; d < dim; ++d) acc[0] += x[d] * c[d];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void dot_rows_portable(const float* x, const float* rows, int64_t num_rows, int64_t dim, float* out) {
    for (int64_t j = 0; j < num_rows; ++j) out[j] = dot_portable(x, rows + j * dim, dim);
}

void dot_3x4_portable(const float* x0, const float* x1, const float* x2, const float* rows, int64_t stride,
                      int64_t len, float* out) {
    const float* xs[3] = {x0, x1, x2};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 4; ++j) out[i * 4 + j] += dot_portable(xs[i], rows + j * stride, len);
}

double norm2_portable(const float* x, int64_t dim) {
    double acc[4] = {0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 4 <= dim; d += 4) {
        for (int j = 0; j < 4; ++j) {
            const double v = x[d + j];
            acc[j] += v * v;
        }
    }
    for (; d < dim; ++d) {
        const double v = x[d];
        acc[0] += v * v;
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void half_row_portable(const uint16_t* src, float* dst, int64_t dim) {
    for (int64_t d = 0; d < dim; ++d) dst[d] = half_bits_to_float(src[d]);
}

#if VBEDGE_X86
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA path. Only called after __builtin_cpu_supports confirmed the instructions.

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

// R rows at once, one accumulator per row: R independent FMA chains hide the FMA latency and the
// feature chunk is loaded once for all R rows.
template <int R>
__attribute__((target("avx2,fma"))) void dot_rows_block_avx2(const float* x, const float* rows, int64_t dim,
                                                              float* out) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    const int64_t dv = dim & ~int64_t(7);
    for (int64_t d = 0; d < dv; d += 8) {
        const __m256 xv = _mm256_loadu_ps(x + d);
        for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(rows + r * dim + d), acc[r]);
    }
    for (int r = 0; r < R; ++r) {
        float s = hsum256(acc[r]);
        for (int64_t d = dv; d < dim; ++d) s += x[d] * rows[r * dim + d];
        out[r] = s;
    }
}

__attribute__((target("avx2,fma"))) void dot_rows_avx2(const float* x, const float* rows, int64_t num_rows,
                                                       int64_t dim, float* out) {
    int64_t j = 0;
    for (; j + 12 <= num_rows; j += 12) dot_rows_block_avx2<12>(x, rows + j * dim, dim, out + j);
    switch (num_rows - j) {
        case 11: dot_rows_block_avx2<11>(x, rows + j * dim, dim, out + j); break;
        case 10: dot_rows_block_avx2<10>(x, rows + j * dim, dim, out + j); break;
        case 9: dot_rows_block_avx2<9>(x, rows + j * dim, dim, out + j); break;
        case 8: dot_rows_block_avx2<8>(x, rows + j * dim, dim, out + j); break;
        case 7: dot_rows_block_avx2<7>(x, rows + j * dim, dim, out + j); break;
        case 6: dot_rows_block_avx2<6>(x, rows + j * dim, dim, out + j); break;
        case 5: dot_rows_block_avx2<5>(x, rows + j * dim, dim, out + j); break;
        case 4: dot_rows_block_avx2<4>(x, rows + j * dim, dim, out + j); break;
        case 3: dot_rows_block_avx2<3>(x, rows + j * dim, dim, out + j); break;
        case 2: dot_rows_block_avx2<2>(x, rows + j * dim, dim, out + j); break;
        case 1: dot_rows_block_avx2<1>(x, rows + j * dim, dim, out + j); break;
        default: break;
    }
}

// 3 features x 4 centroids: 12 accumulators + 3 feature registers + 1 centroid register = 16 ymm,
// 7 loads per 12 FMAs, so the tile is FMA-bound rather than load-bound (exact mode's inner loop).
__attribute__((target("avx2,fma"))) void dot_3x4_avx2(const float* x0, const float* x1, const float* x2,
                                                      const float* rows, int64_t stride, int64_t len, float* out) {
    const int64_t dim = len;
    const float* xs[3] = {x0, x1, x2};
    const float* c0 = rows;
    const float* c1 = rows + stride;
    const float* c2 = rows + 2 * stride;
    const float* c3 = rows + 3 * stride;
    __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a02 = _mm256_setzero_ps(), a03 = _mm256_setzero_ps();
    __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a12 = _mm256_setzero_ps(), a13 = _mm256_setzero_ps();
    __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a22 = _mm256_setzero_ps(), a23 = _mm256_setzero_ps();
    const int64_t dv = dim & ~int64_t(7);
    for (int64_t d = 0; d < dv; d += 8) {
        const __m256 v0 = _mm256_loadu_ps(x0 + d);
        const __m256 v1 = _mm256_loadu_ps(x1 + d);
        const __m256 v2 = _mm256_loadu_ps(x2 + d);
        __m256 c = _mm256_loadu_ps(c0 + d);
        a00 = _mm256_fmadd_ps(v0, c, a00);
        a10 = _mm256_fmadd_ps(v1, c, a10);
        a20 = _mm256_fmadd_ps(v2, c, a20);
        c = _mm256_loadu_ps(c1 + d);
        a01 = _mm256_fmadd_ps(v0, c, a01);
        a11 = _mm256_fmadd_ps(v1, c, a11);
        a21 = _mm256_fmadd_ps(v2, c, a21);
        c = _mm256_loadu_ps(c2 + d);
        a02 = _mm256_fmadd_ps(v0, c, a02);
        a12 = _mm256_fmadd_ps(v1, c, a12);
        a22 = _mm256_fmadd_ps(v2, c, a22);
        c = _mm256_loadu_ps(c3 + d);
        a03 = _mm256_fmadd_ps(v0, c, a03);
        a13 = _mm256_fmadd_ps(v1, c, a13);
        a23 = _mm256_fmadd_ps(v2, c, a23);
    }
    const __m256 accs[12] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23};
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 4; ++j) {
            float s = hsum256(accs[i * 4 + j]);
            for (int64_t d = dv; d < dim; ++d) s += xs[i][d] * rows[j * stride + d];
            out[i * 4 + j] += s;
        }
    }
}

__attribute__((target("avx2,fma"))) void gemm_6x16_avx2(const float* const* xs, const float* panel, int64_t dim,
                                                        float* out) {
    const float* x0 = xs[0];
    const float* x1 = xs[1];
    const float* x2 = xs[2];
    const float* x3 = xs[3];
    const float* x4 = xs[4];
    const float* x5 = xs[5];
    __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
    __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
    __m256 a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps(), a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
    for (int64_t d = 0; d < dim; ++d) {
        const __m256 c0 = _mm256_loadu_ps(panel + d * 16);
        const __m256 c1 = _mm256_loadu_ps(panel + d * 16 + 8);
        __m256 b = _mm256_broadcast_ss(x0 + d);
        a00 = _mm256_fmadd_ps(b, c0, a00);
        a01 = _mm256_fmadd_ps(b, c1, a01);
        b = _mm256_broadcast_ss(x1 + d);
        a10 = _mm256_fmadd_ps(b, c0, a10);
        a11 = _mm256_fmadd_ps(b, c1, a11);
        b = _mm256_broadcast_ss(x2 + d);
        a20 = _mm256_fmadd_ps(b, c0, a20);
        a21 = _mm256_fmadd_ps(b, c1, a21);
        b = _mm256_broadcast_ss(x3 + d);
        a30 = _mm256_fmadd_ps(b, c0, a30);
        a31 = _mm256_fmadd_ps(b, c1, a31);
        b = _mm256_broadcast_ss(x4 + d);
        a40 = _mm256_fmadd_ps(b, c0, a40);
        a41 = _mm256_fmadd_ps(b, c1, a41);
        b = _mm256_broadcast_ss(x5 + d);
        a50 = _mm256_fmadd_ps(b, c0, a50);
        a51 = _mm256_fmadd_ps(b, c1, a51);
    }
    _mm256_storeu_ps(out + 0, a00);
    _mm256_storeu_ps(out + 8, a01);
    _mm256_storeu_ps(out + 16, a10);
    _mm256_storeu_ps(out + 24, a11);
    _mm256_storeu_ps(out + 32, a20);
    _mm256_storeu_ps(out + 40, a21);
    _mm256_storeu_ps(out + 48, a30);
    _mm256_storeu_ps(out + 56, a31);
    _mm256_storeu_ps(out + 64, a40);
    _mm256_storeu_ps(out + 72, a41);
    _mm256_storeu_ps(out + 80, a50);
    _mm256_storeu_ps(out + 88, a51);
}

__attribute__((target("avx2,fma"))) double norm2_avx2(const float* x, int64_t dim) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16) {
        const __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(x + d));
        const __m256d v1 = _mm256_cvtps_pd(_mm_loadu_ps(x + d + 4));
        const __m256d v2 = _mm256_cvtps_pd(_mm_loadu_ps(x + d + 8));
        const __m256d v3 = _mm256_cvtps_pd(_mm_loadu_ps(x + d + 12));
        a0 = _mm256_fmadd_pd(v0, v0, a0);
        a1 = _mm256_fmadd_pd(v1, v1, a1);
        a2 = _mm256_fmadd_pd(v2, v2, a2);
        a3 = _mm256_fmadd_pd(v3, v3, a3);
    }
    const __m256d s = _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3));
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, s);
    double total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; d < dim; ++d) total += static_cast<double>(x[d]) * static_cast<double>(x[d]);
    return total;
}

__attribute__((target("avx2,fma,f16c"))) void half_row_f16c(const uint16_t* src, float* dst, int64_t dim) {
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d));
        _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(h));  // exact: every half is a float
    }
    for (; d < dim; ++d) dst[d] = half_bits_to_float(src[d]);
}
#endif  // VBEDGE_X86

#if VBEDGE_NEON
// ---------------------------------------------------------------------------------------------
// NEON path (aarch64). Screening only: the canonical float64 distance stays scalar and strictly
// sequential in cpu_tokenizer.cpp. vfmaq_f32 is an explicit fused multiply-add, which the screening
// error budget allows (docs/tokenizer.md: any order, FMA allowed); -ffp-contract=off only stops the
// compiler from fusing the separate multiplies and adds of the canonical distance.

// R rows at once, one float32x4 accumulator per row: R independent FMA chains (Cortex-A78 has two
// 4-cycle FMA pipes, so 8+ chains keep them busy) and the feature chunk is loaded once for R rows.
template <int R>
void dot_rows_block_neon(const float* x, const float* rows, int64_t dim, float* out) {
    float32x4_t acc[R];
    for (int r = 0; r < R; ++r) acc[r] = vdupq_n_f32(0.0f);
    const int64_t dv = dim & ~int64_t(3);
    for (int64_t d = 0; d < dv; d += 4) {
        const float32x4_t xv = vld1q_f32(x + d);
        for (int r = 0; r < R; ++r) acc[r] = vfmaq_f32(acc[r], xv, vld1q_f32(rows + r * dim + d));
    }
    for (int r = 0; r < R; ++r) {
        float s = vaddvq_f32(acc[r]);
        for (int64_t d = dv; d < dim; ++d) s += x[d] * rows[r * dim + d];
        out[r] = s;
    }
}

void dot_rows_neon(const float* x, const float* rows, int64_t num_rows, int64_t dim, float* out) {
    int64_t j = 0;
    for (; j + 12 <= num_rows; j += 12) dot_rows_block_neon<12>(x, rows + j * dim, dim, out + j);
    switch (num_rows - j) {
        case 11: dot_rows_block_neon<11>(x, rows + j * dim, dim, out + j); break;
        case 10: dot_rows_block_neon<10>(x, rows + j * dim, dim, out + j); break;
        case 9: dot_rows_block_neon<9>(x, rows + j * dim, dim, out + j); break;
        case 8: dot_rows_block_neon<8>(x, rows + j * dim, dim, out + j); break;
        case 7: dot_rows_block_neon<7>(x, rows + j * dim, dim, out + j); break;
        case 6: dot_rows_block_neon<6>(x, rows + j * dim, dim, out + j); break;
        case 5: dot_rows_block_neon<5>(x, rows + j * dim, dim, out + j); break;
        case 4: dot_rows_block_neon<4>(x, rows + j * dim, dim, out + j); break;
        case 3: dot_rows_block_neon<3>(x, rows + j * dim, dim, out + j); break;
        case 2: dot_rows_block_neon<2>(x, rows + j * dim, dim, out + j); break;
        case 1: dot_rows_block_neon<1>(x, rows + j * dim, dim, out + j); break;
        default: break;
    }
}

// 3 features x 4 centroids: 12 accumulators + 3 feature registers + 1 centroid register out of the
// 32 NEON registers; 7 loads per 12 FMAs, as in the AVX2 tile.
void dot_3x4_neon(const float* x0, const float* x1, const float* x2, const float* rows, int64_t stride, int64_t len,
                  float* out) {
    const float* xs[3] = {x0, x1, x2};
    const float* c0 = rows;
    const float* c1 = rows + stride;
    const float* c2 = rows + 2 * stride;
    const float* c3 = rows + 3 * stride;
    float32x4_t a00 = vdupq_n_f32(0.0f), a01 = a00, a02 = a00, a03 = a00;
    float32x4_t a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    float32x4_t a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    const int64_t dv = len & ~int64_t(3);
    for (int64_t d = 0; d < dv; d += 4) {
        const float32x4_t v0 = vld1q_f32(x0 + d);
        const float32x4_t v1 = vld1q_f32(x1 + d);
        const float32x4_t v2 = vld1q_f32(x2 + d);
        float32x4_t c = vld1q_f32(c0 + d);
        a00 = vfmaq_f32(a00, v0, c);
        a10 = vfmaq_f32(a10, v1, c);
        a20 = vfmaq_f32(a20, v2, c);
        c = vld1q_f32(c1 + d);
        a01 = vfmaq_f32(a01, v0, c);
        a11 = vfmaq_f32(a11, v1, c);
        a21 = vfmaq_f32(a21, v2, c);
        c = vld1q_f32(c2 + d);
        a02 = vfmaq_f32(a02, v0, c);
        a12 = vfmaq_f32(a12, v1, c);
        a22 = vfmaq_f32(a22, v2, c);
        c = vld1q_f32(c3 + d);
        a03 = vfmaq_f32(a03, v0, c);
        a13 = vfmaq_f32(a13, v1, c);
        a23 = vfmaq_f32(a23, v2, c);
    }
    const float32x4_t accs[12] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23};
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 4; ++j) {
            float s = vaddvq_f32(accs[i * 4 + j]);
            for (int64_t d = dv; d < len; ++d) s += xs[i][d] * rows[j * stride + d];
            out[i * 4 + j] += s;
        }
    }
}

// 6 features x 16 interleaved centroids (see Gemm6x16Fn): 24 accumulators + 4 centroid registers +
// 1 broadcast register = 29 of the 32 NEON registers; 4 vector loads + 6 scalar loads per 24 FMAs.
void gemm_6x16_neon(const float* const* xs, const float* panel, int64_t dim, float* out) {
    float32x4_t acc[6][4];
    for (int f = 0; f < 6; ++f)
        for (int q = 0; q < 4; ++q) acc[f][q] = vdupq_n_f32(0.0f);
    for (int64_t d = 0; d < dim; ++d) {
        const float* p = panel + d * 16;
        const float32x4_t c0 = vld1q_f32(p);
        const float32x4_t c1 = vld1q_f32(p + 4);
        const float32x4_t c2 = vld1q_f32(p + 8);
        const float32x4_t c3 = vld1q_f32(p + 12);
        for (int f = 0; f < 6; ++f) {
            const float b = xs[f][d];
            acc[f][0] = vfmaq_n_f32(acc[f][0], c0, b);
            acc[f][1] = vfmaq_n_f32(acc[f][1], c1, b);
            acc[f][2] = vfmaq_n_f32(acc[f][2], c2, b);
            acc[f][3] = vfmaq_n_f32(acc[f][3], c3, b);
        }
    }
    for (int f = 0; f < 6; ++f)
        for (int q = 0; q < 4; ++q) vst1q_f32(out + f * 16 + q * 4, acc[f][q]);
}

// Squared norm in float64 lanes: each float widens exactly, so the sum is finite iff every element
// is (the largest square, ~1.2e77, is far from double overflow).
double norm2_neon(const float* x, int64_t dim) {
    float64x2_t a0 = vdupq_n_f64(0.0), a1 = a0, a2 = a0, a3 = a0;
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
        const float32x4_t lo = vld1q_f32(x + d);
        const float32x4_t hi = vld1q_f32(x + d + 4);
        const float64x2_t v0 = vcvt_f64_f32(vget_low_f32(lo));
        const float64x2_t v1 = vcvt_high_f64_f32(lo);
        const float64x2_t v2 = vcvt_f64_f32(vget_low_f32(hi));
        const float64x2_t v3 = vcvt_high_f64_f32(hi);
        a0 = vfmaq_f64(a0, v0, v0);
        a1 = vfmaq_f64(a1, v1, v1);
        a2 = vfmaq_f64(a2, v2, v2);
        a3 = vfmaq_f64(a3, v3, v3);
    }
    double total = vaddvq_f64(vaddq_f64(vaddq_f64(a0, a1), vaddq_f64(a2, a3)));
    for (; d < dim; ++d) total += static_cast<double>(x[d]) * static_cast<double>(x[d]);
    return total;
}

// IEEE binary16 -> float32 with the FCVTL instruction (base ARMv8-A): exact, subnormals included.
void half_row_neon(const uint16_t* src, float* dst, int64_t dim) {
    int64_t d = 0;
    for (; d + 4 <= dim; d += 4) vst1q_f32(dst + d, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + d))));
    for (; d < dim; ++d) dst[d] = half_bits_to_float(src[d]);
}
#endif  // VBEDGE_NEON

DotKernels pick_kernels() {
    // VBEDGE_CPU_SIMD=portable forces the portable path, so tests can check the code that pre-AVX2
    // x86 and non-aarch64 CPUs run, next to the AVX2 or NEON path on the same machine.
    const char* forced = std::getenv("VBEDGE_CPU_SIMD");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) {
        return DotKernels{dot_rows_portable, dot_3x4_portable, half_row_portable, norm2_portable, nullptr, "portable"};
    }
#if VBEDGE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        DotKernels k{dot_rows_avx2, dot_3x4_avx2, half_row_portable, norm2_avx2, gemm_6x16_avx2, "avx2+fma"};
        if (__builtin_cpu_supports("f16c")) {
            k.half_row = half_row_f16c;
            k.name = "avx2+fma+f16c";
        }
        return k;
    }
#endif
#if VBEDGE_NEON
    // No run-time probe needed: NEON (with float64 and float16 conversion) is mandatory on aarch64.
    return DotKernels{dot_rows_neon, dot_3x4_neon, half_row_neon, norm2_neon, gemm_6x16_neon, "neon"};
#else
    return DotKernels{dot_rows_portable, dot_3x4_portable, half_row_portable, norm2_portable, nullptr, "portable"};
#endif
}

}  // namespace

const DotKernels& dot_kernels() {
    static const DotKernels kernels = pick_kernels();  // C++11 magic static: initialised once
    return kernels;
}

const DotKernels& portable_dot_kernels() {
    static const DotKernels kernels{dot_rows_portable, dot_3x4_portable, half_row_portable, norm2_portable, nullptr, "portable"};
    return kernels;
}

}  // namespace cpu
}  // namespace vbedge
