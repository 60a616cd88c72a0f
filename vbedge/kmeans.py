"""Small, deterministic k-means used by the codebook fitter (NumPy only)."""

import numpy as np


def _sq_distances(points, centers):
    # |x|^2 + |c|^2 - 2 x.c in float32 BLAS; clipped at 0 since rounding can go slightly negative.
    d = (points * points).sum(axis=1)[:, None] + (centers * centers).sum(axis=1)[None, :]
    d -= 2.0 * (points @ centers.T)
    np.maximum(d, 0.0, out=d)
    return d


def _kmeans_plus_plus(points, k, rng):
    """k-means++ seeding; when fewer than k distinct points exist, the extra seeds repeat the first."""
    n = points.shape[0]
    centers = np.empty((k, points.shape[1]), dtype=np.float32)
    centers[0] = points[rng.integers(n)]
    closest = _sq_distances(points, centers[:1])[:, 0]
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # every point coincides with a chosen center: no new distinct seed exists
            centers[i:] = centers[0]
            break
        centers[i] = points[rng.choice(n, p=closest / total)]
        np.minimum(closest, _sq_distances(points, centers[i:i + 1])[:, 0], out=closest)
    return centers


def kmeans(points, k, rng, max_iter=25, tol=1e-6, fallback=None):
    """Cluster ``points`` (n, D) float32 into ``k`` centers; returns (centers (k, D), labels (n,)).

    Lloyd iterations from k-means++ seeds. A cluster that empties is re-seeded with the point
    farthest from its center. With no points at all, every center is ``fallback`` (the parent's
    centroid), so a node always has k valid children.
    """
    n, dim = points.shape
    if n == 0:
        base = np.zeros(dim, np.float32) if fallback is None else np.asarray(fallback, np.float32)
        return np.repeat(base[None], k, axis=0), np.zeros(0, dtype=np.int64)
    centers = _kmeans_plus_plus(points, k, rng)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(max_iter):
        dist = _sq_distances(points, centers)
        labels = dist.argmin(axis=1)
        counts = np.bincount(labels, minlength=k)
        # Sums through a one-hot matmul: fast BLAS instead of a scatter-add over n x D.
        onehot = np.zeros((k, n), dtype=np.float32)
        onehot[labels, np.arange(n)] = 1.0
        sums = onehot @ points
        new_centers = centers.copy()
        nonempty = counts > 0
        new_centers[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            far = dist[np.arange(n), labels].argsort()[::-1]
            new_centers[empty] = points[far[: empty.size]] if far.size >= empty.size else centers[empty]
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= tol * max(float((centers * centers).sum()), 1e-30):
            break
    labels = _sq_distances(points, centers).argmin(axis=1)
    return centers.astype(np.float32), labels
