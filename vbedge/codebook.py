"""Hierarchical k-means codebook: S3D features in, visual-token leaf ids out.

The centroid layout, the exact metric and the tie rules are defined in docs/tokenizer.md; the
NumPy reference (:mod:`vbedge.tokenize_reference`), the C++ kernel (``vbedge._kernels``) and the
CUDA kernel (``vbedge._kernels_cuda``) all return the same leaf ids.
"""

import hashlib
import logging
import os
import zipfile

import numpy as np

from .errors import FormatError, InvalidInputError, MissingDependencyError
from .tokenize_reference import level_offsets, num_centroids, tokenize_reference

logger = logging.getLogger(__name__)

CODEBOOK_FORMAT_VERSION = 1
_CODEBOOK_KIND = "vbedge.hierarchical_codebook"
_TOKENIZE_MODES = ("tree", "exact")
_DEVICES_HELP = "'auto', 'cpu', 'numpy' (reference), 'cuda' or 'cuda:N'"


class HierarchicalCodebook:
    """A tree of k-means centroids (``levels`` levels, ``branching`` children per node).

    ``centroids`` is the (M, D) float32 array of every node, level after level, node ``j`` of
    level ``l`` being the path of branch choices written in base ``branching`` (docs/tokenizer.md).
    Leaf ids run from 0 to ``branching ** levels - 1``.
    """

    def __init__(self, centroids, levels=4, branching=12):
        levels, branching = _check_tree_shape(levels, branching)
        centroids = np.asarray(centroids)
        expected_rows = num_centroids(levels, branching)
        if centroids.ndim != 2 or centroids.shape[0] != expected_rows or centroids.shape[1] < 1:
            raise FormatError(
                f"centroids must have shape ({expected_rows}, D) for levels={levels}, "
                f"branching={branching}; got {centroids.shape}"
            )
        if centroids.dtype != np.float32:
            if centroids.dtype.kind != "f":
                raise FormatError(f"centroids must be float32, got {centroids.dtype}")
            centroids = centroids.astype(np.float32)
        if not np.isfinite(centroids).all():
            bad = int(np.argwhere(~np.isfinite(centroids).all(axis=1))[0, 0])
            raise FormatError(f"centroid row {bad} is not finite (NaN or Inf)")
        self._centroids = np.ascontiguousarray(centroids)
        self._centroids.setflags(write=False)
        self._levels = levels
        self._branching = branching
        self._offsets = level_offsets(levels, branching)
        self._cpu_kernel = None
        self._cuda_kernels = {}
        self._sha256 = None

    # ------------------------------------------------------------------ shape
    @property
    def levels(self):
        """Depth of the tree (4 in VideoBERT)."""
        return self._levels

    @property
    def branching(self):
        """Children per node (12 in VideoBERT)."""
        return self._branching

    @property
    def dim(self):
        """Feature dimension D."""
        return self._centroids.shape[1]

    @property
    def num_leaves(self):
        """Number of visual words: ``branching ** levels``."""
        return self._branching**self._levels

    @property
    def centroids(self):
        """All node centroids, (M, D) float32, read-only."""
        return self._centroids

    def level_centroids(self, level):
        """Centroids of one level, (branching ** (level + 1), D)."""
        if not 0 <= level < self._levels:
            raise InvalidInputError(f"level must be in [0, {self._levels}), got {level}")
        start = self._offsets[level]
        return self._centroids[start:start + self._branching ** (level + 1)]

    def leaf_centroids(self):
        """Centroids of the leaves, (num_leaves, D); row i is leaf i."""
        return self.level_centroids(self._levels - 1)

    def centroid(self, leaf_ids):
        """Centroids of the given leaf ids, (n, D) float32 (or (D,) for a scalar id)."""
        ids = np.asarray(leaf_ids)
        if ids.dtype.kind not in "iu":
            raise InvalidInputError(f"leaf ids must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_leaves):
            raise InvalidInputError(f"leaf ids must be in [0, {self.num_leaves}), got {ids.min()}..{ids.max()}")
        return self.leaf_centroids()[ids]

    def leaf_path(self, leaf_id):
        """Branch chosen at each level for ``leaf_id``, root first (digits of the id in base k)."""
        leaf_id = int(leaf_id)
        if not 0 <= leaf_id < self.num_leaves:
            raise InvalidInputError(f"leaf id must be in [0, {self.num_leaves}), got {leaf_id}")
        path = []
        for _ in range(self._levels):
            leaf_id, digit = divmod(leaf_id, self._branching)
            path.append(digit)
        return tuple(reversed(path))

    @property
    def sha256(self):
        """Hex digest identifying the tree shape and centroid values (for bundle/model references)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            h.update(f"{_CODEBOOK_KIND}:{self._levels}:{self._branching}:{self.dim}:".encode())
            h.update(self._centroids.tobytes())
            self._sha256 = h.hexdigest()
        return self._sha256

    def __repr__(self):
        return (
            f"HierarchicalCodebook(levels={self._levels}, branching={self._branching}, "
            f"dim={self.dim}, leaves={self.num_leaves})"
        )

    # ------------------------------------------------------------------ files
    def save(self, path):
        """Write the codebook to ``path`` (.npz, no pickle) and return the path written."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        tmp = path + ".tmp.npz"
        np.savez(
            tmp,
            kind=np.array(_CODEBOOK_KIND),
            format_version=np.array(CODEBOOK_FORMAT_VERSION, dtype=np.int64),
            levels=np.array(self._levels, dtype=np.int64),
            branching=np.array(self._branching, dtype=np.int64),
            centroids=self._centroids,
        )
        os.replace(tmp, path)  # never leave a half-written codebook under the real name
        return path

    @classmethod
    def load(cls, path):
        """Read a codebook written by :meth:`save`; raises FormatError on anything inconsistent."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"codebook file not found: {path}")
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise FormatError(f"{path} is not a vbedge codebook: a plain .npy array, expected an .npz archive")
            with data:
                fields = {name: data[name] for name in data.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{path} is not a readable codebook .npz file: {exc}") from exc
        missing = {"kind", "format_version", "levels", "branching", "centroids"} - set(fields)
        if missing:
            raise FormatError(f"{path} is not a vbedge codebook: missing {sorted(missing)}")
        if str(fields["kind"]) != _CODEBOOK_KIND:
            raise FormatError(f"{path} holds {str(fields['kind'])!r}, not a {_CODEBOOK_KIND}")
        version = int(fields["format_version"])
        if version > CODEBOOK_FORMAT_VERSION:
            raise FormatError(
                f"{path} has codebook format version {version}; this vbedge reads up to "
                f"{CODEBOOK_FORMAT_VERSION} (upgrade vbedge)"
            )
        centroids = fields["centroids"]
        if centroids.dtype != np.float32:
            raise FormatError(f"{path}: centroids must be float32, found {centroids.dtype}")
        try:
            return cls(centroids, int(fields["levels"]), int(fields["branching"]))
        except (FormatError, InvalidInputError) as exc:
            raise FormatError(f"{path}: {exc}") from exc

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, features, levels=4, branching=12, seed=0, max_iter=25, progress=True):
        """Fit the tree by hierarchical k-means, as in VideoBERT.

        Cluster all features into ``branching`` groups, then cluster each group's members again,
        down to depth ``levels``. Deterministic for a ``seed``. A node with fewer distinct members
        than ``branching`` (or none) still gets ``branching`` children: its distinct members, then
        copies, so the tree is always full and valid (copies lose every tie to the lower id).
        """
        from .kmeans import kmeans

        levels, branching = _check_tree_shape(levels, branching)
        features = _check_features(features, dim=None, name="features")
        features = np.ascontiguousarray(features, dtype=np.float32)
        n, dim = features.shape
        if n == 0:
            raise InvalidInputError("cannot fit a codebook on 0 features")
        centroids = np.empty((num_centroids(levels, branching), dim), dtype=np.float32)
        offsets = level_offsets(levels, branching)
        # members[j] = indices of the features assigned to node j of the previous level.
        members = [np.arange(n)]
        parent_centroids = features.mean(axis=0, dtype=np.float64).astype(np.float32)[None]
        seeds = np.random.SeedSequence(seed)
        total_nodes = sum(branching**level for level in range(levels))
        bar = _progress(total_nodes, "fitting codebook", progress)
        try:
            for level in range(levels):
                level_seeds = seeds.spawn(1)[0].generate_state(len(members))
                next_members = []
                for node, idx in enumerate(members):
                    sub = features[idx]
                    rng = np.random.default_rng(int(level_seeds[node]))
                    centers, labels = kmeans(sub, branching, rng, max_iter=max_iter, fallback=parent_centroids[node])
                    first = offsets[level] + node * branching
                    centroids[first:first + branching] = centers
                    next_members.extend(idx[labels == c] for c in range(branching))
                    bar.update(1)
                members = next_members
                parent_centroids = centroids[offsets[level]:offsets[level] + branching ** (level + 1)]
        finally:
            bar.close()
        return cls(centroids, levels, branching)

    # ------------------------------------------------------------------ tokenizing
    def tokenize(self, features, mode="tree", beam=1, device="auto"):
        """Leaf id (int64) of each feature row.

        ``features``: (N, D) float32/float16 NumPy array, or a CUDA array (torch tensor, cupy
        array: anything with ``__cuda_array_interface__``), tokenized on its GPU on the current
        stream and returned as the same kind of array. ``mode="tree"`` descends the tree
        (``beam`` > 1 keeps the best ``beam`` paths per level); ``mode="exact"`` returns the
        nearest leaf over all leaves. ``device``: 'auto' (the array's device; C++ for NumPy),
        'cpu' (C++ kernel), 'numpy' (the slow reference), 'cuda' or 'cuda:N'.
        """
        mode, beam = self._check_mode(mode, beam)
        kind, index = _parse_device(device)
        if hasattr(features, "__cuda_array_interface__"):
            if kind in ("cpu", "numpy"):
                raise InvalidInputError(
                    f"features are on a CUDA device but device={device!r}; copy them to the host "
                    "first or use device='auto'/'cuda'"
                )
            array_index = _device_index_of(features)
            if index is not None and index != array_index:
                raise InvalidInputError(f"features are on cuda:{array_index} but device={device!r}")
            return self._cuda_kernel(array_index).tokenize(features, mode=mode, beam=beam)
        features = _check_features(features, dim=self.dim, name="features")
        if kind == "cuda":
            return self._cuda_kernel(index or 0).tokenize(np.ascontiguousarray(features), mode=mode, beam=beam)
        if kind == "numpy" or (kind == "auto" and self._cpu() is None):
            _check_finite_rows(features)
            return tokenize_reference(self._centroids, self._levels, self._branching, features, mode, beam)
        kernel = self._cpu()
        if kernel is None:
            raise MissingDependencyError(
                "the C++ tokenizer extension vbedge._kernels is not built; reinstall vbedge "
                "(pip install -e .) or use device='numpy'"
            )
        try:
            return kernel.tokenize(np.ascontiguousarray(features), mode, beam)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc

    def _check_mode(self, mode, beam):
        if mode not in _TOKENIZE_MODES:
            raise InvalidInputError(f"mode must be one of {_TOKENIZE_MODES}, got {mode!r}")
        if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)):
            raise InvalidInputError(f"beam must be an integer, got {beam!r}")
        beam = int(beam)
        if mode == "exact" and beam != 1:
            raise InvalidInputError(f"beam applies to mode='tree' only; mode='exact' takes beam=1, got {beam}")
        if not 1 <= beam <= self.num_leaves:
            raise InvalidInputError(f"beam must be in [1, {self.num_leaves}], got {beam}")
        return mode, beam

    def _cpu(self):
        if self._cpu_kernel is None:
            try:
                from . import _kernels
            except ImportError:
                return None
            self._cpu_kernel = _kernels.CpuTokenizer(self._centroids, self._levels, self._branching)
        return self._cpu_kernel

    def _cuda_kernel(self, device_index):
        kernel = self._cuda_kernels.get(device_index)
        if kernel is None:
            from .cuda_tokenizer import CudaTokenizer

            kernel = CudaTokenizer(self._centroids, self._levels, self._branching, device=device_index)
            self._cuda_kernels[device_index] = kernel
        return kernel


def cpu_kernel_available():
    """Whether the C++ tokenizer extension ``vbedge._kernels`` is built and importable."""
    try:
        from . import _kernels  # noqa: F401
    except ImportError:
        return False
    return True


def _check_tree_shape(levels, branching):
    for name, value in (("levels", levels), ("branching", branching)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    levels, branching = int(levels), int(branching)
    if not 1 <= levels <= 8:
        raise InvalidInputError(f"levels must be in [1, 8], got {levels}")
    if not 2 <= branching <= 256:
        raise InvalidInputError(f"branching must be in [2, 256], got {branching}")
    if branching**levels > 2**31 - 1:
        raise InvalidInputError(f"branching**levels must fit in int32, got {branching}**{levels}")
    return levels, branching


def _check_features(features, dim, name):
    if not isinstance(features, np.ndarray):
        raise InvalidInputError(
            f"{name} must be a NumPy array (or a CUDA array), got {type(features).__name__}"
        )
    if features.ndim != 2:
        raise InvalidInputError(f"{name} must have shape (N, D), got rank {features.ndim} shape {features.shape}")
    if dim is not None and features.shape[1] != dim:
        raise InvalidInputError(f"{name} must have D={dim} columns (the codebook's), got shape {features.shape}")
    if features.dtype not in (np.float32, np.float16):
        raise InvalidInputError(f"{name} must be float32 or float16, got {features.dtype}")
    return features


def _check_finite_rows(features):
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise InvalidInputError(f"feature row {int(np.argmin(finite))} is not finite (NaN or Inf)")
    sq = np.einsum("nd,nd->n", features.astype(np.float64), features.astype(np.float64))
    too_big = sq > np.finfo(np.float32).max
    if too_big.any():
        raise InvalidInputError(
            f"feature row {int(np.argmax(too_big))} has a squared norm beyond float32 range ({sq.max():.3g})"
        )


def _device_index_of(array):
    # torch tensors expose .device.index, cupy arrays .device.id; other CUDA arrays: device 0.
    device = getattr(array, "device", None)
    for attr in ("index", "id"):
        value = getattr(device, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _parse_device(device):
    if not isinstance(device, str):
        raise InvalidInputError(f"device must be {_DEVICES_HELP}, got {device!r}")
    if device in ("auto", "cpu", "numpy"):
        return device, None
    if device == "cuda":
        return "cuda", None
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise InvalidInputError(f"device must be {_DEVICES_HELP}, got {device!r}")


def _progress(total, desc, enabled):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but progress must never break fitting
        enabled = False
    if not enabled:
        class _Silent:
            def update(self, _n):
                pass

            def close(self):
                pass

        return _Silent()
    return tqdm(total=total, desc=desc, unit="node", mininterval=0.5)


def load_features_npy(path):
    """A features array from a ``.npy`` file (never unpickles); clear errors for bad files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"features file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{path} is not a readable .npy array: {exc}") from exc
