// C++ CPU visual tokenizer (docs/tokenizer.md): raw-pointer core used by the pybind11 binding.
//
// The core owns a copy of the centroids so that the cached squared norms can never go stale.
// All entry points validate their arguments and throw std::invalid_argument with a message that
// names what was wrong and what was expected (pybind11 turns it into ValueError).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace vbedge {

enum class FeatureDType { kFloat32, kFloat16 };
enum class TokenizeMode { kTree, kExact };

// Parses "tree" / "exact"; throws std::invalid_argument otherwise.
TokenizeMode parse_mode(const std::string& mode);

class CpuTokenizerCore {
public:
    // centroids: (num_rows, dim) float32, row-major; num_rows must equal sum_{l<levels} k^(l+1).
    CpuTokenizerCore(const float* centroids, int64_t num_rows, int64_t dim, int levels, int64_t branching);

    int levels() const { return levels_; }
    int64_t branching() const { return branching_; }
    int64_t dim() const { return dim_; }
    int64_t num_leaves() const { return num_leaves_; }
    int64_t num_rows() const { return num_rows_; }
    double max_centroid_norm2() const { return c_max_; }

    // Throws std::invalid_argument when (mode, beam) is not accepted by the contract.
    void check_options(TokenizeMode mode, int64_t beam) const;

    // features: (n, dim) row-major, float32 or IEEE float16 bits; out: n leaf ids.
    // num_threads <= 0 means the OpenMP default. Does not touch Python; safe without the GIL.
    void tokenize(const void* features, FeatureDType dtype, int64_t n, TokenizeMode mode, int64_t beam,
                  int num_threads, int64_t* out) const;

    // Name of the dot-product code path picked at run time ("avx2+fma[+f16c]", "neon" or "portable").
    static const char* simd_path();

private:
    struct Ctx;
    void tree_beam1(const Ctx& ctx) const;
    void tree_beam(const Ctx& ctx) const;
    void tree_beam_grouped(const Ctx& ctx) const;
    void exact(const Ctx& ctx) const;

    int levels_;
    int64_t branching_;
    int64_t dim_;
    int64_t num_rows_;
    int64_t num_leaves_;
    std::vector<int64_t> level_offsets_;
    std::vector<float> centroids_;  // own copy, row-major (num_rows_, dim_)
    std::vector<float> norms2_;     // float32 squared norm of each row (for screening)
    double c_max_ = 0.0;            // max squared norm in float64 (for the tolerance)
    std::vector<double> parent_radius_;  // per parent of the leaves: max distance to its leaves
    // Leaves interleaved in panels of 16 for the AVX2 exact scan; built on the first exact call
    // that needs it (tree-only users never pay its memory).
    mutable std::vector<float> leaf_panels_;
    mutable std::once_flag leaf_panels_once_;
};

}  // namespace vbedge
