"""Check exported ONNX graphs against PyTorch with ONNX Runtime (CPU).

Every export runs the ONNX graph on fresh random inputs and compares its outputs with the
PyTorch module's: features by max absolute error and cosine similarity, ranked predictions by
top-1 agreement and top-k overlap (tie-aware: :func:`tie_aware_topk`). A failed tolerance raises :class:`ExportCheckError`: an export
that does not reproduce the model is an error, never a warning. Tolerances are documented in
``docs/export.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vbedge.errors import FormatError, InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)


class ExportCheckError(FormatError):
    """An exported graph's outputs differ from PyTorch's by more than the tolerance."""


def make_session(onnx_path, threads=None, optimization="all", spinning=True):
    """Return an ONNX Runtime CPU session for ``onnx_path``, with
    :func:`vbedge.backends.onnxruntime.session_options` (``threads``, ``optimization`` "all" or
    "basic", ``spinning``: read there). Several sessions timed in turn in one process want
    ``spinning=False`` (``benchmarks/bench_ort_spinning.py``, 2026-12-04, 2-core EPYC: FP32 S3D
    59.6 ms interleaved with two other spinning sessions, 23.3 ms with none spinning, 24.5 ms alone)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - runtime dependency
        raise MissingDependencyError(f"onnxruntime is needed to check exports: {exc}") from exc
    from vbedge.backends.onnxruntime import session_options

    path = Path(onnx_path)
    if not path.is_file():
        raise FormatError(f"ONNX model not found: {path}")
    options = session_options(threads, optimization=optimization, spinning=spinning)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_path_or_session, feeds):
    """Run a graph on CPU and return ``{output_name: ndarray}``."""
    session = (onnx_path_or_session if hasattr(onnx_path_or_session, "run")
               else make_session(onnx_path_or_session))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _as_rows(array, what):
    array = np.asarray(array)
    if array.ndim == 0 or array.size == 0:
        raise InvalidInputError(f"{what} must be a non-empty array with a batch axis, "
                                f"got shape {array.shape}")
    return array.reshape(array.shape[0], -1).astype(np.float64)


def compare_features(ref, got) -> dict:
    """Compare two feature arrays of the same shape (batch first).

    Returns ``{"max_abs": float, "mean_cos": float, "min_cos": float}``: the largest absolute
    difference, and the mean and smallest per-row cosine similarity.
    """
    ref_rows, got_rows = _as_rows(ref, "reference"), _as_rows(got, "output")
    if ref_rows.shape != got_rows.shape:
        raise InvalidInputError(f"cannot compare outputs of shapes {np.shape(ref)} and "
                                f"{np.shape(got)}; expected the same shape")
    if not np.all(np.isfinite(got_rows)):
        # NaN/Inf make every distance meaningless; report them as an infinite error.
        return {"max_abs": float("inf"), "mean_cos": float("nan"), "min_cos": float("nan")}
    max_abs = float(np.max(np.abs(ref_rows - got_rows)))
    norms = np.linalg.norm(ref_rows, axis=1) * np.linalg.norm(got_rows, axis=1)
    dots = np.sum(ref_rows * got_rows, axis=1)
    # Two all-zero rows are identical; count them as cosine 1 instead of 0/0.
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                   np.where(np.all(ref_rows == got_rows, axis=1), 1.0, 0.0))
    return {"max_abs": max_abs, "mean_cos": float(np.mean(cos)), "min_cos": float(np.min(cos))}


def compare_topk(ref_ids, got_ids) -> dict:
    """Compare ranked id lists of shape (..., k), best first.

    Returns ``{"top1_agreement": float, "topk_overlap": float}``: the fraction of rows whose best
    id agrees, and the mean fraction of the reference's k ids found among the output's k ids.
    """
    ref_ids, got_ids = np.asarray(ref_ids), np.asarray(got_ids)
    if ref_ids.shape != got_ids.shape or ref_ids.ndim == 0 or ref_ids.size == 0:
        raise InvalidInputError(f"top-k id arrays must be non-empty with equal shapes, got "
                                f"{ref_ids.shape} and {got_ids.shape}")
    k = ref_ids.shape[-1]
    ref_rows, got_rows = ref_ids.reshape(-1, k), got_ids.reshape(-1, k)
    top1 = float(np.mean(ref_rows[:, 0] == got_rows[:, 0]))
    overlap = float(np.mean([len(set(r.tolist()) & set(g.tolist())) / k
                             for r, g in zip(ref_rows, got_rows)]))
    return {"top1_agreement": top1, "topk_overlap": overlap}


def reference_scores_at(ref_ids, ref_scores, got_ids, ref_lookup=None, id_offset=0) -> np.ndarray:
    """The reference's score of each id in ``got_ids`` (rows, k'), as float64.

    From ``ref_lookup`` (rows, V; id ``i`` at column ``i - id_offset``) when given, else from the
    reference's own top-k (``ref_ids``/``ref_scores``, rows x k), where an absent id scores -inf.
    """
    ref_ids, got_ids = np.asarray(ref_ids), np.asarray(got_ids)
    ref_scores = np.asarray(ref_scores, dtype=np.float64)
    if ref_lookup is not None:
        lookup = np.asarray(ref_lookup, dtype=np.float64)
        columns = got_ids - id_offset
        if lookup.ndim != 2 or lookup.shape[0] != ref_ids.shape[0] or columns.min() < 0 or columns.max() >= lookup.shape[1]:
            raise InvalidInputError(f"ref_lookup of shape {lookup.shape} does not cover ids "
                                    f"{got_ids.min()}..{got_ids.max()} (offset {id_offset})")
        return np.take_along_axis(lookup, columns, axis=1)
    match = got_ids[:, :, None] == ref_ids[:, None, :]
    return np.where(match.any(axis=2), np.where(match, ref_scores[:, None, :], -np.inf).max(axis=2), -np.inf)


def tie_aware_topk(ref_ids, ref_scores, got_ids, tol, ref_lookup=None, id_offset=0) -> dict:
    """Top-1 agreement and top-k overlap that count *tied* ids as agreeing.

    Two runtimes may order exactly (or nearly) tied logits differently: a small corpus gives
    duplicate codebook leaves, hence identical visual embeddings and identical logits, and ONNX
    Runtime and PyTorch then return different ids of equal score. Comparing ids would call that a
    disagreement; this compares the *reference's scores at the ids the other model chose*.

    Args:
        ref_ids, ref_scores: (rows, k) the reference's top-k ids and scores, best first.
        got_ids: (rows, k') the other model's ids, best first (k' <= k for the overlap).
        tol: scores closer than this are tied.
        ref_lookup: optional (rows, V) reference scores of every id (id ``i`` at column
            ``i - id_offset``); without it a chosen id is looked up in the reference's top-k and
            counts as below the k-th score when absent (conservative).

    Returns ``{"top1_agreement", "topk_overlap", "top1_id_agreement", "tied_rows"}``: a row agrees
    at top-1 when the reference scores the other model's best id within ``tol`` of its own best;
    the overlap is the mean fraction of the other model's ids that the reference scores within
    ``tol`` of its k-th best; ``top1_id_agreement`` is plain id equality, and ``tied_rows`` the
    number of rows whose reference best and second best are within ``tol``.
    """
    ref_ids, got_ids = np.asarray(ref_ids), np.asarray(got_ids)
    ref_scores = np.asarray(ref_scores, dtype=np.float64)
    if got_ids.ndim == 1:
        got_ids = got_ids[:, None]
    if (ref_ids.ndim != 2 or ref_ids.shape != ref_scores.shape or got_ids.ndim != 2
            or got_ids.shape[0] != ref_ids.shape[0] or ref_ids.size == 0 or got_ids.shape[1] > ref_ids.shape[1]):
        raise InvalidInputError(f"expected (rows, k) reference ids and scores and (rows, k' <= k) ids, got "
                                f"{ref_ids.shape}, {ref_scores.shape}, {got_ids.shape}")
    got_scores = reference_scores_at(ref_ids, ref_scores, got_ids, ref_lookup, id_offset)
    best, kth = ref_scores[:, 0], ref_scores[:, got_ids.shape[1] - 1]
    top1 = got_scores[:, 0] >= best - tol
    overlap = (got_scores >= (kth - tol)[:, None]).mean(axis=1)
    tied = int(np.sum(ref_scores[:, 0] - ref_scores[:, 1] <= tol)) if ref_ids.shape[1] >= 2 else 0
    return {"top1_agreement": float(np.mean(top1)), "topk_overlap": float(np.mean(overlap)),
            "top1_id_agreement": float(np.mean(got_ids[:, 0] == ref_ids[:, 0])), "tied_rows": tied}


def check_features(ref, got, max_abs, min_cos, what="output") -> dict:
    """Compare features and raise :class:`ExportCheckError` when a tolerance fails.

    ``max_abs`` bounds the largest absolute difference, ``min_cos`` the smallest per-row
    cosine. Returns the metrics of :func:`compare_features` with the tolerances added.
    """
    metrics = compare_features(ref, got)
    metrics.update({"tol_max_abs": max_abs, "tol_min_cos": min_cos})
    failures = []
    if not metrics["max_abs"] <= max_abs:  # `not <=` so NaN fails too
        failures.append(f"max abs error {metrics['max_abs']:.3g} > {max_abs:.3g}")
    if not metrics["min_cos"] >= min_cos:
        failures.append(f"min cosine {metrics['min_cos']:.6f} < {min_cos:.6f}")
    if failures:
        raise ExportCheckError(f"{what} differs from PyTorch: {'; '.join(failures)}")
    log.info("%s matches PyTorch: max_abs=%.3g min_cos=%.6f", what, metrics["max_abs"],
             metrics["min_cos"])
    return metrics


def check_topk(ref_ids, got_ids, min_top1, min_overlap, what="top-k ids") -> dict:
    """Compare top-k ids and raise :class:`ExportCheckError` when a tolerance fails."""
    metrics = compare_topk(ref_ids, got_ids)
    metrics.update({"tol_top1_agreement": min_top1, "tol_topk_overlap": min_overlap})
    failures = []
    if not metrics["top1_agreement"] >= min_top1:
        failures.append(f"top-1 agreement {metrics['top1_agreement']:.3f} < {min_top1:.3f}")
    if not metrics["topk_overlap"] >= min_overlap:
        failures.append(f"top-k overlap {metrics['topk_overlap']:.3f} < {min_overlap:.3f}")
    if failures:
        raise ExportCheckError(f"{what} differ from PyTorch: {'; '.join(failures)}")
    return metrics
