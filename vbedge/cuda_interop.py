"""CUDA array interface and streams: the one place that reads device arrays and stream handles.

Shared by the TensorRT backend (:mod:`vbedge.backends.tensorrt`) and the CUDA tokenizer
(:mod:`vbedge.cuda_tokenizer`), so both accept the same objects and honour producer streams the
same way:

* :func:`view_device_array` reads a torch CUDA tensor, anything exposing
  ``__cuda_array_interface__`` (CuPy, Numba, vbedge's :class:`DeviceArray`) or a
  ``(pointer, shape)`` tuple into a :class:`CudaArrayView` (pointer, shape, dtype, byte strides and
  the *producer stream*: the stream whose queued work writes the data).
* :func:`stream_handle` turns an int or a pycuda / torch / CuPy stream object into the integer
  ``cudaStream_t``.
* :func:`wait_for_producer` makes a consumer stream wait, on the device, for the work queued so far
  on a producer stream (an event recorded on one, waited on by the other; the host never blocks).
  Protocol v3 of ``__cuda_array_interface__`` requires that of every consumer.
* :class:`DeviceArray` is a device buffer view that exposes ``__cuda_array_interface__`` v3 and
  keeps the allocation it points into alive.

Stream handle conventions (CUDA and the interface protocol): 0 is the legacy default stream in the
CUDA API; the protocol spells the legacy default stream 1 and the per-thread default stream 2, and
forbids 0. CUDA itself defines ``cudaStreamLegacy = (cudaStream_t)1`` and ``cudaStreamPerThread =
(cudaStream_t)2``, so the protocol values are also valid CUDA handles.

Nothing heavy is imported here: torch, CuPy or libcudart are used only when an object or a wait
needs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError, MissingDependencyError

#: ``__cuda_array_interface__`` spelling of the legacy default stream (also ``cudaStreamLegacy``).
LEGACY_DEFAULT_STREAM = 1
#: ``__cuda_array_interface__`` spelling of the per-thread default stream (``cudaStreamPerThread``).
PER_THREAD_DEFAULT_STREAM = 2


def is_torch_tensor(obj):
    """True for a torch tensor (without importing torch)."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr") and hasattr(obj, "is_cuda")


def is_cupy_array(obj):
    """True for a CuPy array (without importing CuPy)."""
    return type(obj).__module__.startswith("cupy")


def is_device_array(obj):
    """True for CUDA arrays (torch CUDA tensors, CuPy, Numba...): they expose ``__cuda_array_interface__``."""
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - some frameworks raise other errors from the property
        return False


@dataclass(frozen=True)
class CudaArrayView:
    """What a consumer needs to know about a device array.

    Attributes:
        ptr: device pointer of element 0.
        shape: tuple of ints.
        dtype: NumPy dtype name ('float32', 'int64'...), or None when unknown (a raw pointer).
        strides: byte strides, or None for C-contiguous.
        stream: the producer stream as a CUDA handle (1 = legacy default, 2 = per-thread default),
            or None when the producer said no synchronisation is needed.
        device: CUDA device ordinal when the producer says (torch), else None.
        owner: the object the view was made from (keep it alive while the device uses the memory).
    """

    ptr: int
    shape: tuple
    dtype: str | None
    strides: tuple | None
    stream: int | None
    device: int | None
    owner: object

    @property
    def itemsize(self):
        return np.dtype(self.dtype).itemsize if self.dtype is not None else None

    def is_c_contiguous(self):
        """True when the elements are laid out densely in C order (or the strides are not given)."""
        if self.strides is None:
            return True
        if self.itemsize is None:
            return False
        step = self.itemsize
        for dim, stride in zip(reversed(self.shape), reversed(self.strides)):
            if dim > 1 and stride != step:
                return False
            step *= dim
        return True


def _torch_current_stream(device):
    import torch

    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    # torch's current stream on a device: the raw query skips building a Stream object.
    handle = raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream
    return int(handle) if handle else LEGACY_DEFAULT_STREAM


def view_device_array(obj, name="array"):
    """A :class:`CudaArrayView` of a torch CUDA tensor, a ``__cuda_array_interface__`` object or ``(ptr, shape)``.

    torch tensors: the producer stream is torch's current stream on the tensor's device (torch
    orders work on it; its interface is v2 and names no stream). Interface objects: the ``stream``
    field (v3); 0 is refused as the protocol requires. ``(ptr, shape)``: no dtype, no stream.
    Raises InvalidInputError naming ``name`` and what was expected.
    """
    if is_torch_tensor(obj):
        if not obj.is_cuda:
            raise InvalidInputError(f"{name} is a torch tensor on {obj.device}; expected CUDA memory "
                                    "(host arrays go through run()/NumPy input)")
        itemsize = obj.element_size()
        strides = tuple(int(s) * itemsize for s in obj.stride())
        device = obj.get_device()
        return CudaArrayView(int(obj.data_ptr()), tuple(int(d) for d in obj.shape),
                             str(obj.dtype).replace("torch.", ""), strides, _torch_current_stream(device),
                             device, obj)
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        cai = None
    if cai is not None:
        try:
            shape = tuple(int(d) for d in cai["shape"])
            dtype = np.dtype(cai["typestr"])
            ptr = int(cai["data"][0])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{name} has a malformed __cuda_array_interface__ ({exc})") from exc
        strides = cai.get("strides")
        strides = None if strides is None else tuple(int(s) for s in strides)
        stream = cai.get("stream")
        if stream is not None:
            if isinstance(stream, bool) or not isinstance(stream, int):
                raise InvalidInputError(f"{name}: __cuda_array_interface__ stream must be an int or None, got {stream!r}")
            if stream == 0:
                raise InvalidInputError(f"{name}: __cuda_array_interface__ stream 0 is forbidden by the protocol "
                                        "(use 1 for the legacy default stream, 2 for the per-thread one)")
        return CudaArrayView(ptr, shape, dtype.name, strides, stream, None, obj)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], int) and not isinstance(obj[0], bool):
        return CudaArrayView(obj[0], tuple(int(d) for d in obj[1]), None, None, None, None, obj)
    raise InvalidInputError(
        f"{name} must be a CUDA array (torch CUDA tensor, CuPy, DeviceArray or any __cuda_array_interface__) "
        f"or a (pointer, shape) tuple, got {type(obj).__name__}"
    )


def stream_handle(stream):
    """Integer ``cudaStream_t`` of ``stream``: an int, or a pycuda (``.handle``), torch
    (``.cuda_stream``) or CuPy (``.ptr``) stream object."""
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    for attr in ("cuda_stream", "handle", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
    raise InvalidInputError(
        f"stream must be an int cudaStream_t or a pycuda/torch/CuPy stream object, got {type(stream).__name__}"
    )


def same_stream(a, b):
    """Whether two handles name the same stream (0 and 1 both mean the legacy default stream)."""
    norm = {0: LEGACY_DEFAULT_STREAM}
    return norm.get(int(a), int(a)) == norm.get(int(b), int(b))


# ---- waits between streams ----------------------------------------------------------------------


def _wait_with_extension(consumer, producer, device):
    from . import _kernels_cuda  # ImportError when the CUDA extension is not built

    _kernels_cuda.stream_wait(int(consumer), int(producer), int(device))


def _wait_with_torch(consumer, producer, device):
    import torch

    if not torch.cuda.is_available():
        raise ImportError("torch has no CUDA")
    dev = torch.device("cuda", int(device))

    def as_stream(handle):
        if int(handle) in (0, LEGACY_DEFAULT_STREAM):
            return torch.cuda.default_stream(dev)
        return torch.cuda.ExternalStream(int(handle), device=dev)

    as_stream(consumer).wait_stream(as_stream(producer))


def _wait_with_cupy(consumer, producer, device):
    import cupy

    with cupy.cuda.Device(int(device)):
        event = cupy.cuda.Event(disable_timing=True)
        event.record(cupy.cuda.ExternalStream(int(producer)))
        cupy.cuda.ExternalStream(int(consumer)).wait_event(event)


_cudart = None


def _load_cudart():
    """libcudart through ctypes, the way Polygraphy's CUDA wrapper finds it (loader path, CUDA_HOME)."""
    global _cudart
    if _cudart is None:
        import ctypes
        import ctypes.util
        import glob
        import os

        names = [ctypes.util.find_library("cudart")]
        for folder in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                             + [os.environ.get("CUDA_HOME", "") + "/lib64", "/usr/local/cuda/lib64"]):
            names += sorted(glob.glob(os.path.join(folder, "libcudart.so*")))
        names.append("libcudart.so")
        for candidate in filter(None, names):
            try:
                _cudart = ctypes.CDLL(candidate)
                break
            except OSError:
                continue
        else:
            raise ImportError("libcudart.so cannot be loaded")
    return _cudart


def _wait_with_cudart(consumer, producer, device):
    import ctypes

    lib = _load_cudart()
    event = ctypes.c_void_p()
    disable_timing = 2  # cudaEventDisableTiming
    previous = ctypes.c_int()
    checks = [lib.cudaGetDevice(ctypes.byref(previous)), lib.cudaSetDevice(int(device))]
    checks.append(lib.cudaEventCreateWithFlags(ctypes.byref(event), disable_timing))
    if not any(checks):
        checks.append(lib.cudaEventRecord(event, ctypes.c_void_p(int(producer))))
        checks.append(lib.cudaStreamWaitEvent(ctypes.c_void_p(int(consumer)), event, 0))
    if event.value:
        lib.cudaEventDestroy(event)  # CUDA releases it once the recorded work is done
    lib.cudaSetDevice(previous.value)
    failed = [code for code in checks if code]
    if failed:
        raise RuntimeError(f"cudaEventRecord/cudaStreamWaitEvent failed with CUDA error {failed[0]}")


_WAITERS = (("vbedge CUDA extension", _wait_with_extension), ("torch", _wait_with_torch),
            ("CuPy", _wait_with_cupy), ("libcudart (ctypes)", _wait_with_cudart))


def wait_for_producer(consumer, producer, device=0):
    """Make stream ``consumer`` wait (on the device, not the host) for the work queued so far on ``producer``.

    Both are CUDA handles (ints). Nothing happens when ``producer`` is None (the producer needs no
    synchronisation) or names the same stream. Uses vbedge's CUDA extension when it is built, else
    torch, CuPy or libcudart. Raises MissingDependencyError when none of them can.
    """
    if producer is None or same_stream(consumer, producer):
        return
    reasons = []
    for label, waiter in _WAITERS:
        try:
            waiter(consumer, producer, device)
            return
        except ImportError as exc:
            reasons.append(f"{label}: {exc}")
    raise MissingDependencyError(
        "cannot make one CUDA stream wait for another: " + "; ".join(reasons)
        + " (build vbedge's CUDA extension, or install torch or cupy)"
    )


class DeviceArray:
    """A device buffer view: pointer, shape, dtype, the stream that produces it, and its owner.

    Exposes ``__cuda_array_interface__`` v3 (with the producer stream), so torch, CuPy and vbedge's
    CUDA tokenizer consume it without a copy and wait for that stream. ``owner`` (the allocation)
    stays alive as long as this view does. A backend that reuses the memory says so in its docs.
    """

    def __init__(self, ptr, shape, dtype, stream_handle, owner=None, device=None):
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.stream = int(stream_handle)
        self.owner = owner
        self.device = device

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self):
        # The protocol forbids stream 0; the legacy default stream (handle 0) is spelled 1 there.
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": self.stream if self.stream else LEGACY_DEFAULT_STREAM}

    def __repr__(self):
        return f"DeviceArray(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype.name}, stream={self.stream})"
