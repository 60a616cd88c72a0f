"""Tests of the C++ CPU tokenizer (vbedge._kernels.CpuTokenizer) against independent references.

Every id the kernel returns is compared with the NumPy reference (vbedge.tokenize_reference,
float64 screening) and, where affordable, with the brute-force canonical oracle (no screening at
all), on random and adversarial data: exact ties, duplicate centroids, nodes whose children are
all identical, equidistant points, features far from every centroid, float16 input, N = 0, 1 and
large N, small trees and the full 4 x 12, D = 1024 tree.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tree_cases import tree_centroids
from vbedge.tokenize_reference import canonical_oracle, num_centroids, tokenize_reference

_kernels = pytest.importorskip("vbedge._kernels", reason="C++ extension vbedge._kernels is not built")


def leaf_rows(levels, branching):
    return num_centroids(levels - 1, branching), num_centroids(levels, branching)


def features_near_leaves(rng, centroids, levels, branching, n, noise):
    lo, hi = leaf_rows(levels, branching)
    pick = rng.integers(lo, hi, size=n)
    x = centroids[pick].astype(np.float64) + rng.standard_normal((n, centroids.shape[1])) * noise
    return np.ascontiguousarray(x.astype(np.float32))


def check_all(centroids, levels, branching, features, cases, oracle=True, threads=0):
    tok = _kernels.CpuTokenizer(centroids, levels, branching)
    for mode, beam in cases:
        got = tok.tokenize(features, mode, beam, threads)
        assert got.dtype == np.int64 and got.shape == (features.shape[0],)
        ref = tokenize_reference(centroids, levels, branching, features, mode=mode, beam=beam)
        np.testing.assert_array_equal(got, ref, err_msg=f"kernel vs reference, mode={mode} beam={beam}")
        if oracle:
            orc = canonical_oracle(centroids, levels, branching, features, mode=mode, beam=beam)
            np.testing.assert_array_equal(got, orc, err_msg=f"kernel vs oracle, mode={mode} beam={beam}")


def cases_for(levels, branching):
    leaves = branching**levels
    beams = sorted({1, min(4, leaves), min(branching + 1, leaves), leaves})
    return [("tree", b) for b in beams] + [("exact", 1)]


@pytest.mark.parametrize(
    "levels,branching,dim",
    [(2, 3, 5), (3, 5, 37), (2, 12, 64), (1, 7, 9), (3, 4, 1)],
)
def test_random_small_trees_match_reference_and_oracle(levels, branching, dim):
    rng = np.random.default_rng(levels * 100 + branching * 10 + dim)
    c = tree_centroids(levels, branching, dim, rng)
    x = np.concatenate(
        [
            features_near_leaves(rng, c, levels, branching, 150, 0.3),
            rng.standard_normal((150, dim)).astype(np.float32),
        ]
    )
    check_all(c, levels, branching, x, cases_for(levels, branching))


def test_unstructured_random_centroids():
    rng = np.random.default_rng(7)
    levels, branching, dim = 3, 6, 48
    c = rng.standard_normal((num_centroids(levels, branching), dim)).astype(np.float32)
    x = rng.standard_normal((300, dim)).astype(np.float32)
    check_all(c, levels, branching, x, cases_for(levels, branching))


def test_full_4x12_tree_d1024():
    rng = np.random.default_rng(2024)
    levels, branching, dim = 4, 12, 1024
    c = tree_centroids(levels, branching, dim, rng)
    near = features_near_leaves(rng, c, levels, branching, 400, 0.2)
    tok = _kernels.CpuTokenizer(c, levels, branching)
    assert (tok.levels, tok.branching, tok.dim, tok.num_leaves) == (4, 12, 1024, 20736)
    for beam in (1, 4):
        x = near if beam == 1 else near[:120]
        np.testing.assert_array_equal(
            tok.tokenize(x, "tree", beam), tokenize_reference(c, levels, branching, x, "tree", beam)
        )
    # Exact over 20,736 leaves, and the canonical oracle for tree beam 1 on a subset.
    x = np.concatenate([near[:12], rng.standard_normal((12, dim)).astype(np.float32)])
    np.testing.assert_array_equal(tok.tokenize(x, "exact", 1), tokenize_reference(c, levels, branching, x, "exact"))
    np.testing.assert_array_equal(
        tok.tokenize(near[:60], "tree", 1), canonical_oracle(c, levels, branching, near[:60], "tree", 1)
    )


def test_duplicate_centroids_and_identical_children():
    """Ties everywhere: the lower index must win, as in the reference and the oracle."""
    rng = np.random.default_rng(3)
    levels, branching, dim = 3, 4, 16
    c = tree_centroids(levels, branching, dim, rng).astype(np.float64)
    off = [0, branching, branching + branching**2]
    # Node 1 at level 0 has all children equal to itself (a fitter node with too few points); so
    # do all of their children.
    c[off[1] + 4 : off[1] + 8] = c[1]
    c[off[2] + 16 : off[2] + 32] = c[1]
    # Exact duplicates scattered across the leaf level and across levels.
    c[off[2] + 50] = c[off[2] + 3]
    c[off[2] + 63] = c[off[2] + 3]
    c[2] = c[0]
    c = np.ascontiguousarray(c.astype(np.float32))
    x = np.concatenate(
        [
            c[rng.integers(0, c.shape[0], 200)],  # features equal to centroids: distance 0 ties
            features_near_leaves(rng, c, levels, branching, 200, 0.2),
        ]
    )
    check_all(c, levels, branching, x, cases_for(levels, branching))


def test_equidistant_points_integer_grid():
    """Integer centroids and half-integer midpoints: canonical distances tie exactly."""
    rng = np.random.default_rng(11)
    levels, branching, dim = 2, 5, 8
    c = rng.integers(-2, 3, size=(num_centroids(levels, branching), dim)).astype(np.float32)
    a = c[rng.integers(0, c.shape[0], 300)]
    b = c[rng.integers(0, c.shape[0], 300)]
    mid = ((a + b) / 2).astype(np.float32)  # exactly representable
    grid = rng.integers(-2, 3, size=(300, dim)).astype(np.float32)
    x = np.ascontiguousarray(np.concatenate([mid, grid]))
    check_all(c, levels, branching, x, cases_for(levels, branching))


def test_symmetric_pair_equidistant():
    """x exactly between two sibling centroids x +- e: canon ties, lower index wins."""
    levels, branching, dim = 2, 3, 4
    c = np.zeros((num_centroids(levels, branching), dim), np.float32)
    c[0] = [1, 0, 0, 0]
    c[1] = [-1, 0, 0, 0]
    c[2] = [0, 5, 0, 0]
    # Children of node 1 (rows 3 + 3..5): the later one is the mirror image of the earlier one.
    c[3 + 3] = [-1, 0.5, 0, 0]
    c[3 + 4] = [-1, -0.5, 0, 0]
    c[3 + 5] = [-1, 0, 0, 9]
    x = np.array([[0, 0, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0]], np.float32)
    check_all(c, levels, branching, x, cases_for(levels, branching))
    tok = _kernels.CpuTokenizer(c, levels, branching)
    # Root tie 0 vs 1 at x=0 goes to node 0; at x=[-1,0,0,0] node 1 then leaf 3 (tie 3 vs 4).
    assert tok.tokenize(x[1:2], "tree", 1).tolist() == [3]


@pytest.mark.parametrize("factor", [1e4, 1e6, 1e8])
def test_features_far_from_every_centroid(factor):
    rng = np.random.default_rng(int(np.log10(factor)))
    levels, branching, dim = 3, 4, 32
    c = tree_centroids(levels, branching, dim, rng)
    direction = rng.standard_normal((60, dim))
    x = (direction / np.linalg.norm(direction, axis=1, keepdims=True) * factor * np.sqrt(dim))
    x = np.ascontiguousarray(x.astype(np.float32))
    check_all(c, levels, branching, x, cases_for(levels, branching))


def test_centroids_far_from_origin_small_features():
    """Large |c|^2 (C_max) with small differences: the window must still catch the winner."""
    rng = np.random.default_rng(5)
    levels, branching, dim = 2, 6, 40
    c = tree_centroids(levels, branching, dim, rng, scale=1e-3) + np.float32(1e3)
    c = np.ascontiguousarray(c.astype(np.float32))
    x = features_near_leaves(rng, c, levels, branching, 200, 1e-4)
    check_all(c, levels, branching, x, cases_for(levels, branching))


def test_float16_input_matches_reference_on_the_same_values():
    rng = np.random.default_rng(8)
    levels, branching, dim = 3, 5, 70
    c = tree_centroids(levels, branching, dim, rng)
    x16 = features_near_leaves(rng, c, levels, branching, 300, 0.3).astype(np.float16)
    # Include float16 subnormals, exact zero and -0.0.
    x16[0, :5] = np.array([6e-8, -6e-8, 0.0, -0.0, 1e-5], np.float16)
    tok = _kernels.CpuTokenizer(c, levels, branching)
    for mode, beam in cases_for(levels, branching):
        got = tok.tokenize(x16, mode, beam)
        np.testing.assert_array_equal(got, tokenize_reference(c, levels, branching, x16, mode, beam))
        # float16 -> float32 is exact, so the float32 copy must give the same ids.
        np.testing.assert_array_equal(got, tok.tokenize(x16.astype(np.float32), mode, beam))


def test_n0_and_n1():
    rng = np.random.default_rng(9)
    c = tree_centroids(2, 3, 6, rng)
    tok = _kernels.CpuTokenizer(c, 2, 3)
    for mode, beam in cases_for(2, 3):
        empty = tok.tokenize(np.zeros((0, 6), np.float32), mode, beam)
        assert empty.dtype == np.int64 and empty.shape == (0,)
        one = rng.standard_normal((1, 6)).astype(np.float32)
        np.testing.assert_array_equal(tok.tokenize(one, mode, beam), canonical_oracle(c, 2, 3, one, mode, beam))
    assert tok.tokenize(np.zeros((0, 6), np.float16), "tree", 1).shape == (0,)


def test_large_n_and_thread_counts():
    rng = np.random.default_rng(10)
    levels, branching, dim = 3, 5, 24
    c = tree_centroids(levels, branching, dim, rng)
    x = np.concatenate(
        [
            features_near_leaves(rng, c, levels, branching, 25_000, 0.4),
            rng.integers(-1, 2, size=(25_000, dim)).astype(np.float32),  # many exact ties
        ]
    )
    tok = _kernels.CpuTokenizer(c, levels, branching)
    ref = tokenize_reference(c, levels, branching, x, "tree", 1)
    for threads in (0, 1, 2, 3):
        np.testing.assert_array_equal(tok.tokenize(x, "tree", 1, threads), ref)
    sub = np.ascontiguousarray(x[::10])
    np.testing.assert_array_equal(tok.tokenize(sub, "tree", 4), tokenize_reference(c, levels, branching, sub, "tree", 4))
    np.testing.assert_array_equal(tok.tokenize(sub, "exact", 1), tokenize_reference(c, levels, branching, sub, "exact"))


def test_kernel_keeps_its_own_copy_of_the_centroids():
    rng = np.random.default_rng(12)
    c = tree_centroids(2, 4, 8, rng)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    tok = _kernels.CpuTokenizer(c, 2, 4)
    before = tok.tokenize(x, "exact", 1)
    expected = tokenize_reference(c.copy(), 2, 4, x, "exact")
    c[:] = 0  # the caller mutating its array must not change the kernel's codebook
    np.testing.assert_array_equal(before, expected)
    np.testing.assert_array_equal(tok.tokenize(x, "exact", 1), expected)


@pytest.mark.parametrize(
    "env,expected_path",
    [
        ({"VBEDGE_CPU_SIMD": "portable"}, "portable"),  # what aarch64 Jetson / pre-AVX2 CPUs run
        ({"VBEDGE_CPU_TREE_BEAM": "per-feature"}, None),  # the path for huge N x beam
    ],
)
def test_alternative_code_paths_give_the_same_ids(env, expected_path):
    """Code paths that this machine would not take by itself, forced through environment variables."""
    code = (
        "import numpy as np, sys\n"
        "from vbedge import _kernels\n"
        "from vbedge.tokenize_reference import tokenize_reference, num_centroids\n"
        f"expected = {expected_path!r}\n"
        "assert expected is None or _kernels.simd_path() == expected, _kernels.simd_path()\n"
        "rng = np.random.default_rng(0)\n"
        "c = rng.standard_normal((num_centroids(3, 5), 33)).astype(np.float32)\n"
        "x = rng.standard_normal((400, 33)).astype(np.float32)\n"
        "c[40:45] = c[39]  # duplicate leaves: ties\n"
        "x[:20] = c[30:50]\n"
        "t = _kernels.CpuTokenizer(c, 3, 5)\n"
        "for mode, beam in [('tree', 1), ('tree', 4), ('tree', 125), ('exact', 1)]:\n"
        "    assert (t.tokenize(x, mode, beam) == tokenize_reference(c, 3, 5, x, mode, beam)).all(), mode\n"
        "    h = x.astype(np.float16)\n"
        "    assert (t.tokenize(h, mode, beam) == tokenize_reference(c, 3, 5, h, mode, beam)).all(), mode\n"
        "print('ok')\n"
    )
    env = dict(os.environ, **env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_tolerance_scale_matches_the_contract():
    for dim in (1, 64, 1024):
        assert _kernels.tolerance_scale(dim) == 8.0 * (dim + 8) * 2.0**-24


# ----------------------------------------------------------------------------------------------
# Argument errors: ValueError with a message naming what was wrong.


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(13)
    c = tree_centroids(2, 3, 6, rng)
    return c, _kernels.CpuTokenizer(c, 2, 3)


def test_constructor_errors(small):
    c, _ = small
    with pytest.raises(ValueError, match=r"shape \(12, D\)"):
        _kernels.CpuTokenizer(c[:-1], 2, 3)
    with pytest.raises(ValueError, match="float32"):
        _kernels.CpuTokenizer(c.astype(np.float64), 2, 3)
    with pytest.raises(ValueError, match="2-D"):
        _kernels.CpuTokenizer(c.reshape(-1), 2, 3)
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.CpuTokenizer(np.asfortranarray(c), 2, 3)
    with pytest.raises(ValueError, match="levels"):
        _kernels.CpuTokenizer(c, 0, 3)
    with pytest.raises(ValueError, match="branching"):
        _kernels.CpuTokenizer(c, 2, 1)
    bad = c.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        _kernels.CpuTokenizer(bad, 2, 3)


def test_tokenize_argument_errors(small):
    _, tok = small
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"shape \(N, 6\)"):
        tok.tokenize(np.zeros((4, 5), np.float32), "tree", 1)
    with pytest.raises(ValueError, match="2-D"):
        tok.tokenize(np.zeros(6, np.float32), "tree", 1)
    with pytest.raises(ValueError, match="float32 or float16"):
        tok.tokenize(x.astype(np.float64), "tree", 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        tok.tokenize(np.zeros((6, 4), np.float32).T, "tree", 1)
    with pytest.raises(ValueError, match="mode"):
        tok.tokenize(x, "greedy", 1)
    with pytest.raises(ValueError, match="between 1 and"):
        tok.tokenize(x, "tree", 0)
    with pytest.raises(ValueError, match="between 1 and"):
        tok.tokenize(x, "tree", 10)  # 3**2 = 9 leaves
    assert tok.tokenize(x, "tree", 9).shape == (4,)
    with pytest.raises(ValueError, match="exact"):
        tok.tokenize(x, "exact", 2)
    with pytest.raises(ValueError, match="num_threads"):
        tok.tokenize(x, "tree", 1, -1)


@pytest.mark.parametrize("mode,beam", [("tree", 1), ("tree", 3), ("exact", 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_and_overflowing_rows_are_named(small, mode, beam, dtype):
    _, tok = small
    rng = np.random.default_rng(14)
    x = rng.standard_normal((100, 6)).astype(dtype)
    x[57, 3] = np.nan
    x[80, 0] = np.inf
    with pytest.raises(ValueError, match="row 57"):
        tok.tokenize(x, mode, beam)
    x = rng.standard_normal((100, 6)).astype(dtype)
    x[33, 1] = -np.inf
    with pytest.raises(ValueError, match="row 33"):
        tok.tokenize(x, mode, beam)
    if dtype == np.float32:
        x = rng.standard_normal((100, 6)).astype(np.float32)
        x[41] = 1e20  # finite, but |x|^2 = 6e40 overflows float32
        with pytest.raises(ValueError, match="row 41.*overflows float32"):
            tok.tokenize(x, mode, beam)


# ----------------------------------------------------------------------------------------------
# Exact mode prunes parents of leaves with a covering-radius bound; these cases sit on its edges.


def test_exact_pruning_ties_across_parents():
    """Strongly clustered tree (pruning skips almost every parent) with ties between leaves of
    different parents: duplicated leaves and midpoints. The lower leaf id must still win."""
    rng = np.random.default_rng(21)
    levels, branching, dim = 3, 6, 32
    c = tree_centroids(levels, branching, dim, rng, spread=0.05).astype(np.float64)
    lo, hi = leaf_rows(levels, branching)
    # Leaf 200 (parent 33) duplicated as leaf 7 (parent 1) and leaf 150 (parent 25).
    c[lo + 7] = c[lo + 200]
    c[lo + 150] = c[lo + 200]
    c = np.ascontiguousarray(c.astype(np.float32))
    leaves = c[lo:hi]
    a = rng.integers(0, hi - lo, 150)
    b = rng.integers(0, hi - lo, 150)
    # Midpoints of leaves with integer-ish coordinates would tie exactly; here use the duplicated
    # leaf itself plus noise-free copies, and midpoints (near-ties across parents).
    x = np.concatenate(
        [
            np.repeat(leaves[200:201], 5, axis=0),
            ((leaves[a].astype(np.float64) + leaves[b]) / 2).astype(np.float32),
            features_near_leaves(rng, c, levels, branching, 100, 1e-3),
        ]
    )
    x = np.ascontiguousarray(x)
    check_all(c, levels, branching, x, [("exact", 1), ("tree", 1), ("tree", 36)])
    tok = _kernels.CpuTokenizer(c, levels, branching)
    assert tok.tokenize(x[:5], "exact", 1).tolist() == [7] * 5


def test_exact_pruning_exact_ties_on_integer_tree():
    """Integer coordinates: exact canonical ties between leaves under different parents."""
    rng = np.random.default_rng(22)
    levels, branching, dim = 3, 4, 6
    parts, parent = [], np.zeros((1, dim))
    for step in (8, 2, 1):
        base = np.repeat(parent, branching, axis=0)
        parent = base + rng.integers(-step, step + 1, size=base.shape)
        parts.append(parent)
    c = np.ascontiguousarray(np.concatenate(parts).astype(np.float32))
    lo, hi = leaf_rows(levels, branching)
    a = c[rng.integers(lo, hi, 300)]
    b = c[rng.integers(lo, hi, 300)]
    x = np.ascontiguousarray(np.concatenate([(a + b) / 2, a, np.round(a + rng.normal(0, 1, a.shape))]).astype(np.float32))
    check_all(c, levels, branching, x, cases_for(levels, branching))
