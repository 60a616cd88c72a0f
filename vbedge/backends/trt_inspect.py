"""What precision each layer of a built engine runs in, from TensorRT's engine inspector (pure Python).

A Q/DQ "INT8" graph is only a request: TensorRT may run a quantized 3-D convolution in FP16 or
FP32 when it has no INT8 kernel for it (TensorRT issues 1176, 2125, 3197, 4668), and says so
nowhere but in the engine's layer information. vbedge builds with
``ProfilingVerbosity.DETAILED`` and reads ``IEngineInspector.get_engine_information(JSON)``:
each layer lists its inputs and outputs with a ``Format/Datatype`` string such as
``"Row major linear Int8 format"``, ``"Channel major FP16 format where channel % 8 == 0"``,
``"Half"`` or ``"Float"``. A layer counts in the precision of its first floating-point-or-int8
input (what its kernel reads); layers with only integer/bool tensors (shapes, indices) count
as ``other``. Without DETAILED verbosity layers are bare names and count as ``unknown``.

The report is stored beside the engine (``<engine>.layers.json``) so ``vbedge engines list``
shows it without loading the engine.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FormatError

PRECISION_ORDER = ("INT8", "FP8", "FP16", "BF16", "FP32", "other", "unknown")

# Substrings of TensorRT's Format/Datatype strings, checked in this order.
_TOKENS = (("int8", "INT8"), ("fp8", "FP8"), ("bf16", "BF16"), ("bfloat16", "BF16"), ("fp16", "FP16"),
           ("half", "FP16"), ("fp32", "FP32"), ("float", "FP32"))


def _datatype(text):
    text = str(text).lower()
    for token, name in _TOKENS:
        if token in text:
            return name
    return None


def layer_precision(layer):
    """Precision of one inspector layer entry (dict with Inputs/Outputs, or a bare name string)."""
    if not isinstance(layer, dict):
        return "unknown"
    for tensor in list(layer.get("Inputs") or []) + list(layer.get("Outputs") or []):
        kind = _datatype(tensor.get("Format/Datatype", "")) if isinstance(tensor, dict) else None
        if kind is not None:
            return kind
    return "other"


def layer_precisions(engine_information):
    """Counts per precision (dict, keys in :data:`PRECISION_ORDER` that occur) of an inspector JSON string or dict."""
    if isinstance(engine_information, (str, bytes)):
        try:
            engine_information = json.loads(engine_information)
        except json.JSONDecodeError as exc:
            raise FormatError(f"engine inspector output is not JSON: {exc}") from exc
    layers = engine_information.get("Layers", []) if isinstance(engine_information, dict) else []
    counts = {}
    for layer in layers:
        kind = layer_precision(layer)
        counts[kind] = counts.get(kind, 0) + 1
    return {name: counts[name] for name in PRECISION_ORDER if name in counts}


def format_precisions(counts):
    """'INT8 40, FP16 3, FP32 2, other 5' (or 'no layer information')."""
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "no layer information"


def precision_warning(precision, counts):
    """A warning line when an engine asked for ``precision`` runs most of its compute layers otherwise, else None."""
    compute = {k: v for k, v in counts.items() if k not in ("other", "unknown")}
    total = sum(compute.values())
    if not total or precision == "fp32":
        return None
    wanted = {"int8": "INT8", "fp16": "FP16"}[precision]
    if compute.get(wanted, 0) * 2 < total:
        return (f"a {precision} engine runs only {compute.get(wanted, 0)} of {total} compute layers in {wanted} "
                f"({format_precisions(counts)}): TensorRT had no {wanted} kernel for the rest")
    return None


def report_path(engine_path):
    """Where the layer report of an engine file lives."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".layers.json")


def write_report(engine_path, precision, counts):
    from ..engine_cache import atomic_write_bytes

    blob = json.dumps({"precision": precision, "layers": counts}, sort_keys=True).encode()
    atomic_write_bytes(report_path(engine_path), [blob])


def read_report(engine_path):
    """The stored layer report (dict with 'precision' and 'layers') of an engine file, or None."""
    path = report_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("layers"), dict) else None
