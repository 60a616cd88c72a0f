"""vbedge.cuda_interop: reading device arrays and stream handles, and waits between streams.

No GPU here: device arrays are plain objects exposing ``__cuda_array_interface__`` (the protocol
is just a dict), and the stream waits are checked by recording which implementation was called
with which handles (the real waits run on a GPU only; benchmarks/gpu_check.sh runs the CUDA
tokenizer tests that use them).
"""

import numpy as np
import pytest

from vbedge import cuda_interop as ci
from vbedge.errors import InvalidInputError, MissingDependencyError


class _CAI:
    def __init__(self, shape, typestr="<f4", strides=None, ptr=4096, stream=None, version=3):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "strides": strides, "version": version}
        if stream is not None or version >= 3:
            self.__cuda_array_interface__["stream"] = stream


class _Stream:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_view_reads_pointer_shape_dtype_strides_and_producer_stream():
    view = ci.view_device_array(_CAI((2, 4), stream=77))
    assert (view.ptr, view.shape, view.dtype, view.strides, view.stream) == (4096, (2, 4), "float32", None, 77)
    assert view.is_c_contiguous()
    assert ci.view_device_array(_CAI((2, 4), strides=(16, 4))).is_c_contiguous()
    assert not ci.view_device_array(_CAI((2, 4), strides=(4, 8))).is_c_contiguous()
    # Row-padded (pitch) rows are not C-contiguous but are a valid view.
    assert ci.view_device_array(_CAI((2, 4), strides=(32, 4))).strides == (32, 4)
    assert ci.view_device_array(_CAI((2, 4), typestr="<i8")).dtype == "int64"
    raw = ci.view_device_array((1234, [2, 4]))
    assert (raw.ptr, raw.shape, raw.dtype, raw.stream) == (1234, (2, 4), None, None)


def test_view_refuses_stream_zero_and_non_arrays():
    with pytest.raises(InvalidInputError, match="stream 0 is forbidden"):
        ci.view_device_array(_CAI((2, 4), stream=0))
    with pytest.raises(InvalidInputError, match="CUDA array"):
        ci.view_device_array(np.zeros((2, 4), np.float32), name="clip")
    bad = _CAI((2, 4))
    del bad.__cuda_array_interface__["typestr"]
    with pytest.raises(InvalidInputError, match="malformed"):
        ci.view_device_array(bad)


def test_cpu_torch_tensor_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidInputError, match="torch tensor on cpu; expected CUDA memory"):
        ci.view_device_array(torch.zeros(2, 4), name="input 'clip'")


def test_device_array_round_trips_through_the_interface():
    owner = object()
    arr = ci.DeviceArray(4096, (2, 4), np.float16, 55, owner=owner)
    cai = arr.__cuda_array_interface__
    assert cai["typestr"] == "<f2" and cai["data"] == (4096, False) and cai["stream"] == 55 and cai["version"] == 3
    assert arr.nbytes == 16 and arr.owner is owner
    view = ci.view_device_array(arr)
    assert (view.ptr, view.shape, view.dtype, view.stream) == (4096, (2, 4), "float16", 55)
    # The legacy default stream (handle 0) is spelled 1 in the protocol, which forbids 0.
    assert ci.DeviceArray(4096, (1,), np.float32, 0).__cuda_array_interface__["stream"] == ci.LEGACY_DEFAULT_STREAM


def test_stream_handle_accepts_int_and_stream_objects():
    assert ci.stream_handle(123) == 123
    assert ci.stream_handle(np.int64(5)) == 5
    assert ci.stream_handle(_Stream(cuda_stream=7)) == 7  # torch
    assert ci.stream_handle(_Stream(handle=9)) == 9  # pycuda
    assert ci.stream_handle(_Stream(ptr=11)) == 11  # CuPy
    for bad in ("default", True, None, _Stream()):
        with pytest.raises(InvalidInputError, match="stream"):
            ci.stream_handle(bad)


def test_same_stream_treats_0_and_1_as_the_legacy_default_stream():
    assert ci.same_stream(0, 1) and ci.same_stream(5, 5)
    assert not ci.same_stream(1, 2) and not ci.same_stream(5, 6)


def test_wait_for_producer_skips_none_and_same_stream_and_uses_the_first_working_waiter(monkeypatch):
    calls = []

    def missing(consumer, producer, device):
        raise ImportError("not here")

    def works(consumer, producer, device):
        calls.append((consumer, producer, device))

    monkeypatch.setattr(ci, "_WAITERS", (("a", missing), ("b", works)))
    ci.wait_for_producer(10, None, 0)
    ci.wait_for_producer(10, 10, 0)
    ci.wait_for_producer(0, 1, 0)  # both the legacy default stream
    assert calls == []
    ci.wait_for_producer(10, 20, 1)
    assert calls == [(10, 20, 1)]


def test_wait_for_producer_without_any_waiter_names_what_is_missing(monkeypatch):
    def missing(consumer, producer, device):
        raise ImportError("not here")

    monkeypatch.setattr(ci, "_WAITERS", (("vbedge CUDA extension", missing), ("torch", missing)))
    with pytest.raises(MissingDependencyError, match="vbedge CUDA extension: not here; torch: not here"):
        ci.wait_for_producer(10, 20, 0)


def test_importing_cuda_interop_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, vbedge.cuda_interop, vbedge.cuda_tokenizer; "
            "heavy = [m for m in ('torch', 'cupy', 'tensorrt', 'pycuda') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
