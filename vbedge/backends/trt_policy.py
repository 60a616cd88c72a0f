"""TensorRT build policy, decided without TensorRT: versions, profiles, precision/typing, DLA, engine keys.

* :func:`validate_profiles` checks optimisation profiles against a model's inputs;
* :func:`plan_build` decides strong/weak typing and builder flags per TensorRT version;
* :func:`check_dla` refuses DLA where it cannot help; :func:`engine_key` names an engine in the cache;
* :func:`profiles_from_limits` / :func:`bundle_profiles` / :func:`pipeline_limits` derive profiles.

Profiles from a bundle:

A bundle's exported graphs have dynamic axes (S3D: ``batch``; VideoBERT: ``batch``,
``sequence``, ``positions``), and TensorRT needs an optimisation profile (min, opt, max shape)
for every dynamic dimension. :func:`profiles_from_limits` makes one from the model's input specs
as the bundle manifest records them and a bound per axis name; :func:`bundle_profiles` reads the
specs from the bundle. The pipeline passes the bounds its scheduling implies (S3D batch up to
``max_batch``, VideoBERT sequence length from the captioner's context), so the engine covers
exactly the shapes the pipeline will feed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine_cache import PRECISIONS, EngineKey, _canonical_profiles, file_sha256
from ..errors import InvalidInputError
from .base import BackendUnavailableError, TensorSpec

log = logging.getLogger("vbedge")

#: Version of vbedge's TensorRT 8.x graph rewrite (vbedge.export.trt8); part of 8.x engines' keys.
CONVERSION_VERSION = 1

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
    longest and predict at most one position per template slot. ``captioner`` may be a list
    (per-source captioners sharing one VideoBERT run): the bounds cover all of them.
    """
    captioners = list(captioner) if isinstance(captioner, (list, tuple)) else [captioner]
    rows = queue_size * (2 if any(c.forecast_step for c in captioners) else 1)
    return {
        "s3d": {"batch": int(max_batch)},
        "videobert": {"batch": int(rows), "sequence": int(max(c.max_sequence_length for c in captioners)),
                      "positions": max(1, max(len(c.template.roles) for c in captioners))},
    }


#: Oldest TensorRT vbedge drives: 8.5 brought named tensors and execute_async_v3 (JetPack 5.1).
MIN_TENSORRT = (8, 5)


def _as_shape(value, what):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInputError(f"{what} must be a sequence of ints, got {value!r}")
    shape = tuple(value)
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(f"{what} must contain positive ints, got {value!r}")
    return shape


def validate_profiles(input_specs, profiles):
    """Check optimisation profiles against the model's inputs; return them canonical (for the cache key).

    ``profiles``: a dict input name -> (min, opt, max) shapes, or a list of such dicts (one per
    profile), or None when every input is static. Every input with a dynamic dimension needs a
    range in every profile; static dimensions must be repeated exactly; min <= opt <= max.
    Raises InvalidInputError naming the input, the shape and what was expected.
    """
    specs = {spec.name: spec for spec in input_specs}
    dynamic = sorted(name for name, spec in specs.items() if any(not isinstance(d, int) for d in spec.shape))
    if profiles is None:
        if dynamic:
            example = {name: "((min...), (opt...), (max...))" for name in dynamic}
            raise InvalidInputError(
                f"inputs {dynamic} have dynamic dimensions, so TensorRT needs optimisation profiles: "
                f"pass profiles={example}"
            )
        return ()
    profile_list = [profiles] if isinstance(profiles, dict) else list(profiles)
    if not profile_list:
        raise InvalidInputError("profiles is an empty list; pass None for a static model or at least one profile")
    canonical = []
    for index, profile in enumerate(profile_list):
        label = f"profile {index}" if len(profile_list) > 1 else "profile"
        if not isinstance(profile, dict):
            raise InvalidInputError(f"{label} must be a dict input name -> (min, opt, max), got {type(profile).__name__}")
        unknown = sorted(set(profile) - set(specs))
        if unknown:
            raise InvalidInputError(f"{label} names inputs {unknown} that the model does not have (inputs: {sorted(specs)})")
        missing = [name for name in dynamic if name not in profile]
        if missing:
            raise InvalidInputError(f"{label} has no shape range for dynamic inputs {missing}")
        entry = {}
        for name, ranges in profile.items():
            spec = specs[name]
            if isinstance(ranges, (str, bytes)) or not hasattr(ranges, "__len__") or len(ranges) != 3:
                raise InvalidInputError(f"{label}: {name!r} needs (min, opt, max) shapes, got {ranges!r}")
            shapes = [_as_shape(s, f"{label}: {name!r} {which} shape") for s, which in zip(ranges, ("min", "opt", "max"))]
            for shape, which in zip(shapes, ("min", "opt", "max")):
                if len(shape) != len(spec.shape):
                    raise InvalidInputError(
                        f"{label}: {name!r} {which} shape {shape} has rank {len(shape)}; the model input has shape "
                        f"{spec.shape} (rank {len(spec.shape)})"
                    )
                for axis, (want, got) in enumerate(zip(spec.shape, shape)):
                    if isinstance(want, int) and want != got:
                        raise InvalidInputError(
                            f"{label}: {name!r} {which} shape {shape} differs from the model's static dimension "
                            f"{want} on axis {axis} (model shape {spec.shape})"
                        )
            low, opt, high = shapes
            for axis in range(len(low)):
                if not low[axis] <= opt[axis] <= high[axis]:
                    raise InvalidInputError(
                        f"{label}: {name!r} needs min <= opt <= max on every axis; axis {axis} has "
                        f"{low[axis]}, {opt[axis]}, {high[axis]} (min {low}, opt {opt}, max {high})"
                    )
            entry[name] = (low, opt, high)
        canonical.append(entry)
    return _canonical_profiles(canonical)


@dataclass(frozen=True)
class BuildPlan:
    """How to build: strongly typed or not, and which BuilderFlag names to set."""

    strongly_typed: bool
    builder_flags: tuple
    reason: str


def plan_build(tensorrt_version, precision, strongly_typed="auto", onnx_info=None, dla_core=None):
    """Decide network typing and builder flags for a TensorRT version, precision and ONNX graph.

    Args:
        tensorrt_version: e.g. ``tensorrt.__version__``.
        precision: 'fp32', 'fp16' or 'int8'.
        strongly_typed: True, False or 'auto'.
        onnx_info: :class:`OnnxInfo` of the graph (whether it carries FP16 / Q/DQ); None = unknown.
        dla_core: DLA core index or None.

    Raises InvalidInputError for combinations that cannot work, naming what to use instead
    (never silently switches precision or typing behind the caller's back).
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if strongly_typed not in (True, False, "auto"):
        raise InvalidInputError(f"strongly_typed must be True, False or 'auto', got {strongly_typed!r}")
    major, minor = parse_version(tensorrt_version)
    if (major, minor) < MIN_TENSORRT:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt_version} is too old: vbedge needs TensorRT {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} or newer "
            "(named-tensor execution, execute_async_v3); JetPack 5.1 has 8.5, JetPack 6 has 8.6/10"
        )
    has_fp16 = onnx_info.has_fp16 if onnx_info is not None else None
    has_qdq = onnx_info.has_qdq if onnx_info is not None else None
    carries = {"fp32": True, "fp16": has_fp16, "int8": has_qdq}[precision]
    if dla_core is not None and precision == "fp32":
        raise InvalidInputError("DLA runs FP16 or INT8 only: use precision 'fp16' or 'int8' with dla_core")
    fallback = ("GPU_FALLBACK",) if dla_core is not None else ()

    if precision == "int8" and has_qdq is False:
        raise InvalidInputError(
            "precision 'int8' needs an explicitly quantized (Q/DQ) ONNX graph, and this graph has no "
            "QuantizeLinear/DequantizeLinear nodes; use the bundle's int8 model (INT8 calibrators are "
            "deprecated in TensorRT 10.1 and removed in 11, so vbedge does not calibrate inside TensorRT)"
        )

    if major >= 11:
        if strongly_typed is False:
            raise InvalidInputError(
                f"TensorRT {tensorrt_version} builds only strongly typed networks (the FP16/INT8 builder flags "
                "were removed in 11); drop strongly_typed=False and pass the ONNX of the wanted precision"
            )
        if carries is False:
            raise InvalidInputError(
                f"precision {precision!r} on TensorRT {tensorrt_version} must come from the ONNX, but this graph "
                f"has no {'FP16 tensors' if precision == 'fp16' else 'Q/DQ nodes'}; use the bundle's {precision} model"
            )
        why = f"TensorRT {major} is always strongly typed; precision comes from the ONNX"
        if carries is None:
            why += f" (could not check that the graph is {precision}: install onnx to check)"
        return BuildPlan(True, fallback, why)

    if major < 10:
        # TensorRT 8.x: weakly typed networks only; Q/DQ graphs need the INT8 flag to build.
        if strongly_typed is True:
            raise InvalidInputError(
                f"TensorRT {tensorrt_version} has no strongly typed networks (they came with TensorRT 10); "
                "drop strongly_typed=True: vbedge builds weakly typed with precision flags there"
            )
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
        return BuildPlan(False, flags + fallback, f"TensorRT {major}.{minor}: weakly typed with precision flags")

    # TensorRT 10: both modes exist.
    if strongly_typed is True:
        if carries is False:
            raise InvalidInputError(
                f"strongly_typed=True takes precision from the ONNX, but this graph has no "
                f"{'FP16 tensors' if precision == 'fp16' else 'Q/DQ nodes'} for precision {precision!r}; "
                f"use the bundle's {precision} model or strongly_typed='auto'/False"
            )
        return BuildPlan(True, fallback, "strongly typed as requested")
    if strongly_typed == "auto" and carries is True:
        return BuildPlan(True, fallback, f"strongly typed: the ONNX carries the {precision} precision")
    # Weakly typed: the builder may pick lower precision kernels where the flag allows it.
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    why = "weakly typed as requested" if strongly_typed is False else (
        f"weakly typed with precision flags: could not confirm the ONNX carries {precision}")
    return BuildPlan(False, flags + fallback, why)


def check_dla(dla_core, canonical_profiles, label="model"):
    """Refuse DLA for dynamic shapes (DLA has none); warn that it is rarely worth it otherwise."""
    if dla_core is None:
        return
    dynamic = [name for profile in canonical_profiles for name, (low, _, high) in profile if low != high]
    if dynamic:
        raise InvalidInputError(
            f"dla_core={dla_core}: DLA supports no dynamic shapes, and {label} has dynamic inputs {sorted(set(dynamic))}; "
            "it also has no MatMul, TopK or Gather, so every layer of vbedge's S3D and VideoBERT would fall back to "
            "the GPU. Build for the GPU (leave dla_core unset)"
        )
    log.warning("dla_core=%s for %s: DLA runs 2-D convolution and pooling only; other layers fall back to the GPU "
                "(check the engine's layer report)", dla_core, label)


def engine_key(onnx_path, tensorrt_version, gpu_name, compute_capability, precision, canonical_profiles,
               dla_core, plan, workspace_bytes):
    """The :class:`EngineKey` for building ``onnx_path`` with these settings (pure Python)."""
    return EngineKey(
        model=Path(onnx_path).stem,
        tensorrt_version=str(tensorrt_version),
        gpu_name=str(gpu_name),
        compute_capability=str(compute_capability),
        precision=precision,
        onnx_sha256=file_sha256(onnx_path),
        profiles=canonical_profiles,
        dla_core=dla_core,
        strongly_typed=plan.strongly_typed,
        builder_options=dict({"workspace_bytes": int(workspace_bytes), "builder_flags": list(plan.builder_flags)},
                             # 8.x engines are built from vbedge's rewrite of the graph (vbedge.export.trt8).
                             # Detailed layer information, for the layer-precision report.
                             profiling_verbosity="detailed",
                             **({"trt8_rewrite": CONVERSION_VERSION} if parse_version(tensorrt_version)[0] < 10 else {})),
    )
