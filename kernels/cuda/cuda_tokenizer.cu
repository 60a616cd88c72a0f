// CUDA visual tokenizer: kernels and host engine (docs/tokenizer.md is the contract).
//
// Every path screens with a float32 distance sum((x-c)^2) (any order, FMA allowed) and settles every
// candidate inside the tolerance window with the canonical float64 left-to-right distance computed
// with __dsub_rn/__dmul_rn/__dadd_rn (so nvcc cannot contract it to FMA), ordered by (canon, index).
// The screening error of sum((x-c)^2) in float32 is at most about (D/32 + 8) * 2^-24 * 2(|x|^2+|c|^2),
// far below tol/2 = 4 (D+8) 2^-24 (|x|^2 + C_max), so the answer is exactly the canonical one.
//
// Three kernels:
//  * tree, beam 1, small batches (live case): tree_small_kernel, one block per feature and one warp
//    per child, all levels in ONE launch (N = 1 costs one launch and 4 dependent memory round trips).
//  * tree, beam 1, large batches: level by level over the batch. Before level l the features are
//    grouped by their current node with a counting sort (histogram fused into the previous level's
//    kernel, one scan kernel, one scatter kernel). A block then loads one node's k children into
//    shared memory once and serves every feature under that node from there, instead of every
//    feature reading 48 KB of children from L2/DRAM.
//  * tree beam > 1, exact mode, or branching > 16: generic_kernel, one block per feature, the
//    b-th smallest screening distance and the b best canonical candidates found by bisection on
//    the (monotone) bit patterns of non-negative floats/doubles. Simpler and slower (documented).
//
// Non-finite rows (or rows whose float32 squared norm overflows) get id -1 and their index is
// atomically min-ed into the caller's error word.
#include "cuda_tokenizer.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "vbedge/tokenizer_args.h"
#include "vbedge/tokenizer_common.h"

namespace vbedge {
namespace cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxLevels = 16;          // same limit as the CPU tokenizer
constexpr int kMaxKSorted = 16;         // register accumulators per warp in the sorted kernel
constexpr int kMaxKSmall = 32;          // one warp per child, at most 1024 threads per block
constexpr int kSortedWarps = 8;
constexpr int kSortedThreads = kSortedWarps * kWarp;
constexpr int kSortedChunk = 128;       // sorted positions per block
constexpr int kScanThreads = 1024;
constexpr int kGenericThreads = 256;
constexpr int kGenericWarps = kGenericThreads / kWarp;
constexpr size_t kGenericScratchBudget = size_t(64) << 20;  // bytes of per-feature scratch in flight
// Bytes of generic scratch per candidate: fast f32, refined index i32, canon f64, 2 beam lists i32.
constexpr size_t kGenericBytesPerCand = 4 + 4 + 8 + 4 + 4;

void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        // std::string, not iostreams: see kernels/bindings/cuda_module.cpp (shape_str).
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) + " (" +
                                 cudaGetErrorString(err) + ")");
    }
}

void check_launch(const char* kernel) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        throw std::runtime_error(std::string("CUDA kernel ") + kernel + " failed to launch: " + cudaGetErrorName(err) +
                                 " (" + cudaGetErrorString(err) + ")");
    }
}

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        check(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
        restore_ = previous_ != device;
    }
    ~DeviceGuard() {
        if (restore_) cudaSetDevice(previous_);  // best effort in a destructor
    }

private:
    int previous_ = 0;
    bool restore_ = false;
};

// Codebook view handed to kernels by value.
struct DevCodebook {
    const float* cent;  // (rows, Dp), zero padded
    int D;
    int Dp;
    int levels;
    int k;
    long long leaves;
    long long level_offset[kMaxLevels];
    double cmax;
    double tol_scale;
};

// ------------------------------------------------------------------ device helpers

__device__ __forceinline__ float load_x(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_x(const __half* p) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

// Butterfly all-reduce: every lane ends with the bitwise same value (addition is commutative, and
// each pair of lanes adds the same two operands).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(kFullMask, v, m);
    return v;
}

__device__ __forceinline__ long long warp_sum_ll(long long v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(kFullMask, v, m);
    return v;
}

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = fminf(v, __shfl_xor_sync(kFullMask, v, m));
    return v;
}

__device__ __forceinline__ float sq_dist4(float4 x, float4 c, float acc) {
    const float a = x.x - c.x, b = x.y - c.y, e = x.z - c.z, f = x.w - c.w;
    acc = fmaf(a, a, acc);
    acc = fmaf(b, b, acc);
    acc = fmaf(e, e, acc);
    return fmaf(f, f, acc);
}

// Canonical distance: float64, strictly left to right, round-to-nearest intrinsics (no FMA).
// xs holds the feature converted to float32, which is exact for float32 and float16 inputs.
__device__ double canon_dist(const float* xs, const float* c, int D) {
    double s = 0.0;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
        const double diff = __dsub_rn(static_cast<double>(xs[d]), static_cast<double>(__ldg(c + d)));
        s = __dadd_rn(s, __dmul_rn(diff, diff));
    }
    return s;
}

// Lane j (< k) holds the screening distance of child j (others: +inf). Returns the winning child
// (the same on every lane) by (canon, j) among the candidates inside the tolerance window.
// child0 is the global row of child 0; child j's row is child0 + j * Dp.
__device__ int select_child(float my_fast, int k, double tol, const float* xs, const float* child0, int Dp, int D,
                            int lane) {
    const float best = warp_min(my_fast);
    const double limit = static_cast<double>(best) + tol;
    const bool cand = lane < k && static_cast<double>(my_fast) <= limit;
    const unsigned mask = __ballot_sync(kFullMask, cand);
    if (__popc(mask) == 1) return __ffs(mask) - 1;
    double cv = CUDART_INF;
    if (cand) cv = canon_dist(xs, child0 + static_cast<long long>(lane) * Dp, D);
    int bj = lane;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
        const double ocv = __shfl_xor_sync(kFullMask, cv, m);
        const int obj = __shfl_xor_sync(kFullMask, bj, m);
        if (ocv < cv || (ocv == cv && obj < bj)) {
            cv = ocv;
            bj = obj;
        }
    }
    return bj;
}

// Block-wide sum; every thread gets the total. red: shared scratch of >= 32 entries.
__device__ long long block_sum_ll(long long v, long long* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum_ll(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    long long total = 0;
    for (int w = 0; w < nwarps; ++w) total += red[w];
    __syncthreads();  // red may be reused right after
    return total;
}

// Block copies row into xs (float32, zero padded to Dp) and checks it. Returns true when every
// element and the float32 squared norm are finite. red: shared scratch of >= 32 floats.
template <typename T>
__device__ bool stage_block(const T* row, int D, int Dp, float* xs, float* red, float* norm2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float ss = 0.f;
    int bad = 0;
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) {
        float v = 0.f;
        if (d < D) {
            v = load_x(row + d);
            bad |= !isfinite(v);
        }
        xs[d] = v;
        ss = fmaf(v, v, ss);
    }
    ss = warp_sum(ss);
    if (lane == 0) red[warp] = ss;
    const int any_bad = __syncthreads_or(bad);  // also publishes xs and red
    float total = 0.f;
    for (int w = 0; w < nwarps; ++w) total += red[w];
    __syncthreads();  // red may be reused right after
    *norm2 = total;
    return !any_bad && isfinite(total);
}

// Four consecutive elements as float32 (exact for both types); p must be 4-element aligned.
__device__ __forceinline__ float4 load_x4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float4 load_x4(const __half* p) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

// Warp copies row into xs (float32, zero padded to Dp) and checks it (see stage_block).
// Rows that are 4-element aligned with D % 4 == 0 (the usual case) are read with 16-byte (float) or
// 8-byte (half) loads, 8 in flight per lane, so that the per-level re-read of the features of the
// node-grouped path runs near memory bandwidth; other rows element by element.
template <typename T>
__device__ bool stage_warp(const T* row, int D, int Dp, float* xs, int lane, float* norm2) {
    float ss = 0.f;
    bool finite = true;
    const bool vec = (D & 3) == 0 && (reinterpret_cast<uintptr_t>(row) % (4 * sizeof(T))) == 0;
    if (vec) {
        float4* xs4 = reinterpret_cast<float4*>(xs);
        const int D4 = D >> 2;  // == Dp / 4 here
#pragma unroll 8
        for (int d4 = lane; d4 < D4; d4 += kWarp) {
            const float4 v = load_x4(row + 4 * d4);
            finite = finite && isfinite(v.x) && isfinite(v.y) && isfinite(v.z) && isfinite(v.w);
            xs4[d4] = v;
            ss = fmaf(v.x, v.x, ss);
            ss = fmaf(v.y, v.y, ss);
            ss = fmaf(v.z, v.z, ss);
            ss = fmaf(v.w, v.w, ss);
        }
    } else {
        for (int d = lane; d < Dp; d += kWarp) {
            float v = 0.f;
            if (d < D) {
                v = load_x(row + d);
                finite = finite && isfinite(v);
            }
            xs[d] = v;
            ss = fmaf(v, v, ss);
        }
    }
    ss = warp_sum(ss);
    const bool ok = __all_sync(kFullMask, finite) && isfinite(ss);
    __syncwarp();  // xs visible to every lane
    *norm2 = ss;
    return ok;
}

// ------------------------------------------------------------------ tree, beam 1, small batches

// One block (k warps) per feature; warp j screens child j; warp 0 decides. All levels in one launch.
template <typename T>
__global__ void tree_small_kernel(DevCodebook cb, const T* feats, long long n, long long stride, long long* out,
                                  long long* err) {
    extern __shared__ float4 smem4[];
    float* xs = reinterpret_cast<float*>(smem4);
    const float4* xs4 = smem4;
    __shared__ float fast_s[kMaxKSmall];
    __shared__ float red_s[32];
    __shared__ int node_s;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = cb.k, Dp4 = cb.Dp >> 2;
    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        float norm2;
        const bool valid = stage_block(feats + i * stride, cb.D, cb.Dp, xs, red_s, &norm2);
        long long node = 0;
        if (valid) {
            const double tol = cb.tol_scale * (static_cast<double>(norm2) + cb.cmax);
            for (int l = 0; l < cb.levels; ++l) {
                const float* child0 = cb.cent + (cb.level_offset[l] + node * k) * cb.Dp;
                if (warp < k) {
                    const float4* c4 = reinterpret_cast<const float4*>(child0 + static_cast<long long>(warp) * cb.Dp);
                    float acc = 0.f;
#pragma unroll 8
                    for (int d4 = lane; d4 < Dp4; d4 += kWarp) acc = sq_dist4(xs4[d4], __ldg(c4 + d4), acc);
                    acc = warp_sum(acc);
                    if (lane == 0) fast_s[warp] = acc;
                }
                __syncthreads();
                if (warp == 0) {
                    const float mine = lane < k ? fast_s[lane] : CUDART_INF_F;
                    const int j = select_child(mine, k, tol, xs, child0, cb.Dp, cb.D, lane);
                    if (lane == 0) node_s = static_cast<int>(node * k + j);
                }
                __syncthreads();
                node = node_s;
            }
        }
        if (threadIdx.x == 0) {
            out[i] = valid ? node : -1;
            if (!valid && err != nullptr) atomicMin(err, i);
        }
        __syncthreads();  // xs, red_s, node_s are rewritten for the next feature
    }
}

// ------------------------------------------------------------------ tree, beam 1, large batches

// Level `level` over features in sorted order. Sorted position q holds feature perm[q] (identity
// when perm is null, at level 0 where every feature is under the virtual root). Features under one
// node are contiguous: positions bucket_end[p] .. bucket_end[p+1]-1 hold node p (bucket_end is the
// exclusive scan of the histogram, with the total at index nkeys). Invalid rows carry node -1 and
// sit in bucket 0; they are skipped.
template <typename T>
__global__ void __launch_bounds__(kSortedThreads)
tree_sorted_level_kernel(DevCodebook cb, int level, const T* feats, long long n, long long stride, const int* perm,
                         const int* bucket_end, const int* node_in, int* node_out, int* counts_next,
                         long long* out, long long* err) {
    extern __shared__ float4 smem4[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = cb.k, Dp = cb.Dp, Dp4 = Dp >> 2;
    float4* ch4 = smem4;                                  // k * Dp floats: the node's children
    float4* xs4 = smem4 + (k + warp) * Dp4;               // this warp's staged feature
    float* xs = reinterpret_cast<float*>(xs4);
    const bool final_level = level == cb.levels - 1;

    const long long start = static_cast<long long>(blockIdx.x) * kSortedChunk;
    const long long end = min(n, start + kSortedChunk);
    long long pos = start;
    while (pos < end) {
        int p = 0;
        long long run_end = end;
        if (perm != nullptr) {
            p = max(node_in[perm[pos]], 0);
            run_end = min(end, static_cast<long long>(bucket_end[p + 1]));
        }
        const long long first_row = cb.level_offset[level] + static_cast<long long>(p) * k;
        __syncthreads();  // every warp is done with the previous node's children
        const float4* src = reinterpret_cast<const float4*>(cb.cent + first_row * Dp);
        for (int t = threadIdx.x; t < k * Dp4; t += blockDim.x) ch4[t] = __ldg(src + t);
        __syncthreads();
        const float* child0_global = cb.cent + first_row * Dp;

        for (long long q = pos + warp; q < run_end; q += kSortedWarps) {
            const int i = perm != nullptr ? perm[q] : static_cast<int>(q);
            const int pin = node_in != nullptr ? node_in[i] : 0;
            int result = -1;
            if (pin >= 0) {
                float norm2;
                const bool ok = stage_warp(feats + static_cast<long long>(i) * stride, cb.D, Dp, xs, lane, &norm2);
                if (ok) {
                    const double tol = cb.tol_scale * (static_cast<double>(norm2) + cb.cmax);
                    float acc[kMaxKSorted];
#pragma unroll
                    for (int j = 0; j < kMaxKSorted; ++j) acc[j] = 0.f;
                    for (int d4 = lane; d4 < Dp4; d4 += kWarp) {
                        const float4 x = xs4[d4];
#pragma unroll
                        for (int j = 0; j < kMaxKSorted; ++j) {
                            if (j < k) acc[j] = sq_dist4(x, ch4[j * Dp4 + d4], acc[j]);
                        }
                    }
                    float mine = CUDART_INF_F;
#pragma unroll
                    for (int j = 0; j < kMaxKSorted; ++j) {
                        if (j < k) {
                            const float s = warp_sum(acc[j]);
                            if (lane == j) mine = s;
                        }
                    }
                    const int j = select_child(mine, k, tol, xs, child0_global, Dp, cb.D, lane);
                    result = pin * k + j;
                } else if (lane == 0 && err != nullptr) {
                    atomicMin(err, static_cast<long long>(i));
                }
            }
            if (lane == 0) {
                if (final_level) {
                    out[i] = result;
                } else {
                    node_out[i] = result;
                    atomicAdd(&counts_next[max(result, 0)], 1);
                }
            }
            __syncwarp();  // xs is overwritten by this warp's next feature
        }
        pos = run_end;
    }
}

// ------------------------------------------------------------------ tree, beam 1, large batches, tiled

// Canonical distance reading the feature straight from its (global) row: load_x converts to
// float32 exactly, so the value is bit-identical to canon_dist on a staged copy.
template <typename T>
__device__ double canon_dist_row(const T* row, const float* c, int D) {
    double s = 0.0;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
        const double diff = __dsub_rn(static_cast<double>(load_x(row + d)), static_cast<double>(__ldg(c + d)));
        s = __dadd_rn(s, __dmul_rn(diff, diff));
    }
    return s;
}

// select_child with the feature read from its global row (see select_child).
template <typename T>
__device__ int select_child_row(float my_fast, int k, double tol, const T* row, const float* child0, int Dp, int D,
                                int lane) {
    const float best = warp_min(my_fast);
    const double limit = static_cast<double>(best) + tol;
    const bool cand = lane < k && static_cast<double>(my_fast) <= limit;
    const unsigned mask = __ballot_sync(kFullMask, cand);
    if (__popc(mask) == 1) return __ffs(mask) - 1;
    double cv = CUDART_INF;
    if (cand) cv = canon_dist_row(row, child0 + static_cast<long long>(lane) * Dp, D);
    int bj = lane;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
        const double ocv = __shfl_xor_sync(kFullMask, cv, m);
        const int obj = __shfl_xor_sync(kFullMask, bj, m);
        if (ocv < cv || (ocv == cv && obj < bj)) {
            cv = ocv;
            bj = obj;
        }
    }
    return bj;
}

// Elements 4*d4 .. 4*d4+3 of a row as float32 (zero past D). vec: D % 4 == 0 and the row is
// 4-element aligned (warp-uniform), so one 16-byte (float) or 8-byte (half) load.
template <typename T>
__device__ __forceinline__ float4 load_row4(const T* row, int d4, int D, bool vec) {
    if (vec) return load_x4(row + 4 * d4);
    const int d = 4 * d4;
    float4 v;
    v.x = d < D ? load_x(row + d) : 0.f;
    v.y = d + 1 < D ? load_x(row + d + 1) : 0.f;
    v.z = d + 2 < D ? load_x(row + d + 2) : 0.f;
    v.w = d + 3 < D ? load_x(row + d + 3) : 0.f;
    return v;
}

// Same contract and launch structure as tree_sorted_level_kernel (node runs of sorted positions,
// the run's k children in shared memory), but each warp screens kTiledF features of the run at once
// with the features held in registers (read straight from global memory, the next slice prefetched
// while the current one is used): one shared-memory load of a child slice now feeds kTiledF
// features instead of one, which removes the shared-memory bandwidth bound of the old kernel
// (13 LDS.128 per 8 FP32 instructions per lane), and the feature is no longer staged through shared
// memory. The per-level histogram is accumulated per run in shared memory (k global atomics per run
// instead of one per feature). KT: compile-time bound on k (accumulators stay in registers).
constexpr int kTiledF = 4;
constexpr int kTiledWarps = 8;
constexpr int kTiledThreads = kTiledWarps * kWarp;
constexpr int kTiledChunk = 256;  // sorted positions per block

template <typename T, int KT>
__global__ void __launch_bounds__(kTiledThreads, 2)
tree_tiled_level_kernel(DevCodebook cb, int level, const T* feats, long long n, long long stride, const int* perm,
                        const int* bucket_end, const int* node_in, int* node_out, int* counts_next, long long* out,
                        long long* err) {
    extern __shared__ float4 smem4[];
    __shared__ int hist_s[KT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = cb.k, Dp = cb.Dp, Dp4 = Dp >> 2, D = cb.D;
    const float4* ch4 = smem4;  // k * Dp floats: the run's node's children
    const bool final_level = level == cb.levels - 1;
    if (threadIdx.x < KT) hist_s[threadIdx.x] = 0;  // ordered by the first barrier below

    const long long start = static_cast<long long>(blockIdx.x) * kTiledChunk;
    const long long end = min(n, start + kTiledChunk);
    long long pos = start;
    while (pos < end) {
        int p = 0;
        long long run_end = end;
        if (perm != nullptr) {
            p = max(node_in[perm[pos]], 0);
            run_end = min(end, static_cast<long long>(bucket_end[p + 1]));
        }
        const long long first_row = cb.level_offset[level] + static_cast<long long>(p) * k;
        __syncthreads();  // every warp is done with the previous node's children and histogram
        {
            const float4* src = reinterpret_cast<const float4*>(cb.cent + first_row * Dp);
            float4* dst = smem4;
            const int total = k * Dp4;
#pragma unroll 4
            for (int t = threadIdx.x; t < total; t += kTiledThreads) dst[t] = __ldg(src + t);
        }
        __syncthreads();
        const float* child0_global = cb.cent + first_row * Dp;

        for (long long g = pos + static_cast<long long>(warp) * kTiledF; g < run_end;
             g += static_cast<long long>(kTiledWarps) * kTiledF) {
            const int nf = static_cast<int>(min(static_cast<long long>(kTiledF), run_end - g));
            int idx[kTiledF];
            int pin[kTiledF];
            const T* row[kTiledF];
            bool vec[kTiledF];
#pragma unroll
            for (int f = 0; f < kTiledF; ++f) {
                const long long q = g + (f < nf ? f : 0);  // padding slots repeat the first feature
                idx[f] = perm != nullptr ? perm[q] : static_cast<int>(q);
                pin[f] = node_in != nullptr ? node_in[idx[f]] : 0;
                row[f] = feats + static_cast<long long>(idx[f]) * stride;
                vec[f] = (D & 3) == 0 && (reinterpret_cast<uintptr_t>(row[f]) % (4 * sizeof(T))) == 0;
            }
            float acc[kTiledF][KT];
            float ss[kTiledF];
            bool finite[kTiledF];
#pragma unroll
            for (int f = 0; f < kTiledF; ++f) {
                ss[f] = 0.f;
                finite[f] = true;
#pragma unroll
                for (int j = 0; j < KT; ++j) acc[f][j] = 0.f;
            }
            float4 xn[kTiledF];
            if (lane < Dp4) {
#pragma unroll
                for (int f = 0; f < kTiledF; ++f) xn[f] = load_row4(row[f], lane, D, vec[f]);
            }
            for (int d4 = lane; d4 < Dp4; d4 += kWarp) {
                float4 x[kTiledF];
#pragma unroll
                for (int f = 0; f < kTiledF; ++f) x[f] = xn[f];
                const int nx = d4 + kWarp;
                if (nx < Dp4) {  // prefetch the next slice while this one is used
#pragma unroll
                    for (int f = 0; f < kTiledF; ++f) xn[f] = load_row4(row[f], nx, D, vec[f]);
                }
#pragma unroll
                for (int f = 0; f < kTiledF; ++f) {
                    finite[f] = finite[f] && isfinite(x[f].x) && isfinite(x[f].y) && isfinite(x[f].z) &&
                                isfinite(x[f].w);
                    ss[f] = fmaf(x[f].x, x[f].x, ss[f]);
                    ss[f] = fmaf(x[f].y, x[f].y, ss[f]);
                    ss[f] = fmaf(x[f].z, x[f].z, ss[f]);
                    ss[f] = fmaf(x[f].w, x[f].w, ss[f]);
                }
#pragma unroll
                for (int j = 0; j < KT; ++j) {
                    if (j < k) {
                        const float4 c = ch4[j * Dp4 + d4];
#pragma unroll
                        for (int f = 0; f < kTiledF; ++f) acc[f][j] = sq_dist4(x[f], c, acc[f][j]);
                    }
                }
            }
#pragma unroll
            for (int f = 0; f < kTiledF; ++f) {
                // Warp-uniform from here: pin, nf and the reductions are the same on every lane.
                const float norm2 = warp_sum(ss[f]);
                const bool ok = __all_sync(kFullMask, finite[f]) && isfinite(norm2);
                float mine = CUDART_INF_F;
#pragma unroll
                for (int j = 0; j < KT; ++j) {
                    if (j < k) {
                        const float s = warp_sum(acc[f][j]);
                        if (lane == j) mine = s;
                    }
                }
                if (f >= nf) continue;
                int result = -1;
                if (pin[f] >= 0) {
                    if (ok) {
                        const double tol = cb.tol_scale * (static_cast<double>(norm2) + cb.cmax);
                        const int j = select_child_row(mine, k, tol, row[f], child0_global, Dp, D, lane);
                        result = pin[f] * k + j;
                    } else if (lane == 0 && err != nullptr) {
                        atomicMin(err, static_cast<long long>(idx[f]));
                    }
                }
                if (lane == 0) {
                    if (final_level) {
                        out[idx[f]] = result;
                    } else {
                        node_out[idx[f]] = result;
                        // Rows of this run land in keys p*k .. p*k+k-1 (invalid rows: key 0, run 0).
                        const int key = max(result, 0);
                        const int h = key - p * k;
                        if (h >= 0 && h < k) {
                            atomicAdd(&hist_s[h], 1);
                        } else {
                            atomicAdd(&counts_next[key], 1);
                        }
                    }
                }
            }
        }
        __syncthreads();  // the run's histogram is complete
        if (!final_level && threadIdx.x < k) {
            const int c = hist_s[threadIdx.x];
            if (c != 0) atomicAdd(&counts_next[static_cast<long long>(p) * k + threadIdx.x], c);
            hist_s[threadIdx.x] = 0;
        }
        pos = run_end;
    }
}

// Warp-aggregated scatter (same result contract as scatter_kernel): lanes with the same key take
// consecutive slots with one atomic per distinct key per warp instead of one per feature.
__global__ void scatter_aggregated_kernel(const int* node, long long n, int* cursor, int* perm) {
    const int lane = threadIdx.x & 31;
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
    // Whole warps iterate together (the bound is rounded up to a multiple of the step's warps).
    for (long long base = blockIdx.x * static_cast<long long>(blockDim.x) + (threadIdx.x & ~31); base < n;
         base += step) {
        const long long i = base + lane;
        const bool valid = i < n;
        const int key = valid ? max(node[i], 0) : -1;
        const unsigned same = __match_any_sync(kFullMask, key);
        const int leader = __ffs(same) - 1;
        int slot = 0;
        if (valid && lane == leader) slot = atomicAdd(&cursor[key], __popc(same));
        slot = __shfl_sync(kFullMask, slot, leader);
        if (valid) perm[slot + __popc(same & ((1u << lane) - 1u))] = static_cast<int>(i);
    }
}

// Single block: offsets[0..nkeys] = exclusive scan of counts (offsets[nkeys] = total); cursor = copy.
__global__ void __launch_bounds__(kScanThreads) scan_counts_kernel(const int* counts, int nkeys, int* offsets,
                                                                   int* cursor) {
    using Scan = cub::BlockScan<int, kScanThreads>;
    __shared__ typename Scan::TempStorage tmp;
    int carry = 0;
    for (int base = 0; base < nkeys; base += kScanThreads) {
        const int idx = base + threadIdx.x;
        const int v = idx < nkeys ? counts[idx] : 0;
        int excl, total;
        Scan(tmp).ExclusiveSum(v, excl, total);
        if (idx < nkeys) {
            offsets[idx] = carry + excl;
            cursor[idx] = carry + excl;
        }
        carry += total;
        __syncthreads();  // tmp is reused by the next tile
    }
    if (threadIdx.x == 0) offsets[nkeys] = carry;
}

// perm[cursor[key]++] = i with key = max(node[i], 0). Order inside a bucket is arbitrary, which
// changes only which block handles a feature, never its result.
__global__ void scatter_kernel(const int* node, long long n, int* cursor, int* perm) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int key = max(node[i], 0);
        perm[atomicAdd(&cursor[key], 1)] = static_cast<int>(i);
    }
}

// ------------------------------------------------------------------ generic: beam > 1, exact

// One block per feature (grid-stride); each block owns one scratch slot of `cap` candidates.
// Per level: screening distance of every candidate (warp per candidate), the keep-th smallest one
// by bisection over float bit patterns, canonical distance of every candidate inside the window,
// then the keep best by (canon, node id) by bisection over double bit patterns and node ids.
template <typename T>
__global__ void __launch_bounds__(kGenericThreads)
generic_kernel(DevCodebook cb, const T* feats, long long n, long long stride, int exact, long long beam,
               long long* out, long long* err, char* scratch, long long cap) {
    extern __shared__ float4 smem4[];
    float* xs = reinterpret_cast<float*>(smem4);
    const float4* xs4 = smem4;
    __shared__ float red_f[32];
    __shared__ long long red_ll[32];
    __shared__ int counter_s;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int Dp = cb.Dp, Dp4 = Dp >> 2;
    const long long k = cb.k;

    char* slot = scratch + static_cast<long long>(blockIdx.x) * cap * static_cast<long long>(kGenericBytesPerCand);
    double* canon = reinterpret_cast<double*>(slot);              // 8-byte aligned first
    float* fast = reinterpret_cast<float*>(canon + cap);
    int* refined = reinterpret_cast<int*>(fast + cap);
    int* beam_a = refined + cap;
    int* beam_b = beam_a + cap;

    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        float norm2;
        const bool valid = stage_block(feats + i * stride, cb.D, Dp, xs, red_f, &norm2);
        if (!valid) {
            if (threadIdx.x == 0) {
                out[i] = -1;
                if (err != nullptr) atomicMin(err, i);
            }
            continue;  // stage_block ended with a barrier; nothing else was touched
        }
        const double tol = cb.tol_scale * (static_cast<double>(norm2) + cb.cmax);
        int* cur = beam_a;
        int* nxt = beam_b;
        if (threadIdx.x == 0) cur[0] = 0;  // virtual root
        __syncthreads();
        long long nb = 1;
        const long long fan = exact ? cb.leaves : k;
        for (int l = exact ? cb.levels - 1 : 0; l < cb.levels; ++l) {
            const long long nc = nb * fan;
            const bool last = l == cb.levels - 1;
            const long long keep = last ? 1 : min(beam, nc);
            const float* level_rows = cb.cent + cb.level_offset[l] * Dp;
            // 1. screening distances, one warp per candidate.
            for (long long c = warp; c < nc; c += kGenericWarps) {
                const long long node = static_cast<long long>(cur[c / fan]) * fan + c % fan;
                const float4* c4 = reinterpret_cast<const float4*>(level_rows + node * Dp);
                float acc = 0.f;
#pragma unroll 8
                for (int d4 = lane; d4 < Dp4; d4 += kWarp) acc = sq_dist4(xs4[d4], __ldg(c4 + d4), acc);
                acc = warp_sum(acc);
                if (lane == 0) fast[c] = acc;
            }
            __syncthreads();
            // 2. keep-th smallest screening distance: smallest bit pattern u with #(fast <= u) >= keep.
            //    Non-negative floats (and +inf) order like their bit patterns.
            unsigned lo = 0u, hi = 0x7f800000u;
            while (lo < hi) {
                const unsigned mid = lo + (hi - lo) / 2;
                long long cnt = 0;
                for (long long c = threadIdx.x; c < nc; c += blockDim.x) cnt += __float_as_uint(fast[c]) <= mid;
                if (block_sum_ll(cnt, red_ll) >= keep) hi = mid; else lo = mid + 1;
            }
            const double limit = static_cast<double>(__uint_as_float(lo)) + tol;
            // 3. collect the candidates inside the window, then their canonical distances.
            if (threadIdx.x == 0) counter_s = 0;
            __syncthreads();
            for (long long c = threadIdx.x; c < nc; c += blockDim.x) {
                if (static_cast<double>(fast[c]) <= limit) refined[atomicAdd(&counter_s, 1)] = static_cast<int>(c);
            }
            __syncthreads();
            const long long m = counter_s;  // >= keep
            for (long long t = threadIdx.x; t < m; t += blockDim.x) {
                const long long c = refined[t];
                const long long node = static_cast<long long>(cur[c / fan]) * fan + c % fan;
                canon[t] = canon_dist(xs, level_rows + node * Dp, cb.D);
            }
            __syncthreads();
            // 4. keep-th smallest canon v* (bit patterns of non-negative doubles are monotone).
            unsigned long long lo64 = 0ull, hi64 = 0x7ff0000000000000ull;
            while (lo64 < hi64) {
                const unsigned long long mid = lo64 + (hi64 - lo64) / 2;
                long long cnt = 0;
                for (long long t = threadIdx.x; t < m; t += blockDim.x)
                    cnt += static_cast<unsigned long long>(__double_as_longlong(canon[t])) <= mid;
                if (block_sum_ll(cnt, red_ll) >= keep) hi64 = mid; else lo64 = mid + 1;
            }
            const double vstar = __longlong_as_double(static_cast<long long>(lo64));
            long long less = 0;
            for (long long t = threadIdx.x; t < m; t += blockDim.x) less += canon[t] < vstar;
            less = block_sum_ll(less, red_ll);
            const long long need = keep - less;  // >= 1 ties at v* to take, lowest node ids first
            long long lo_id = 0, hi_id = cb.leaves - 1;
            while (lo_id < hi_id) {
                const long long mid = lo_id + (hi_id - lo_id) / 2;
                long long cnt = 0;
                for (long long t = threadIdx.x; t < m; t += blockDim.x) {
                    const long long c = refined[t];
                    const long long node = static_cast<long long>(cur[c / fan]) * fan + c % fan;
                    cnt += canon[t] == vstar && node <= mid;
                }
                if (block_sum_ll(cnt, red_ll) >= need) hi_id = mid; else lo_id = mid + 1;
            }
            // 5. the next beam: exactly `keep` nodes (node ids are distinct within a level).
            if (threadIdx.x == 0) counter_s = 0;
            __syncthreads();
            for (long long t = threadIdx.x; t < m; t += blockDim.x) {
                const long long c = refined[t];
                const long long node = static_cast<long long>(cur[c / fan]) * fan + c % fan;
                if (canon[t] < vstar || (canon[t] == vstar && node <= lo_id))
                    nxt[atomicAdd(&counter_s, 1)] = static_cast<int>(node);
            }
            __syncthreads();
            int* tmp = cur;
            cur = nxt;
            nxt = tmp;
            nb = keep;
        }
        if (threadIdx.x == 0) out[i] = cur[0];
        __syncthreads();  // xs and the slot are rewritten for the next feature
    }
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* name) {
    std::string what = std::string("cudaFuncSetAttribute(") + name + ", MaxDynamicSharedMemorySize)";
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          what.c_str());
}

}  // namespace

// ------------------------------------------------------------------ free functions

Dtype parse_dtype(const std::string& name) {
    if (name == "float32") return Dtype::kFloat32;
    if (name == "float16") return Dtype::kFloat16;
    throw std::invalid_argument("dtype must be \"float32\" or \"float16\", got \"" + name + "\"");
}

Mode parse_mode(const std::string& name) {
    if (name == "tree") return Mode::kTree;
    if (name == "exact") return Mode::kExact;
    throw std::invalid_argument("mode must be \"tree\" or \"exact\", got \"" + name + "\"");
}

void throw_for_diagnostics() { throw std::runtime_error("thrown inside cuda_tokenizer.cu (diagnostic)"); }

int device_count(std::string* why) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear it so later calls do not see it
        if (why != nullptr) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
        return 0;
    }
    if (count == 0 && why != nullptr) *why = "the CUDA runtime reports no device";
    return count;
}

static void check_device_index(int device) {
    std::string why;
    const int count = device_count(&why);
    if (count == 0) throw std::invalid_argument("no CUDA device is available (" + why + ")");
    if (device < 0 || device >= count) {
        throw std::invalid_argument("CUDA device index must be in [0, " + std::to_string(count) + "), got " +
                                    std::to_string(device));
    }
}

std::string device_name(int device) {
    check_device_index(device);
    cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    return prop.name;
}

void compute_capability(int device, int* major, int* minor) {
    check_device_index(device);
    check(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute(major)");
    check(cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute(minor)");
}

// ------------------------------------------------------------------ engine

TokenizerEngine::TokenizerEngine(const float* centroids, int64_t num_rows, int64_t dim, int levels,
                                 int64_t branching, int device)
    : levels_(levels), branching_(branching), dim_(dim), num_rows_(num_rows), device_(device) {
    if (levels < 1 || levels > kMaxLevels) {
        throw std::invalid_argument("levels must be between 1 and " + std::to_string(kMaxLevels) + ", got " +
                                    std::to_string(levels));
    }
    if (branching < 2) throw std::invalid_argument("branching must be at least 2, got " + std::to_string(branching));
    // Node ids are int32 on the device: k^L must stay below 2^31.
    double leaves_d = std::pow(static_cast<double>(branching), levels);
    if (leaves_d >= 2147483647.0) {
        throw std::invalid_argument("branching**levels = " + std::to_string(branching) + "**" + std::to_string(levels) +
                                    " is too large for the CUDA tokenizer (expected fewer than 2**31 leaves)");
    }
    if (dim < 1) throw std::invalid_argument("centroid dimension must be at least 1, got " + std::to_string(dim));
    if (dim > (1 << 20)) {
        throw std::invalid_argument("centroid dimension " + std::to_string(dim) +
                                    " is too large for the CUDA tokenizer (expected at most 1048576)");
    }
    const int64_t expected = total_centroids(branching, levels);
    if (num_rows != expected) {
        throw std::invalid_argument("centroids must have shape (" + std::to_string(expected) + ", D) for levels=" +
                                    std::to_string(levels) + ", branching=" + std::to_string(branching) +
                                    " (sum of branching**(l+1) for l < levels), got (" + std::to_string(num_rows) +
                                    ", " + std::to_string(dim) + ")");
    }
    num_leaves_ = int_pow(branching, levels);
    padded_dim_ = (dim + 3) / 4 * 4;

    // Padded host copy (zeros after column dim contribute nothing to the screening distance);
    // validation and C_max in float64 as the CPU tokenizer does.
    std::vector<float> padded(static_cast<size_t>(num_rows * padded_dim_), 0.f);
    for (int64_t r = 0; r < num_rows; ++r) {
        const float* c = centroids + r * dim;
        double n2 = 0.0;
        for (int64_t d = 0; d < dim; ++d) n2 += static_cast<double>(c[d]) * static_cast<double>(c[d]);
        if (!std::isfinite(n2)) {
            throw std::invalid_argument("centroids must be finite; row " + std::to_string(r) + " has NaN or Inf");
        }
        if (n2 > kFloat32Max) {
            throw std::invalid_argument("centroid row " + std::to_string(r) +
                                        " has a squared norm that overflows float32 (norm above ~1.8e19)");
        }
        c_max_ = std::max(c_max_, n2);
        std::memcpy(padded.data() + r * padded_dim_, c, sizeof(float) * static_cast<size_t>(dim));
    }

    check_device_index(device);
    DeviceGuard guard(device_);
    try {
        check(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_),
              "cudaDeviceGetAttribute(MultiProcessorCount)");
        int smem_optin = 0;
        check(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_),
              "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
        const size_t row_bytes = sizeof(float) * static_cast<size_t>(padded_dim_);
        // Static shared memory of the kernels is a few hundred bytes; keep 1 KiB of headroom.
        const size_t limit = static_cast<size_t>(smem_optin) > 1024 ? static_cast<size_t>(smem_optin) - 1024 : 0;
        small_smem_ = row_bytes;
        generic_smem_ = row_bytes;
        if (small_smem_ > limit) {
            throw std::invalid_argument("centroid dimension " + std::to_string(dim) +
                                        " is too large for this GPU's shared memory (" + std::to_string(smem_optin) +
                                        " bytes per block)");
        }
        sorted_smem_ = row_bytes * static_cast<size_t>(branching + kSortedWarps);
        sorted_ok_ = branching <= kMaxKSorted && sorted_smem_ <= limit;
        tiled_smem_ = row_bytes * static_cast<size_t>(branching);
        tiled_ok_ = branching <= kMaxKSorted && tiled_smem_ <= limit;

        allow_smem(tree_small_kernel<float>, small_smem_, "tree_small_kernel<float>");
        allow_smem(tree_small_kernel<__half>, small_smem_, "tree_small_kernel<half>");
        allow_smem(generic_kernel<float>, generic_smem_, "generic_kernel<float>");
        allow_smem(generic_kernel<__half>, generic_smem_, "generic_kernel<half>");
        if (sorted_ok_) {
            allow_smem(tree_sorted_level_kernel<float>, sorted_smem_, "tree_sorted_level_kernel<float>");
            allow_smem(tree_sorted_level_kernel<__half>, sorted_smem_, "tree_sorted_level_kernel<half>");
        }
        if (tiled_ok_) {
            allow_smem(tree_tiled_level_kernel<float, 12>, tiled_smem_, "tree_tiled_level_kernel<float, 12>");
            allow_smem(tree_tiled_level_kernel<__half, 12>, tiled_smem_, "tree_tiled_level_kernel<half, 12>");
            allow_smem(tree_tiled_level_kernel<float, 16>, tiled_smem_, "tree_tiled_level_kernel<float, 16>");
            allow_smem(tree_tiled_level_kernel<__half, 16>, tiled_smem_, "tree_tiled_level_kernel<half, 16>");
        }

        const size_t cent_bytes = padded.size() * sizeof(float);
        check(cudaMalloc(&d_centroids_, cent_bytes), "cudaMalloc(centroids)");
        check(cudaMemcpy(d_centroids_, padded.data(), cent_bytes, cudaMemcpyHostToDevice), "cudaMemcpy(centroids)");

        // Histograms for levels 1..L-1 (keys of level l: the k^l nodes of level l-1).
        counts_offset_.assign(static_cast<size_t>(levels) + 1, 0);
        counts_total_ = 0;
        for (int l = 1; l < levels; ++l) {
            counts_offset_[l] = counts_total_;
            counts_total_ += int_pow(branching, l);
        }
        if (counts_total_ > 0) {
            const int64_t max_keys = int_pow(branching, levels - 1);
            check(cudaMalloc(&d_counts_, sizeof(int) * counts_total_), "cudaMalloc(histograms)");
            check(cudaMalloc(&d_offsets_, sizeof(int) * (max_keys + 1)), "cudaMalloc(offsets)");
            check(cudaMalloc(&d_cursor_, sizeof(int) * max_keys), "cudaMalloc(cursors)");
        }
        check(cudaStreamCreateWithFlags(&host_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        check(cudaEventCreateWithFlags(&done_event_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    } catch (...) {
        release_all();
        throw;
    }
}

TokenizerEngine::~TokenizerEngine() {
    // A destructor must not throw; errors here can only leak memory that the context frees anyway.
    int previous = 0;
    const bool have_prev = cudaGetDevice(&previous) == cudaSuccess;
    cudaSetDevice(device_);
    cudaDeviceSynchronize();  // in-flight calls may still use the scratch buffers
    release_all();
    if (have_prev) cudaSetDevice(previous);
}

void TokenizerEngine::release_all() noexcept {
    cudaFree(d_centroids_);
    cudaFree(d_node_a_);
    cudaFree(d_node_b_);
    cudaFree(d_perm_);
    cudaFree(d_counts_);
    cudaFree(d_offsets_);
    cudaFree(d_cursor_);
    cudaFree(d_generic_);
    cudaFree(d_io_);
    if (h_io_ != nullptr) cudaFreeHost(h_io_);
    if (host_stream_ != nullptr) cudaStreamDestroy(host_stream_);
    if (done_event_ != nullptr) cudaEventDestroy(done_event_);
    for (cudaEvent_t e : phase_events_) cudaEventDestroy(e);
    phase_events_.clear();
    d_centroids_ = nullptr;
    d_node_a_ = d_node_b_ = d_perm_ = d_counts_ = d_offsets_ = d_cursor_ = nullptr;
    d_generic_ = d_io_ = h_io_ = nullptr;
    host_stream_ = nullptr;
    done_event_ = nullptr;
    cudaGetLastError();  // do not leave a sticky non-fatal error behind for the next caller
}

void TokenizerEngine::set_sort_threshold(int64_t value) {
    if (value < 0) throw std::invalid_argument("sort_threshold must be >= 0, got " + std::to_string(value));
    sort_threshold_ = value;
}

void TokenizerEngine::check_options(Mode mode, int64_t beam) const {
    check_beam(mode == Mode::kExact, beam, num_leaves_);
}

// Growing a scratch buffer frees the old one: wait for every in-flight call first (rare: high water).
void TokenizerEngine::ensure_sorted_scratch(int64_t n) {
    if (n <= sorted_capacity_) return;
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (growing scratch)");
    cudaFree(d_node_a_);
    cudaFree(d_node_b_);
    cudaFree(d_perm_);
    d_node_a_ = d_node_b_ = d_perm_ = nullptr;
    sorted_capacity_ = 0;
    const size_t bytes = sizeof(int) * static_cast<size_t>(n);
    check(cudaMalloc(&d_node_a_, bytes), "cudaMalloc(node ids)");
    check(cudaMalloc(&d_node_b_, bytes), "cudaMalloc(node ids)");
    check(cudaMalloc(&d_perm_, bytes), "cudaMalloc(permutation)");
    sorted_capacity_ = n;
}

void TokenizerEngine::ensure_generic_scratch(size_t bytes) {
    if (bytes <= generic_capacity_) return;
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (growing scratch)");
    cudaFree(d_generic_);
    d_generic_ = nullptr;
    generic_capacity_ = 0;
    check(cudaMalloc(&d_generic_, bytes), "cudaMalloc(generic scratch)");
    generic_capacity_ = bytes;
}

void TokenizerEngine::ensure_host_io(size_t bytes) {
    if (bytes <= io_capacity_) return;
    // tokenize_host synchronises its stream before returning, so these buffers are idle here.
    cudaFree(d_io_);
    if (h_io_ != nullptr) cudaFreeHost(h_io_);
    d_io_ = h_io_ = nullptr;
    io_capacity_ = 0;
    check(cudaMalloc(&d_io_, bytes), "cudaMalloc(host staging, device side)");
    check(cudaHostAlloc(&h_io_, bytes, cudaHostAllocDefault), "cudaHostAlloc(pinned staging)");
    io_capacity_ = bytes;
}

void TokenizerEngine::tokenize_device(const void* features, Dtype dtype, int64_t n, int64_t row_stride, int64_t* out,
                                      cudaStream_t stream, Mode mode, int64_t beam, int64_t* error) {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard guard(device_);
    tokenize_locked(features, dtype, n, row_stride, out, stream, mode, beam, error);
}

void TokenizerEngine::tokenize_locked(const void* features, Dtype dtype, int64_t n, int64_t row_stride, int64_t* out,
                                      cudaStream_t stream, Mode mode, int64_t beam, int64_t* error) {
    check_options(mode, beam);
    if (n < 0) throw std::invalid_argument("number of features must be >= 0, got " + std::to_string(n));
    if (row_stride < dim_) {
        throw std::invalid_argument("row_stride must be >= dim = " + std::to_string(dim_) + " elements, got " +
                                    std::to_string(row_stride));
    }
    if (n == 0) return;
    if (features == nullptr || out == nullptr) throw std::invalid_argument("features and out must be non-null");
    const size_t elem = dtype == Dtype::kFloat32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(features) % elem != 0) {
        throw std::invalid_argument("features pointer is not aligned to its element size (" + std::to_string(elem) +
                                    " bytes)");
    }
    if (reinterpret_cast<uintptr_t>(out) % 8 != 0 || reinterpret_cast<uintptr_t>(error) % 8 != 0) {
        throw std::invalid_argument("out and error pointers must be 8-byte aligned (int64)");
    }

    // Scratch buffers are shared between calls: a call on another stream waits for the previous one.
    if (has_last_ && last_stream_ != stream) check(cudaStreamWaitEvent(stream, done_event_, 0), "cudaStreamWaitEvent");

    DevCodebook cb{};
    cb.cent = d_centroids_;
    cb.D = static_cast<int>(dim_);
    cb.Dp = static_cast<int>(padded_dim_);
    cb.levels = levels_;
    cb.k = static_cast<int>(branching_);
    cb.leaves = num_leaves_;
    for (int l = 0; l < levels_; ++l) cb.level_offset[l] = level_offset(branching_, l);
    cb.cmax = c_max_;
    cb.tol_scale = tolerance_scale(dim_);

    long long* out_ll = reinterpret_cast<long long*>(out);
    long long* err_ll = reinterpret_cast<long long*>(error);
    const bool half = dtype == Dtype::kFloat16;
    const bool tree1 = mode == Mode::kTree && beam == 1 && !force_generic_;

    const bool use_tiled = sorted_impl_ != 0 && tiled_ok_;
    if (tree1 && (use_tiled || sorted_ok_) && n >= sort_threshold_ && n < INT_MAX) {
        ensure_sorted_scratch(n);
        const bool timing = phase_timing_;
        phase_ms_.clear();
        if (timing && phase_events_.empty()) {
            for (int e = 0; e < 2 * levels_; ++e) {
                cudaEvent_t ev = nullptr;
                check(cudaEventCreate(&ev), "cudaEventCreate (phase timing)");
                phase_events_.push_back(ev);
            }
        }
        if (counts_total_ > 0) {
            check(cudaMemsetAsync(d_counts_, 0, sizeof(int) * counts_total_, stream), "cudaMemsetAsync(histograms)");
        }
        // Phase timing events, in order: start, end of level 0, end of sort 1, end of level 1, ...
        // (2L events); phase i spans events i .. i+1.
        int next_event = 0;
        auto mark = [&]() {
            if (timing) {
                check(cudaEventRecord(phase_events_[next_event], stream), "cudaEventRecord (phase timing)");
                ++next_event;
            }
        };
        mark();
        int* node_in = d_node_a_;
        int* node_out = d_node_b_;
        const long long chunk = use_tiled ? kTiledChunk : kSortedChunk;
        const long long blocks = (n + chunk - 1) / chunk;
        const int scatter_blocks = static_cast<int>(std::min<long long>((n + 255) / 256, 8LL * num_sms_));
        for (int l = 0; l < levels_; ++l) {
            const bool last = l == levels_ - 1;
            const int* perm = nullptr;
            const int* bucket_end = nullptr;
            const int* in = nullptr;
            if (l > 0) {
                const int nkeys = static_cast<int>(int_pow(branching_, l));
                int* counts = d_counts_ + counts_offset_[l];
                scan_counts_kernel<<<1, kScanThreads, 0, stream>>>(counts, nkeys, d_offsets_, d_cursor_);
                check_launch("scan_counts_kernel");
                if (use_tiled) {
                    scatter_aggregated_kernel<<<scatter_blocks, 256, 0, stream>>>(node_in, n, d_cursor_, d_perm_);
                    check_launch("scatter_aggregated_kernel");
                } else {
                    scatter_kernel<<<scatter_blocks, 256, 0, stream>>>(node_in, n, d_cursor_, d_perm_);
                    check_launch("scatter_kernel");
                }
                mark();
                perm = d_perm_;
                bucket_end = d_offsets_;
                in = node_in;
            }
            int* counts_next = last ? nullptr : d_counts_ + counts_offset_[l + 1];
            const unsigned grid = static_cast<unsigned>(blocks);
            if (use_tiled) {
                if (branching_ <= 12) {
                    if (half) {
                        tree_tiled_level_kernel<__half, 12><<<grid, kTiledThreads, tiled_smem_, stream>>>(
                            cb, l, static_cast<const __half*>(features), n, row_stride, perm, bucket_end, in,
                            node_out, counts_next, out_ll, err_ll);
                    } else {
                        tree_tiled_level_kernel<float, 12><<<grid, kTiledThreads, tiled_smem_, stream>>>(
                            cb, l, static_cast<const float*>(features), n, row_stride, perm, bucket_end, in,
                            node_out, counts_next, out_ll, err_ll);
                    }
                } else {
                    if (half) {
                        tree_tiled_level_kernel<__half, 16><<<grid, kTiledThreads, tiled_smem_, stream>>>(
                            cb, l, static_cast<const __half*>(features), n, row_stride, perm, bucket_end, in,
                            node_out, counts_next, out_ll, err_ll);
                    } else {
                        tree_tiled_level_kernel<float, 16><<<grid, kTiledThreads, tiled_smem_, stream>>>(
                            cb, l, static_cast<const float*>(features), n, row_stride, perm, bucket_end, in,
                            node_out, counts_next, out_ll, err_ll);
                    }
                }
                check_launch("tree_tiled_level_kernel");
            } else {
                if (half) {
                    tree_sorted_level_kernel<__half><<<grid, kSortedThreads, sorted_smem_, stream>>>(
                        cb, l, static_cast<const __half*>(features), n, row_stride, perm, bucket_end, in, node_out,
                        counts_next, out_ll, err_ll);
                } else {
                    tree_sorted_level_kernel<float><<<grid, kSortedThreads, sorted_smem_, stream>>>(
                        cb, l, static_cast<const float*>(features), n, row_stride, perm, bucket_end, in, node_out,
                        counts_next, out_ll, err_ll);
                }
                check_launch("tree_sorted_level_kernel");
            }
            mark();
            std::swap(node_in, node_out);
        }
        if (timing) {
            check(cudaEventSynchronize(phase_events_[next_event - 1]), "cudaEventSynchronize (phase timing)");
            for (int e = 0; e + 1 < next_event; ++e) {
                float ms = 0.f;
                check(cudaEventElapsedTime(&ms, phase_events_[e], phase_events_[e + 1]),
                      "cudaEventElapsedTime (phase timing)");
                phase_ms_.push_back(ms);
            }
        }
    } else if (tree1 && branching_ <= kMaxKSmall) {
        const unsigned blocks = static_cast<unsigned>(std::min<long long>(n, 1LL << 20));
        const unsigned threads = static_cast<unsigned>(kWarp * branching_);
        if (half) {
            tree_small_kernel<__half><<<blocks, threads, small_smem_, stream>>>(
                cb, static_cast<const __half*>(features), n, row_stride, out_ll, err_ll);
        } else {
            tree_small_kernel<float><<<blocks, threads, small_smem_, stream>>>(
                cb, static_cast<const float*>(features), n, row_stride, out_ll, err_ll);
        }
        check_launch("tree_small_kernel");
    } else {
        const bool exact = mode == Mode::kExact;
        // Candidates per level: exact: every leaf; tree: children of at most min(beam, k^(L-1)) nodes.
        const long long cap =
            exact ? num_leaves_ : branching_ * std::min<long long>(beam, int_pow(branching_, levels_ - 1));
        const size_t slot_bytes = static_cast<size_t>(cap) * kGenericBytesPerCand;
        long long slots = static_cast<long long>(kGenericScratchBudget / slot_bytes);
        slots = std::max(1LL, std::min(slots, 8LL * num_sms_));
        slots = std::min(slots, static_cast<long long>(n));
        ensure_generic_scratch(slot_bytes * static_cast<size_t>(slots));
        if (half) {
            generic_kernel<__half><<<static_cast<unsigned>(slots), kGenericThreads, generic_smem_, stream>>>(
                cb, static_cast<const __half*>(features), n, row_stride, exact ? 1 : 0, beam, out_ll, err_ll,
                static_cast<char*>(d_generic_), cap);
        } else {
            generic_kernel<float><<<static_cast<unsigned>(slots), kGenericThreads, generic_smem_, stream>>>(
                cb, static_cast<const float*>(features), n, row_stride, exact ? 1 : 0, beam, out_ll, err_ll,
                static_cast<char*>(d_generic_), cap);
        }
        check_launch("generic_kernel");
    }
    check(cudaEventRecord(done_event_, stream), "cudaEventRecord");
    last_stream_ = stream;
    has_last_ = true;
}

int64_t TokenizerEngine::tokenize_host(const void* features, Dtype dtype, int64_t n, int64_t* out, Mode mode,
                                       int64_t beam) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_options(mode, beam);
    if (n < 0) throw std::invalid_argument("number of features must be >= 0, got " + std::to_string(n));
    if (n == 0) return -1;
    DeviceGuard guard(device_);
    // One pinned buffer and one device buffer laid out as [error | pad | out | features] so that a
    // call costs one copy in, the kernels, one copy out and one stream synchronisation.
    const size_t elem = dtype == Dtype::kFloat32 ? 4 : 2;
    const size_t out_off = 16;
    const size_t feat_off = (out_off + 8 * static_cast<size_t>(n) + 15) / 16 * 16;
    const size_t feat_bytes = elem * static_cast<size_t>(n) * static_cast<size_t>(dim_);
    const size_t total = feat_off + feat_bytes;
    ensure_host_io(total);
    char* h = static_cast<char*>(h_io_);
    char* d = static_cast<char*>(d_io_);
    const int64_t no_error = INT64_MAX;
    std::memcpy(h, &no_error, sizeof(no_error));
    std::memcpy(h + feat_off, features, feat_bytes);
    check(cudaMemcpyAsync(d, h, total, cudaMemcpyHostToDevice, host_stream_), "cudaMemcpyAsync(features to device)");
    tokenize_locked(d + feat_off, dtype, n, dim_, reinterpret_cast<int64_t*>(d + out_off), host_stream_, mode, beam,
                    reinterpret_cast<int64_t*>(d));
    check(cudaMemcpyAsync(h, d, out_off + 8 * static_cast<size_t>(n), cudaMemcpyDeviceToHost, host_stream_),
          "cudaMemcpyAsync(ids to host)");
    check(cudaStreamSynchronize(host_stream_), "cudaStreamSynchronize (tokenize_host)");
    int64_t first_bad;
    std::memcpy(&first_bad, h, sizeof(first_bad));
    std::memcpy(out, h + out_off, 8 * static_cast<size_t>(n));
    return first_bad == INT64_MAX ? -1 : first_bad;
}

}  // namespace cuda
}  // namespace vbedge
