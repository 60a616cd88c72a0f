"""The C++ tokenizer's SIMD code paths on the shapes where vector code goes wrong: tails.

The NEON path (aarch64) and the AVX2 path (x86-64) work in 4- and 8-float chunks, in blocks of up
to 12 rows, 3 x 4 register tiles and 6 x 16 panels (exact mode); the portable path is plain loops.
These cases pick dimensions, branchings and feature counts that leave a remainder at every one of
those granularities and compare every id with the NumPy reference (vbedge.tokenize_reference),
whichever path this machine picked. benchmarks/aarch64_check.sh runs this file under qemu-aarch64
twice: once as picked (NEON) and once with VBEDGE_CPU_SIMD=portable.
"""

import os
import platform

import numpy as np
import pytest

from tree_cases import tree_centroids
from vbedge.tokenize_reference import tokenize_reference

_kernels = pytest.importorskip("vbedge._kernels", reason="C++ extension vbedge._kernels is not built")

IS_AARCH64 = platform.machine().lower() in ("aarch64", "arm64")


@pytest.mark.skipif(not IS_AARCH64, reason="the NEON path exists only on aarch64 builds (this is "
                    f"{platform.machine()}); benchmarks/aarch64_check.sh runs it under qemu-aarch64")
def test_aarch64_picks_neon_unless_portable_is_forced():
    forced = os.environ.get("VBEDGE_CPU_SIMD") == "portable"
    assert _kernels.simd_path() == ("portable" if forced else "neon")


def test_simd_path_is_a_known_name():
    # A build that silently fell back to the portable path on aarch64 would still pass every id
    # test; the name says which path those tests exercised.
    assert _kernels.simd_path() in ("neon", "portable", "avx2+fma", "avx2+fma+f16c")


# dim: below one vector, exactly one, one past, and odd lengths past 8 and 16.
@pytest.mark.parametrize("dim", [1, 3, 4, 5, 7, 8, 9, 13, 17, 31, 33])
def test_every_dimension_tail(dim):
    rng = np.random.default_rng(dim)
    levels, branching = 2, 13  # 13 = 12-row block + 1, 13 = 3 x 4 tile + 1; 169 leaves = 10 panels + 9
    c = tree_centroids(levels, branching, dim, rng)
    x = np.concatenate([
        c[rng.integers(0, c.shape[0], 20)],  # on a centroid: distance-0 ties across levels
        rng.standard_normal((31, dim)).astype(np.float32),  # 31 = 5 groups of 6 + 1 (panels)
    ])
    x = np.ascontiguousarray(x)
    tok = _kernels.CpuTokenizer(c, levels, branching)
    for mode, beam in [("tree", 1), ("tree", 2), ("tree", 5), ("exact", 1)]:
        for feats in (x, x.astype(np.float16)):  # float16 rows go through the half->float kernel
            ref = tokenize_reference(c, levels, branching, feats, mode, beam)
            np.testing.assert_array_equal(tok.tokenize(feats, mode, beam), ref,
                                          err_msg=f"dim={dim} mode={mode} beam={beam} dtype={feats.dtype}")


@pytest.mark.parametrize("branching", list(range(2, 14)))
def test_every_row_block_size(branching):
    """dot_rows splits k children into 12-row blocks plus one block of 1..11: each branching here
    lands on a different remainder (and beam k+1 gives candidate sets of yet other sizes)."""
    rng = np.random.default_rng(100 + branching)
    levels, dim = 2, 20
    c = tree_centroids(levels, branching, dim, rng)
    c[-1] = c[-2]  # duplicate last two leaves: the lower id must win
    n = 1 + branching  # feature groups of 3 with a remainder
    x = np.ascontiguousarray(np.concatenate([c[-1:], rng.standard_normal((n, dim)).astype(np.float32)]))
    tok = _kernels.CpuTokenizer(c, levels, branching)
    for mode, beam in [("tree", 1), ("tree", branching + 1), ("exact", 1)]:
        np.testing.assert_array_equal(tok.tokenize(x, mode, beam),
                                      tokenize_reference(c, levels, branching, x, mode, beam),
                                      err_msg=f"branching={branching} mode={mode} beam={beam}")
