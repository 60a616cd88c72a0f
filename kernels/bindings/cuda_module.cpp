// pybind11 module vbedge._kernels_cuda: the CUDA visual tokenizer.
//
// A thin raw-pointer layer (like faiss's): tokenize_ptr takes device pointers and a cudaStream_t as
// integers, so one kernel serves torch, cupy and TensorRT buffers; vbedge/cuda_tokenizer.py wraps it
// for arrays. The GIL is released while CUDA work is enqueued or waited for.
// std::invalid_argument becomes ValueError, std::runtime_error RuntimeError (pybind11's translation).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "../cuda/cuda_tokenizer.cuh"
#include "vbedge/tokenizer_args.h"

namespace py = pybind11;
namespace vc = vbedge::cuda;

namespace {

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

void check_cuda(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) + " (" +
                                 cudaGetErrorString(err) + ")");
    }
}

cudaStream_t as_stream(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// User errors are detected here, in g++-compiled code, before anything enters the nvcc-compiled
// engine: on the H100 check machine (2026-11-26) a C++ exception thrown inside the engine's
// constructor crashed the process instead of reaching pybind11, so the engine must only ever see
// arguments it accepts. Its own checks stay as a second line of defence.
vc::Dtype parse_dtype_arg(const std::string& name) {
    if (name == "float32") return vc::Dtype::kFloat32;
    if (name == "float16") return vc::Dtype::kFloat16;
    throw std::invalid_argument("dtype must be \"float32\" or \"float16\", got \"" + name + "\"");
}

vc::Mode parse_mode_arg(const std::string& name) {
    if (name == "tree") return vc::Mode::kTree;
    if (name == "exact") return vc::Mode::kExact;
    throw std::invalid_argument("mode must be \"tree\" or \"exact\", got \"" + name + "\"");
}

void validate_codebook_arg(const float* data, int64_t rows, int64_t dim, int levels, int64_t branching) {
    if (levels < 1 || levels > 16) {
        throw std::invalid_argument("levels must be between 1 and 16, got " + std::to_string(levels));
    }
    if (branching < 2) throw std::invalid_argument("branching must be at least 2, got " + std::to_string(branching));
    double leaves = 1.0, expected = 0.0;
    for (int l = 0; l < levels; ++l) {
        leaves *= static_cast<double>(branching);
        expected += leaves;
    }
    if (leaves >= 2147483647.0) {
        throw std::invalid_argument("branching**levels = " + std::to_string(branching) + "**" + std::to_string(levels) +
                                    " is too large for the CUDA tokenizer (expected fewer than 2**31 leaves)");
    }
    if (dim < 1 || dim > (1 << 20)) {
        throw std::invalid_argument("centroid dimension must be in [1, 1048576], got " + std::to_string(dim));
    }
    if (static_cast<double>(rows) != expected) {
        throw std::invalid_argument("centroids must have shape (" + std::to_string(static_cast<int64_t>(expected)) +
                                    ", D) for levels=" + std::to_string(levels) + ", branching=" +
                                    std::to_string(branching) + " (sum of branching**(l+1) for l < levels), got (" +
                                    std::to_string(rows) + ", " + std::to_string(dim) + ")");
    }
    for (int64_t r = 0; r < rows; ++r) {
        const float* c = data + r * dim;
        double n2 = 0.0;
        for (int64_t d = 0; d < dim; ++d) n2 += static_cast<double>(c[d]) * static_cast<double>(c[d]);
        if (!std::isfinite(n2)) {
            throw std::invalid_argument("centroids must be finite; row " + std::to_string(r) + " has NaN or Inf");
        }
        if (n2 > 3.4028234663852886e38) {
            throw std::invalid_argument("centroid row " + std::to_string(r) +
                                        " has a squared norm that overflows float32 (norm above ~1.8e19)");
        }
    }
}

class PyCudaTokenizer {
public:
    // The constructor never lets an exception escape; a failed construction is reported through
    // init_error(), which the Python layer (vbedge/cuda_tokenizer.py) turns into an exception right
    // away. (Added while diagnosing construction errors that crashed the H100 check machine; the
    // cause was iostream formatting, see shape_str, and the fixed build passed every test there.)
    PyCudaTokenizer(const py::array& centroids, int levels, int64_t branching, int device) {
        try {
            construct(centroids, levels, branching, device);
        } catch (const std::invalid_argument& exc) {
            init_error_ = {"value", exc.what()};
        } catch (const std::exception& exc) {
            init_error_ = {"runtime", exc.what()};
        }
    }

    // (kind, message) of a failed construction ("value": bad argument, "runtime": CUDA failure),
    // or None when the engine was built.
    py::object init_error() const {
        if (engine_) return py::none();
        return py::make_tuple(init_error_.first, init_error_.second);
    }

    void tokenize_ptr(std::uintptr_t features_ptr, int64_t n, int64_t dim, const std::string& dtype_name,
                      int64_t row_stride, std::uintptr_t out_ptr, std::uintptr_t stream, const std::string& mode_name,
                      int64_t beam, std::uintptr_t error_ptr) {
        const PtrCall call = check_ptr_call(features_ptr, n, dim, dtype_name, row_stride, out_ptr, mode_name, beam);
        if (error_ptr % 8 != 0) throw std::invalid_argument("error pointer must be 8-byte aligned (int64)");
        py::gil_scoped_release release;
        built().tokenize_device(reinterpret_cast<const void*>(features_ptr), call.dtype, n, row_stride,
                                 reinterpret_cast<int64_t*>(out_ptr), as_stream(stream), call.mode, beam,
                                 reinterpret_cast<int64_t*>(error_ptr));
    }

    // tokenize_ptr, then wait for `stream` and return the first non-finite row (-1: none). The error
    // word lives in memory this object owns (one device int64, two pinned host int64), so a checked
    // call costs two 8-byte copies and one stream synchronisation: no allocation, no fill kernel.
    int64_t tokenize_ptr_checked(std::uintptr_t features_ptr, int64_t n, int64_t dim, const std::string& dtype_name,
                                 int64_t row_stride, std::uintptr_t out_ptr, std::uintptr_t stream,
                                 const std::string& mode_name, int64_t beam) {
        const PtrCall call = check_ptr_call(features_ptr, n, dim, dtype_name, row_stride, out_ptr, mode_name, beam);
        if (n == 0) return -1;
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(check_mutex_);
        const cudaStream_t s = as_stream(stream);
        int previous = 0;
        check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
        check_cuda(cudaSetDevice(built().device()), "cudaSetDevice");
        cudaError_t err = cudaSuccess;
        if (d_check_ == nullptr) err = cudaMalloc(reinterpret_cast<void**>(&d_check_), sizeof(int64_t));
        if (err == cudaSuccess && h_check_ == nullptr) {
            err = cudaMallocHost(reinterpret_cast<void**>(&h_check_), 2 * sizeof(int64_t));
        }
        if (err == cudaSuccess) {
            h_check_[0] = INT64_MAX;  // the previous call synchronised, so no copy still reads it
            err = cudaMemcpyAsync(d_check_, h_check_, sizeof(int64_t), cudaMemcpyHostToDevice, s);
        }
        cudaSetDevice(previous);
        check_cuda(err, "tokenize_ptr_checked (error word setup)");
        built().tokenize_device(reinterpret_cast<const void*>(features_ptr), call.dtype, n, row_stride,
                                 reinterpret_cast<int64_t*>(out_ptr), s, call.mode, beam, d_check_);
        check_cuda(cudaSetDevice(built().device()), "cudaSetDevice");
        err = cudaMemcpyAsync(h_check_ + 1, d_check_, sizeof(int64_t), cudaMemcpyDeviceToHost, s);
        if (err == cudaSuccess) err = cudaStreamSynchronize(s);
        cudaSetDevice(previous);
        check_cuda(err, "tokenize_ptr_checked (error word read-back)");
        return h_check_[1] == INT64_MAX ? -1 : h_check_[1];
    }

    ~PyCudaTokenizer() {
        if (d_check_ != nullptr) cudaFree(d_check_);
        if (h_check_ != nullptr) cudaFreeHost(h_check_);
    }

    py::array_t<int64_t> tokenize_host(const py::array& features_in, const std::string& mode_name, int64_t beam) {
        const vc::Mode mode = parse_mode_arg(mode_name);
        vbedge::check_beam(mode == vc::Mode::kExact, beam, built().num_leaves());
        vc::Dtype dtype;
        if (features_in.dtype().is(py::dtype::of<float>())) {
            dtype = vc::Dtype::kFloat32;
        } else if (features_in.dtype().is(py::dtype("float16"))) {
            dtype = vc::Dtype::kFloat16;
        } else {
            throw std::invalid_argument("features must be float32 or float16, got dtype " + dtype_str(features_in));
        }
        if (features_in.ndim() != 2) {
            throw std::invalid_argument("features must be a 2-D array (N, " + std::to_string(built().dim()) +
                                        "), got shape " + shape_str(features_in));
        }
        if (features_in.shape(1) != built().dim()) {
            throw std::invalid_argument("features must have shape (N, " + std::to_string(built().dim()) +
                                        ") to match the codebook, got " + shape_str(features_in));
        }
        // A C-contiguous view or copy (same dtype): the staging copy reads rows back to back.
        py::array features = py::module_::import("numpy").attr("ascontiguousarray")(features_in);
        const int64_t n = features.shape(0);
        py::array_t<int64_t> out(n);
        const void* src = features.data();
        int64_t* dst = out.mutable_data();
        int64_t first_bad;
        {
            py::gil_scoped_release release;
            first_bad = built().tokenize_host(src, dtype, n, dst, mode, beam);
        }
        if (first_bad >= 0) {
            throw std::invalid_argument("features must be finite: row " + std::to_string(first_bad) +
                                        " contains NaN or Inf (or its squared norm overflows float32, norm above "
                                        "~1.8e19)");
        }
        return out;
    }

    vc::TokenizerEngine& engine() { return built(); }

private:
    void construct(const py::array& centroids, int levels, int64_t branching, int device) {
        if (!centroids.dtype().is(py::dtype::of<float>())) {
            throw std::invalid_argument("centroids must be float32, got dtype " + dtype_str(centroids));
        }
        if (centroids.ndim() != 2) {
            throw std::invalid_argument("centroids must be a 2-D array (M, D), got shape " + shape_str(centroids));
        }
        if ((centroids.flags() & py::array::c_style) == 0) {
            throw std::invalid_argument("centroids must be C-contiguous (use np.ascontiguousarray)");
        }
        const float* data = static_cast<const float*>(centroids.data());
        const int64_t rows = centroids.shape(0), dim = centroids.shape(1);
        validate_codebook_arg(data, rows, dim, levels, branching);
        std::string why;
        const int count = vc::device_count(&why);
        if (count == 0) throw std::invalid_argument("no CUDA device is available (" + why + ")");
        if (device < 0 || device >= count) {
            throw std::invalid_argument("device must be in [0, " + std::to_string(count) + "), got " +
                                        std::to_string(device));
        }
        py::gil_scoped_release release;
        engine_ = std::make_unique<vc::TokenizerEngine>(data, rows, dim, levels, branching, device);
    }

    // Every method below needs a built engine; Python never keeps an object whose init failed.
    vc::TokenizerEngine& built() const {
        if (!engine_) throw std::runtime_error("CudaTokenizer construction failed: " + init_error_.second);
        return *engine_;
    }

    std::pair<std::string, std::string> init_error_{"runtime", "not constructed"};

    struct PtrCall {
        vc::Dtype dtype;
        vc::Mode mode;
    };

    // Every user error of the raw-pointer entries, checked here (g++-compiled) before the engine.
    PtrCall check_ptr_call(std::uintptr_t features_ptr, int64_t n, int64_t dim, const std::string& dtype_name,
                           int64_t row_stride, std::uintptr_t out_ptr, const std::string& mode_name,
                           int64_t beam) const {
        const PtrCall call{parse_dtype_arg(dtype_name), parse_mode_arg(mode_name)};
        vbedge::check_beam(call.mode == vc::Mode::kExact, beam, built().num_leaves());
        if (n < 0) throw std::invalid_argument("number of features must be >= 0, got " + std::to_string(n));
        if (row_stride < built().dim()) {
            throw std::invalid_argument("row_stride must be >= dim = " + std::to_string(built().dim()) +
                                        " elements, got " + std::to_string(row_stride));
        }
        const std::uintptr_t elem = call.dtype == vc::Dtype::kFloat32 ? 4 : 2;
        if (features_ptr % elem != 0) {
            throw std::invalid_argument("features pointer is not aligned to its element size (" +
                                        std::to_string(elem) + " bytes)");
        }
        if (out_ptr % 8 != 0) throw std::invalid_argument("out pointer must be 8-byte aligned (int64)");
        if (dim != built().dim()) {
            throw std::invalid_argument("features must have dim " + std::to_string(built().dim()) +
                                        " to match the codebook, got " + std::to_string(dim));
        }
        if (n > 0 && (features_ptr == 0 || out_ptr == 0)) {
            throw std::invalid_argument("features_ptr and out_ptr must be non-zero device pointers");
        }
        return call;
    }

    std::unique_ptr<vc::TokenizerEngine> engine_;
    std::mutex check_mutex_;       // guards the error word of tokenize_ptr_checked
    int64_t* d_check_ = nullptr;   // device error word
    int64_t* h_check_ = nullptr;   // pinned: [INT64_MAX to upload, value read back]
};

// Makes `consumer` wait (on the device) for the work enqueued so far on `producer`.
void stream_wait(std::uintptr_t consumer, std::uintptr_t producer, int device) {
    if (consumer == producer) return;
    py::gil_scoped_release release;
    int previous = 0;
    check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    cudaEvent_t ev = nullptr;
    cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(ev, as_stream(producer));
    if (err == cudaSuccess) err = cudaStreamWaitEvent(as_stream(consumer), ev, 0);
    if (ev != nullptr) cudaEventDestroy(ev);  // released once the event completes
    cudaSetDevice(previous);
    check_cuda(err, "stream_wait (cudaEventRecord/cudaStreamWaitEvent)");
}

// Device ordinal of a device pointer; raises ValueError for host memory.
int pointer_device(std::uintptr_t ptr) {
    cudaPointerAttributes attr;
    const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
    if (err != cudaSuccess) {
        cudaGetLastError();
        throw std::invalid_argument(std::string("pointer is not CUDA memory (cudaPointerGetAttributes: ") +
                                    cudaGetErrorString(err) + ")");
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
        throw std::invalid_argument("pointer is host memory, expected device (or managed) memory");
    }
    return attr.device;
}

}  // namespace

PYBIND11_MODULE(_kernels_cuda, m) {
    m.doc() = "vbedge CUDA visual tokenizer (raw device pointers + the caller's stream)";
    // Diagnostic for benchmarks/gpu_check.sh: does an exception thrown in nvcc-compiled code reach
    // Python as RuntimeError (with or without the GIL released), or does it crash the process?
    m.def("_throw_from_engine", [](bool release_gil) {
        if (release_gil) {
            py::gil_scoped_release release;
            vc::throw_for_diagnostics();
        } else {
            vc::throw_for_diagnostics();
        }
    }, py::arg("release_gil") = false);

    py::class_<PyCudaTokenizer>(m, "CudaTokenizer")
        .def(py::init<const py::array&, int, int64_t, int>(), py::arg("centroids"), py::arg("levels"),
             py::arg("branching"), py::arg("device") = 0,
             "Upload a codebook ((M, D) float32, levels stored one after another) to `device`.")
        .def("init_error", &PyCudaTokenizer::init_error,
             "None when the engine was built, else (kind, message): kind 'value' for a bad argument, "
             "'runtime' for a CUDA failure. The constructor never raises (see the comment there).")
        .def("tokenize_ptr", &PyCudaTokenizer::tokenize_ptr, py::arg("features_ptr"), py::arg("n"), py::arg("dim"),
             py::arg("dtype"), py::arg("row_stride"), py::arg("out_ptr"), py::arg("stream"), py::arg("mode"),
             py::arg("beam"), py::arg("error_ptr") = 0,
             "Asynchronous on `stream`: leaf ids of n rows at features_ptr (row_stride elements apart) into the "
             "int64 device buffer out_ptr. Non-finite rows get -1 and their smallest index is atomically min-ed "
             "into the int64 at error_ptr (caller initialises it to INT64_MAX), when error_ptr != 0.")
        .def("tokenize_ptr_checked", &PyCudaTokenizer::tokenize_ptr_checked, py::arg("features_ptr"), py::arg("n"),
             py::arg("dim"), py::arg("dtype"), py::arg("row_stride"), py::arg("out_ptr"), py::arg("stream"),
             py::arg("mode"), py::arg("beam"),
             "tokenize_ptr, then synchronise `stream` and return the first non-finite row index (-1: none).")
        .def("tokenize_host", &PyCudaTokenizer::tokenize_host, py::arg("features"), py::arg("mode") = "tree",
             py::arg("beam") = 1,
             "Synchronous: host (N, D) float32/float16 array in, int64 leaf ids out; ValueError names the first "
             "non-finite row.")
        .def_property_readonly("levels", [](PyCudaTokenizer& t) { return t.engine().levels(); })
        .def_property_readonly("branching", [](PyCudaTokenizer& t) { return t.engine().branching(); })
        .def_property_readonly("dim", [](PyCudaTokenizer& t) { return t.engine().dim(); })
        .def_property_readonly("num_leaves", [](PyCudaTokenizer& t) { return t.engine().num_leaves(); })
        .def_property_readonly("device", [](PyCudaTokenizer& t) { return t.engine().device(); })
        .def_property_readonly("max_centroid_norm2", [](PyCudaTokenizer& t) { return t.engine().max_centroid_norm2(); })
        .def_property(
            "sort_threshold", [](PyCudaTokenizer& t) { return t.engine().sort_threshold(); },
            [](PyCudaTokenizer& t, int64_t v) {
                if (v < 0) throw std::invalid_argument("sort_threshold must be >= 0, got " + std::to_string(v));
                t.engine().set_sort_threshold(v);
            },
            "Tree beam-1 batches of at least this many rows use the node-grouped (sorted) kernels.")
        .def_property(
            "_force_generic", [](PyCudaTokenizer& t) { return t.engine().force_generic(); },
            [](PyCudaTokenizer& t, bool v) { t.engine().set_force_generic(v); },
            "Testing aid: run every call through the generic beam/exact kernel.")
        .def_property(
            "_sorted_impl", [](PyCudaTokenizer& t) { return t.engine().sorted_impl(); },
            [](PyCudaTokenizer& t, int v) {
                if (v != 0 && v != 1) throw std::invalid_argument("_sorted_impl must be 0 or 1, got " + std::to_string(v));
                t.engine().set_sorted_impl(v);
            },
            "Benchmark/testing aid: sorted-path level kernel, 1 = tiled (default), 0 = original.")
        .def_property(
            "_phase_timing", [](PyCudaTokenizer& t) { return t.engine().phase_timing(); },
            [](PyCudaTokenizer& t, bool v) { t.engine().set_phase_timing(v); },
            "Debug aid: time each phase of the sorted path with CUDA events (makes calls synchronous).")
        .def_property_readonly(
            "_phase_ms", [](PyCudaTokenizer& t) { return t.engine().phase_ms(); },
            "Device ms of the last timed sorted-path call: [level 0, sort 1, level 1, ..., level L-1].");

    m.def("device_count", []() { return vc::device_count(); }, "Number of CUDA devices (0 without driver/device).");
    m.def(
        "probe",
        []() {
            std::string why;
            const int count = vc::device_count(&why);
            return std::make_pair(count, why);
        },
        "(device_count, reason): reason explains a count of 0.");
    m.def("device_name", &vc::device_name, py::arg("device"));
    m.def(
        "compute_capability",
        [](int device) {
            int major = 0, minor = 0;
            vc::compute_capability(device, &major, &minor);
            return std::make_pair(major, minor);
        },
        py::arg("device"));
    m.def("stream_wait", &stream_wait, py::arg("consumer"), py::arg("producer"), py::arg("device"),
          "Make stream `consumer` wait on the device for the work enqueued so far on `producer`.");
    m.def("pointer_device", &pointer_device, py::arg("ptr"), "Device ordinal of a CUDA pointer.");
}
