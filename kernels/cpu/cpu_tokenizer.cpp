// C++ CPU visual tokenizer: tree descent (beam 1 and beam b) and exact search over all leaves,
// following docs/tokenizer.md exactly: float32 screening, then the canonical float64 distance for
// the candidates inside the tolerance window, ties to the lower index.
//
// Layout of the work, and why:
// - tree, beam 1: processed level by level over the whole batch. Before each level the features are
//   bucketed by their current node, so consecutive features read the same k children while those
//   are hot in cache; the leaf level (85 MB for 4x12, D=1024) would otherwise be memory-bound.
// - tree, beam b: per feature (the beam's candidate set differs per feature), still screening first.
// - exact: feature tiles x leaf blocks (3 x 4 register tile), so each leaf block read from memory is
//   reused by a whole tile of features held in L2.
#include "vbedge/cpu_tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "vbedge/cpu_dot.h"
#include "vbedge/tokenizer_args.h"
#include "vbedge/tokenizer_common.h"

namespace vbedge {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Canonical squared distance (docs/tokenizer.md): float64, strictly sequential, one rounding per
// subtraction, multiplication and addition. The build uses -ffp-contract=off so no FMA is formed.
double canon_distance(const float* x, const float* c, int64_t dim) {
    double sum = 0.0;
    for (int64_t d = 0; d < dim; ++d) {
        const double diff = static_cast<double>(x[d]) - static_cast<double>(c[d]);
        const double sq = diff * diff;
        sum = sum + sq;
    }
    return sum;
}

// Squared norm in float64 (exact products of floats, so it is finite iff every element is finite).
double norm2_f64(const float* x, int64_t dim) { return cpu::dot_kernels().norm2(x, dim); }

// A feature row is usable when it is finite and its squared norm is finite in float32.
bool row_is_valid(double norm2) { return std::isfinite(norm2) && norm2 <= kFloat32Max; }

// Keeps the smallest bad row index seen by any thread.
void record_bad_row(std::atomic<int64_t>& first_bad, int64_t row) {
    int64_t cur = first_bad.load(std::memory_order_relaxed);
    while (row < cur && !first_bad.compare_exchange_weak(cur, row, std::memory_order_relaxed)) {
    }
}

// Software prefetch of a whole row, one request per 64-byte line (portable GCC/Clang builtin).
inline void prefetch_row(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

int resolve_threads(int requested, int64_t n) {
#ifdef _OPENMP
    int nt = requested > 0 ? requested : omp_get_max_threads();
#else
    int nt = 1;
    (void)requested;
#endif
    // Thread start-up costs more than a handful of features (the live case is N = 1).
    if (n < 32) nt = 1;
    return std::max(1, nt);
}

// Best candidate by (canon, index) among `count` candidates whose screening distances are `fast`,
// with tolerance `tol`. `row_of(j)` gives the centroid row of candidate j. Candidates must be
// given in ascending index order so that a strict '<' keeps the lower index on exact ties.
template <class RowOf>
int64_t select_best(const float* x, const double* fast, int64_t count, double tol, const float* centroids,
                    int64_t dim, RowOf row_of) {
    double m = kInf;
    bool finite = true;
    for (int64_t j = 0; j < count; ++j) {
        finite = finite && std::isfinite(fast[j]);
        m = std::min(m, fast[j]);
    }
    // A non-finite screening value (float32 overflow on extreme inputs) makes the window
    // meaningless: fall back to ranking every candidate canonically.
    const double limit = finite ? m + tol : kInf;
    int64_t in_window = 0, only = -1;
    for (int64_t j = 0; j < count; ++j) {
        if (!(fast[j] <= limit)) continue;
        ++in_window;
        only = j;
    }
    if (in_window == 1) return only;
    int64_t best = -1;
    double best_canon = kInf;
    for (int64_t j = 0; j < count; ++j) {
        if (!(fast[j] <= limit)) continue;
        const double c = canon_distance(x, centroids + row_of(j) * dim, dim);
        if (best < 0 || c < best_canon) {
            best_canon = c;
            best = j;
        }
    }
    return best;
}

}  // namespace

TokenizeMode parse_mode(const std::string& mode) {
    if (mode == "tree") return TokenizeMode::kTree;
    if (mode == "exact") return TokenizeMode::kExact;
    throw std::invalid_argument("mode must be \"tree\" or \"exact\", got \"" + mode + "\"");
}

struct CpuTokenizerCore::Ctx {
    const void* features;
    FeatureDType dtype;
    int64_t n;
    int64_t beam;
    int threads;
    int64_t* out;

    const void* row_address(int64_t i, int64_t dim) const {
        const size_t item = dtype == FeatureDType::kFloat32 ? 4 : 2;
        return static_cast<const char*>(features) + static_cast<size_t>(i * dim) * item;
    }
    size_t row_bytes(int64_t dim) const { return static_cast<size_t>(dim) * (dtype == FeatureDType::kFloat32 ? 4 : 2); }

    // Row i as float32: a pointer into the input, or `buf` filled with the exact float16 values.
    const float* row(int64_t i, int64_t dim, float* buf) const {
        if (dtype == FeatureDType::kFloat32) return static_cast<const float*>(features) + i * dim;
        cpu::dot_kernels().half_row(static_cast<const uint16_t*>(features) + i * dim, buf, dim);
        return buf;
    }
};

CpuTokenizerCore::CpuTokenizerCore(const float* centroids, int64_t num_rows, int64_t dim, int levels,
                                   int64_t branching)
    : levels_(levels), branching_(branching), dim_(dim), num_rows_(num_rows) {
    if (levels < 1 || levels > 16) {
        throw std::invalid_argument("levels must be between 1 and 16, got " + std::to_string(levels));
    }
    if (branching < 2) {
        throw std::invalid_argument("branching must be at least 2, got " + std::to_string(branching));
    }
    // k^L must stay far below int64 overflow (and below any codebook that could exist).
    double leaves_d = std::pow(static_cast<double>(branching), levels);
    if (leaves_d > 1e12) {
        throw std::invalid_argument("branching**levels = " + std::to_string(branching) + "**" + std::to_string(levels) +
                                    " is too large (more than 1e12 leaves)");
    }
    if (dim < 1) throw std::invalid_argument("centroid dimension must be at least 1, got " + std::to_string(dim));
    const int64_t expected = total_centroids(branching, levels);
    if (num_rows != expected) {
        // std::string, not iostreams: see kernels/bindings/cpu_module.cpp (shape_str).
        throw std::invalid_argument("centroids must have shape (" + std::to_string(expected) + ", D) for levels=" +
                                    std::to_string(levels) + ", branching=" + std::to_string(branching) +
                                    " (sum of branching**(l+1) for l < levels), got (" + std::to_string(num_rows) +
                                    ", " + std::to_string(dim) + ")");
    }
    num_leaves_ = int_pow(branching, levels);
    for (int l = 0; l <= levels; ++l) level_offsets_.push_back(level_offset(branching, l));

    centroids_.assign(centroids, centroids + num_rows * dim);
    norms2_.resize(num_rows);
    c_max_ = 0.0;
    for (int64_t r = 0; r < num_rows; ++r) {
        const float* c = centroids_.data() + r * dim;
        const double n2 = norm2_f64(c, dim);
        if (!std::isfinite(n2)) {
            throw std::invalid_argument("centroids must be finite; row " + std::to_string(r) + " has NaN or Inf");
        }
        if (n2 > kFloat32Max) {
            throw std::invalid_argument("centroid row " + std::to_string(r) +
                                        " has a squared norm that overflows float32 (norm above ~1.8e19)");
        }
        norms2_[r] = static_cast<float>(n2);
        c_max_ = std::max(c_max_, n2);
    }
    // Covering radius of each parent of the leaves (exact mode's pruning bound), in float64 and
    // rounded up by a relative 1e-9, far above the error of the float64 sum and sqrt.
    if (levels >= 2) {
        const int64_t num_parents = num_leaves_ / branching;
        const float* parents = centroids_.data() + level_offsets_[levels - 2] * dim;
        const float* leaves = centroids_.data() + level_offsets_[levels - 1] * dim;
        parent_radius_.assign(num_parents, 0.0);
        for (int64_t p = 0; p < num_parents; ++p) {
            double r2 = 0.0;
            for (int64_t j = 0; j < branching; ++j)
                r2 = std::max(r2, canon_distance(parents + p * dim, leaves + (p * branching + j) * dim, dim));
            parent_radius_[p] = std::sqrt(r2) * (1.0 + 1e-9);
        }
    }
}

const char* CpuTokenizerCore::simd_path() { return cpu::dot_kernels().name; }

void CpuTokenizerCore::check_options(TokenizeMode mode, int64_t beam) const {
    check_beam(mode == TokenizeMode::kExact, beam, num_leaves_);
}

void CpuTokenizerCore::tokenize(const void* features, FeatureDType dtype, int64_t n, TokenizeMode mode, int64_t beam,
                                int num_threads, int64_t* out) const {
    if (n < 0) throw std::invalid_argument("number of features must be >= 0, got " + std::to_string(n));
    if (num_threads < 0) {
        throw std::invalid_argument("num_threads must be >= 0 (0 = OpenMP default), got " +
                                    std::to_string(num_threads));
    }
    check_options(mode, beam);
    if (n == 0) return;
    Ctx ctx{features, dtype, n, beam, resolve_threads(num_threads, n), out};
    if (mode == TokenizeMode::kExact) {
        exact(ctx);
    } else if (beam == 1) {
        tree_beam1(ctx);
    } else {
        tree_beam(ctx);
    }
}

namespace {

[[noreturn]] void throw_bad_row(int64_t row, double norm2) {
    if (!std::isfinite(norm2)) {
        throw std::invalid_argument("features must be finite: row " + std::to_string(row) + " contains NaN or Inf");
    }
    char norm[32];
    std::snprintf(norm, sizeof(norm), "%.6g", norm2);
    throw std::invalid_argument("feature row " + std::to_string(row) + " has a squared norm of " + norm +
                                " which overflows float32 (expected a norm below ~1.8e19)");
}

}  // namespace

void CpuTokenizerCore::tree_beam1(const Ctx& ctx) const {
    const int64_t n = ctx.n, dim = dim_, k = branching_;
    const float* C = centroids_.data();
    const float* norms = norms2_.data();
    const double tol_scale = tolerance_scale(dim);
    const cpu::DotKernels& kern = cpu::dot_kernels();
    const int64_t k4 = k / 4 * 4;

    std::vector<double> tol(n);
    std::vector<int64_t> node(n, 0);  // level 0: every feature sits at the virtual root 0
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::vector<int64_t> groups;  // start positions in `order` of groups of <= 3 features sharing a node
    std::vector<int64_t> bucket_start;
    std::atomic<int64_t> first_bad(std::numeric_limits<int64_t>::max());

    for (int level = 0; level < levels_; ++level) {
        if (level > 0) {
            // Counting sort of the features by current node (k^level buckets): features sharing a
            // parent become neighbours and read the same k children from cache.
            const int64_t num_parents = int_pow(k, level);
            bucket_start.assign(num_parents + 1, 0);
            for (int64_t i = 0; i < n; ++i) ++bucket_start[node[i] + 1];
            for (int64_t p = 0; p < num_parents; ++p) bucket_start[p + 1] += bucket_start[p];
            for (int64_t i = 0; i < n; ++i) order[bucket_start[node[i]]++] = i;
        }
        // Groups of up to three features with the same node share one 3 x 4 register tile, so each
        // child chunk loaded from cache feeds three FMAs.
        groups.clear();
        for (int64_t pos = 0; pos < n;) {
            groups.push_back(pos);
            int64_t len = 1;
            while (len < 3 && pos + len < n && node[order[pos + len]] == node[order[pos]]) ++len;
            pos += len;
        }
        groups.push_back(n);
        const int64_t num_groups = static_cast<int64_t>(groups.size()) - 1;
        const int64_t off = level_offsets_[level];

#pragma omp parallel num_threads(ctx.threads)
        {
            std::vector<float> buf(ctx.dtype == FeatureDType::kFloat16 ? 3 * dim : 0);
            std::vector<float> dots(3 * k);
            std::vector<double> fast(k);
            float d12[12];
            // Dynamic chunks of consecutive groups keep the cache locality of the sorted order and
            // still balance the threads when a core is shared with other processes.
#pragma omp for schedule(dynamic, 32)
            for (int64_t g = 0; g < num_groups; ++g) {
                const int64_t p0 = groups[g];
                const int64_t len = groups[g + 1] - p0;
                // The next group's feature rows live at scattered addresses (sorted order) and
                // usually come from DRAM: request them now so they arrive while this group computes.
                if (g + 1 < num_groups) {
                    for (int64_t pos = groups[g + 1]; pos < groups[g + 2]; ++pos)
                        prefetch_row(ctx.row_address(order[pos], dim), ctx.row_bytes(dim));
                    // Deep levels: a new node's k children (48 KB at k=12, D=1024) come from DRAM.
                    const int64_t next_node = node[order[groups[g + 1]]];
                    if (level > 0 && next_node != node[order[p0]])
                        prefetch_row(C + (off + next_node * k) * dim, static_cast<size_t>(k * dim) * 4);
                }
                const float* xs[3];
                int64_t ids[3];
                bool ok = true;
                for (int64_t a = 0; a < len; ++a) {
                    ids[a] = order[p0 + a];
                    xs[a] = ctx.row(ids[a], dim, buf.data() + a * dim);
                    if (level == 0) {
                        // Validation and the tolerance are fused into level 0: the row is in cache.
                        const double n2 = norm2_f64(xs[a], dim);
                        if (!row_is_valid(n2)) {
                            record_bad_row(first_bad, ids[a]);
                            ok = false;
                        }
                        tol[ids[a]] = tol_scale * (n2 + c_max_);
                    }
                }
                if (!ok) continue;
                const int64_t parent = node[ids[0]];
                const int64_t first = off + (level == 0 ? 0 : parent * k);  // row of the first child
                const float* children = C + first * dim;
                if (len == 3) {
                    for (int64_t cb = 0; cb < k4; cb += 4) {
                        std::fill(d12, d12 + 12, 0.0f);
                        kern.dot_3x4(xs[0], xs[1], xs[2], children + cb * dim, dim, dim, d12);
                        for (int a = 0; a < 3; ++a)
                            for (int b = 0; b < 4; ++b) dots[a * k + cb + b] = d12[a * 4 + b];
                    }
                    if (k4 < k)
                        for (int a = 0; a < 3; ++a)
                            kern.dot_rows(xs[a], children + k4 * dim, k - k4, dim, dots.data() + a * k + k4);
                } else {
                    for (int64_t a = 0; a < len; ++a) kern.dot_rows(xs[a], children, k, dim, dots.data() + a * k);
                }
                for (int64_t a = 0; a < len; ++a) {
                    for (int64_t j = 0; j < k; ++j)
                        fast[j] = static_cast<double>(norms[first + j]) - 2.0 * static_cast<double>(dots[a * k + j]);
                    const int64_t j = select_best(xs[a], fast.data(), k, tol[ids[a]], C, dim,
                                                  [first](int64_t jj) { return first + jj; });
                    node[ids[a]] = (level == 0 ? 0 : parent * k) + j;
                }
            }
        }
        if (level == 0) {
            const int64_t bad = first_bad.load();
            if (bad != std::numeric_limits<int64_t>::max()) {
                std::vector<float> tmp(dim);
                throw_bad_row(bad, norm2_f64(ctx.row(bad, dim, tmp.data()), dim));
            }
        }
    }
    std::copy(node.begin(), node.end(), ctx.out);
}

namespace {

// Keeps the best `keep` of `count` candidates (ids `cand`, ascending) by (canon, id), screening with
// `fast` and tolerance `tol` (docs/tokenizer.md, steps 2-4). The kept ids go to `out`, ascending.
void select_keep(const float* x, const int64_t* cand, const double* fast, int64_t count, int64_t keep, double tol,
                 const float* C, int64_t off, int64_t dim, std::vector<int64_t>& out, std::vector<double>& scratch,
                 std::vector<std::pair<double, int64_t>>& ranked) {
    out.clear();
    if (keep >= count) {
        out.assign(cand, cand + count);
        return;
    }
    if (keep == 1) {
        const int64_t j = select_best(x, fast, count, tol, C, dim, [&](int64_t jj) { return off + cand[jj]; });
        out.push_back(cand[j]);
        return;
    }
    scratch.assign(fast, fast + count);
    std::nth_element(scratch.begin(), scratch.begin() + (keep - 1), scratch.end());
    bool finite = true;
    for (int64_t j = 0; j < count; ++j) finite = finite && std::isfinite(fast[j]);
    const double limit = finite ? scratch[keep - 1] + tol : kInf;
    int64_t in_window = 0;
    for (int64_t j = 0; j < count; ++j) in_window += (fast[j] <= limit);
    if (in_window == keep) {  // the window is exactly the kept set: no canonical distance needed
        for (int64_t j = 0; j < count; ++j)
            if (fast[j] <= limit) out.push_back(cand[j]);
        return;
    }
    ranked.clear();
    for (int64_t j = 0; j < count; ++j) {
        if (!(fast[j] <= limit)) continue;
        ranked.emplace_back(canon_distance(x, C + (off + cand[j]) * dim, dim), cand[j]);
    }
    std::partial_sort(ranked.begin(), ranked.begin() + keep, ranked.end());
    for (int64_t j = 0; j < keep; ++j) out.push_back(ranked[j].second);
    std::sort(out.begin(), out.end());
}

}  // namespace

void CpuTokenizerCore::tree_beam(const Ctx& ctx) const {
    // The grouped version holds N x beam x k screening values; past ~256 MB of them, go per feature.
    const double grouped_bytes = 4.0 * static_cast<double>(ctx.n) * static_cast<double>(ctx.beam) *
                                 static_cast<double>(branching_);
    // VBEDGE_CPU_TREE_BEAM=per-feature forces the per-feature path so tests can cover it cheaply.
    const char* forced = std::getenv("VBEDGE_CPU_TREE_BEAM");
    const bool per_feature = forced != nullptr && std::string(forced) == "per-feature";
    if (!per_feature && grouped_bytes <= 256.0 * 1024 * 1024) {
        tree_beam_grouped(ctx);
        return;
    }
    const int64_t n = ctx.n, dim = dim_, k = branching_;
    const float* C = centroids_.data();
    const float* norms = norms2_.data();
    const double tol_scale = tolerance_scale(dim);
    const cpu::DotKernels& kern = cpu::dot_kernels();
    std::atomic<int64_t> first_bad(std::numeric_limits<int64_t>::max());

#pragma omp parallel num_threads(ctx.threads)
    {
        std::vector<float> buf(ctx.dtype == FeatureDType::kFloat16 ? dim : 0);
        std::vector<int64_t> beam_nodes, cand;
        std::vector<float> dots;
        std::vector<double> fast, scratch;
        std::vector<std::pair<double, int64_t>> ranked;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < n; ++i) {
            const float* x = ctx.row(i, dim, buf.data());
            const double n2 = norm2_f64(x, dim);
            if (!row_is_valid(n2)) {
                record_bad_row(first_bad, i);
                continue;
            }
            const double tol = tol_scale * (n2 + c_max_);
            beam_nodes.assign(1, 0);  // virtual root: its children are the level-0 nodes
            for (int level = 0; level < levels_; ++level) {
                const int64_t off = level_offsets_[level];
                const bool last = level + 1 == levels_;
                // Candidates: all children of all beam nodes, in ascending index order (the beam is
                // kept sorted) so that ties resolve to the lower index.
                const int64_t count = static_cast<int64_t>(beam_nodes.size()) * k;
                cand.resize(count);
                dots.resize(count);
                fast.resize(count);
                for (size_t b = 0; b < beam_nodes.size(); ++b) {
                    const int64_t first_child = level == 0 ? 0 : beam_nodes[b] * k;
                    kern.dot_rows(x, C + (off + first_child) * dim, k, dim, dots.data() + b * k);
                    for (int64_t j = 0; j < k; ++j) {
                        cand[b * k + j] = first_child + j;
                        fast[b * k + j] = static_cast<double>(norms[off + first_child + j]) - 2.0 * dots[b * k + j];
                    }
                }
                const int64_t keep = last ? 1 : std::min<int64_t>(ctx.beam, count);
                std::vector<int64_t> next;
                select_keep(x, cand.data(), fast.data(), count, keep, tol, C, off, dim, next, scratch, ranked);
                beam_nodes.swap(next);
            }
            ctx.out[i] = beam_nodes[0];
        }
    }
    const int64_t bad = first_bad.load();
    if (bad != std::numeric_limits<int64_t>::max()) {
        std::vector<float> buf(dim);
        throw_bad_row(bad, norm2_f64(ctx.row(bad, dim, buf.data()), dim));
    }
}

void CpuTokenizerCore::tree_beam_grouped(const Ctx& ctx) const {
    // Level by level over the batch, like beam 1: every (feature, beam node) pair is bucketed by its
    // node, so pairs sharing a node read its k children once from cache in 3 x 4 register tiles;
    // then each feature selects its next beam from the stored screening values.
    const int64_t n = ctx.n, dim = dim_, k = branching_, B = ctx.beam;
    const float* C = centroids_.data();
    const float* norms = norms2_.data();
    const double tol_scale = tolerance_scale(dim);
    const cpu::DotKernels& kern = cpu::dot_kernels();
    const int64_t k4 = k / 4 * 4;

    std::vector<double> tol(n);
    std::vector<int64_t> nodes(static_cast<size_t>(n) * B, 0), count(n, 1);  // level 0: the virtual root
    std::vector<float> dots(static_cast<size_t>(n) * B * k);
    std::vector<int64_t> pairs, sorted_pairs, groups, bucket_start;
    std::atomic<int64_t> first_bad(std::numeric_limits<int64_t>::max());

    for (int level = 0; level < levels_; ++level) {
        const int64_t off = level_offsets_[level];
        const bool last = level + 1 == levels_;
        // Pairs are encoded as feature * B + slot; bucket them by node (k^level nodes).
        pairs.clear();
        for (int64_t i = 0; i < n; ++i)
            for (int64_t sl = 0; sl < count[i]; ++sl) pairs.push_back(i * B + sl);
        const int64_t num_pairs = static_cast<int64_t>(pairs.size());
        const int64_t num_nodes = level == 0 ? 1 : int_pow(k, level);
        bucket_start.assign(num_nodes + 1, 0);
        for (int64_t q : pairs) ++bucket_start[nodes[q] + 1];
        for (int64_t p = 0; p < num_nodes; ++p) bucket_start[p + 1] += bucket_start[p];
        sorted_pairs.resize(num_pairs);
        for (int64_t q : pairs) sorted_pairs[bucket_start[nodes[q]]++] = q;
        groups.clear();
        for (int64_t pos = 0; pos < num_pairs;) {
            groups.push_back(pos);
            int64_t len = 1;
            while (len < 3 && pos + len < num_pairs && nodes[sorted_pairs[pos + len]] == nodes[sorted_pairs[pos]]) ++len;
            pos += len;
        }
        groups.push_back(num_pairs);
        const int64_t num_groups = static_cast<int64_t>(groups.size()) - 1;

#pragma omp parallel num_threads(ctx.threads)
        {
            std::vector<float> buf(ctx.dtype == FeatureDType::kFloat16 ? 3 * dim : 0);
            float d12[12];
#pragma omp for schedule(dynamic, 32)
            for (int64_t g = 0; g < num_groups; ++g) {
                const int64_t p0 = groups[g];
                const int64_t len = groups[g + 1] - p0;
                if (g + 1 < num_groups) {
                    for (int64_t pos = groups[g + 1]; pos < groups[g + 2]; ++pos)
                        prefetch_row(ctx.row_address(sorted_pairs[pos] / B, dim), ctx.row_bytes(dim));
                }
                const float* xs[3];
                int64_t q[3];
                bool ok = true;
                for (int64_t a = 0; a < len; ++a) {
                    q[a] = sorted_pairs[p0 + a];
                    const int64_t i = q[a] / B;
                    xs[a] = ctx.row(i, dim, buf.data() + a * dim);
                    if (level == 0) {
                        const double n2 = norm2_f64(xs[a], dim);
                        if (!row_is_valid(n2)) {
                            record_bad_row(first_bad, i);
                            ok = false;
                        }
                        tol[i] = tol_scale * (n2 + c_max_);
                    }
                }
                if (!ok) continue;
                const int64_t first = off + (level == 0 ? 0 : nodes[q[0]] * k);
                const float* children = C + first * dim;
                if (len == 3) {
                    for (int64_t cb = 0; cb < k4; cb += 4) {
                        std::fill(d12, d12 + 12, 0.0f);
                        kern.dot_3x4(xs[0], xs[1], xs[2], children + cb * dim, dim, dim, d12);
                        for (int a = 0; a < 3; ++a)
                            for (int b = 0; b < 4; ++b) dots[q[a] * k + cb + b] = d12[a * 4 + b];
                    }
                    if (k4 < k)
                        for (int a = 0; a < 3; ++a)
                            kern.dot_rows(xs[a], children + k4 * dim, k - k4, dim, dots.data() + q[a] * k + k4);
                } else {
                    for (int64_t a = 0; a < len; ++a) kern.dot_rows(xs[a], children, k, dim, dots.data() + q[a] * k);
                }
            }
        }
        if (level == 0) {
            const int64_t bad = first_bad.load();
            if (bad != std::numeric_limits<int64_t>::max()) {
                std::vector<float> tmp(dim);
                throw_bad_row(bad, norm2_f64(ctx.row(bad, dim, tmp.data()), dim));
            }
        }

#pragma omp parallel num_threads(ctx.threads)
        {
            std::vector<float> buf(ctx.dtype == FeatureDType::kFloat16 ? dim : 0);
            std::vector<int64_t> cand, next;
            std::vector<double> fast, scratch;
            std::vector<std::pair<double, int64_t>> ranked;
#pragma omp for schedule(dynamic, 64)
            for (int64_t i = 0; i < n; ++i) {
                // Slots hold the beam in ascending node order, so candidates come out ascending.
                const int64_t cnt = count[i] * k;
                cand.resize(cnt);
                fast.resize(cnt);
                for (int64_t sl = 0; sl < count[i]; ++sl) {
                    const int64_t first_child = level == 0 ? 0 : nodes[i * B + sl] * k;
                    for (int64_t j = 0; j < k; ++j) {
                        cand[sl * k + j] = first_child + j;
                        fast[sl * k + j] = static_cast<double>(norms[off + first_child + j]) -
                                           2.0 * static_cast<double>(dots[(i * B + sl) * k + j]);
                    }
                }
                const int64_t keep = last ? 1 : std::min<int64_t>(B, cnt);
                const float* x = ctx.row(i, dim, buf.data());
                select_keep(x, cand.data(), fast.data(), cnt, keep, tol[i], C, off, dim, next, scratch, ranked);
                count[i] = static_cast<int64_t>(next.size());
                for (int64_t sl = 0; sl < count[i]; ++sl) nodes[i * B + sl] = next[sl];
            }
        }
    }
    for (int64_t i = 0; i < n; ++i) ctx.out[i] = nodes[i * B];
}

namespace {

// Per-feature state of an exact search: the running minimum of the screening value (shifted by
// -|x|^2: |c|^2 - 2 x.c) and every leaf that was within the tolerance of the minimum when seen.
struct ExactState {
    double best;
    double tol;
    double norm2;
    bool finite;
    std::vector<std::pair<int64_t, double>> window;

    void reset(double n2, double t) {
        best = kInf;
        tol = t;
        norm2 = n2;
        finite = true;
        window.clear();
    }

    void offer(int64_t leaf, double f) {
        if (!std::isfinite(f)) {
            finite = false;  // float32 overflow on an extreme input: rank every leaf canonically
            return;
        }
        if (f > best + tol) return;
        if (f < best) best = f;
        window.emplace_back(leaf, f);
        if (window.size() > 256) {  // keep the list short when the minimum moved a lot
            const double lim = best + tol;
            auto it = std::remove_if(window.begin(), window.end(),
                                     [lim](const std::pair<int64_t, double>& e) { return e.second > lim; });
            window.erase(it, window.end());
        }
    }

    // The best leaf by (canon, index) among the final window.
    int64_t finish(const float* x, const float* leaves, int64_t num_leaves, int64_t dim) const {
        int64_t best_leaf = -1;
        double best_canon = kInf;
        auto consider = [&](int64_t leaf) {
            const double c = canon_distance(x, leaves + leaf * dim, dim);
            if (best_leaf < 0 || c < best_canon || (c == best_canon && leaf < best_leaf)) {
                best_canon = c;
                best_leaf = leaf;
            }
        };
        if (!finite) {
            for (int64_t leaf = 0; leaf < num_leaves; ++leaf) consider(leaf);
            return best_leaf;
        }
        const double lim = best + tol;
        int64_t in_window = 0;
        for (const auto& e : window) {
            if (e.second <= lim) {
                ++in_window;
                best_leaf = e.first;
            }
        }
        if (in_window <= 1) return best_leaf;
        best_leaf = -1;
        for (const auto& e : window)
            if (e.second <= lim) consider(e.first);
        return best_leaf;
    }
};

// Offers `m` feature rows against `count` contiguous centroid rows (ids id0..) in 3 x 4 register
// tiles: each 4-centroid block read from memory is reused by every feature triple of the tile
// (held in L2). Measured here, this order beat splitting D into L1-sized chunks (per-call
// overhead) and beat holding a 256 KB centroid superblock in L2 with the triple in L1.
void scan_block(const cpu::DotKernels& kern, const float* const* xs, int64_t m, const float* rows,
                const float* row_norms, int64_t id0, int64_t count, int64_t dim, ExactState* st) {
    const int64_t m3 = m / 3 * 3;
    const int64_t c4 = count / 4 * 4;
    float d12[12];
    // The next 4-centroid block comes from DRAM: spread software prefetches of it over this
    // block's feature triples so that it is in cache when the block starts (measured +8%).
    const int64_t block_lines = (4 * dim * 4 + 63) / 64;
    const int64_t triples = std::max<int64_t>(1, m3 / 3);
    const int64_t lines_per_triple = (block_lines + triples - 1) / triples;
    for (int64_t l = 0; l < c4; l += 4) {
        const float* cb = rows + l * dim;
        const char* next = reinterpret_cast<const char*>(rows + std::min(l + 4, count - 1) * dim);
        const int64_t next_lines = std::min<int64_t>(block_lines, ((count - std::min(l + 4, count - 1)) * dim * 4) / 64);
        for (int64_t r = 0; r < m3; r += 3) {
            const int64_t q0 = (r / 3) * lines_per_triple;
            for (int64_t q = q0; q < std::min(q0 + lines_per_triple, next_lines); ++q) __builtin_prefetch(next + q * 64, 0, 3);
            std::fill(d12, d12 + 12, 0.0f);
            kern.dot_3x4(xs[r], xs[r + 1], xs[r + 2], cb, dim, dim, d12);
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 4; ++b)
                    st[r + a].offer(id0 + l + b, static_cast<double>(row_norms[l + b]) - 2.0 * d12[a * 4 + b]);
        }
        for (int64_t r = m3; r < m; ++r) {
            kern.dot_rows(xs[r], cb, 4, dim, d12);
            for (int b = 0; b < 4; ++b) st[r].offer(id0 + l + b, static_cast<double>(row_norms[l + b]) - 2.0 * d12[b]);
        }
    }
    if (c4 < count) {
        for (int64_t r = 0; r < m; ++r) {
            kern.dot_rows(xs[r], rows + c4 * dim, count - c4, dim, d12);
            for (int64_t b = 0; b < count - c4; ++b)
                st[r].offer(id0 + c4 + b, static_cast<double>(row_norms[c4 + b]) - 2.0 * d12[b]);
        }
    }
}

// Same contract as scan_block, with the 6 x 16 outer-product kernel over interleaved panels
// (panel p holds leaves 16p .. 16p+15, zero-padded past the last leaf).
void scan_panels(const cpu::DotKernels& kern, const float* const* xs, int64_t m, const float* panels,
                 const float* leaf_norms, int64_t num_leaves, int64_t dim, ExactState* st) {
    float out[96];
    const float* group[6];
    const int64_t num_panels = (num_leaves + 15) / 16;
    for (int64_t p = 0; p < num_panels; ++p) {
        const int64_t l0 = p * 16;
        const int64_t valid = std::min<int64_t>(16, num_leaves - l0);
        const float* panel = panels + p * 16 * dim;
        for (int64_t f0 = 0; f0 < m; f0 += 6) {
            const int64_t cnt = std::min<int64_t>(6, m - f0);
            for (int64_t a = 0; a < 6; ++a) group[a] = xs[f0 + std::min(a, cnt - 1)];  // pad with a repeat
            kern.gemm_6x16(group, panel, dim, out);
            for (int64_t a = 0; a < cnt; ++a)
                for (int64_t j = 0; j < valid; ++j)
                    st[f0 + a].offer(l0 + j, static_cast<double>(leaf_norms[l0 + j]) - 2.0 * out[a * 16 + j]);
        }
    }
}

}  // namespace

void CpuTokenizerCore::exact(const Ctx& ctx) const {
    const int64_t n = ctx.n, dim = dim_, k = branching_, num_leaves = num_leaves_;
    const float* C = centroids_.data();
    const int64_t leaf_off = level_offsets_[levels_ - 1];
    const float* leaves = C + leaf_off * dim;
    const float* leaf_norms = norms2_.data() + leaf_off;
    const double tol_scale = tolerance_scale(dim);
    const cpu::DotKernels& kern = cpu::dot_kernels();
    std::atomic<int64_t> first_bad(std::numeric_limits<int64_t>::max());

    // Pruning with the parents of the leaves (level L-2): a leaf c under parent p satisfies
    // |x - c| >= |x - p| - r_p (r_p: covering radius of p's leaves), so a parent whose lower bound
    // exceeds the best screening value found so far plus 2 tol cannot hold a leaf of the final
    // window (docs/tokenizer.md) and is skipped. Features for which the bound prunes little
    // (unclustered data) take the dense tiled scan over every leaf instead.
    const bool prune = levels_ >= 2 && !parent_radius_.empty();
    const int64_t num_parents = prune ? num_leaves / k : 0;
    const int64_t parent_off = prune ? level_offsets_[levels_ - 2] : 0;
    const float* parents = C + parent_off * dim;
    const float* parent_norms = norms2_.data() + parent_off;

    const bool use_panels = kern.gemm_6x16 != nullptr;
    if (use_panels) {
        std::call_once(leaf_panels_once_, [&]() {
            const int64_t num_panels = (num_leaves + 15) / 16;
            leaf_panels_.assign(static_cast<size_t>(num_panels) * 16 * dim, 0.0f);
            for (int64_t leaf = 0; leaf < num_leaves; ++leaf) {
                float* panel = leaf_panels_.data() + (leaf / 16) * 16 * dim;
                const float* src = leaves + leaf * dim;
                for (int64_t d = 0; d < dim; ++d) panel[d * 16 + leaf % 16] = src[d];
            }
        });
    }
    const float* panels = use_panels ? leaf_panels_.data() : nullptr;

    // A tile of features stays in L2 while centroid blocks stream past it once.
    const int64_t tile = std::max<int64_t>(6, std::min<int64_t>(192, (int64_t(768) * 1024 / 4) / dim / 6 * 6));
    const int64_t num_tiles = (n + tile - 1) / tile;

#pragma omp parallel num_threads(ctx.threads)
    {
        std::vector<float> tile_buf(ctx.dtype == FeatureDType::kFloat16 ? tile * dim : 0);
        std::vector<ExactState> st(tile), dense_st(tile);
        std::vector<const float*> xs(tile), dense_xs(tile);
        std::vector<int64_t> dense_rows(tile);
        std::vector<float> dots(k);
        // On unclustered data nearly every feature ends up dense and the parent pass is wasted
        // work; after such a tile, this thread skips the parent pass for the next 7 tiles and
        // then tries again. (Only the speed depends on this: both paths return the same ids.)
        int64_t skip_parent_pass = 0;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < num_tiles; ++t) {
            const int64_t i0 = t * tile;
            const int64_t m = std::min(tile, n - i0);
            bool tile_ok = true;
            for (int64_t r = 0; r < m; ++r) {
                xs[r] = ctx.row(i0 + r, dim, tile_buf.data() + r * dim);
                const double n2 = norm2_f64(xs[r], dim);
                if (!row_is_valid(n2)) {
                    record_bad_row(first_bad, i0 + r);
                    tile_ok = false;
                }
                st[r].reset(n2, tol_scale * (n2 + c_max_));
            }
            if (!tile_ok) continue;
            int64_t num_dense = 0;
            const bool try_prune = prune && skip_parent_pass == 0;
            if (skip_parent_pass > 0) --skip_parent_pass;
            if (!try_prune) {
                for (int64_t r = 0; r < m; ++r) dense_rows[num_dense++] = r;
            } else {
                // Dot products with every parent (tiled like the dense scan); then each feature
                // descends into the parents it cannot exclude, its best parent first.
                std::vector<float> pf(static_cast<size_t>(m) * num_parents);
                {
                    float d12[12];
                    const int64_t m3 = m / 3 * 3, p4 = num_parents / 4 * 4;
                    for (int64_t p = 0; p < p4; p += 4) {
                        for (int64_t r = 0; r < m3; r += 3) {
                            std::fill(d12, d12 + 12, 0.0f);
                            kern.dot_3x4(xs[r], xs[r + 1], xs[r + 2], parents + p * dim, dim, dim, d12);
                            for (int a = 0; a < 3; ++a)
                                for (int b = 0; b < 4; ++b) pf[(r + a) * num_parents + p + b] = d12[a * 4 + b];
                        }
                        for (int64_t r = m3; r < m; ++r) {
                            kern.dot_rows(xs[r], parents + p * dim, 4, dim, d12);
                            for (int b = 0; b < 4; ++b) pf[r * num_parents + p + b] = d12[b];
                        }
                    }
                    for (int64_t r = 0; r < m; ++r)
                        if (p4 < num_parents)
                            kern.dot_rows(xs[r], parents + p4 * dim, num_parents - p4, dim,
                                          pf.data() + r * num_parents + p4);
                }
                for (int64_t r = 0; r < m; ++r) {
                    ExactState& s = st[r];
                    const float* pfr = pf.data() + r * num_parents;
                    // Full screening value of each parent (|x|^2 + |p|^2 - 2 x.p) and a rigorous
                    // lower bound of the squared distance of any of its leaves.
                    int64_t best_p = 0;
                    double best_pf = kInf;
                    bool finite = true;
                    for (int64_t p = 0; p < num_parents; ++p) {
                        const double f = s.norm2 + static_cast<double>(parent_norms[p]) - 2.0 * pfr[p];
                        finite = finite && std::isfinite(f);
                        if (f < best_pf) best_pf = f, best_p = p;
                    }
                    if (!finite) {
                        dense_rows[num_dense++] = r;
                        continue;
                    }
                    auto lower_bound = [&](int64_t p) {
                        const double f = s.norm2 + static_cast<double>(parent_norms[p]) - 2.0 * pfr[p];
                        // |x-p|^2 >= f - tol/2 (screening error bound); shrink a little more for the
                        // roundings of sqrt and of this bound itself.
                        const double dp = std::sqrt(std::max(0.0, f - 0.5 * s.tol)) * (1.0 - 1e-9);
                        const double gap = dp - parent_radius_[p];
                        return gap > 0 ? gap * gap * (1.0 - 1e-9) : 0.0;
                    };
                    auto visit = [&](int64_t p) {
                        kern.dot_rows(xs[r], leaves + p * k * dim, k, dim, dots.data());
                        for (int64_t j = 0; j < k; ++j)
                            s.offer(p * k + j, static_cast<double>(leaf_norms[p * k + j]) - 2.0 * dots[j]);
                    };
                    visit(best_p);
                    // limit is in full (unshifted) units: s.best is shifted by -|x|^2.
                    auto limit = [&]() { return s.norm2 + s.best + 2.0 * s.tol; };
                    int64_t survivors = 0;
                    for (int64_t p = 0; p < num_parents; ++p) survivors += lower_bound(p) <= limit();
                    if (!s.finite || survivors * 4 > num_parents) {
                        // Pruning would not pay: scan densely (the state restarts from scratch).
                        dense_rows[num_dense++] = r;
                        continue;
                    }
                    for (int64_t p = 0; p < num_parents; ++p) {
                        if (p == best_p || lower_bound(p) > limit()) continue;
                        visit(p);
                    }
                    ctx.out[i0 + r] = s.finish(xs[r], leaves, num_leaves, dim);
                }
            }
            if (try_prune && num_dense * 10 > m * 9) skip_parent_pass = 7;
            if (num_dense > 0) {
                for (int64_t a = 0; a < num_dense; ++a) {
                    const int64_t r = dense_rows[a];
                    dense_xs[a] = xs[r];
                    dense_st[a].reset(st[r].norm2, st[r].tol);
                }
                if (use_panels) {
                    scan_panels(kern, dense_xs.data(), num_dense, panels, leaf_norms, num_leaves, dim, dense_st.data());
                } else {
                    scan_block(kern, dense_xs.data(), num_dense, leaves, leaf_norms, 0, num_leaves, dim,
                               dense_st.data());
                }
                for (int64_t a = 0; a < num_dense; ++a)
                    ctx.out[i0 + dense_rows[a]] = dense_st[a].finish(dense_xs[a], leaves, num_leaves, dim);
            }
        }
    }
    const int64_t bad = first_bad.load();
    if (bad != std::numeric_limits<int64_t>::max()) {
        std::vector<float> buf(dim);
        throw_bad_row(bad, norm2_f64(ctx.row(bad, dim, buf.data()), dim));
    }
}

}  // namespace vbedge
