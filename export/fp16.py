"""FP16 variants of exported ONNX graphs.

TensorRT and ONNX Runtime run FP16 graphs fastest, but a few ops overflow or lose too much
precision in half precision: LayerNorm's mean/variance reductions (the known cause of BERT FP16
overflow in TensorRT), Softmax's exponent sums, and the Pow/Sqrt/Div/Erf chains of a LayerNorm or
GELU that an exporter decomposed into primitive ops. Those stay in FP32 with Casts around them;
everything else (weights and activations) becomes FP16. Graph inputs and outputs keep their
original types (FP32 stays FP32, int64 ids stay int64) so a caller can swap the FP16 file in
without changing a line.

The conversion itself is done by ONNX Runtime's maintained converter
(``onnxruntime.transformers.float16``, shipped inside the ``onnxruntime`` wheel the runtime
already depends on), not by hand-written graph surgery.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vbedge.errors import FormatError, MissingDependencyError

log = logging.getLogger(__name__)

#: Ops kept in FP32 because they are numerically fragile in FP16: normalisations and their
#: decomposed reduction chains (a sum of squares over 384-1024 channels overflows 65504 easily),
#: Softmax (exp sums), and Erf (GELU's tail) whose error the next LayerNorm would amplify.
NUMERICALLY_FRAGILE_OPS = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Div",
    "Erf",
)

#: Ops that ONNX Runtime's converter keeps in FP32 by default because they have no FP16 kernels
#: or FP16 semantics (TopK, Range, CumSum, Min/Max, ...). Keeping TopK in FP32 also keeps the
#: scores a caller reads in full precision.
_ORT_DEFAULT_BLOCKED = (
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
    "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor",
    "Normalizer", "OneHotEncoder", "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler",
    "TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble", "ZipMap",
    "NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Min", "Max", "Upsample",
)

#: Default ``keep_fp32_op_types`` of :func:`convert_to_fp16`.
DEFAULT_KEEP_FP32 = tuple(dict.fromkeys(NUMERICALLY_FRAGILE_OPS + _ORT_DEFAULT_BLOCKED))


def _load_converter():
    try:
        from onnxruntime.transformers import float16 as ort_float16
    except ImportError as exc:  # pragma: no cover - onnxruntime is a runtime dependency
        raise MissingDependencyError(
            "FP16 conversion needs onnxruntime (its onnxruntime.transformers.float16 converter) "
            f"and onnx; install vbedge[export]: {exc}"
        ) from exc
    return ort_float16


def convert_to_fp16(src_onnx, dst_onnx, keep_fp32_op_types=DEFAULT_KEEP_FP32) -> Path:
    """Write an FP16 copy of ``src_onnx`` to ``dst_onnx`` and return the destination path.

    Weights and activations become float16 except in the ops named by ``keep_fp32_op_types``,
    which run in float32 with Cast nodes inserted around them. Graph inputs and outputs keep the
    types of the source graph. ``src_onnx`` must be an ONNX file with float32 weights.

    Raises:
        FormatError: ``src_onnx`` is missing, not an ONNX model, or the converter fails on it.
        MissingDependencyError: onnx/onnxruntime are not installed.
    """
    import onnx

    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise FormatError(f"ONNX model to convert to FP16 not found: {src} (expected an .onnx file)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise FormatError(f"FP16 destination {dst} is the source file; choose another path")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # onnx raises DecodeError/OSError variants; name the file instead
        raise FormatError(f"cannot read ONNX model {src}: {exc}") from exc

    # Exporters record value_info (dtype/shape) for intermediate tensors and initializers; the
    # converter keeps FP32-blocked ops' weights in FP32 but leaves those records saying FP16,
    # which fails strict shape inference (and the readiness check). ONNX Runtime and TensorRT
    # infer value_info themselves, so the stale records are dropped before converting.
    del model.graph.value_info[:]

    ort_float16 = _load_converter()
    keep = list(dict.fromkeys(keep_fp32_op_types))
    log.info("converting %s to FP16 (keeping %d op types in FP32)", src.name, len(keep))
    try:
        converted = ort_float16.convert_float_to_float16(
            model,
            keep_io_types=True,  # callers keep feeding/reading FP32; Casts sit inside the graph
            op_block_list=keep,
            # Weights of FP32-kept ops stay FP32 instead of being rounded to FP16 and cast back.
            force_fp16_initializers=False,
        )
    except Exception as exc:
        raise FormatError(f"FP16 conversion of {src} failed: {exc}") from exc

    # The converter appends its graph-input Casts at the end of the node list; ONNX (and
    # TensorRT's parser) expect a topologically sorted graph, so restore the order.
    _topological_sort(converted.graph)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    try:
        onnx.checker.check_model(str(dst))
    except Exception as exc:
        raise FormatError(f"FP16 model written to {dst} does not pass onnx.checker: {exc}") from exc
    return dst


def _subgraph_outer_inputs(node):
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    import onnx

    names = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            for sub_node in sub.node:
                local.update(sub_node.output)
            for sub_node in sub.node:
                names.update(n for n in sub_node.input if n and n not in local)
                names.update(n for n in _subgraph_outer_inputs(sub_node) if n not in local)
    return names


def _topological_sort(graph):
    """Reorder ``graph.node`` so every node comes after the producers of its inputs.

    Stable: nodes already in order keep their relative order (Kahn's algorithm, always taking
    the earliest ready node).
    """
    import heapq

    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    needs = []
    producer_of = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            producer_of[out] = index
    waiting_on = [set() for _ in nodes]
    consumers = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        inputs = set(node.input) | _subgraph_outer_inputs(node)
        for name in inputs:
            if name in available or name not in producer_of:
                continue  # graph input, initializer, or outer-scope name of a subgraph
            src = producer_of[name]
            if src != index and src not in waiting_on[index]:
                waiting_on[index].add(src)
                consumers[src].append(index)
        needs.append(len(waiting_on[index]))
    ready = [i for i, n in enumerate(needs) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers[index]:
            needs[consumer] -= 1
            if needs[consumer] == 0:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise FormatError("FP16 graph has a cycle; cannot sort its nodes topologically")
    sorted_nodes = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)
