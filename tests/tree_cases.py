"""Synthetic hierarchical codebooks for the tokenizer tests (NumPy, C++ and CUDA alike)."""

import numpy as np


def tree_centroids(levels, branching, dim, seed=0, *, spread=0.5, scale=1.0):
    """Centroids arranged as a tree, float32, in the codebook's level-major layout.

    Level 0 is ``scale * N(0, 1)``; every child is its parent plus noise shrinking by ``spread``
    per level, so greedy descent is meaningful. ``seed`` is an int or a ``numpy.random.Generator``
    (whose stream is then consumed).
    """
    rng = np.random.default_rng(seed)
    parts, parent, noise = [], np.zeros((1, dim), np.float64), scale
    for _ in range(levels):
        base = np.repeat(parent, branching, axis=0)
        parent = base + rng.standard_normal(base.shape) * noise
        parts.append(parent)
        noise *= spread
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))
