// pybind11 module vbedge._kernels: the C++ CPU visual tokenizer.
//
// A thin layer: it checks the arrays (dtype, rank, contiguity, shape) with messages that name what
// was wrong, hands raw pointers to vbedge::CpuTokenizerCore and releases the GIL while it runs.
// std::invalid_argument from the core becomes ValueError (pybind11's standard translation).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#include <memory>

#include <stdexcept>
#include <string>

#include "vbedge/cpu_tokenizer.h"
#include "vbedge/tokenizer_common.h"

namespace py = pybind11;

namespace {

constexpr const char* kVersion = "0.1.0";

// Error messages are built with std::string and std::to_string only, never iostreams: on the
// H100 check machine (2026-11-26) the extension was compiled by a newer g++ than the libstdc++
// the Python process had loaded, and formatting through std::ostringstream crashed there.
std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

bool is_c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

class PyCpuTokenizer {
public:
    PyCpuTokenizer(const py::array& centroids, int levels, int64_t branching) {
        if (!centroids.dtype().is(py::dtype::of<float>())) {
            throw std::invalid_argument("centroids must be float32, got dtype " + dtype_str(centroids));
        }
        if (centroids.ndim() != 2) {
            throw std::invalid_argument("centroids must be a 2-D array (M, D), got shape " + shape_str(centroids));
        }
        if (!is_c_contiguous(centroids)) {
            throw std::invalid_argument("centroids must be C-contiguous (use np.ascontiguousarray)");
        }
        core_ = std::make_unique<vbedge::CpuTokenizerCore>(static_cast<const float*>(centroids.data()),
                                                           centroids.shape(0), centroids.shape(1), levels, branching);
    }

    py::array_t<int64_t> tokenize(const py::array& features, const std::string& mode_name, int64_t beam,
                                  int num_threads) const {
        const vbedge::TokenizeMode mode = vbedge::parse_mode(mode_name);
        core_->check_options(mode, beam);
        vbedge::FeatureDType dtype;
        if (features.dtype().is(py::dtype::of<float>())) {
            dtype = vbedge::FeatureDType::kFloat32;
        } else if (features.dtype().is(py::dtype("float16"))) {
            dtype = vbedge::FeatureDType::kFloat16;
        } else {
            throw std::invalid_argument("features must be float32 or float16, got dtype " + dtype_str(features));
        }
        if (features.ndim() != 2) {
            throw std::invalid_argument("features must be a 2-D array (N, " + std::to_string(core_->dim()) +
                                        "), got shape " + shape_str(features));
        }
        if (features.shape(1) != core_->dim()) {
            throw std::invalid_argument("features must have shape (N, " + std::to_string(core_->dim()) +
                                        ") to match the codebook, got " + shape_str(features));
        }
        if (!is_c_contiguous(features)) {
            throw std::invalid_argument("features must be C-contiguous (use np.ascontiguousarray)");
        }
        if (num_threads < 0) {
            throw std::invalid_argument("num_threads must be >= 0 (0 = OpenMP default), got " +
                                        std::to_string(num_threads));
        }
        const int64_t n = features.shape(0);
        py::array_t<int64_t> out(n);
        // The input array is kept alive by the caller's reference for the whole call.
        const void* data = features.data();
        int64_t* dst = out.mutable_data();
        {
            py::gil_scoped_release release;
            core_->tokenize(data, dtype, n, mode, beam, num_threads, dst);
        }
        return out;
    }

    const vbedge::CpuTokenizerCore& core() const { return *core_; }

private:
    std::unique_ptr<vbedge::CpuTokenizerCore> core_;
};

}  // namespace

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "vbedge C++ CPU kernels: the hierarchical visual tokenizer (see docs/tokenizer.md).";
    m.def("version", []() { return std::string(kVersion); }, "Version of the compiled kernels.");
    m.def("simd_path", []() { return std::string(vbedge::CpuTokenizerCore::simd_path()); },
          "Dot-product code path picked for this CPU at run time: 'avx2+fma[+f16c]' (x86-64), 'neon' (aarch64) or 'portable'.");
    m.def("contract_version", []() { return vbedge::kTokenizerContractVersion; },
          "Version of the tokenizer contract (docs/tokenizer.md) these kernels implement.");
    m.def("tolerance_scale", [](int64_t dim) { return vbedge::tolerance_scale(dim); }, py::arg("dim"),
          "8 * (D + 8) * 2**-24: tol(x) = tolerance_scale(D) * (|x|^2 + C_max).");
    m.def(
        "openmp_max_threads",
        []() {
#ifdef _OPENMP
            return omp_get_max_threads();
#else
            return 1;
#endif
        },
        "Threads OpenMP uses when num_threads is 0.");

    py::class_<PyCpuTokenizer>(m, "CpuTokenizer",
                               "Hierarchical visual tokenizer on the CPU. Keeps its own copy of the centroids.")
        .def(py::init<const py::array&, int, int64_t>(), py::arg("centroids"), py::arg("levels"),
             py::arg("branching"),
             "centroids: float32 C-contiguous (M, D) with M = sum_{l<levels} branching**(l+1), levels stacked.")
        .def("tokenize", &PyCpuTokenizer::tokenize, py::arg("features"), py::arg("mode") = "tree",
             py::arg("beam") = 1, py::arg("num_threads") = 0,
             "Leaf ids (int64, shape (N,)) of float32/float16 C-contiguous (N, D) features. mode 'tree' or "
             "'exact'; beam in [1, branching**levels] for tree, 1 for exact. Releases the GIL.")
        .def_property_readonly("levels", [](const PyCpuTokenizer& t) { return t.core().levels(); })
        .def_property_readonly("branching", [](const PyCpuTokenizer& t) { return t.core().branching(); })
        .def_property_readonly("dim", [](const PyCpuTokenizer& t) { return t.core().dim(); })
        .def_property_readonly("num_leaves", [](const PyCpuTokenizer& t) { return t.core().num_leaves(); })
        .def_property_readonly("max_centroid_norm2",
                               [](const PyCpuTokenizer& t) { return t.core().max_centroid_norm2(); });
}
