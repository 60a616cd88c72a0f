// CUDA visual tokenizer (docs/tokenizer.md): host-side engine declaration.
//
// This header is plain C++ (no CUDA syntax) so that the pybind11 binding, compiled by g++, can use
// it; only cuda_runtime_api.h types appear. The kernels and the engine live in cuda_tokenizer.cu.
//
// Every entry point checks every CUDA call and throws:
//   std::invalid_argument  for a caller mistake (becomes ValueError in Python),
//   std::runtime_error     for a CUDA failure, naming the call or kernel and the CUDA error string.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace vbedge {
namespace cuda {

enum class Dtype { kFloat32 = 0, kFloat16 = 1 };
enum class Mode { kTree = 0, kExact = 1 };

// Parse "float32"/"float16" and "tree"/"exact"; throw std::invalid_argument otherwise.
Dtype parse_dtype(const std::string& name);
Mode parse_mode(const std::string& name);

// Number of CUDA devices; 0 when there is no driver or device. `why` (if given) receives the CUDA
// error text in that case, so callers can say why the GPU is unavailable.
int device_count(std::string* why = nullptr);
std::string device_name(int device);
// Throws std::runtime_error from this translation unit (nvcc-compiled), for a crash diagnostic.
void throw_for_diagnostics();
void compute_capability(int device, int* major, int* minor);

// Owns a device copy of one codebook plus persistent scratch buffers. Not copyable.
//
// Concurrency: calls are serialised by an internal mutex (the GIL is released around them). Scratch
// buffers are shared by all calls, so when a call arrives on a different stream than the previous
// one, the new stream first waits (on the device, cudaStreamWaitEvent) for the previous call to end.
class TokenizerEngine {
public:
    // centroids: host (num_rows, dim) float32 row-major; validated like the CPU tokenizer.
    TokenizerEngine(const float* centroids, int64_t num_rows, int64_t dim, int levels, int64_t branching,
                    int device);
    ~TokenizerEngine();
    TokenizerEngine(const TokenizerEngine&) = delete;
    TokenizerEngine& operator=(const TokenizerEngine&) = delete;

    int levels() const { return levels_; }
    int64_t branching() const { return branching_; }
    int64_t dim() const { return dim_; }
    int64_t num_leaves() const { return num_leaves_; }
    int device() const { return device_; }
    double max_centroid_norm2() const { return c_max_; }

    // Batches of at least this many features take the sorted (node-grouped) path for tree beam 1.
    int64_t sort_threshold() const { return sort_threshold_; }
    void set_sort_threshold(int64_t value);
    // Testing aid: route every call through the generic (beam/exact) kernel.
    bool force_generic() const { return force_generic_; }
    void set_force_generic(bool value) { force_generic_ = value; }
    // Which node-grouped (sorted) level kernel large tree beam-1 batches use: 1 (default) = tiled
    // (several features per warp, features in registers), 0 = the original one-feature-per-warp
    // kernel, kept for side-by-side benchmarks and tests. Values other than 0 are treated as 1; the
    // binding validates the user's value. The tiled kernel is used where its shared memory fits
    // (branching <= 16), else the original one.
    int sorted_impl() const { return sorted_impl_; }
    void set_sorted_impl(int value) { sorted_impl_ = value == 0 ? 0 : 1; }
    // Debug aid: when on, each sorted-path call records CUDA events around every phase, waits for
    // them (synchronous) and stores the device times in phase_ms(): [level 0, sort 1, level 1,
    // sort 2, ..., level L-1] (2L-1 values, ms; sort l = scan + scatter before level l). Off: empty.
    bool phase_timing() const { return phase_timing_; }
    void set_phase_timing(bool value) { phase_timing_ = value; }
    std::vector<float> phase_ms() const { return phase_ms_; }

    // Throws std::invalid_argument when (mode, beam) is not accepted by the contract.
    void check_options(Mode mode, int64_t beam) const;

    // Device pointers; asynchronous on `stream`. `error` (may be null) must hold INT64_MAX before
    // the call; the smallest non-finite row index is atomically min-ed into it; such rows get -1.
    void tokenize_device(const void* features, Dtype dtype, int64_t n, int64_t row_stride, int64_t* out,
                         cudaStream_t stream, Mode mode, int64_t beam, int64_t* error);

    // Host arrays (features C-contiguous (n, dim)); synchronous, through pinned staging buffers.
    // Returns the first non-finite row, or -1 when every row was valid (out is then complete).
    int64_t tokenize_host(const void* features, Dtype dtype, int64_t n, int64_t* out, Mode mode, int64_t beam);

private:
    void tokenize_locked(const void* features, Dtype dtype, int64_t n, int64_t row_stride, int64_t* out,
                         cudaStream_t stream, Mode mode, int64_t beam, int64_t* error);
    void ensure_sorted_scratch(int64_t n);
    void ensure_generic_scratch(size_t bytes);
    void ensure_host_io(size_t bytes);
    void release_all() noexcept;

    int levels_;
    int64_t branching_;
    int64_t dim_;
    int64_t padded_dim_;  // dim rounded up to a multiple of 4 (float4 loads); padding is zero
    int64_t num_rows_;
    int64_t num_leaves_;
    int device_;
    double c_max_ = 0.0;
    int64_t sort_threshold_ = 4096;
    bool force_generic_ = false;
    int sorted_impl_ = 1;
    bool phase_timing_ = false;
    std::vector<float> phase_ms_;
    std::vector<cudaEvent_t> phase_events_;  // created on first timed call, 2L events

    int num_sms_ = 0;
    size_t small_smem_ = 0, sorted_smem_ = 0, generic_smem_ = 0;
    bool sorted_ok_ = false;  // the sorted kernel's shared memory fits this device
    size_t tiled_smem_ = 0;
    bool tiled_ok_ = false;   // the tiled sorted kernel's shared memory fits (and branching <= 16)

    float* d_centroids_ = nullptr;  // (num_rows, padded_dim) float32
    // Sorted path: node ids (ping-pong), permutation, per-level histograms, offsets, cursors.
    int* d_node_a_ = nullptr;
    int* d_node_b_ = nullptr;
    int* d_perm_ = nullptr;
    int64_t sorted_capacity_ = 0;
    int* d_counts_ = nullptr;   // sum_{l=1}^{L-1} k^l ints
    int* d_offsets_ = nullptr;  // k^(L-1) + 1 ints
    int* d_cursor_ = nullptr;   // k^(L-1) ints
    std::vector<int64_t> counts_offset_;  // start of level l's histogram in d_counts_
    int64_t counts_total_ = 0;
    // Generic path scratch (per block slot).
    void* d_generic_ = nullptr;
    size_t generic_capacity_ = 0;
    // tokenize_host staging: [error int64 | pad | out n*int64 | features], pinned and device.
    void* h_io_ = nullptr;
    void* d_io_ = nullptr;
    size_t io_capacity_ = 0;
    cudaStream_t host_stream_ = nullptr;
    cudaEvent_t done_event_ = nullptr;
    cudaStream_t last_stream_ = nullptr;
    bool has_last_ = false;
    std::mutex mutex_;
};

}  // namespace cuda
}  // namespace vbedge
