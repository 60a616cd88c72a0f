"""TensorRT build policy that needs no TensorRT: optimisation profiles derived from a bundle.

A bundle's exported graphs have dynamic axes (S3D: ``batch``; VideoBERT: ``batch``,
``sequence``, ``positions``), and TensorRT needs an optimisation profile (min, opt, max shape)
for every dynamic dimension. :func:`profiles_from_limits` makes one from the model's input specs
as the bundle manifest records them and a bound per axis name; :func:`bundle_profiles` reads the
specs from the bundle. The pipeline passes the bounds its scheduling implies (S3D batch up to
``max_batch``, VideoBERT sequence length from the captioner's context), so the engine covers
exactly the shapes the pipeline will feed.
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError
from .base import TensorSpec

def parse_version(version):
    """'10.3.0.26' -> (10, 3). Raises InvalidInputError for a string without major.minor."""
    match = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise InvalidInputError(f"cannot read a TensorRT version from {version!r} (expected 'major.minor...')")
    return int(match.group(1)), int(match.group(2))


#: Bounds used when the caller gives none (a direct ``create_bundle_backend`` call): axis name -> max.
DEFAULT_AXIS_LIMITS = {"batch": 4, "sequence": 128, "positions": 8}


def _limit(axis, value):
    """(opt, max) of one axis bound: an int max (opt = max) or an (opt, max) pair."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        opt, high = value
    else:
        opt = high = value
    for what, number in (("opt", opt), ("max", high)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidInputError(f"axis {axis!r} bound must be a positive int or an (opt, max) pair of them, "
                                    f"got {value!r} ({what} {number!r})")
    if opt > high:
        raise InvalidInputError(f"axis {axis!r} bound has opt {opt} > max {high}")
    return opt, high


def profiles_from_limits(input_specs, limits=None):
    """One optimisation profile: each dynamic axis from 1 to its bound (opt = the bound unless given).

    ``input_specs``: TensorSpec list (dynamic dimensions are axis-name strings); ``limits``: dict
    axis name -> max or (opt, max); missing names take :data:`DEFAULT_AXIS_LIMITS`. Returns a dict
    input -> (min, opt, max) for :func:`vbedge.backends.tensorrt.validate_profiles`, or None when
    every input is static. Raises InvalidInputError naming an axis that has no bound.
    """
    limits = dict(DEFAULT_AXIS_LIMITS, **(limits or {}))
    profile = {}
    for spec in input_specs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        low, opt, high = [], [], []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                low.append(dim), opt.append(dim), high.append(dim)
                continue
            if dim not in limits:
                raise InvalidInputError(
                    f"input {spec.name!r} axis {axis} is the dynamic axis {dim!r}, which has no bound; pass "
                    f"limits={{{dim!r}: N}} or explicit profiles (known bounds: {sorted(limits)})"
                )
            o, h = _limit(dim, limits[dim])
            low.append(1), opt.append(o), high.append(h)
        profile[spec.name] = (tuple(low), tuple(opt), tuple(high))
    return profile or None


def manifest_inputs(bundle, model):
    """TensorSpec list of ``model``'s inputs as the bundle manifest records them."""
    models = bundle.manifest["models"]
    if model not in models:
        raise InvalidInputError(f"bundle has no model {model!r}; it has {sorted(models)}")
    return [TensorSpec.from_dict(spec) for spec in models[model]["inputs"]]


def bundle_profiles(bundle, model, limits=None):
    """The optimisation profile for ``model`` of ``bundle`` under ``limits`` (see :func:`profiles_from_limits`)."""
    return profiles_from_limits(manifest_inputs(bundle, model), limits)


def pipeline_limits(max_batch, queue_size, captioner):
    """Axis bounds per model implied by a pipeline's scheduling options and captioner.

    S3D sees batches of at most ``max_batch`` clips (one per source and turn). VideoBERT sees at
    most ``queue_size`` contexts per call (the hand-off before it holds that many), each one
    caption row plus one forecast row when forecasting; rows are as long as the captioner's
    longest and predict at most one position per template slot.
    """
    rows = queue_size * (2 if captioner.forecast_step else 1)
    return {
        "s3d": {"batch": int(max_batch)},
        "videobert": {"batch": int(rows), "sequence": int(captioner.max_sequence_length),
                      "positions": max(1, len(captioner.template.roles))},
    }
