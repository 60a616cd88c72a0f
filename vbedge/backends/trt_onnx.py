"""ONNX inspection for the TensorRT builder, without TensorRT: inputs/outputs, precision, and what
each TensorRT generation's ONNX parser will make of a graph.

:func:`inspect_onnx` reads a file's inputs and outputs (as TensorSpec) and whether it carries FP16
tensors or Q/DQ nodes (what decides strong typing, see :mod:`vbedge.backends.trt_policy`).

The bundle's graphs are opset 18. Read version by version against onnx-tensorrt's operator docs
and importers (8.5-GA, 8.6-GA, 10.x), three things differ on TensorRT 8.5/8.6 (JetPack 5.1 / 6.0),
and one of them is silent:

* **Reduce ops with ``axes`` as an input** (opset 18 moved ``axes`` from an attribute to an input
  for ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1/L2, ReduceLogSum(Exp),
  ReduceSumSquare). The 8.x parsers read only the attribute, so the input is ignored and the op
  reduces over *every* axis: S3D's final pooling would average the channels away without an
  error. (ReduceSum moved at opset 13 and is read correctly.)
* **Other opset-18-only forms**: ``Pad`` with an ``axes`` input, ``Split`` with ``num_outputs``.
* **LayerNormalization** is not imported by 8.5 at all (8.6 added it).

:func:`parser_problems` lists these for a TensorRT version; :func:`maxpool_ceil_problems` lists
MaxPool nodes whose ``ceil_mode`` output size differs from PyTorch's (onnx issue 5741), which
changes shapes on every runtime. :mod:`vbedge.export.trt8` rewrites a graph so that the 8.x
parser reads it as meant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError
from .base import TensorSpec
from .trt_policy import parse_version

@dataclass(frozen=True)
class OnnxInfo:
    """What the builder needs to know about an ONNX file before TensorRT sees it.

    ``has_fp16``: the graph holds FP16 tensors (an FP16 export). ``has_qdq``: it has
    QuantizeLinear/DequantizeLinear nodes (an explicitly quantized INT8 export). Either is None
    when unknown (the ``onnx`` package is not installed and only ONNX Runtime could be asked).
    """

    inputs: tuple
    has_fp16: bool | None
    has_qdq: bool | None
    outputs: tuple = ()


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool",
                16: "bfloat16"}


def _walk_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def inspect_onnx(onnx_path):
    """Read inputs (as TensorSpec), FP16-ness and Q/DQ-ness of an ONNX file, without TensorRT."""
    path = Path(onnx_path)
    if not path.is_file():
        raise FormatError(f"ONNX model not found: {path}")
    try:
        import onnx
    except ImportError:
        return _inspect_with_onnxruntime(path)
    try:
        # External weights are not needed to read the graph structure.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise FormatError(f"cannot read ONNX model {path}: {exc}") from exc
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    inputs = tuple(_spec(value) for value in graph.input if value.name not in initializer_names)
    outputs = tuple(_spec(value) for value in graph.output)
    fp16 = 10
    has_fp16 = any(init.data_type == fp16 for init in graph.initializer) or any(
        v.type.tensor_type.elem_type == fp16 for v in list(graph.input) + list(graph.output)
    )
    has_qdq = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in _walk_nodes(graph))
    return OnnxInfo(inputs, has_fp16, has_qdq, outputs)


def _spec(value):
    """TensorSpec of an ONNX ValueInfo (dynamic dimensions by their name)."""
    tensor_type = value.type.tensor_type
    shape = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or f"{value.name}_dim{axis}")
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type, f"onnx_type_{tensor_type.elem_type}")
    return TensorSpec(value.name, dtype, tuple(shape))


def _inspect_with_onnxruntime(path):
    from .onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path)
    inputs, outputs = tuple(backend.inputs), tuple(backend.outputs)
    backend.close()
    has_fp16 = True if any(spec.dtype == "float16" for spec in inputs) else None
    return OnnxInfo(inputs, has_fp16, None, outputs)


# ---- what TensorRT 8.x parsers read -------------------------------------------------------------

#: Ops whose ``axes`` became an input at opset 18 (ReduceSum did so at 13, which 8.x parses).
AXES_INPUT_AT_18 = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
#: Highest opset the TensorRT 8.5 / 8.6 ONNX parsers import.
TENSORRT8_MAX_OPSET = 17


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _opset(model):
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 0)


def parser_problems(model, tensorrt_version):
    """Readable problems the TensorRT ``tensorrt_version`` ONNX parser would have with ``model``.

    Empty for TensorRT 10 and newer (they import opset 18 as written). ``model`` is an
    ``onnx.ModelProto``.
    """
    major, minor = parse_version(tensorrt_version)
    if major >= 10:
        return []
    problems = []
    opset = _opset(model)
    if opset > TENSORRT8_MAX_OPSET:
        problems.append(f"opset {opset}: TensorRT {major}.{minor} parses opsets up to {TENSORRT8_MAX_OPSET}")
    for graph in _graphs(model.graph):
        for node in graph.node:
            where = f"node {node.name or '<unnamed>'} ({node.op_type})"
            attrs = {a.name for a in node.attribute}
            if node.op_type in AXES_INPUT_AT_18 and len(node.input) > 1 and node.input[1]:
                problems.append(f"{where} takes axes as an input (opset 18); TensorRT {major}.{minor} ignores it and "
                                "reduces over every axis")
            if node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
                problems.append(f"{where} takes an axes input (opset 18), which TensorRT {major}.{minor} does not read")
            if node.op_type == "Split" and "num_outputs" in attrs:
                problems.append(f"{where} uses num_outputs (opset 18), which TensorRT {major}.{minor} does not read")
            if node.op_type == "LayerNormalization" and (major, minor) < (8, 6):
                problems.append(f"{where}: TensorRT {major}.{minor} has no LayerNormalization importer (8.6 added one)")
    return problems


def _pool_out(size, kernel, stride, pad_begin, pad_end, dilation, ceil):
    effective = dilation * (kernel - 1) + 1
    span = size + pad_begin + pad_end - effective
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def _torch_pool_out(size, kernel, stride, pad, dilation, ceil):
    """PyTorch's rule: with ceil_mode, a last window that starts inside the right padding is dropped."""
    out = _pool_out(size, kernel, stride, pad, pad, dilation, ceil)
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def maxpool_ceil_problems(model):
    """MaxPool nodes with ``ceil_mode=1`` whose ONNX output size differs from PyTorch's (onnx issue 5741).

    Uses ONNX shape inference for the input sizes; a node whose input size is unknown is listed as
    unchecked. Empty when no MaxPool uses ``ceil_mode`` (the case for vbedge's S3D).
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    problems = []
    for node in inferred.graph.node:
        if node.op_type != "MaxPool":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not attrs.get("ceil_mode", 0):
            continue
        kernel = list(attrs["kernel_shape"])
        rank = len(kernel)
        strides = list(attrs.get("strides", [1] * rank))
        dilations = list(attrs.get("dilations", [1] * rank))
        pads = list(attrs.get("pads", [0] * (2 * rank)))
        where = f"node {node.name or '<unnamed>'} (MaxPool ceil_mode=1)"
        spatial = (shapes.get(node.input[0]) or [None] * (rank + 2))[2:]
        if any(s is None for s in spatial):
            problems.append(f"{where}: input size unknown, output size not checked against PyTorch's ceil_mode rule")
            continue
        for axis, size in enumerate(spatial):
            begin, end = pads[axis], pads[axis + rank]
            onnx_out = _pool_out(size, kernel[axis], strides[axis], begin, end, dilations[axis], True)
            torch_out = _torch_pool_out(size, kernel[axis], strides[axis], begin, dilations[axis], True) \
                if begin == end else None
            if torch_out is not None and onnx_out != torch_out:
                problems.append(f"{where}: spatial axis {axis} of size {size} gives {onnx_out} in ONNX but {torch_out} "
                                "in PyTorch (the last window starts in the padding)")
    return problems
