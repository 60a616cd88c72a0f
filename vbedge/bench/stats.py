"""Latency statistics: percentiles (NumPy's default linear interpolation) and summaries."""

import math

from ..errors import InvalidInputError

#: The percentiles every stage summary carries.
PERCENTILES = (50, 90, 95, 99)


def percentile(values, q):
    """The ``q``-th percentile of ``values`` by linear interpolation between closest ranks.

    Matches ``numpy.percentile(values, q)`` (its default ``method="linear"``): the sorted values
    are indexed at ``q / 100 * (n - 1)`` and the two neighbours are interpolated.

    Raises:
        InvalidInputError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise InvalidInputError("percentile of an empty list of values")
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
        raise InvalidInputError(f"percentile q must be a number in [0, 100], got {q!r}")
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values_ms):
    """``count``, ``min_ms``, ``mean_ms``, ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``,
    ``max_ms`` of a list of milliseconds (``count`` 0 and ``None`` elsewhere when empty)."""
    values = [float(v) for v in values_ms]
    keys = ["min_ms", "mean_ms"] + [f"p{q}_ms" for q in PERCENTILES] + ["max_ms"]
    if not values:
        return {"count": 0, **{k: None for k in keys}}
    summary = {"count": len(values), "min_ms": min(values), "mean_ms": sum(values) / len(values)}
    for q in PERCENTILES:
        summary[f"p{q}_ms"] = percentile(values, q)
    summary["max_ms"] = max(values)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
