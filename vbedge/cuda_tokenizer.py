"""CUDA visual tokenizer: array layer over the raw-pointer extension ``vbedge._kernels_cuda``.

One kernel serves NumPy arrays (copied through pinned buffers), torch CUDA tensors, CuPy arrays,
anything else exposing ``__cuda_array_interface__``, and raw device pointers (TensorRT output
buffers). Device work runs on the caller's stream; the only synchronisation is the optional
``check_finite`` one. This module imports neither torch nor cupy at import time: they are imported
only when the given array comes from them.
"""

import numpy as np

from .cuda_interop import is_cupy_array as _is_cupy_array
from .cuda_interop import is_device_array
from .cuda_interop import is_torch_tensor as _is_torch_tensor
from .cuda_interop import same_stream, stream_handle, view_device_array
from .errors import InvalidInputError, MissingDependencyError

_TYPESTRS = {"<f4": "float32", "<f2": "float16"}
_ITEMSIZE = {"float32": 4, "float16": 2}


def _load_extension():
    try:
        from . import _kernels_cuda
    except ImportError as exc:
        return None, f"the CUDA extension vbedge._kernels_cuda is not built ({exc})"
    return _kernels_cuda, ""


def cuda_extension_status():
    """``(available, reason)``: whether the CUDA tokenizer can run here, and why (not).

    ``reason`` names the missing piece (extension not built, no driver, no device) or, when
    available, the device 0 name.
    """
    ext, why = _load_extension()
    if ext is None:
        return False, why + "; build it with nvcc present (VBEDGE_CUDA=1 pip install -e .)"
    count, reason = ext.probe()
    if count == 0:
        return False, f"no CUDA device is available ({reason or 'no device found'})"
    return True, f"ok: {count} CUDA device(s), device 0 is {ext.device_name(0)}"


__all__ = ["CudaTokenizer", "cuda_extension_status", "is_device_array"]


class CudaTokenizer:
    """Tokenizes features on one GPU with a codebook uploaded once.

    ``centroids``: (M, D) float32 in the layout of docs/tokenizer.md; ``levels``, ``branching``:
    the tree shape; ``device``: CUDA device index.
    """

    def __init__(self, centroids, levels, branching, device=0):
        ext, why = _load_extension()
        if ext is None:
            raise MissingDependencyError(why + "; build it with nvcc present (VBEDGE_CUDA=1 pip install -e .)")
        count, reason = ext.probe()
        if count == 0:
            raise MissingDependencyError(f"no CUDA device is available ({reason or 'no device found'})")
        if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or not 0 <= int(device) < count:
            raise InvalidInputError(f"device must be a CUDA device index in [0, {count}), got {device!r}")
        centroids = np.asarray(centroids)
        if centroids.dtype != np.float32:
            raise InvalidInputError(f"centroids must be float32, got {centroids.dtype}")
        self._ext = ext
        impl = ext.CudaTokenizer(np.ascontiguousarray(centroids), int(levels), int(branching), int(device))
        # The binding's constructor reports failures instead of raising (an exception thrown out of
        # it crashed one build on the H100): turn them into exceptions here.
        failure = impl.init_error()
        if failure is not None:
            kind, message = failure
            if kind == "value":
                raise InvalidInputError(message)
            raise RuntimeError(f"CUDA tokenizer initialisation failed: {message}")
        self._impl = impl

    # ------------------------------------------------------------------ properties
    @property
    def levels(self):
        """Number of tree levels."""
        return self._impl.levels

    @property
    def branching(self):
        """Children per node."""
        return self._impl.branching

    @property
    def dim(self):
        """Feature dimension D."""
        return self._impl.dim

    @property
    def num_leaves(self):
        """branching ** levels."""
        return self._impl.num_leaves

    @property
    def device(self):
        """CUDA device index."""
        return self._impl.device

    @property
    def sort_threshold(self):
        """Tree beam-1 batches with at least this many rows use the node-grouped kernels."""
        return self._impl.sort_threshold

    @sort_threshold.setter
    def sort_threshold(self, value):
        self._impl.sort_threshold = int(value)

    # ------------------------------------------------------------------ entry points
    def tokenize(self, features, mode="tree", beam=1, stream=None, check_finite=True, out=None):
        """Leaf ids (int64) of the (N, D) float32/float16 rows of ``features``.

        NumPy input: copied in and out through pinned buffers; returns a NumPy array; non-finite
        rows always raise (``stream`` must be None). Device input (torch, CuPy, any
        ``__cuda_array_interface__``): runs on ``stream`` (None: the framework's current stream;
        an int ``cudaStream_t``; or a torch/CuPy stream object) and returns a device array of
        the same framework (or fills ``out``, an int64 device array of N elements). With
        ``check_finite=True`` that stream is synchronised once to raise
        :class:`~vbedge.InvalidInputError` naming the first non-finite row; with False nothing
        synchronises and such rows get id -1.
        """
        self._check_options(mode, beam)
        if isinstance(features, np.ndarray):
            if stream is not None:
                raise InvalidInputError("stream applies to device arrays only; NumPy input is copied synchronously")
            if out is not None:
                raise InvalidInputError("out applies to device arrays only; NumPy input returns a new array")
            self._check_shape(features.shape, features.dtype)
            if features.dtype not in (np.float32, np.float16):
                raise InvalidInputError(
                    f"features must be float32 or float16, got {features.dtype}; convert with .astype(np.float32)"
                )
            try:
                return self._impl.tokenize_host(features, mode, int(beam))
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from exc
        if _is_torch_tensor(features):
            return self._tokenize_torch(features, mode, beam, stream, check_finite, out)
        if is_device_array(features):
            return self._tokenize_cai(features, mode, beam, stream, check_finite, out)
        raise InvalidInputError(
            f"features must be a NumPy array or a CUDA array (torch CUDA tensor, CuPy...), got {type(features).__name__}"
        )

    def tokenize_ptr(self, features_ptr, n, out_ptr, dtype="float32", row_stride=None, stream=0, mode="tree",
                     beam=1, error_ptr=0):
        """Raw-pointer entry (TensorRT buffers): asynchronous on ``stream`` (an int ``cudaStream_t``).

        ``features_ptr``: n rows of D elements of ``dtype``, ``row_stride`` elements apart (default
        D); ``out_ptr``: int64 device buffer of n elements; ``error_ptr``: 0 or an int64 device word
        holding INT64_MAX, into which the smallest non-finite row index is min-ed.
        """
        self._check_options(mode, beam)
        if dtype not in _ITEMSIZE:
            raise InvalidInputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        row_stride = self.dim if row_stride is None else int(row_stride)
        try:
            self._impl.tokenize_ptr(int(features_ptr), int(n), self.dim, dtype, row_stride, int(out_ptr),
                                    int(stream), mode, int(beam), int(error_ptr))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc

    # ------------------------------------------------------------------ helpers
    def _check_options(self, mode, beam):
        if mode not in ("tree", "exact"):
            raise InvalidInputError(f"mode must be 'tree' or 'exact', got {mode!r}")
        if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)):
            raise InvalidInputError(f"beam must be an integer, got {beam!r}")
        if mode == "exact" and beam != 1:
            raise InvalidInputError(f"beam applies to mode='tree' only; mode='exact' takes beam=1, got {beam}")
        if not 1 <= beam <= self.num_leaves:
            raise InvalidInputError(f"beam must be in [1, {self.num_leaves}], got {beam}")

    def _check_shape(self, shape, dtype_name):
        if len(shape) != 2:
            raise InvalidInputError(f"features must be 2-D (N, {self.dim}), got shape {tuple(shape)}")
        if shape[1] != self.dim:
            raise InvalidInputError(
                f"features must have shape (N, {self.dim}) to match the codebook, got {tuple(shape)}"
            )

    def _run(self, ptr, n, dtype, row_stride, out_ptr, stream_ptr, mode, beam, check_finite):
        """Enqueue the kernels; with ``check_finite``, also wait for them and raise on a bad row."""
        try:
            if not check_finite:
                self._impl.tokenize_ptr(ptr, n, self.dim, dtype, row_stride, out_ptr, stream_ptr, mode, int(beam), 0)
                return
            # The binding owns the error word (no fill kernel, no allocation): two 8-byte copies
            # and one synchronisation of that stream.
            bad = self._impl.tokenize_ptr_checked(ptr, n, self.dim, dtype, row_stride, out_ptr, stream_ptr, mode,
                                                  int(beam))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        if bad >= 0:
            raise InvalidInputError(
                f"features must be finite: row {bad} contains NaN or Inf (or its squared norm overflows float32, "
                "norm above ~1.8e19)"
            )

    def _tokenize_torch(self, x, mode, beam, stream, check_finite, out):
        import torch  # the caller gave a torch tensor, so torch is importable

        if not x.is_cuda:
            raise InvalidInputError(
                f"features is a torch tensor on {x.device}, expected a CUDA tensor (or pass a NumPy array)"
            )
        if x.get_device() != self.device:
            raise InvalidInputError(f"features are on {x.device} but this tokenizer runs on cuda:{self.device}")
        dtype = "float32" if x.dtype == torch.float32 else "float16" if x.dtype == torch.float16 else None
        if dtype is None:
            raise InvalidInputError(f"features must be float32 or float16, got {x.dtype}; convert with .float()")
        self._check_shape(tuple(x.shape), dtype)
        n = x.shape[0]
        row_stride = self._row_stride(tuple(x.stride()), n)
        if stream is None:
            # The caller's current stream. N = 1 is the live case and every microsecond counts:
            # torch's raw query skips building a Stream object (the public call costs a few us).
            raw_current = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            stream_ptr = raw_current(self.device) if raw_current else torch.cuda.current_stream(x.device).cuda_stream
            tstream, on_current = None, True
        else:
            if isinstance(stream, torch.cuda.Stream):
                tstream = stream
            elif isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
                tstream = torch.cuda.ExternalStream(int(stream), device=x.device) if int(stream) else \
                    torch.cuda.default_stream(x.device)
            else:
                raise InvalidInputError(
                    f"stream must be None, an int cudaStream_t or a torch.cuda.Stream, got {stream!r}"
                )
            stream_ptr = tstream.cuda_stream
            on_current = stream_ptr == torch.cuda.current_stream(x.device).cuda_stream
        if out is None:
            # Allocate on the stream that will use it (the stream context costs microseconds,
            # which matter for N = 1, so it is entered only when needed).
            if on_current:
                out = torch.empty(n, dtype=torch.int64, device=x.device)
            else:
                with torch.cuda.stream(tstream):
                    out = torch.empty(n, dtype=torch.int64, device=x.device)
        else:
            self._check_out_torch(out, n, x.device)
        if not on_current:
            # The caching allocator must not hand x's memory to someone else before our kernels ran.
            x.record_stream(tstream)
            # x was written on torch's current stream: our stream waits for that work first.
            current = torch.cuda.current_stream(x.device).cuda_stream
            if n and not same_stream(stream_ptr, current):
                self._ext.stream_wait(stream_ptr, int(current) or 1, self.device)
        if n == 0:
            return out
        self._run(x.data_ptr(), n, dtype, row_stride, out.data_ptr(), stream_ptr, mode, beam, check_finite)
        return out

    def _check_out_torch(self, out, n, device):
        import torch

        if not isinstance(out, torch.Tensor) or out.device != device or out.dtype != torch.int64 \
                or tuple(out.shape) != (n,) or not out.is_contiguous():
            raise InvalidInputError(f"out must be a contiguous int64 torch tensor of shape ({n},) on {device}")

    def _row_stride(self, strides_elems, n):
        # Rows may be any distance apart, but each row's elements must be adjacent.
        row_stride, col_stride = strides_elems
        if self.dim > 1 and col_stride != 1:
            raise InvalidInputError(
                f"features rows must have unit element stride (got element stride {col_stride}); "
                "make them contiguous (.contiguous())"
            )
        if n > 1 and row_stride < self.dim:
            raise InvalidInputError(
                f"features row stride must be >= D = {self.dim} elements, got {row_stride} (overlapping rows)"
            )
        return max(int(row_stride), self.dim) if n > 1 else self.dim

    def _tokenize_cai(self, x, mode, beam, stream, check_finite, out):
        view = view_device_array(x, name="features")
        dtype = view.dtype if view.dtype in _ITEMSIZE else None
        if dtype is None:
            raise InvalidInputError(
                f"features must be float32 (<f4) or float16 (<f2), got typestr {x.__cuda_array_interface__['typestr']!r}"
            )
        shape = view.shape
        self._check_shape(shape, dtype)
        n = shape[0]
        itemsize = _ITEMSIZE[dtype]
        strides = view.strides
        if strides is None:
            row_stride = self.dim
        else:
            if strides[0] % itemsize or strides[1] % itemsize:
                raise InvalidInputError(f"features strides {strides} are not multiples of the item size {itemsize}")
            row_stride = self._row_stride((strides[0] // itemsize, strides[1] // itemsize), n)
        ptr = view.ptr
        if n > 0 and self._ext.pointer_device(ptr) != self.device:
            raise InvalidInputError(
                f"features are on cuda:{self._ext.pointer_device(ptr)} but this tokenizer runs on cuda:{self.device}"
            )
        stream_ptr = self._resolve_stream(stream, x)
        if view.stream is not None and n > 0:
            # Protocol v3: the producer's stream must be waited on before the data is read.
            self._ext.stream_wait(stream_ptr, int(view.stream), self.device)
        if out is None:
            out, out_ptr = self._allocate(n, stream_ptr)
        else:
            out_ptr = self._check_out_cai(out, n)
        if n == 0:
            return out
        self._run(ptr, n, dtype, row_stride, out_ptr, stream_ptr, mode, beam, check_finite)
        return out

    def _resolve_stream(self, stream, x):
        """cudaStream_t (as int) for a CuPy/other array: None means CuPy's current stream (for
        CuPy arrays) or the legacy default stream 0."""
        if stream is None:
            if _is_cupy_array(x):
                import cupy

                with cupy.cuda.Device(self.device):
                    return int(cupy.cuda.get_current_stream().ptr)
            return 0
        return stream_handle(stream)

    def _allocate(self, n, stream_ptr):
        """int64 device array of n elements (CuPy if importable, else torch), allocated on the
        stream the kernels will use."""
        try:
            import cupy
        except ImportError:
            cupy = None
        if cupy is not None:
            with cupy.cuda.Device(self.device):
                cstream = cupy.cuda.ExternalStream(stream_ptr) if stream_ptr else cupy.cuda.Stream.null
                with cstream:
                    arr = cupy.empty(n, dtype=cupy.int64)
            return arr, int(arr.data.ptr)
        try:
            import torch
        except ImportError:
            raise MissingDependencyError(
                "cannot allocate the output for this CUDA array: install cupy or torch, or pass out="
            ) from None
        device = torch.device("cuda", self.device)
        tstream = torch.cuda.ExternalStream(stream_ptr, device=device) if stream_ptr else torch.cuda.default_stream(device)
        with torch.cuda.stream(tstream):
            arr = torch.empty(n, dtype=torch.int64, device=device)
        return arr, arr.data_ptr()

    def _check_out_cai(self, out, n):
        if _is_torch_tensor(out):
            import torch

            self._check_out_torch(out, n, torch.device("cuda", self.device))
            return out.data_ptr()
        if not is_device_array(out):
            raise InvalidInputError("out must be a CUDA array (int64, N elements)")
        cai = out.__cuda_array_interface__
        strides = cai.get("strides")
        if cai["typestr"] != "<i8" or tuple(cai["shape"]) != (n,) or (strides is not None and tuple(strides) != (8,)):
            raise InvalidInputError(f"out must be a contiguous int64 CUDA array of shape ({n},)")
        return int(cai["data"][0])
