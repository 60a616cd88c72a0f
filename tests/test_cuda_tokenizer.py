"""CUDA visual tokenizer: exact agreement with the NumPy reference (and the C++ kernel when built).

The GPU tests are marked ``gpu`` and skip with the reason given by
:func:`vbedge.cuda_tokenizer.cuda_extension_status` when the extension is not built or no CUDA
device is present. Two tests run everywhere: the status reports a reason, and importing the module
imports neither torch nor cupy.

Each test draws fresh inputs and compares with independent code: the NumPy reference
(``vbedge.tokenize_reference``, float64 screening) and, where built, the C++ CPU kernel.
Every kernel path is exercised on the same data: the small-batch kernel, the node-grouped
(sorted) kernel (``sort_threshold = 0``) and the generic beam/exact kernel (``_force_generic``).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from vbedge import InvalidInputError, MissingDependencyError
from vbedge.cuda_tokenizer import CudaTokenizer, cuda_extension_status, is_device_array
from tree_cases import tree_centroids
from vbedge.tokenize_reference import num_centroids, tokenize_reference

CUDA_OK, CUDA_REASON = cuda_extension_status()
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA_OK, reason=f"CUDA tokenizer unavailable: {CUDA_REASON}")]


def gpu(fn):
    for mark in needs_gpu:
        fn = mark(fn)
    return fn


# ---------------------------------------------------------------------------------- helpers
def near_leaf_features(centroids, levels, branching, n, seed, noise=0.3):
    """Features scattered around random leaves (the realistic case: descent is meaningful)."""
    rng = np.random.default_rng(seed)
    leaves = centroids[num_centroids(levels - 1, branching):]
    pick = rng.integers(0, len(leaves), size=n)
    return (leaves[pick] + noise * rng.standard_normal((n, centroids.shape[1]), dtype=np.float32)).astype(np.float32)


def integer_grid_case(levels, branching, dim, n, seed):
    """Small-integer centroids and features: every distance is exact, so exact ties are common and
    the lower-index rule decides; some centroids are duplicated outright."""
    rng = np.random.default_rng(seed)
    cent = rng.integers(-2, 3, size=(num_centroids(levels, branching), dim)).astype(np.float32)
    cent[1] = cent[0]  # duplicate siblings at level 0
    start = num_centroids(levels - 1, branching)
    cent[start + 3] = cent[start + 5]  # duplicate leaves
    x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    x[:4] = cent[:4]  # features sitting exactly on centroids
    return cent, x


def close_children_case(levels, branching, dim, n, seed):
    """Siblings 1e-3 (then 1e-6) apart around values of size 1: the distance gaps are far below
    the float32 screening error, so the canonical float64 refinement decides every choice."""
    cent = tree_centroids(levels, branching, dim, seed=seed, spread=1e-3)
    x = near_leaf_features(cent, levels, branching, n, seed + 1, noise=1e-3)
    return cent, x


def cpu_ids(centroids, levels, branching, x, mode, beam):
    try:
        from vbedge import _kernels
    except ImportError:
        return None
    return _kernels.CpuTokenizer(centroids, levels, branching).tokenize(x, mode, beam)


def check_all_paths(centroids, levels, branching, x, mode="tree", beam=1, expected=None):
    """CUDA (every applicable kernel path) == reference (== C++ when built), exactly."""
    if expected is None:
        expected = tokenize_reference(centroids, levels, branching, x, mode, beam)
    cpu = cpu_ids(centroids, levels, branching, x, mode, beam)
    if cpu is not None:
        np.testing.assert_array_equal(cpu, expected, err_msg="C++ kernel != reference")
    tok = CudaTokenizer(centroids, levels, branching)
    paths = {"default": {}, "generic": {"_force_generic": True}}
    if mode == "tree" and beam == 1:
        paths["sorted"] = {"sort_threshold": 0}  # tiled level kernel (default)
        paths["sorted_orig"] = {"sort_threshold": 0, "_sorted_impl": 0}  # original level kernel
        paths["small"] = {"sort_threshold": 1 << 40}
    for name, settings in paths.items():
        tok._impl.sort_threshold = settings.get("sort_threshold", 4096)
        tok._impl._force_generic = settings.get("_force_generic", False)
        tok._impl._sorted_impl = settings.get("_sorted_impl", 1)
        got = tok.tokenize(x, mode=mode, beam=beam)
        assert got.dtype == np.int64 and got.shape == (len(x),)
        np.testing.assert_array_equal(got, expected, err_msg=f"CUDA path {name!r} != reference ({mode}, beam={beam})")
    return expected


# ---------------------------------------------------------------------------------- everywhere
def test_status_reports_a_reason():
    ok, reason = cuda_extension_status()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
    if ok:
        assert reason.startswith("ok")
    else:
        assert "not built" in reason or "no CUDA device" in reason, reason
        with pytest.raises(MissingDependencyError) as info:
            CudaTokenizer(tree_centroids(2, 3, 4), 2, 3)
        assert str(info.value)


def test_import_does_not_import_torch_or_cupy():
    code = (
        "import json, sys, numpy\n"
        "import vbedge.cuda_tokenizer as m\n"
        "m.cuda_extension_status()\n"
        "print(json.dumps([k for k in ('torch', 'cupy', 'pycuda') if k in sys.modules]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_is_device_array_on_host_objects():
    assert not is_device_array(np.zeros((2, 3), np.float32))
    assert not is_device_array([1, 2])


# ---------------------------------------------------------------------------------- GPU
@gpu
@pytest.mark.parametrize(
    "levels,branching,dim",
    [(4, 12, 1024), (2, 5, 3), (3, 16, 64), (2, 20, 32), (1, 12, 8), (2, 40, 8)],
)
def test_tree_beam1_matches_reference(levels, branching, dim):
    cent = tree_centroids(levels, branching, dim, seed=levels * 100 + branching)
    x = near_leaf_features(cent, levels, branching, 700, seed=dim)
    x[:50] = np.random.default_rng(5).normal(size=(50, dim)).astype(np.float32) * 3  # off-tree features
    check_all_paths(cent, levels, branching, x)


@gpu
@pytest.mark.parametrize("beam", [4, 13])
def test_tree_beam_matches_reference(beam):
    cent = tree_centroids(4, 12, 256, seed=beam)
    x = near_leaf_features(cent, 4, 12, 400, seed=beam + 1)
    check_all_paths(cent, 4, 12, x, beam=beam)


@gpu
def test_exact_matches_reference():
    cent = tree_centroids(4, 12, 1024, seed=11)
    x = near_leaf_features(cent, 4, 12, 120, seed=12)
    x[:10] = np.random.default_rng(3).normal(size=(10, 1024)).astype(np.float32)
    check_all_paths(cent, 4, 12, x, mode="exact")


@gpu
@pytest.mark.parametrize("mode,beam", [("tree", 1), ("tree", 3), ("exact", 1)])
def test_ties_and_duplicates(mode, beam):
    cent, x = integer_grid_case(3, 6, 16, 600, seed=beam)
    check_all_paths(cent, 3, 6, x, mode=mode, beam=beam)


@gpu
@pytest.mark.parametrize("mode,beam", [("tree", 1), ("tree", 4), ("exact", 1)])
def test_near_ties_need_canonical_refinement(mode, beam):
    cent, x = close_children_case(3, 12, 512, 300, seed=beam)
    check_all_paths(cent, 3, 12, x, mode=mode, beam=beam)


@gpu
def test_far_and_huge_features():
    cent = tree_centroids(3, 12, 64, seed=21)
    rng = np.random.default_rng(22)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    x[:50] *= 1e6
    x[50:60] = 1e17  # |x|^2 = 6.4e35: finite in float32, but (x - c)^2 summed is near the limit
    x[60:70] = -2e17
    for mode, beam in (("tree", 1), ("tree", 5), ("exact", 1)):
        check_all_paths(cent, 3, 12, x, mode=mode, beam=beam)


@gpu
def test_n_zero_and_one():
    cent = tree_centroids(4, 12, 1024, seed=31)
    tok = CudaTokenizer(cent, 4, 12)
    empty = tok.tokenize(np.zeros((0, 1024), np.float32))
    assert empty.shape == (0,) and empty.dtype == np.int64
    x = near_leaf_features(cent, 4, 12, 1, seed=32)
    for mode, beam in (("tree", 1), ("tree", 4), ("exact", 1)):
        np.testing.assert_array_equal(tok.tokenize(x, mode=mode, beam=beam),
                                      tokenize_reference(cent, 4, 12, x, mode, beam))


@gpu
def test_float16_features():
    cent = tree_centroids(4, 12, 1024, seed=41)
    x = near_leaf_features(cent, 4, 12, 500, seed=42).astype(np.float16)
    # The contract converts float16 exactly, so the reference on the float32 upcast is the answer.
    check_all_paths(cent, 4, 12, x, expected=tokenize_reference(cent, 4, 12, x.astype(np.float32), "tree", 1))
    check_all_paths(cent, 4, 12, x, beam=4,
                    expected=tokenize_reference(cent, 4, 12, x.astype(np.float32), "tree", 4))


@gpu
def test_large_batch_sorted_path():
    levels, branching, dim, n = 4, 12, 1024, 200_000
    cent = tree_centroids(levels, branching, dim, seed=51)
    x = near_leaf_features(cent, levels, branching, n, seed=52)
    tok = CudaTokenizer(cent, levels, branching)
    got = tok.tokenize(x)  # n >= sort_threshold: node-grouped kernels
    tok._impl._sorted_impl = 0
    np.testing.assert_array_equal(tok.tokenize(x), got, err_msg="tiled sorted kernel != original sorted kernel")
    tok._impl._sorted_impl = 1
    tok.sort_threshold = n + 1
    np.testing.assert_array_equal(tok.tokenize(x), got, err_msg="sorted path != small-batch path")
    cpu = cpu_ids(cent, levels, branching, x, "tree", 1)
    if cpu is not None:
        np.testing.assert_array_equal(got, cpu, err_msg="CUDA != C++ kernel")
    sub = np.random.default_rng(53).choice(n, size=1500, replace=False)
    np.testing.assert_array_equal(got[sub], tokenize_reference(cent, levels, branching, x[sub], "tree", 1))
    assert len(np.unique(got)) > 1000  # the features really spread over many leaves


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_sorted_kernels_odd_sizes_nan_rows_and_phase_timing(dtype):
    """Tiled and original sorted kernels: partial feature groups (n, runs not multiples of 4), an odd
    dimension (element-wise loads), branching 16 (the wider accumulator instance), non-finite rows,
    and the phase-timing debug aid (2L-1 non-negative times, same ids)."""
    for levels, branching, dim, n in ((3, 12, 1024, 4099), (3, 16, 37, 1001), (2, 7, 130, 523)):
        cent = tree_centroids(levels, branching, dim, seed=dim + n)
        x = near_leaf_features(cent, levels, branching, n, seed=n).astype(dtype)
        x[: n // 10] = np.random.default_rng(n).normal(size=(n // 10, dim)).astype(dtype)
        expected = tokenize_reference(cent, levels, branching, x.astype(np.float32), "tree", 1)
        bad = [3, n // 2, n - 1]
        xb = x.copy()
        xb[bad[0], 0] = np.nan
        xb[bad[1], dim - 1] = np.inf
        xb[bad[2], dim // 2] = -np.inf
        tok = CudaTokenizer(cent, levels, branching)
        tok._impl.sort_threshold = 0
        for impl in (1, 0):
            tok._impl._sorted_impl = impl
            for timing in (False, True):
                tok._impl._phase_timing = timing
                got = tok.tokenize(x)
                np.testing.assert_array_equal(got, expected, err_msg=f"sorted impl {impl}, timing {timing}")
                phases = list(tok._impl._phase_ms)
                if timing:
                    assert len(phases) == 2 * levels - 1 and all(t >= 0 for t in phases)
                else:
                    assert phases == []
            tok._impl._phase_timing = False
            with pytest.raises(InvalidInputError, match=f"row {bad[0]}"):
                tok.tokenize(xb)
    with pytest.raises(ValueError):
        tok._impl._sorted_impl = 2


@gpu
def test_host_input_errors():
    cent = tree_centroids(2, 4, 8, seed=61)
    tok = CudaTokenizer(cent, 2, 4)
    good = np.zeros((3, 8), np.float32) + 0.5
    with pytest.raises(InvalidInputError, match="2-D"):
        tok.tokenize(good[0])
    with pytest.raises(InvalidInputError, match=r"\(N, 8\)"):
        tok.tokenize(np.zeros((3, 7), np.float32))
    with pytest.raises(InvalidInputError, match="float32 or float16"):
        tok.tokenize(good.astype(np.float64))
    with pytest.raises(InvalidInputError, match="mode"):
        tok.tokenize(good, mode="fast")
    with pytest.raises(InvalidInputError, match="beam"):
        tok.tokenize(good, mode="exact", beam=2)
    with pytest.raises(InvalidInputError, match="beam"):
        tok.tokenize(good, beam=17)
    bad = good.copy()
    bad[2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="row 2"):
        tok.tokenize(bad)
    bad = np.tile(good, (4, 1))
    bad[7, 0] = np.inf
    bad[9, 1] = -np.inf
    for kwargs in ({}, {"beam": 3}, {"mode": "exact"}):
        with pytest.raises(InvalidInputError, match="row 7"):
            tok.tokenize(bad, **kwargs)
    with pytest.raises(InvalidInputError, match="float32"):
        CudaTokenizer(cent.astype(np.float64), 2, 4)
    with pytest.raises(InvalidInputError, match="shape"):
        CudaTokenizer(cent[:-1], 2, 4)
    nan_cent = cent.copy()
    nan_cent[5, 0] = np.nan
    with pytest.raises(InvalidInputError, match="row 5"):
        CudaTokenizer(nan_cent, 2, 4)


# ---------------------------------------------------------------------------------- torch / cupy
@pytest.fixture
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    return torch


@gpu
def test_torch_inputs_streams_and_strides(torch_cuda):
    torch = torch_cuda
    levels, branching, dim = 4, 12, 1024
    cent = tree_centroids(levels, branching, dim, seed=71)
    x = near_leaf_features(cent, levels, branching, 5000, seed=72)
    expected = tokenize_reference(cent, levels, branching, x, "tree", 1)
    tok = CudaTokenizer(cent, levels, branching)
    xt = torch.from_numpy(x).cuda()
    out = tok.tokenize(xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.device == xt.device
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    # float16 tensor
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(
        tok.tokenize(torch.from_numpy(x16).cuda()).cpu().numpy(),
        tokenize_reference(cent, levels, branching, x16.astype(np.float32), "tree", 1),
    )
    # rows 1031 elements apart (a column slice of a wider buffer), both kernel paths
    wide = torch.zeros((5000, dim + 7), dtype=torch.float32, device="cuda")
    wide[:, 3:3 + dim] = xt
    view = wide[:, 3:3 + dim]
    assert not view.is_contiguous()
    for threshold in (0, 1 << 40):
        tok.sort_threshold = threshold
        np.testing.assert_array_equal(tok.tokenize(view).cpu().numpy(), expected)
    tok.sort_threshold = 4096
    # a non-default stream: the producer writes x on s, the tokenizer runs on s
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        xs = xt * 1.0
        got = tok.tokenize(xs)  # None -> the current stream, which is s here
    s.synchronize()
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    got = tok.tokenize(xs, stream=s, check_finite=False)
    s.synchronize()
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    got = tok.tokenize(xs, stream=s.cuda_stream, mode="tree", beam=2)
    s.synchronize()
    np.testing.assert_array_equal(got.cpu().numpy(), tokenize_reference(cent, levels, branching, x, "tree", 2))
    # explicit raw-pointer entry with a caller-provided output
    out = torch.full((5000,), -7, dtype=torch.int64, device="cuda")
    tok.tokenize_ptr(xt.data_ptr(), 5000, out.data_ptr(), stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.current_stream().synchronize()
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    # N = 0 and N = 1 on the device
    assert tok.tokenize(xt[:0]).shape == (0,)
    np.testing.assert_array_equal(tok.tokenize(xt[:1]).cpu().numpy(), expected[:1])


@gpu
def test_torch_nan_rows(torch_cuda):
    torch = torch_cuda
    cent = tree_centroids(3, 12, 128, seed=81)
    x = near_leaf_features(cent, 3, 12, 3000, seed=82)
    expected = tokenize_reference(cent, 3, 12, x, "tree", 1)
    x[1700, 5] = np.nan
    x[2500, 0] = np.inf
    tok = CudaTokenizer(cent, 3, 12)
    xt = torch.from_numpy(x).cuda()
    for threshold in (0, 1 << 40):
        tok.sort_threshold = threshold
        with pytest.raises(InvalidInputError, match="row 1700"):
            tok.tokenize(xt)
        out = tok.tokenize(xt, check_finite=False)
        torch.cuda.synchronize()
        ids = out.cpu().numpy()
        assert ids[1700] == -1 and ids[2500] == -1
        keep = np.ones(len(x), bool)
        keep[[1700, 2500]] = False
        np.testing.assert_array_equal(ids[keep], expected[keep])
    with pytest.raises(InvalidInputError, match="row 1700"):
        tok.tokenize(xt, mode="exact")


@gpu
def test_torch_input_errors(torch_cuda):
    torch = torch_cuda
    cent = tree_centroids(2, 4, 8, seed=91)
    tok = CudaTokenizer(cent, 2, 4)
    good = torch.ones((5, 8), device="cuda")
    with pytest.raises(InvalidInputError, match="CUDA tensor"):
        tok.tokenize(good.cpu())
    with pytest.raises(InvalidInputError, match="float32 or float16"):
        tok.tokenize(good.double())
    with pytest.raises(InvalidInputError, match="2-D"):
        tok.tokenize(good[0])
    with pytest.raises(InvalidInputError, match=r"\(N, 8\)"):
        tok.tokenize(good[:, :7])
    with pytest.raises(InvalidInputError, match="unit element stride"):
        tok.tokenize(torch.ones((8, 5), device="cuda").t())
    with pytest.raises(InvalidInputError, match="stream"):
        tok.tokenize(good, stream="default")
    with pytest.raises(InvalidInputError, match="out"):
        tok.tokenize(good, out=torch.empty(4, dtype=torch.int64, device="cuda"))


@gpu
def test_cupy_inputs():
    cupy = pytest.importorskip("cupy")
    cent = tree_centroids(4, 12, 1024, seed=101)
    x = near_leaf_features(cent, 4, 12, 3000, seed=102)
    expected = tokenize_reference(cent, 4, 12, x, "tree", 1)
    tok = CudaTokenizer(cent, 4, 12)
    xc = cupy.asarray(x)
    out = tok.tokenize(xc)
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.int64
    np.testing.assert_array_equal(cupy.asnumpy(out), expected)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        x16 = xc.astype(cupy.float16)
        out16 = tok.tokenize(x16)  # None -> CuPy's current stream, s here
    s.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(out16),
                                  tokenize_reference(cent, 4, 12, x.astype(np.float16).astype(np.float32), "tree", 1))
    out = tok.tokenize(xc, stream=s, check_finite=False)
    s.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(out), expected)
    bad = xc.copy()
    bad[123, 7] = cupy.nan
    with pytest.raises(InvalidInputError, match="row 123"):
        tok.tokenize(bad)
    with pytest.raises(InvalidInputError, match="float32"):
        tok.tokenize(xc.astype(cupy.float64))


# ---------------------------------------------------------------------------------- Python layer, no GPU
class _FakeCudaArray:
    """A device array as another framework (Numba...) would expose it, for the wrapper logic."""

    def __init__(self, shape, typestr, strides=None, ptr=0x7F0000000000, stream=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "strides": strides,
                                         "data": (ptr, False), "version": 3}
        if stream is not None:
            self.__cuda_array_interface__["stream"] = stream


class _FakeImpl:
    levels, branching, dim, num_leaves, device = 2, 4, 8, 16, 0

    def __init__(self):
        self.calls = []

    def tokenize_ptr(self, *args):
        self.calls.append(args)

    bad_row = -1

    def tokenize_ptr_checked(self, *args):
        self.calls.append(("checked",) + args)
        return self.bad_row


class _FakeExt:
    def __init__(self):
        self.waits = []

    def pointer_device(self, ptr):
        return 0

    def stream_wait(self, consumer, producer, device):
        self.waits.append((consumer, producer))


def _fake_tokenizer():
    tok = CudaTokenizer.__new__(CudaTokenizer)
    tok._impl, tok._ext = _FakeImpl(), _FakeExt()
    return tok


def test_wrapper_passes_pointer_stride_dtype_and_stream():
    tok = _fake_tokenizer()
    out = _FakeCudaArray((5,), "<i8", ptr=0x7F0000100000)
    # float16 rows 24 elements (48 bytes) apart, on stream 1234, produced on stream 99
    x = _FakeCudaArray((5, 8), "<f2", strides=(48, 2), stream=99)
    assert tok.tokenize(x, stream=1234, check_finite=False, out=out) is out
    assert tok._impl.calls == [(0x7F0000000000, 5, 8, "float16", 24, 0x7F0000100000, 1234, "tree", 1, 0)]
    assert tok._ext.waits == [(1234, 99)]
    tok.tokenize(_FakeCudaArray((5, 8), "<f4"), mode="exact", check_finite=False, out=out)
    assert tok._impl.calls[-1][3:] == ("float32", 8, 0x7F0000100000, 0, "exact", 1, 0)


def test_wrapper_checked_call_raises_on_the_bad_row_it_reports():
    tok = _fake_tokenizer()
    out = _FakeCudaArray((5,), "<i8", ptr=0x7F0000100000)
    x = _FakeCudaArray((5, 8), "<f4")
    tok.tokenize(x, stream=7, out=out)  # check_finite defaults to True: the synchronising entry
    assert tok._impl.calls == [("checked", 0x7F0000000000, 5, 8, "float32", 8, 0x7F0000100000, 7, "tree", 1)]
    tok._impl.bad_row = 3
    with pytest.raises(InvalidInputError, match="row 3"):
        tok.tokenize(x, stream=7, out=out)


def test_wrapper_rejects_bad_device_arrays():
    tok = _fake_tokenizer()
    out = _FakeCudaArray((5,), "<i8")
    cases = [
        (_FakeCudaArray((5, 8), "<f8"), "float32"),
        (_FakeCudaArray((5,), "<f4"), "2-D"),
        (_FakeCudaArray((5, 9), "<f4"), r"\(N, 8\)"),
        (_FakeCudaArray((5, 8), "<f4", strides=(4, 20)), "unit element stride"),
        (_FakeCudaArray((5, 8), "<f4", strides=(16, 4)), "row stride"),
    ]
    for arr, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            tok.tokenize(arr, check_finite=False, out=out)
    with pytest.raises(InvalidInputError, match="out must be"):
        tok.tokenize(_FakeCudaArray((5, 8), "<f4"), check_finite=False, out=_FakeCudaArray((4,), "<i8"))
    with pytest.raises(InvalidInputError, match="stream"):
        tok.tokenize(np.zeros((5, 8), np.float32), stream=3)
    with pytest.raises(InvalidInputError, match="beam"):
        tok.tokenize(_FakeCudaArray((5, 8), "<f4"), beam=0, out=out)
    with pytest.raises(InvalidInputError, match="NumPy array or a CUDA array"):
        tok.tokenize([[0.0] * 8])


def test_wrapper_rejects_cpu_torch_tensor():
    torch = pytest.importorskip("torch")
    tok = _fake_tokenizer()
    with pytest.raises(InvalidInputError, match="expected a CUDA tensor"):
        tok.tokenize(torch.zeros((5, 8)))


def test_tensorrt_output_buffer_feeds_the_tokenizer_without_a_copy():
    # The zero-copy hand-off of issue 5: S3D's TensorRT output (a DeviceArray) goes straight to
    # the CUDA tokenizer, which reads its pointer and waits on the stream TensorRT produced it on.
    # (Wiring only: neither TensorRT nor a GPU runs here.)
    from vbedge.backends.tensorrt import DeviceArray

    tok = _fake_tokenizer()
    features = DeviceArray(0x7F0000200000, (3, 8), "float32", stream_handle=555)
    out = _FakeCudaArray((3,), "<i8", ptr=0x7F0000300000)
    tok.tokenize(features, stream=777, check_finite=False, out=out)
    assert tok._ext.waits == [(777, 555)]
    assert tok._impl.calls == [(0x7F0000200000, 3, 8, "float32", 8, 0x7F0000300000, 777, "tree", 1, 0)]
