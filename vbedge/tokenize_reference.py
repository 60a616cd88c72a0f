"""NumPy reference of the visual tokenizer: the oracle the C++ and CUDA kernels are tested against.

It implements docs/tokenizer.md literally: screening distances (here in float64, far more precise
than the kernels' float32), then the canonical float64 left-to-right squared distance for every
candidate inside the tolerance window, then ordering by ``(canon, index)``.
:func:`canonical_oracle` skips the screening and ranks every candidate canonically; it is slow
and exists to test the screening itself.

These functions validate nothing beyond what they need: :class:`vbedge.HierarchicalCodebook`
checks user input before calling them.
"""

import numpy as np

# float32 epsilon/2: the unit roundoff the kernels' float32 screening works with.
_UNIT_ROUNDOFF_F32 = 2.0**-24
# Pairs of (feature, centroid) refined canonically per chunk; bounds memory to ~64 MB of float64.
_CANON_CHUNK_ELEMS = 8 * 1024 * 1024
# Features handled per chunk in the gathered screening; bounds the (n, candidates, D) gather.
_SCREEN_CHUNK_ELEMS = 16 * 1024 * 1024


def num_centroids(levels, branching):
    """Rows of a codebook with ``levels`` levels of ``branching`` children: sum of k^(l+1)."""
    return sum(branching ** (level + 1) for level in range(levels))


def level_offsets(levels, branching):
    """First row of each level in the concatenated centroid array."""
    offsets, start = [], 0
    for level in range(levels):
        offsets.append(start)
        start += branching ** (level + 1)
    return offsets


def tolerance(feature_sq_norms, max_centroid_sq_norm, dim):
    """Screening window of docs/tokenizer.md: an upper bound of twice the float32 screening error."""
    return 8.0 * (dim + 8) * _UNIT_ROUNDOFF_F32 * (np.asarray(feature_sq_norms, np.float64) + max_centroid_sq_norm)


def canonical_sq_distances(features, centroids):
    """Canonical distance of each row pair: float64, left-to-right sum of squared differences.

    ``features`` and ``centroids`` are (P, D) arrays paired row by row. ``np.cumsum`` accumulates
    strictly in index order (unlike ``np.sum``'s pairwise summation), which is what makes this
    bit-identical to the kernels' sequential loops.
    """
    diff = features.astype(np.float64) - centroids.astype(np.float64)
    np.multiply(diff, diff, out=diff)
    return np.cumsum(diff, axis=1)[:, -1]


def _select_best(features, centroids, cand_ids, cand_rows, fast, keep, tol):
    """Keep the ``keep`` best candidates of each feature by (canon, id), screening with ``fast``.

    cand_ids/cand_rows/fast are (N, C); returns the kept ids (N, keep) in best-first order.
    """
    n, num_cand = cand_ids.shape
    if tol is None:  # oracle: every candidate is refined
        refine = np.ones((n, num_cand), dtype=bool)
    else:
        kth = np.partition(fast, keep - 1, axis=1)[:, keep - 1]
        refine = fast <= (kth + tol)[:, None]
    canon = np.full((n, num_cand), np.inf)
    feat_idx, cand_idx = np.nonzero(refine)
    dim = features.shape[1]
    step = max(1, _CANON_CHUNK_ELEMS // max(dim, 1))
    for start in range(0, feat_idx.size, step):
        fi = feat_idx[start:start + step]
        ci = cand_idx[start:start + step]
        canon[fi, ci] = canonical_sq_distances(features[fi], centroids[cand_rows[fi, ci]])
    # lexsort's last key is the primary one: canon first, then the id breaks exact ties.
    order = np.lexsort((cand_ids, canon), axis=1)[:, :keep]
    return np.take_along_axis(cand_ids, order, axis=1)


def _screen_distances(features, centroids, cand_rows, cent_sq_norms):
    """Float64 |x|^2 + |c|^2 - 2 x.c for gathered candidates, in feature chunks."""
    n, num_cand = cand_rows.shape
    dim = features.shape[1]
    out = np.empty((n, num_cand), dtype=np.float64)
    step = max(1, _SCREEN_CHUNK_ELEMS // max(num_cand * dim, 1))
    for start in range(0, n, step):
        x = features[start:start + step].astype(np.float64)
        rows = cand_rows[start:start + step]
        c = centroids[rows].astype(np.float64)
        dots = np.einsum("nd,ncd->nc", x, c)
        out[start:start + step] = (x * x).sum(axis=1)[:, None] + cent_sq_norms[rows] - 2.0 * dots
    return out


def _tokenize(centroids, levels, branching, features, mode, beam, screen):
    features = np.asarray(features)
    n, dim = features.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cent_sq = np.einsum("md,md->m", centroids.astype(np.float64), centroids.astype(np.float64))
    feat32 = features.astype(np.float32)
    feat_sq = np.einsum("nd,nd->n", feat32.astype(np.float64), feat32.astype(np.float64))
    tol = tolerance(feat_sq, float(cent_sq.max()), dim) if screen else None
    offsets = level_offsets(levels, branching)

    if mode == "exact":
        num_leaves = branching**levels
        leaf_rows = offsets[-1] + np.arange(num_leaves)
        # Screening over all leaves: one float64 matmul per feature chunk.
        best = np.empty(n, dtype=np.int64)
        step = max(1, _SCREEN_CHUNK_ELEMS // (num_leaves * 2))
        leaves64 = centroids[leaf_rows].astype(np.float64)
        for start in range(0, n, step):
            x = feat32[start:start + step].astype(np.float64)
            fast = feat_sq[start:start + step, None] + cent_sq[leaf_rows][None, :] - 2.0 * (x @ leaves64.T)
            ids = np.broadcast_to(np.arange(num_leaves, dtype=np.int64), fast.shape)
            rows = np.broadcast_to(leaf_rows, fast.shape)
            chunk_tol = None if tol is None else tol[start:start + step]
            best[start:start + step] = _select_best(
                feat32[start:start + step], centroids, ids, rows, fast, 1, chunk_tol
            )[:, 0]
        return best

    # Tree descent with a beam: candidates are the children of every node kept at the last level.
    # Start from a virtual root (id 0) whose children 0..k-1 are the level-0 nodes.
    beam_ids = np.zeros((n, 1), dtype=np.int64)
    for level in range(levels):
        children = (beam_ids[:, :, None] * branching + np.arange(branching)).reshape(n, -1)
        rows = offsets[level] + children
        fast = _screen_distances(feat32, centroids, rows, cent_sq)
        keep = min(beam, children.shape[1])
        beam_ids = _select_best(feat32, centroids, children, rows, fast, keep, tol)
    return beam_ids[:, 0].copy()


def tokenize_reference(centroids, levels, branching, features, mode="tree", beam=1):
    """Leaf ids of ``features`` (N, D) per docs/tokenizer.md, with float64 screening."""
    return _tokenize(centroids, levels, branching, features, mode, beam, screen=True)


def canonical_oracle(centroids, levels, branching, features, mode="tree", beam=1):
    """Leaf ids with every candidate ranked by the canonical distance (no screening; slow)."""
    return _tokenize(centroids, levels, branching, features, mode, beam, screen=False)
