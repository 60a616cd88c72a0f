"""The C++ tokenizer's SIMD code paths on the shapes where vector code goes wrong: tails.

The NEON path (aarch64) and the AVX2 path (x86-64) work in 4- and 8-float chunks, in blocks of up
to 12 rows, 3 x 4 register tiles and 6 x 16 panels (exact mode); the portable path is plain loops.
These cases pick dimensions, branchings and feature counts that leave a remainder at every one of
those granularities and compare every id with the NumPy reference (vbedge.tokenize_reference),
whichever path this machine picked. benchmarks/aarch64_check.sh runs this file under qemu-aarch64
twice: once as picked (NEON) and once with VBEDGE_CPU_SIMD=portable.

test_canonical_distance_is_not_fused guards the build flag rather than the SIMD code: an aarch64
build with GCC's default -ffp-contract=fast fuses the canonical sum and fails it (checked under
qemu-aarch64, 2026-12-01: all 5 cases fail with -ffp-contract=fast, pass with setup.py's flags).
"""

import os
import platform
from fractions import Fraction

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


# (x, c0, c1), float32 values written exactly: the canonical distances of x to c0 and c1 tie exactly
# (c1 is c0's offset from x permuted), so leaf 0 wins; computed with a fused multiply-add, the sum
# for c1 comes out strictly smaller. Found by a seeded search (numpy seed 0, D = 3).
FMA_SENSITIVE = [
    ([-0.8192721605300903, -0.9385415315628052, -1.714511513710022],
     [-1.6176910400390625, -0.02441379241645336, -1.664347529411316],
     [-0.7691081762313843, -0.02441379241645336, -2.512930393218994]),
    ([0.5328764915466309, -0.6215600967407227, -0.7625358700752258],
     [-0.1987054944038391, 0.06139333173632622, -0.6886976361274719],
     [0.6067147254943848, 0.06139333173632622, -1.4941178560256958]),
    ([0.7382786273956299, 0.05652071163058281, 1.2976469993591309],
     [1.345962643623352, 0.9288665056228638, 1.1370751857757568],
     [0.5777068138122559, 0.9288665056228638, 1.905331015586853]),
    ([0.3933068513870239, -1.5377299785614014, 1.8200013637542725],
     [-1.3530908823013306, 0.11642160266637802, 1.566456913948059],
     [0.13976240158081055, 0.11642160266637802, 0.07360363006591797]),
    ([-0.41447460651397705, -0.008849584497511387, -1.595095157623291],
     [0.9672095775604248, 0.9710425734519958, -2.5543932914733887],
     [-1.3737727403640747, 0.9710425734519958, -0.21341097354888916]),
]


def canon_fused(x, c):
    """The canonical sum as a compiler that contracts `sum + diff * diff` into an FMA computes it
    (one rounding of the exact product-plus-sum, done here with exact rationals)."""
    total = 0.0
    for a, b in zip(np.asarray(x, np.float64), np.asarray(c, np.float64)):
        diff = float(a - b)
        total = float(Fraction(diff) * Fraction(diff) + Fraction(total))
    return total


@pytest.mark.parametrize("case", range(len(FMA_SENSITIVE)))
def test_canonical_distance_is_not_fused(case):
    """The canonical float64 sum must stay unfused (-ffp-contract=off): GCC contracts across
    statements by default on aarch64, where FMA is always available (and on x86 with -mfma)."""
    x, c0, c1 = FMA_SENSITIVE[case]
    feats = np.array([x], np.float32)
    centroids = np.array([c0, c1], np.float32)
    assert canon_fused(feats[0], centroids[1]) < canon_fused(feats[0], centroids[0])  # the case bites
    tok = _kernels.CpuTokenizer(centroids, 1, 2)
    for mode in ("tree", "exact"):
        assert tokenize_reference(centroids, 1, 2, feats, mode, 1).tolist() == [0]
        assert tok.tokenize(feats, mode, 1).tolist() == [0], f"{mode}: the canonical sum was fused"
