// Screening dot products for the CPU tokenizer: portable code plus an AVX2+FMA path picked at run
// time. See kernels/include/vbedge/cpu_dot.h.
#include "vbedge/cpu_dot.h"

#include "vbedge/tokenizer_common.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define VBEDGE_X86 1
#include <immintrin.h>
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

DotKernels pick_kernels() {
    // VBEDGE_CPU_SIMD=portable forces the portable path, so tests on an AVX2 machine can check the
    // code that aarch64 Jetson and pre-AVX2 CPUs run.
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
    return DotKernels{dot_rows_portable, dot_3x4_portable, half_row_portable, norm2_portable, nullptr, "portable"};
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
