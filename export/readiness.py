"""TensorRT-readiness check of an ONNX graph, run without TensorRT.

The check catches, on the development machine, what would make TensorRT's ONNX parser or
builder refuse a graph on the target: an op the parser does not implement, a data type TensorRT
has no layers for, an opset outside the range it parses, inputs of unknown rank, and dynamic
dimensions that were not declared (TensorRT needs an optimisation profile, min/opt/max, for each
dynamic dimension, so an accidental dynamic dim becomes an engine-build failure on the device).

It cannot prove that an engine builds (kernel availability, memory); it rules out the failures
that can be known from the graph alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vbedge.errors import FormatError

# ONNX operators that the TensorRT 10 ONNX parser imports, after onnx-tensorrt's support matrix
# (https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md, "Supported ONNX Operators").
# Built from the rows marked Y in the TensorRT 8.5 revision of that file plus the ops later
# releases added up to 10.0 (LayerNormalization, GroupNormalization, Gelu, IsInf, Reciprocal,
# Hardmax, CastLike, Mish, the window functions); re-check against the TensorRT 10 table of the
# target's TensorRT when it changes. Kept as data so that is a one-line edit. Deliberately
# conservative: an op missing here is reported, never silently accepted.
TENSORRT_SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose
    Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
    LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
    NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor
    """.split()
)

# TensorRT 10 parses opsets 9..20 inclusive (operators.md, first paragraph).
TENSORRT_MIN_OPSET = 9
TENSORRT_MAX_OPSET = 20

# ONNX TensorProto data types TensorRT has tensors for (operators.md lists DOUBLE too, but only as
# a lossy cast to FLOAT, which we refuse so FP64 never sneaks into an exported graph).
_SUPPORTED_DTYPE_NAMES = ("FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8",
                          "BOOL", "FLOAT8E4M3FN", "INT4")

# Ops whose listed input must be a constant for TensorRT (operators.md "Restrictions" column).
_CONSTANT_INPUTS = {"TopK": (1, "K"), "Conv": (1, "W"), "ConvTranspose": (1, "W")}


@dataclass
class ReadinessReport:
    """Result of :func:`check_tensorrt_readiness`.

    Attributes:
        ok: True when no problem was found.
        problems: one readable line per problem (op, tensor or input named).
        ops: how many nodes of each op type the graph has (subgraphs included).
        opset: the default-domain opset the model imports.
    """

    ok: bool
    problems: list = field(default_factory=list)
    ops: dict = field(default_factory=dict)
    opset: int = 0

    def to_dict(self):
        """Plain-dict form, for the JSON metadata stored with an export."""
        return {"ok": self.ok, "problems": list(self.problems), "ops": dict(self.ops),
                "opset": self.opset}


def _load(onnx_model):
    import onnx

    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model
    path = Path(onnx_model)
    if not path.is_file():
        raise FormatError(f"ONNX model not found: {path} (expected an .onnx file)")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise FormatError(f"cannot read ONNX model {path}: {exc}") from exc


def _iter_graphs(graph):
    """Yield the graph and every subgraph of If/Loop/Scan nodes, depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_graphs(sub)


def check_tensorrt_readiness(onnx_model, dynamic_axes=None) -> ReadinessReport:
    """Check an ONNX graph against what TensorRT 10 can parse and build.

    Args:
        onnx_model: path of an ``.onnx`` file, or an ``onnx.ModelProto``.
        dynamic_axes: optional ``{input_name: [axis, ...]}`` of the axes meant to be dynamic.
            When given, any other non-fixed dimension of a graph input is a problem. When None,
            named dimensions (``dim_param``, how exporters declare dynamic axes) count as
            declared, and anonymous unknown dimensions are problems.

    Returns:
        A :class:`ReadinessReport`; ``ok`` is False when ``problems`` is not empty.
    """
    import onnx

    model = _load(onnx_model)
    problems = []

    opset = 0
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
        else:
            problems.append(f"imports custom op domain {imp.domain!r} (version {imp.version}); "
                            "TensorRT parses only the default ONNX domain without plugins")
    if not (TENSORRT_MIN_OPSET <= opset <= TENSORRT_MAX_OPSET):
        problems.append(f"opset {opset} outside the range TensorRT 10 parses "
                        f"({TENSORRT_MIN_OPSET}..{TENSORRT_MAX_OPSET})")

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # a graph ONNX itself cannot type is not buildable either
        problems.append(f"ONNX shape inference failed: {exc}")
        inferred = model

    ops = Counter()
    constants = set()
    for graph in _iter_graphs(inferred.graph):
        constants.update(init.name for init in graph.initializer)
        constants.update(out for node in graph.node if node.op_type == "Constant"
                         for out in node.output)
        # Q/DQ (INT8) graphs feed weights as DequantizeLinear(constant int8 tensor): TensorRT's
        # explicit-quantization weight form, constant-folded at build time.
        constants.update(node.output[0] for node in graph.node
                         if node.op_type == "DequantizeLinear" and node.input[0] in constants)
    for graph in _iter_graphs(inferred.graph):
        for node in graph.node:
            ops[node.op_type] += 1
            where = f"node {node.name or '<unnamed>'} ({node.op_type})"
            if node.domain not in ("", "ai.onnx"):
                problems.append(f"{where} is in custom domain {node.domain!r}")
            elif node.op_type not in TENSORRT_SUPPORTED_OPS:
                problems.append(f"{where}: op {node.op_type} is not in TensorRT's supported "
                                "ONNX operator list")
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to":
                        name = onnx.TensorProto.DataType.Name(attr.i)
                        if name not in _SUPPORTED_DTYPE_NAMES:
                            problems.append(f"{where} casts to {name}, a type TensorRT lacks")
            if node.op_type in _CONSTANT_INPUTS:
                index, label = _CONSTANT_INPUTS[node.op_type]
                if len(node.input) > index and node.input[index] not in constants:
                    problems.append(f"{where}: input {label} ({node.input[index]}) must be a "
                                    "constant initializer for TensorRT")

    # Every typed tensor: inputs, outputs, intermediate values, initializers.
    seen_types = {}
    for graph in _iter_graphs(inferred.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                seen_types.setdefault(vi.name, vi.type.tensor_type.elem_type)
            elif vi.type.WhichOneof("value") is not None:
                problems.append(f"tensor {vi.name} is a {vi.type.WhichOneof('value')}, not a "
                                "tensor; TensorRT has no sequence/map/optional values")
        for init in graph.initializer:
            seen_types.setdefault(init.name, init.data_type)
    for name, elem_type in seen_types.items():
        if elem_type == onnx.TensorProto.UNDEFINED:
            continue
        type_name = onnx.TensorProto.DataType.Name(elem_type)
        if type_name not in _SUPPORTED_DTYPE_NAMES:
            problems.append(f"tensor {name} has type {type_name}; TensorRT supports "
                            f"{', '.join(_SUPPORTED_DTYPE_NAMES)}")

    init_names = {init.name for init in model.graph.initializer}
    declared = {k: set(v) for k, v in (dynamic_axes or {}).items()}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            problems.append(f"input {vi.name} has no static rank; TensorRT needs the rank of "
                            "every input to build an optimisation profile")
            continue
        for axis, dim in enumerate(ttype.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            label = dim.dim_param or "?"
            if dynamic_axes is None:
                if not dim.dim_param:
                    problems.append(f"input {vi.name} axis {axis} is dynamic without a name; "
                                    "declare it as a dynamic axis or make it static")
            elif axis not in declared.get(vi.name, set()):
                problems.append(f"input {vi.name} axis {axis} ({label}) is dynamic but not a "
                                f"declared dynamic axis (declared: {sorted(declared.get(vi.name, []))})")

    return ReadinessReport(ok=not problems, problems=problems, ops=dict(sorted(ops.items())),
                           opset=opset)


def require_tensorrt_ready(onnx_model, dynamic_axes=None) -> ReadinessReport:
    """Like :func:`check_tensorrt_readiness`, but raise :class:`FormatError` listing problems."""
    report = check_tensorrt_readiness(onnx_model, dynamic_axes=dynamic_axes)
    if not report.ok:
        source = onnx_model if isinstance(onnx_model, (str, Path)) else "ONNX model"
        listed = "\n  - ".join(report.problems)
        raise FormatError(f"{source} is not ready for TensorRT ({len(report.problems)} "
                          f"problem(s)):\n  - {listed}")
    return report
