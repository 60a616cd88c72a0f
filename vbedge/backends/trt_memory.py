"""Device memory, streams and the CUDA context for the TensorRT backend: pycuda, else torch.

pycuda is the default (the project's users asked for it): the device's primary context is retained
once and pushed/popped around every call (:meth:`_PycudaBuffers.activate`), so any thread can call
a backend. Reading device arrays and stream handles, and stream waits, live in
:mod:`vbedge.cuda_interop` (shared with the CUDA tokenizer).
"""

from __future__ import annotations

import contextlib

from ..cuda_interop import view_device_array
from ..errors import InvalidInputError
from .base import BackendUnavailableError


def gpu_identity(device=0):
    """(name, 'major.minor') of CUDA device ``device``: via vbedge's CUDA extension, pycuda or torch."""
    try:
        from .. import _kernels_cuda

        count, reason = _kernels_cuda.probe()
        if count > device:
            major, minor = _kernels_cuda.compute_capability(device)
            return _kernels_cuda.device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    raise BackendUnavailableError(f"cannot identify CUDA device {device}: no working CUDA extension, pycuda or torch")


class _PycudaBuffers:
    """Device/pinned memory and streams through pycuda, on the device's primary context.

    The primary context is the one the CUDA runtime (TensorRT, vbedge's CUDA tokenizer, torch)
    uses, so pointers are valid across all of them. It is retained once and made current only
    around each call (:meth:`activate` pushes it and pops it again), so a backend built on one
    thread can be called from any other, as the pipeline's stage threads do.
    """

    kind = "pycuda"

    def __init__(self, device):
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self.device = int(device)
        self._context = cuda.Device(self.device).retain_primary_context()

    @contextlib.contextmanager
    def activate(self):
        """Make the primary context current on this thread for the duration of the block."""
        if self._context is None:
            raise InvalidInputError("the TensorRT backend's CUDA buffers are closed")
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def alloc(self, nbytes):
        mem = self._cuda.mem_alloc(max(int(nbytes), 1))
        return mem, int(mem)

    def free(self, handle):
        handle.free()

    def host(self, nbytes):
        import numpy as np

        array = self._cuda.pagelocked_empty(max(int(nbytes), 1), dtype=np.uint8)
        return array, array

    def stream(self):
        stream = self._cuda.Stream()
        return stream, stream.handle

    def htod(self, device_handle, host_handle, nbytes, stream):
        self._cuda.memcpy_htod_async(device_handle, host_handle[:nbytes], stream)

    def dtoh(self, host_handle, device_handle, nbytes, stream):
        self._cuda.memcpy_dtoh_async(host_handle[:nbytes], device_handle, stream)

    def synchronize(self, stream):
        stream.synchronize()

    def synchronize_device(self):
        self._cuda.Context.synchronize()

    def close(self):
        if self._context is not None:
            # Releases our retain of the primary context (cuDevicePrimaryCtxRelease).
            self._context.detach()
            self._context = None


class _TorchBuffers:
    """Device/pinned memory and streams through torch (used when pycuda is not installed).

    torch makes the device's primary context current itself; :meth:`activate` selects the device
    on the calling thread (``torch.cuda.device``) so TensorRT's runtime calls land on it.
    """

    kind = "torch"

    def __init__(self, device):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch is installed without a usable CUDA device")
        self._torch = torch
        self.device = int(device)
        self._device = torch.device("cuda", self.device)

    def activate(self):
        return self._torch.cuda.device(self._device)

    def alloc(self, nbytes):
        tensor = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, device=self._device)
        return tensor, tensor.data_ptr()

    def free(self, handle):
        pass  # the caching allocator takes it back when the last reference goes

    def host(self, nbytes):
        tensor = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, pin_memory=True)
        return tensor, tensor.numpy()

    def stream(self):
        stream = self._torch.cuda.Stream(device=self._device)
        return stream, stream.cuda_stream

    def htod(self, device_handle, host_handle, nbytes, stream):
        with self._torch.cuda.stream(stream):
            device_handle[:nbytes].copy_(host_handle[:nbytes], non_blocking=True)

    def dtoh(self, host_handle, device_handle, nbytes, stream):
        with self._torch.cuda.stream(stream):
            host_handle[:nbytes].copy_(device_handle[:nbytes], non_blocking=True)

    def synchronize(self, stream):
        stream.synchronize()

    def synchronize_device(self):
        self._torch.cuda.synchronize(self._device)

    def close(self):
        pass


def make_buffers(kind="auto", device=0):
    """Device-buffer provider: 'pycuda', 'torch', or 'auto' (pycuda, else torch)."""
    import importlib.util

    if kind == "auto":
        if importlib.util.find_spec("pycuda") is not None:
            kind = "pycuda"
        elif importlib.util.find_spec("torch") is not None:
            kind = "torch"
        else:
            raise BackendUnavailableError(
                "TensorRT needs pycuda or torch for device buffers: pip install pycuda (part of 'vbedge[tensorrt]')"
            )
    if kind == "pycuda":
        return _PycudaBuffers(device)
    if kind == "torch":
        return _TorchBuffers(device)
    raise InvalidInputError(f"buffers must be 'auto', 'pycuda' or 'torch', got {kind!r}")


def describe_device_array(obj, name="input"):
    """(pointer, shape, dtype name or None) of a C-contiguous device array (see :func:`vbedge.cuda_interop.view_device_array`)."""
    view = view_device_array(obj, name=name)
    if not view.is_c_contiguous():
        raise InvalidInputError(f"{name} must be C-contiguous, got strides {view.strides} for shape {view.shape}")
    return view.ptr, view.shape, view.dtype
