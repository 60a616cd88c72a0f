"""HierarchicalCodebook: fitting, files, tokenization semantics and input errors.

The independent oracle here is brute force: exhaustive float64 distances to every leaf (exact
mode) or to each node's children (tree mode), written without the reference's screening code.
"""

import numpy as np
import pytest

from tree_cases import tree_centroids
from vbedge import FormatError, HierarchicalCodebook, InvalidInputError
from vbedge.tokenize_reference import canonical_oracle, level_offsets, num_centroids, tokenize_reference


def tree_codebook(levels, branching, dim, seed=0, spread=0.5):
    """Random centroids arranged as a tree: children = parent + noise (so descent is meaningful)."""
    return HierarchicalCodebook(tree_centroids(levels, branching, dim, seed, spread=spread), levels, branching)


def brute_force_tree(cb, x):
    """Greedy descent with exhaustive float64 distances, ties to the lower child (independent code)."""
    out = []
    for row in x.astype(np.float64):
        node = 0
        for level in range(cb.levels):
            first = node * cb.branching
            children = cb.level_centroids(level)[first:first + cb.branching].astype(np.float64)
            d = ((children - row) ** 2).sum(axis=1)
            node = first + int(np.argmin(d))
        out.append(node)
    return np.array(out)


def brute_force_exact(cb, x):
    d = ((x.astype(np.float64)[:, None, :] - cb.leaf_centroids().astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(axis=1)


def test_layout_helpers():
    assert num_centroids(4, 12) == 12 + 144 + 1728 + 20736 == 22620
    assert level_offsets(4, 12) == [0, 12, 156, 1884]
    cb = tree_codebook(3, 4, 8)
    assert cb.num_leaves == 64
    assert cb.leaf_path(4 * 16 * 0 + 4 * 3 + 2) == (0, 3, 2)
    assert cb.leaf_path(63) == (3, 3, 3)
    leaf = 2 * 16 + 1 * 4 + 3
    assert cb.leaf_path(leaf) == (2, 1, 3)
    np.testing.assert_array_equal(cb.centroid([leaf]), cb.centroids[4 + 16 + leaf][None])


@pytest.mark.parametrize("levels,branching,dim", [(2, 3, 5), (3, 5, 16), (4, 4, 32)])
def test_reference_matches_brute_force(levels, branching, dim):
    cb = tree_codebook(levels, branching, dim, seed=levels)
    x = np.random.default_rng(1).normal(size=(300, dim)).astype(np.float32)
    np.testing.assert_array_equal(cb.tokenize(x, device="numpy"), brute_force_tree(cb, x))
    np.testing.assert_array_equal(cb.tokenize(x, mode="exact", device="numpy"), brute_force_exact(cb, x))


def test_beam_covering_every_leaf_equals_exact():
    cb = tree_codebook(3, 4, 12)
    x = np.random.default_rng(2).normal(size=(200, 12)).astype(np.float32)
    full_beam = cb.tokenize(x, beam=cb.num_leaves, device="numpy")
    np.testing.assert_array_equal(full_beam, brute_force_exact(cb, x))


def test_beam_improves_or_keeps_leaf_distance():
    cb = tree_codebook(4, 5, 16, spread=1.0)
    x = np.random.default_rng(3).normal(size=(400, 16)).astype(np.float32)
    leaf = cb.leaf_centroids().astype(np.float64)

    def dist(ids):
        return ((leaf[ids] - x) ** 2).sum(axis=1)

    d1, d4 = dist(cb.tokenize(x, beam=1, device="numpy")), dist(cb.tokenize(x, beam=4, device="numpy"))
    # Not guaranteed per feature, but over 400 features a beam finds closer leaves overall.
    assert d4.mean() < d1.mean()


def test_ties_go_to_the_lower_id():
    # All children of every node identical: every level is a tie, the answer is always path 0...0.
    levels, k, dim = 3, 4, 6
    rows = np.concatenate([np.zeros((k ** (l + 1), dim)) for l in range(levels)]).astype(np.float32)
    cb = HierarchicalCodebook(rows, levels, k)
    x = np.random.default_rng(4).normal(size=(50, dim)).astype(np.float32)
    for mode, beam in (("tree", 1), ("tree", 3), ("exact", 1)):
        np.testing.assert_array_equal(cb.tokenize(x, mode=mode, beam=beam, device="numpy"), 0)
    # Equidistant: a point halfway between leaves 1 and 2 (exact in binary) picks leaf 1.
    leaves = np.full((k**levels, dim), 100.0, np.float32)
    leaves[1], leaves[2] = 1.0, 3.0
    rows = np.concatenate([np.zeros((k + k * k, dim), np.float32), leaves])
    cb = HierarchicalCodebook(rows, levels, k)
    np.testing.assert_array_equal(cb.tokenize(np.full((1, dim), 2.0, np.float32), mode="exact", device="numpy"), [1])


def test_screening_equals_canonical_oracle_on_hard_inputs():
    cb = tree_codebook(3, 4, 16, seed=5)
    rng = np.random.default_rng(6)
    far = rng.normal(size=(20, 16)) * 1e6  # every centroid is nearly equidistant
    near_tie = (cb.leaf_centroids()[:20] + cb.leaf_centroids()[1:21]) / 2
    x = np.concatenate([far, near_tie, rng.normal(size=(20, 16))]).astype(np.float32)
    for mode, beam in (("tree", 1), ("tree", 5), ("exact", 1)):
        ref = tokenize_reference(cb.centroids, 3, 4, x, mode, beam)
        np.testing.assert_array_equal(ref, canonical_oracle(cb.centroids, 3, 4, x, mode, beam))


def test_float16_input_is_tokenized_as_its_float32_value():
    cb = tree_codebook(3, 4, 16)
    x16 = np.random.default_rng(7).normal(size=(100, 16)).astype(np.float16)
    np.testing.assert_array_equal(
        cb.tokenize(x16, device="numpy"), cb.tokenize(x16.astype(np.float32), device="numpy")
    )


def test_empty_and_single_inputs():
    cb = tree_codebook(2, 3, 4)
    assert cb.tokenize(np.zeros((0, 4), np.float32), device="numpy").shape == (0,)
    one = cb.tokenize(np.ones((1, 4), np.float32), device="numpy")
    assert one.dtype == np.int64 and one.shape == (1,)


@pytest.mark.parametrize(
    "features,match",
    [
        (np.zeros((3, 5), np.float32), "D=4"),
        (np.zeros(4, np.float32), "rank 1"),
        (np.zeros((3, 4), np.float64), "float32 or float16"),
        (np.zeros((3, 4), np.int32), "float32 or float16"),
        ([[0.0] * 4], "NumPy array"),
    ],
)
def test_bad_features_are_rejected(features, match):
    cb = tree_codebook(2, 3, 4)
    with pytest.raises(InvalidInputError, match=match):
        cb.tokenize(features, device="numpy")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("device", ["numpy", "auto"])
def test_non_finite_rows_are_named(value, device):
    cb = tree_codebook(2, 3, 4)
    x = np.zeros((5, 4), np.float32)
    x[3, 2] = value
    with pytest.raises(InvalidInputError, match="row 3"):
        cb.tokenize(x, device=device)


def test_bad_options_are_rejected():
    cb = tree_codebook(2, 3, 4)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(InvalidInputError, match="mode"):
        cb.tokenize(x, mode="greedy")
    with pytest.raises(InvalidInputError, match="beam"):
        cb.tokenize(x, mode="exact", beam=2)
    with pytest.raises(InvalidInputError, match="beam"):
        cb.tokenize(x, beam=0)
    with pytest.raises(InvalidInputError, match="beam"):
        cb.tokenize(x, beam=10)
    with pytest.raises(InvalidInputError, match="device"):
        cb.tokenize(x, device="gpu")


def test_fit_is_deterministic_and_full():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(loc=c, size=(300, 8)) for c in range(-3, 3)]).astype(np.float32)
    a = HierarchicalCodebook.fit(x, levels=3, branching=4, seed=3, progress=False)
    b = HierarchicalCodebook.fit(x, levels=3, branching=4, seed=3, progress=False)
    c = HierarchicalCodebook.fit(x, levels=3, branching=4, seed=4, progress=False)
    assert a.sha256 == b.sha256 != c.sha256
    assert a.centroids.shape == (num_centroids(3, 4), 8)
    # Every level-0 centroid is the mean of the features nearest to it (k-means fixed point).
    ids = ((x[:, None] - a.level_centroids(0)[None]) ** 2).sum(-1).argmin(1)
    for j in range(4):
        np.testing.assert_allclose(a.level_centroids(0)[j], x[ids == j].mean(axis=0), atol=1e-3)
    # Fitted leaves are close to the data: tokenized features sit near their leaf.
    leaf_dist = ((a.centroid(a.tokenize(x, device="numpy")) - x) ** 2).sum(1).mean()
    assert leaf_dist < ((x - x.mean(0)) ** 2).sum(1).mean() / 3


def test_fit_with_fewer_points_than_branches_and_duplicates():
    x = np.repeat(np.eye(3, 6, dtype=np.float32), 5, axis=0)  # 3 distinct points, 15 rows
    cb = HierarchicalCodebook.fit(x, levels=3, branching=4, seed=0, progress=False)
    assert np.isfinite(cb.centroids).all() and cb.centroids.shape == (num_centroids(3, 4), 6)
    ids = cb.tokenize(x, device="numpy")
    # Each distinct point lands on a leaf whose centroid is the point itself.
    np.testing.assert_allclose(cb.centroid(ids), x, atol=1e-6)


def test_save_load_roundtrip(tmp_path):
    cb = tree_codebook(3, 4, 8)
    path = cb.save(tmp_path / "cb.npz")
    loaded = HierarchicalCodebook.load(path)
    assert loaded.sha256 == cb.sha256 and (loaded.levels, loaded.branching) == (3, 4)
    np.testing.assert_array_equal(loaded.centroids, cb.centroids)


def _write(path, **fields):
    base = dict(
        kind=np.array("vbedge.hierarchical_codebook"),
        format_version=np.array(1),
        levels=np.array(2),
        branching=np.array(3),
        centroids=np.zeros((12, 4), np.float32),
    )
    base.update(fields)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(centroids=np.zeros((11, 4), np.float32)), r"\(12, D\)"),
        (dict(centroids=np.zeros((12, 4), np.float64)), "float32"),
        (dict(centroids=np.full((12, 4), np.nan, np.float32)), "not finite"),
        (dict(format_version=np.array(99)), "version 99"),
        (dict(levels=None), "missing"),
        (dict(kind=np.array("something.else")), "not a vbedge"),
    ],
)
def test_load_rejects_bad_files(tmp_path, fields, match):
    path = _write(tmp_path / "bad.npz", **fields)
    with pytest.raises(FormatError, match=match):
        HierarchicalCodebook.load(path)


def test_load_rejects_corrupt_and_missing(tmp_path):
    good = tree_codebook(2, 3, 4).save(tmp_path / "good.npz")
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        HierarchicalCodebook.load(truncated)
    with pytest.raises(FileNotFoundError):
        HierarchicalCodebook.load(tmp_path / "absent.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, kind=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError):
        HierarchicalCodebook.load(pickled)
