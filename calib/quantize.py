"""Static post-training INT8 quantization to explicit Q/DQ ONNX graphs.

:func:`quantize_model` calibrates an FP32 graph with ONNX Runtime's quantization tools and writes

- the **Q/DQ graph** (``*.int8.onnx``): INT8 activations and weights, symmetric, per-channel
  weights, every zero point 0 (what TensorRT's explicit quantization requires: TensorRT 11 has no
  calibrators, the scales live in the ONNX). Quantize/Dequantize pairs sit on the inputs of the
  quantized ops and after activations; a ``Conv -> Relu`` keeps no Q/DQ between the two, the
  placement TensorRT fuses into one INT8 kernel;
- optionally the **CPU form** (``*.int8.cpu.onnx``) of the same quantization for ONNX Runtime.

Why two files. ONNX Runtime (1.32, x86) fuses ``DQ -> Conv -> Q`` into ``QLinearConv`` only when
the Q follows the Conv directly, and it removes a ``Relu`` only in front of a Q whose zero point is
the type's minimum. With symmetric int8 activations (zero point 0, minimum -128) neither happens:
the quantizer's own placement (``Conv -> Q -> DQ -> Relu -> Q``) left 27 of S3D's 77 convolutions
and every Relu and MaxPool in float with 54 layout Transposes (1.3x FP32), and the TensorRT
placement (``Conv -> Relu -> Q``) runs every convolution in float. The CPU form rewrites each Q
whose input is provably non-negative (a Relu output, a max-pool or concat of such) into a
*uint8* Q with zero point 0, and drops the Relu in front of it (uint8 saturation at 0 is the
Relu). By default (``u8_range="full"``) its scale is divided by 255/127, so the calibrated range
[0, 127 x scale] takes all of uint8's codes: one bit more resolution on every non-negative
activation (``"same"`` keeps the scale, and half of the codes unused). On a CPU without an int8
dot product (``weight_bits="auto"`` decides, :func:`resolve_weight_bits`) the convolution weights are
requantized to 7 bits ([-63, 63], per channel, from the FP32 weights): on x86 CPUs without VNNI,
MLAS's U8S8 kernels add pairs of u8 x s8 products in int16 (``vpmaddubsw``), which saturates at
32767 (2 x 255 x 127 = 64770 can pass it, 2 x 255 x 63 = 32130 cannot), and a signed int8 input
(the clip) becomes uint8 by adding 128, so even the ``"same"`` range saturates on the first
convolution with 8-bit weights; VNNI, AMX and ARM's dot product sum in int32 and keep 8 bits. The
convolution that reads the clip (S3D's RGB stem, 3 input channels, where ONNX Runtime's integer
kernel is slowest) runs in float on the unquantized clip (``float_stem``). ONNX Runtime then runs
every other convolution as a U8S8 ``QLinearConv`` in NHWC with max-pool and concat in uint8 (see
docs/int8.md for the node counts, timings and accuracy). TensorRT cannot take uint8 Q/DQ, so the
CPU form is for ONNX Runtime only; the Q/DQ graph keeps int8 activations and 8-bit weights.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbedge.errors import FormatError, InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)

#: Calibration methods offered (names of the CLI's --method).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Parts of a transformer kept in float by default (each may be quantized on request). ``ffn_out``:
#: the FFN output projections, whose GELU inputs no static per-tensor range holds (docs/int8.md:
#: on the trained test VideoBERT, text top-1 0.62 with them in INT8, 0.96 with them float).
FLOAT_PARTS = ("embeddings", "layernorm", "softmax", "head", "ffn_out")
DEFAULT_PERCENTILE = 99.999

# Ops whose output is non-negative when every data input is (for the CPU form's uint8 rewrite).
_SIGN_PRESERVING_OPS = {"MaxPool", "Concat", "Reshape", "Transpose", "Flatten", "Squeeze",
                        "Unsqueeze", "Identity", "AveragePool", "GlobalAveragePool",
                        "GlobalMaxPool", "Slice"}


@dataclass
class QuantizationResult:
    """What :func:`quantize_model` wrote.

    Attributes:
        path: the Q/DQ graph (TensorRT and ONNX Runtime).
        cpu_path: the CPU form (ONNX Runtime only), or None.
        model_kind: 's3d', 'videobert' or 'generic' (decides which ops are quantized).
        method: calibration method used.
        calibration_batches: number of calibration inputs consumed.
        quantized_ops: op type -> count of nodes with quantized inputs.
        float_nodes: names of compute nodes deliberately left in float.
        readiness: the TensorRT-readiness report of ``path`` (dict).
        cpu_rewrite: counts of the CPU-form rewrite (Qs made uint8, Relus dropped).
    """

    path: Path
    cpu_path: Path | None
    model_kind: str
    method: str
    calibration_batches: int
    quantized_ops: dict = field(default_factory=dict)
    float_nodes: list = field(default_factory=list)
    readiness: dict = field(default_factory=dict)
    cpu_rewrite: dict = field(default_factory=dict)

    def to_dict(self):
        """JSON-ready summary."""
        return {"path": str(self.path), "cpu_path": str(self.cpu_path) if self.cpu_path else None,
                "model_kind": self.model_kind, "method": self.method,
                "calibration_batches": self.calibration_batches,
                "quantized_ops": self.quantized_ops, "float_nodes": len(self.float_nodes),
                "readiness": self.readiness, "cpu_rewrite": self.cpu_rewrite}


def _require_quantization():
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"INT8 quantization needs onnx and onnxruntime (with onnxruntime.quantization): {exc}; "
            "install vbedge[export]") from exc


def check_options(method, percentile=DEFAULT_PERCENTILE, keep_float=FLOAT_PARTS):
    """Validate quantization options; raise :class:`InvalidInputError` naming the bad one."""
    if method not in CALIBRATION_METHODS:
        raise InvalidInputError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 90.0 <= percentile < 100.0:
        raise InvalidInputError(f"percentile must be a number in [90, 100), got {percentile!r}")
    unknown = sorted(set(keep_float) - set(FLOAT_PARTS))
    if unknown:
        raise InvalidInputError(f"keep_float parts must be among {FLOAT_PARTS}, got {unknown}")


def model_kind(model) -> str:
    """'s3d' (input ``clip``), 'videobert' (input ``input_ids``) or 'generic'."""
    names = {i.name for i in model.graph.input}
    if "clip" in names:
        return "s3d"
    if "input_ids" in names:
        return "videobert"
    return "generic"


def _consumers(graph):
    cons = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            cons[name].append(node)
    return cons


def _producers(graph):
    """tensor name -> the node that writes it."""
    return {out: node for node in graph.node for out in node.output}


def _downstream_nodes(graph, start_tensors):
    """Names of nodes that (transitively) read any of ``start_tensors``."""
    cons = _consumers(graph)
    seen, stack = set(), list(start_tensors)
    while stack:
        for node in cons.get(stack.pop(), ()):
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(node.output)
    return seen


def _weight_shapes(graph) -> dict:
    """Shapes of the graph's constant tensors: initializers and Constant node outputs."""
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


def _ffn_out_matmuls(graph, initializers) -> list:
    """The encoder's FFN output projections: weight MatMuls whose weight narrows its input
    (intermediate x hidden, more rows than columns), outside the masked-LM head."""
    shapes = _weight_shapes(graph)
    head = _downstream_nodes(graph, ["predict_positions"])
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and n.name not in head and len(n.input) > 1 and n.input[1] in initializers
            and len(shapes.get(n.input[1], ())) == 2 and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def _quantization_plan(model, kind, keep_float):
    """(op types to quantize, node names to keep in float) for a model kind."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    # Constant outputs count as weights too (an exporter may emit weights as Constant nodes).
    initializers |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    if kind == "s3d":
        # Convolutions carry the work; max-pool and concat in int8 keep whole Mixed blocks in int8
        # (a float op between two QLinearConv costs a DQ, a Q and two layout Transposes).
        return ["Conv", "MaxPool", "Concat"], []
    op_types = ["MatMul", "Gemm", "Conv"]
    exclude = []
    if "embeddings" not in keep_float:
        op_types.append("Gather")
    if "layernorm" not in keep_float:
        op_types.append("LayerNormalization")
    if "softmax" not in keep_float:
        op_types.append("Softmax")
    if kind == "videobert":
        for node in graph.node:
            # Attention's Q.K^T and P.V multiply two activations: int8 there buys little on a CPU
            # (no weight to pre-pack) and costs the most accuracy (softmax probabilities in 7 bits).
            if node.op_type == "MatMul" and not any(i in initializers for i in node.input[1:2]):
                exclude.append(node.name)
        if "ffn_out" in keep_float:
            exclude += _ffn_out_matmuls(graph, initializers)
        if "head" in keep_float:
            # Everything after the gather at predict_positions: MLM transform, tied decoder slices,
            # top-k. The decoder is the vocabulary-sized product whose ranking the report measures.
            exclude += sorted(_downstream_nodes(graph, ["predict_positions"]))
            # The alignment (NSP) head reads the pooled [CLS] state; keep it in float as well.
            exclude += [n.name for n in graph.node if "pooler" in n.name.lower() or "seq_relationship" in n.name.lower()]
    return op_types, sorted(set(exclude))


#: Calibration inputs whose activations are held in memory at once (see _CountingReader).
CALIBRATION_CHUNK = 4


def calibration_stride(count, chunk=CALIBRATION_CHUNK) -> int:
    """The largest stride <= ``chunk`` that divides ``count`` (ONNX Runtime's strided
    calibration requires ``count % stride == 0``); 1 for a prime count above ``chunk``."""
    return max(d for d in range(1, min(chunk, max(count, 1)) + 1) if count % d == 0)


class _CountingReader:
    """Wrap a calibration reader: count inputs, show progress, and calibrate in chunks.

    ONNX Runtime's calibrators keep every intermediate output of every calibration input in
    memory until the end (``MinMaxCalibrater`` and the histogram calibrators alike;
    ``CalibMaxIntermediateOutputs`` is ignored by the histogram calibrators and makes
    ``MinMaxCalibrater`` drop the data it clears). A VideoBERT calibration set took over 20 GB that
    way. Readers with a length therefore take ONNX Runtime's strided path (``CalibStridedMinMax``:
    ``set_range`` + one ``collect_data`` per chunk), which folds each chunk into the running
    ranges or histograms and frees it: memory is bounded by ``stride`` inputs.
    """

    def __init__(self, reader, progress, total=None):
        from tqdm.auto import tqdm

        self._reader = reader
        self.count = 0
        self._remaining = None  # inputs left in the current chunk; None: no chunking
        self._bar = tqdm(total=total, desc="calibrate", unit="input", disable=not progress)

    def __len__(self):
        return len(self._reader)

    def set_range(self, start_index, end_index):
        # ONNX Runtime asks for consecutive ranges in order; the wrapped reader is sequential.
        self._remaining = end_index - start_index

    def get_next(self):
        if self._remaining is not None:
            if self._remaining <= 0:
                return None
            self._remaining -= 1
        item = self._reader.get_next()
        if item is None:
            self._bar.close()
        else:
            self.count += 1
            self._bar.update()
        return item

    def rewind(self):
        if hasattr(self._reader, "rewind"):
            self._reader.rewind()

    def close(self):
        self._bar.close()


def strip_conv_relu_qdq(model) -> int:
    """Remove the Q/DQ pair between a Conv and the Relu after it (TensorRT's fused placement).

    Returns the number of pairs removed. The Relu's output keeps its own Q/DQ, so the next op
    still reads int8; one rounding step less than the quantizer's placement.
    """
    graph = model.graph
    producer = _producers(graph)
    cons = _consumers(graph)
    drop = set()
    for node in graph.node:
        if node.op_type != "Relu":
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        conv = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if (conv is None or conv.op_type != "Conv" or len(cons[conv.output[0]]) != 1
                or len(cons[q.output[0]]) != 1 or len(cons[dq.output[0]]) != 1):
            continue
        node.input[0] = conv.output[0]
        drop.update((id(q), id(dq)))
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(model)
    return len(drop) // 2


def share_concat_scales(model) -> int:
    """Quantize each Concat's inputs with the Concat output's scale; return how many concats.

    The quantizer gives every branch of an Inception block its own scale, then quantizes the
    concatenation again with the output's: two roundings, and a concat that must rescale its
    inputs. With the output's scale on every input (only where each input is a DQ fed by a Q that
    nothing else reads, and every Q after the concat has one scale) the concat is a plain copy in
    the integer domain and the second rounding is exact. The ranges come from the same calibration
    (the output's range covers every input's), so nothing saturates that did not before.
    """
    from onnx import numpy_helper

    graph = model.graph
    scales = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = _producers(graph)
    cons = _consumers(graph)
    shared = 0
    for node in graph.node:
        if node.op_type != "Concat":
            continue
        after = cons.get(node.output[0], [])
        if not after or any(c.op_type != "QuantizeLinear" for c in after):
            continue
        # One (scale, zero point) after the concat, both constants, for the inputs to take.
        params = {tuple(scales[i].tobytes() if i in scales else None for i in q.input[1:3]) for q in after}
        if len(params) != 1 or len(after[0].input) < 3 or None in next(iter(params)):
            continue
        pairs = []
        for name in node.input:
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or len(cons[q.output[0]]) != 1 or len(cons[name]) != 1 \
                    or len(q.input) < 3 or len(dq.input) < 3:
                break
            pairs.append((q, dq))
        else:
            for q, dq in pairs:
                q.input[1], q.input[2] = after[0].input[1], after[0].input[2]
                dq.input[1], dq.input[2] = after[0].input[1], after[0].input[2]
            shared += 1
    _drop_unused_initializers(model)
    return shared


def _drop_unused_initializers(model):
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def check_qdq_for_tensorrt(model):
    """Raise :class:`FormatError` unless every Q/DQ is INT8 with zero points 0.

    TensorRT's explicit quantization supports signed INT8 Q/DQ with zero point 0 only; an
    asymmetric or uint8 pair would fail the engine build on the device, so it fails here.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            problems.append(f"{node.name}: no constant zero point")
            continue
        zp = inits[node.input[2]]
        if zp.data_type != TensorProto.INT8:
            problems.append(f"{node.name}: zero point of type {TensorProto.DataType.Name(zp.data_type)}, not INT8")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{node.name}: non-zero zero point")
    if problems:
        raise FormatError(f"the Q/DQ graph is not TensorRT INT8 ({len(problems)} problems): " + "; ".join(problems[:5]))


#: Ranges the CPU form's uint8 activations can take (:func:`make_cpu_form`).
U8_RANGES = ("full", "same")
#: Bit widths the CPU forms' weights can take (:func:`make_cpu_form`, :func:`transformer_cpu_form`).
WEIGHT_BITS = (8, 7)
#: The CPU form's defaults: every uint8 code on the calibrated range, and weight bits chosen for
#: this CPU (:func:`resolve_weight_bits`): 7 where 8-bit weights would saturate (x86 without VNNI:
#: on an AVX2 EPYC, S3D tokens 0.826 -> 0.931 on the demo bundle's 144 held-out clips at the same
#: speed), 8 where nothing saturates (VNNI, AMX, ARM's dot product: on an AVX-512 VNNI EPYC, S3D
#: tokens 0.910 -> 0.938, VideoBERT text top-1 0.967 -> 0.989). docs/int8.md, "The CPU form's uint8
#: range and 7-bit weights".
DEFAULT_U8_RANGE = "full"
DEFAULT_WEIGHT_BITS = "auto"


def resolve_weight_bits(weight_bits=DEFAULT_WEIGHT_BITS, flags=None):
    """``(bits, why)`` for a CPU form's ``weight_bits``: 7 or 8 as given, or for ``"auto"`` (or None)
    8 where this CPU (or the given ``/proc/cpuinfo`` ``flags``) has an int8 dot product that sums
    in int32 (:func:`vbedge.info.int8_dot_product`), else 7. The form runs on every CPU either way;
    8-bit weights lose accuracy where the kernels saturate, so a bundle for other CPUs than the one
    calibrating should name its bits."""
    from vbedge.cpu import int8_dot_product

    if weight_bits in (None, "auto"):
        found = int8_dot_product(flags)
        if found:
            return 8, f"auto: this CPU has {found}, whose int8 products sum in int32"
        return 7, "auto: this CPU has no VNNI or int8 dot product, so 8-bit weights would saturate int16 sums"
    if weight_bits not in WEIGHT_BITS:
        raise InvalidInputError(f"weight_bits must be 'auto' or one of {WEIGHT_BITS}, got {weight_bits!r}")
    return weight_bits, "given"


#: Whether the CPU form runs the convolutions that read the graph's input (S3D's RGB stem) in float
#: (:func:`make_cpu_form`). ONNX Runtime's U8S8 ``QLinearConv`` is slow on 3 input channels: on the
#: demo bundle (12 x 64 x 64, AVX-512 VNNI EPYC) the 7 x 7 x 7 stem took 3.8 of the form's 7.8 ms
#: (profiler) against 1.5 ms as a float Conv, and the form ran 1.42x FP32 with it in INT8, 2.34x
#: with it in float; tokens 0.938 -> 0.944 (the clip is no longer quantized). docs/int8.md.
DEFAULT_FLOAT_STEM = True


def make_cpu_form(model, *, u8_range=DEFAULT_U8_RANGE, weight_bits=DEFAULT_WEIGHT_BITS, float_weights=None,
                  float_stem=DEFAULT_FLOAT_STEM) -> dict:
    """Rewrite a symmetric Q/DQ graph in place into ONNX Runtime's fast form (module docstring).

    Args:
        model: the Q/DQ ``ModelProto`` (changed in place).
        u8_range: ``"same"`` keeps each uint8 Q's scale, so the calibrated range [0, 127 x scale]
            takes codes 0..127 (TensorRT's resolution); ``"full"`` divides the scale by 255/127, so
            the same range takes codes 0..255: one bit more resolution on every non-negative
            activation, and values past the calibrated range saturate where TensorRT's do.
        weight_bits: 8, or 7 to requantize the convolution weights to [-63, 63] (per channel,
            from ``float_weights`` when given), or ``"auto"`` (the default) for this CPU's choice
            (:func:`resolve_weight_bits`). 7 is needed with ``u8_range="full"`` on x86 CPUs without
            VNNI: MLAS's AVX2 U8S8 kernels add pairs of u8 x s8 products in int16 (``vpmaddubsw``),
            which saturates past 32767; 2 x 255 x 63 stays under it, 2 x 255 x 127 does not.
        float_weights: name -> float array of the FP32 graph's weights (for ``weight_bits=7`` and
            the float stem); a weight not found is requantized (or dequantized) from its int8 values.
        float_stem: run each convolution that reads the graph input through its Q/DQ pair in
            float (S3D's RGB stem: the input Q/DQ and the weight's DQ go, the FP32 weight comes
            back), its output still quantized to uint8 by the Q after it (:data:`DEFAULT_FLOAT_STEM`).

    Returns counts: ``uint8_q`` (Qs turned uint8), ``relu_dropped``, ``float_convs``, ``weights_requantized`` and
    the options used.
    """
    from onnx import TensorProto, helper, numpy_helper

    if u8_range not in U8_RANGES:
        raise InvalidInputError(f"u8_range must be one of {U8_RANGES}, got {u8_range!r}")
    weight_bits, bits_why = resolve_weight_bits(weight_bits)
    graph = model.graph
    _sort_topologically(graph)  # the sign analysis below reads producers before consumers
    inits = {i.name: i for i in graph.initializer}
    cons = _consumers(graph)
    nonneg = set()      # float tensors known to be >= 0
    uint8_tensors = set()
    new_inits = {}

    def u8_zero_point(name):
        old = inits[name]
        key = name + "_u8"
        if key not in new_inits:
            dims = list(old.dims)
            new_inits[key] = helper.make_tensor(key, TensorProto.UINT8, dims, [0] * int(np.prod(dims or [1])))
        return key

    def u8_scale(name):
        if u8_range == "same":
            return name
        key = name + "_u8full"
        if key not in new_inits:
            scale = numpy_helper.to_array(inits[name]).astype(np.float32) * np.float32(127.0 / 255.0)
            new_inits[key] = numpy_helper.from_array(scale.astype(np.float32), key)
        return key

    converted = 0
    for node in graph.node:  # topological order: producers first
        if node.op_type == "Relu":
            nonneg.add(node.output[0])
        elif node.op_type == "QuantizeLinear":
            src = node.input[0]
            if src in nonneg and len(node.input) > 2 and node.input[2] in inits and node.input[1] in inits:
                node.input[1] = u8_scale(node.input[1])
                node.input[2] = u8_zero_point(node.input[2])
                uint8_tensors.add(node.output[0])
                converted += 1
        elif node.op_type == "DequantizeLinear":
            if node.input[0] in uint8_tensors:
                node.input[1] = u8_scale(node.input[1])
                node.input[2] = u8_zero_point(node.input[2])
                nonneg.add(node.output[0])
        elif node.op_type in _SIGN_PRESERVING_OPS:
            data = node.input[:1] if node.op_type != "Concat" else node.input
            if data and all(t in nonneg for t in data):
                nonneg.update(node.output)
    # A Relu read only by uint8 Qs is redundant: the Q saturates at 0.
    dropped = set()
    for node in graph.node:
        if node.op_type != "Relu":
            continue
        readers = cons[node.output[0]]
        if readers and all(r.op_type == "QuantizeLinear" and r.output[0] in uint8_tensors for r in readers):
            for r in readers:
                r.input[0] = node.input[0]
            dropped.add(id(node))  # by identity: nodes of a rewritten graph may share a name, or have none
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits.values())
    float_convs = _float_input_convs(model, float_weights or {}) if float_stem else 0
    requantized = _requantize_conv_weights(model, weight_bits, float_weights or {}) if weight_bits != 8 else 0
    _drop_dead_nodes(model)
    _drop_unused_initializers(model)
    return {"uint8_q": converted, "relu_dropped": len(dropped), "u8_range": u8_range, "float_convs": float_convs,
            "weight_bits": weight_bits, "weight_bits_why": bits_why, "weights_requantized": requantized}


def _float_input_convs(model, float_weights) -> int:
    """Make each Conv whose data input is ``DQ(Q(graph input))`` and whose weight is a dequantized
    constant read the graph input and a float weight (the FP32 one from ``float_weights`` when its
    shape matches, else the dequantized int8 one); returns how many. The bypassed Q/DQ nodes are
    left for :func:`_drop_dead_nodes`."""
    from onnx import numpy_helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    inits = {i.name: i for i in graph.initializer}
    producer = _producers(graph)
    added, count = [], 0
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        data, weight = producer.get(node.input[0]), producer.get(node.input[1])
        source = producer.get(data.input[0]) if data is not None and data.op_type == "DequantizeLinear" else None
        if (source is None or source.op_type != "QuantizeLinear" or source.input[0] not in inputs
                or weight is None or weight.op_type != "DequantizeLinear" or weight.input[0] not in inits):
            continue
        q = numpy_helper.to_array(inits[weight.input[0]])
        base = weight.input[0].split("_quantized")[0]
        w = float_weights.get(base)
        if w is None or w.shape != q.shape:
            scale = numpy_helper.to_array(inits[weight.input[1]]).astype(np.float32)
            w = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1)) if scale.ndim else q * scale
        name = f"{base}_float"
        added.append(numpy_helper.from_array(np.asarray(w, dtype=np.float32), name))
        node.input[0], node.input[1] = source.input[0], name
        count += 1
    graph.initializer.extend(added)
    return count


def _drop_dead_nodes(model):
    """Remove nodes none of whose outputs is read (by a node or as a graph output), repeatedly."""
    graph = model.graph
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        kept = [n for n in graph.node if any(o in used for o in n.output)]
        if len(kept) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(kept)


def _sort_topologically(graph):
    """Order ``graph.node`` producers first (the quantizer can append a Q/DQ after its reader).

    Raises :class:`FormatError` on a cycle or an input nothing produces."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            missing = sorted({i for n in pending for i in n.input if i not in known})[:3]
            raise FormatError(f"the graph cannot be ordered: {len(pending)} nodes wait on {missing}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            known.update(node.output)
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        copies = [type(n)() for n in ordered]
        for copy, node in zip(copies, ordered):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


def _requantize_conv_weights(model, bits, float_weights) -> int:
    """Requantize the int8 constant weights read by Convs to ``bits`` bits, per channel, symmetric.

    Each weight's DequantizeLinear gets a new quantized initializer and scale (the old ones may be
    shared); returns how many weights were requantized.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    cons = _consumers(graph)
    qmax = 2 ** (bits - 1) - 1
    added, count = [], 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        if not cons[node.output[0]] or any(r.op_type != "Conv" or r.input[1] != node.output[0] for r in cons[node.output[0]]):
            continue
        q = numpy_helper.to_array(inits[node.input[0]])
        if q.dtype != np.int8 or q.ndim < 2:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        base = node.input[0][: -len("_quantized")] if node.input[0].endswith("_quantized") else None
        weight = float_weights.get(base) if base else None
        if weight is None or weight.shape != q.shape:
            weight = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1))
        channel_max = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
        new_scale = np.where(channel_max > 0, channel_max / qmax, 1.0).astype(np.float32)
        q_new = np.clip(np.rint(weight / new_scale.reshape((-1,) + (1,) * (q.ndim - 1))), -qmax, qmax).astype(np.int8)
        q_name, s_name = f"{node.input[0]}_{bits}bit", f"{node.input[1]}_{bits}bit"
        added += [numpy_helper.from_array(q_new, q_name),
                  numpy_helper.from_array(new_scale.reshape(scale.shape), s_name)]
        node.input[0], node.input[1] = q_name, s_name
        count += 1
    graph.initializer.extend(added)
    return count


#: Parts of a transformer the CPU form can keep in float (:func:`transformer_cpu_form`).
CPU_FORM_FLOAT_PARTS = ("mlm_transform", "pooler", "ffn_out")
#: The default (docs/int8.md, "The VideoBERT INT8 files' float parts"): the MLM transform and the
#: pooler run once per predicted position / per sequence, so float costs nothing measurable, and the
#: transform was worth 2 points of text and 3 of visual top-1 on the trained test VideoBERT; the FFN
#: output projections (GELU inputs, the widest activation ranges) were kept float too until
#: 2026-12-06, when per-token scales on them (``per_token`` part ``ffn_out``) kept the text top-1
#: agreement (0.990 / 0.980 on two demo bundles, against 0.984 / 0.989 with them float) at 1.57x
#: FP32 instead of 1.44x (AVX-512 VNNI EPYC; docs/int8.md).
DEFAULT_CPU_FORM_FLOAT = ("mlm_transform", "pooler")
_GELU_OPS = ("Gelu", "BiasGelu", "FastGelu")


def _cpu_form_float_nodes(model, float_parts) -> dict:
    """Node names per part of ``float_parts`` in an (optimized) BERT graph; raises if a part is absent.

    - ``mlm_transform``: MatMul/Gemm after the gather at ``predict_positions`` with a square
      (hidden x hidden) weight: the masked-LM head's dense layer (the decoder slices are hidden x vocab);
    - ``pooler``: every Gemm (the pooler and the alignment head export as Gemm);
    - ``ffn_out``: MatMuls whose input comes from a GELU (the FFN output projections).
    """
    graph = model.graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    producers = _producers(graph)
    head = _downstream_nodes(graph, ["predict_positions"]) if any(
        i.name == "predict_positions" for i in graph.input) else set()

    def square_weight(node):
        return any(len(shapes.get(i, ())) == 2 and shapes[i][0] == shapes[i][1] for i in node.input[1:])

    found = {
        "mlm_transform": [n.name for n in graph.node
                          if n.name in head and n.op_type in ("MatMul", "Gemm") and square_weight(n)],
        "pooler": [n.name for n in graph.node if n.op_type == "Gemm"],
        "ffn_out": [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in producers
                    and producers[n.input[0]].op_type in _GELU_OPS],
    }
    out = {}
    for part in float_parts:
        if part not in found:
            raise InvalidInputError(f"unknown CPU-form float part {part!r}; expected some of {CPU_FORM_FLOAT_PARTS}")
        if not found[part]:
            need = {"mlm_transform": "a predict_positions input and a square dense layer after it",
                    "pooler": "Gemm nodes (the pooler and alignment head)",
                    "ffn_out": "MatMuls fed by a fused GELU, i.e. the transformer optimizer (optimize=True)"}[part]
            raise FormatError(f"no {part} nodes found to keep in float; that needs {need}")
        out[part] = found[part]
    return out


def _written_float_nodes(model, kept) -> dict:
    """The kept nodes' names in the quantized graph, checked to still be float MatMul/Gemm."""
    ops = {n.name: n.op_type for n in model.graph.node}
    out = {}
    for part, names in kept.items():
        written = [name if name in ops else f"{name}_MatMul" for name in names]
        wrong = [name for name in written if ops.get(name) not in ("MatMul", "Gemm")]
        if wrong:
            raise FormatError(f"ONNX Runtime quantized {part} nodes that were to stay float: {wrong[:3]}")
        out[part] = written
    return out


#: Groups of the CPU form's run-time activation quantizers (each ``DynamicQuantizeLinear`` feeds the
#: MatMuls that read one tensor) that :func:`per_token_activation_scales` can give one scale per token:
#: ``qkv`` (the attention's query, key and value projections), ``attention_out`` (its output
#: projection), ``ffn_in`` (the FFN's widening projection), ``head`` (the masked-LM decoder) and
#: ``ffn_out`` (the FFN's narrowing projection, fed by the GELU; only when ``float_parts`` does not
#: keep it float).
PER_TOKEN_PARTS = ("qkv", "attention_out", "ffn_in", "head", "ffn_out")
#: Per-token scales for the FFN inputs and outputs: on the demo's trained VideoBERT the FFN inputs
#: alone gave the same text top-1 agreement as the four other parts together (0.981 against 0.960
#: per-tensor) at per-tensor speed; the FFN outputs, quantized since 2026-12-06, need them too
#: (0.977 / 0.959 per-tensor against 0.990 / 0.980 per-token; docs/int8.md).
DEFAULT_PER_TOKEN = ("ffn_in", "ffn_out")


def resolve_per_token(per_token, float_parts):
    """The per-token parts :func:`transformer_cpu_form` applies: ``None`` is :data:`DEFAULT_PER_TOKEN`
    and ``"all"`` every part of :data:`PER_TOKEN_PARTS`, each less the parts kept in float (``ffn_out``
    when ``float_parts`` keeps it); a named part that is kept in float is an error."""
    if per_token is None or per_token == "all":
        chosen = DEFAULT_PER_TOKEN if per_token is None else PER_TOKEN_PARTS
        return tuple(part for part in chosen if part not in float_parts)
    unknown = sorted(set([per_token] if isinstance(per_token, str) else per_token) - set(PER_TOKEN_PARTS))
    if isinstance(per_token, str) or unknown:
        raise InvalidInputError(f"per_token must be None, 'all' or a list of {PER_TOKEN_PARTS}, got {per_token!r}")
    if "ffn_out" in per_token and "ffn_out" in float_parts:
        raise InvalidInputError("per_token 'ffn_out' needs the FFN output projections quantized: drop 'ffn_out' "
                                "from float_parts (vbedge calibrate --cpu-float)")
    return tuple(per_token)


def per_token_quantizer_parts(model) -> dict:
    """The CPU form's ``DynamicQuantizeLinear`` node names by part of :data:`PER_TOKEN_PARTS`.

    Read from the quantized graph: a quantizer belongs to ``head`` when its MatMuls come after the
    gather at ``predict_positions``; else to ``ffn_in`` when their weight widens (more columns than
    rows); else to ``ffn_out`` when a GELU feeds it (an FFN output projection, quantized only with
    ``float_parts`` without ``ffn_out``); else to ``qkv`` when it feeds several MatMuls or one whose
    weight is three projections wide; else to ``attention_out``.
    """
    graph = model.graph
    consumers = _consumers(graph)
    shapes = _weight_shapes(graph)
    producers = _producers(graph)
    head = _downstream_nodes(graph, ["predict_positions"]) if any(
        i.name == "predict_positions" for i in graph.input) else set()
    parts = {part: [] for part in PER_TOKEN_PARTS}
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        matmuls = [c for c in consumers[node.output[0]] if c.op_type == "MatMulInteger"]
        weights = [shapes.get(m.input[1], ()) for m in matmuls]
        source = producers.get(node.input[0])
        if not matmuls or any(len(w) != 2 for w in weights):
            continue
        if any(m.name in head for m in matmuls):
            parts["head"].append(node.name)
        elif source is not None and source.op_type in _GELU_OPS:
            parts["ffn_out"].append(node.name)
        elif all(w[1] > w[0] for w in weights) and not any(w[1] == 3 * w[0] for w in weights):
            parts["ffn_in"].append(node.name)
        elif len(matmuls) > 1 or any(w[1] == 3 * w[0] for w in weights):
            parts["qkv"].append(node.name)
        else:
            parts["attention_out"].append(node.name)
    return parts


def per_token_activation_scales(model, names=None) -> int:
    """Rewrite ``DynamicQuantizeLinear`` nodes feeding ``MatMulInteger`` to one scale per token (row).

    ``names``: the quantizers to rewrite (default every one; :func:`per_token_quantizer_parts`
    names them by part).

    ``quantize_dynamic`` quantizes a MatMul's input with one uint8 scale and zero point for the
    whole tensor, computed per run, so one large token (BERT's ``[SEP]``, an outlier channel)
    costs every other token its precision. Here each row (the last axis: one token's hidden
    vector) gets its own symmetric range ``r = max|x|``: ``QuantizeLinear(x / r, 1/127, 128)``
    stores ``round(127 x / r) + 128`` as uint8, so the integer product is still the u8 x s8 one
    ONNX Runtime runs fastest. Each ``MatMulInteger -> Cast -> Mul(a_scale * w_scale)`` becomes
    ONNX Runtime's ``MatMulIntegerToFloat`` with the constant ``a_scale = 1/127``, followed by a
    ``Mul`` by ``r``: that contrib op takes only a per-tensor (scalar) A scale, so the row scale
    cannot go inside it. (Folded into the quantizer's rescale as a (..., rows, 1) tensor instead,
    ONNX Runtime's graph optimizer fuses the pattern into ``MatMulIntegerToFloat`` anyway, whose
    A scale is one value per tensor: measured on VideoBERT, text top-1 agreement 0.91 with graph
    optimizations on against 0.99 off.) The written graph is ONNX Runtime's (it uses the
    ``com.microsoft`` domain), like the rest of the CPU form.

    Returns the number of quantizers rewritten; raises :class:`FormatError`, changing nothing,
    when a quantizer's outputs are used otherwise than ``quantize_dynamic`` writes them.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    consumers = _consumers(graph)
    producer = _producers(graph)

    def only(name, op_type):
        users = consumers[name]
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    quantizers = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear" and (names is None or n.name in names)]
    plans = {}  # quantizer name -> [(MatMulInteger, Cast, rescale Mul, combined-scale Mul, weight scale)]
    for node in quantizers:
        q, scale, zero = node.output
        found = []
        for matmul in consumers[q]:
            cast = only(matmul.output[0], "Cast") if matmul.op_type == "MatMulInteger" else None
            mul = only(cast.output[0], "Mul") if cast is not None else None
            combined_name = next((i for i in mul.input if i != cast.output[0]), None) if mul is not None else None
            combined = producer.get(combined_name)
            if (mul is None or len(matmul.input) < 3 or matmul.input[0] != q or matmul.input[2] != zero
                    or combined is None or combined.op_type != "Mul" or scale not in combined.input
                    or len(consumers[combined_name]) != 1):
                found = None
                break
            w_scale = next(i for i in combined.input if i != scale)
            found.append((matmul, cast, mul, combined, w_scale))
        used = {id(step[3]) for step in found or ()}
        if (not found or any(id(c) not in used for c in consumers[scale])
                or any(c.op_type != "MatMulInteger" for c in consumers[zero])):
            raise FormatError(f"DynamicQuantizeLinear {node.name!r} feeds something other than MatMulInteger "
                              "and its rescale; per-token scales cannot be applied")
        plans[node.name] = found
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = {"per_token_zero_point": np.array(128, np.uint8),
                 "per_token_step": np.array(1.0 / 127.0, np.float32),
                 "per_token_min_range": np.array(1e-12, np.float32)}
    if opset >= 18:
        constants["per_token_last_axis"] = np.array([-1], np.int64)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    if quantizers and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    replaced, fused, dropped = {}, {}, set()
    for node in quantizers:
        x = node.input[0]
        base = node.name or x
        row_q, row_range = f"{base}_per_token_uint8", f"{base}_per_token_range"
        reduce_inputs = [f"{base}_abs"] + (["per_token_last_axis"] if opset >= 18 else [])
        reduce_attrs = {"keepdims": 1} if opset >= 18 else {"keepdims": 1, "axes": [-1]}
        replaced[node.name] = [
            helper.make_node("Abs", [x], [f"{base}_abs"], name=f"{base}_abs"),
            helper.make_node("ReduceMax", reduce_inputs, [f"{base}_row_max"], name=f"{base}_row_max", **reduce_attrs),
            helper.make_node("Max", [f"{base}_row_max", "per_token_min_range"], [row_range], name=row_range),
            helper.make_node("Div", [x, row_range], [f"{base}_unit"], name=f"{base}_unit"),
            helper.make_node("QuantizeLinear", [f"{base}_unit", "per_token_step", "per_token_zero_point"], [row_q],
                             name=row_q),
        ]
        for matmul, cast, mul, combined, w_scale in plans[node.name]:
            out = mul.output[0]
            w_zero = matmul.input[3] if len(matmul.input) > 3 else ""
            inputs = [row_q, matmul.input[1], "per_token_step", w_scale, "per_token_zero_point"] + (
                [w_zero] if w_zero else [])
            fused[id(matmul)] = [
                helper.make_node("MatMulIntegerToFloat", inputs, [f"{out}_before_row_scale"],
                                 name=f"{out}_int8", domain="com.microsoft"),
                helper.make_node("Mul", [f"{out}_before_row_scale", row_range], [out], name=f"{out}_row_scale"),
            ]
            dropped.update(id(n) for n in (cast, mul, combined))
    nodes = []
    for node in graph.node:
        if node.op_type == "DynamicQuantizeLinear" and node.name in replaced:
            nodes.extend(replaced[node.name])
        elif id(node) in fused:
            nodes.extend(fused[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    # Keep the order topological: a fused pair goes where its MatMulInteger was, whose inputs are
    # all defined before it; the row range comes from the quantizer's replacement, also before.
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return len(quantizers)


def transformer_cpu_form(fp32_path, cpu_path, *, optimize=True, float_parts=DEFAULT_CPU_FORM_FLOAT,
                         per_token=None, weight_bits=DEFAULT_WEIGHT_BITS) -> dict:
    """Write the ONNX Runtime CPU form of a transformer (VideoBERT): dynamic INT8 MatMuls.

    Static Q/DQ MatMuls are slow in ONNX Runtime on x86 (it fused 12 of VideoBERT's 36 quantized
    MatMuls into QLinearMatMul; the rest ran in float behind DequantizeLinear, 0.49x FP32), so the
    CPU form does not reuse the Q/DQ file's scales. It is ONNX Runtime's transformer optimizer
    (``model_type='bert'``: SkipLayerNormalization, BiasGelu) followed by ``quantize_dynamic``:
    per-channel symmetric INT8 weights, activations quantized per run from their actual range
    (``DynamicQuantizeLinear`` -> ``MatMulInteger``), which needs no calibration and survives
    activation outliers better than one static range. TensorRT cannot run this form (uint8
    dynamic activations, ORT contrib ops); the Q/DQ file is the TensorRT one.

    Args:
        fp32_path: the FP32 VideoBERT (or other BERT) ONNX graph.
        cpu_path: where to write the CPU form.
        optimize: run the transformer optimizer first (measured faster, docs/int8.md).
        float_parts: parts left in float, a subset of :data:`CPU_FORM_FLOAT_PARTS` (default
            :data:`DEFAULT_CPU_FORM_FLOAT`; add ``"ffn_out"`` to keep the FFN output projections
            float, as until 2026-12-06, measured in docs/int8.md; ``()`` quantizes every MatMul and Gemm).
        per_token: parts, a subset of :data:`PER_TOKEN_PARTS`, whose MatMul inputs are quantized
            with one int8 scale per token (:func:`per_token_activation_scales`) instead of
            ``quantize_dynamic``'s one uint8 range per tensor (``None``: :data:`DEFAULT_PER_TOKEN`,
            ``"all"``: every part; both less ``ffn_out`` when it is kept float; ``()`` is per-tensor
            everywhere; :func:`resolve_per_token`).
        weight_bits: 7 quantizes the weights to [-64, 64] (``quantize_dynamic``'s
            ``reduce_range``; 2 x 255 x 64 = 32640) so that MLAS's U8S8 kernels cannot saturate their int16 pair sums on
            x86 CPUs without VNNI (as for S3D's CPU form, :func:`make_cpu_form`; on an AVX2 EPYC,
            text top-1 0.972 with 8 bits, 0.983 with 7, docs/int8.md); 8 for VNNI or ARM targets;
            ``"auto"`` (the default) picks for this CPU (:func:`resolve_weight_bits`).

    Returns counts of the written graph's op types of interest, ``float_nodes``: the node names
    kept in float per part, ``per_token``: the parts given per-token scales, and ``weight_bits``
    (with ``weight_bits_why``).
    """
    weight_bits, bits_why = resolve_weight_bits(weight_bits)
    _require_quantization()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, cpu_path = Path(fp32_path), Path(cpu_path)
    if not fp32_path.is_file():
        raise FormatError(f"FP32 ONNX model not found: {fp32_path}")
    if cpu_path.resolve() == fp32_path.resolve():
        raise InvalidInputError("the CPU form must not overwrite the FP32 model")
    unknown = sorted(set([float_parts] if isinstance(float_parts, str) else float_parts) - set(CPU_FORM_FLOAT_PARTS))
    if isinstance(float_parts, str) or unknown:
        raise InvalidInputError(f"float_parts must be a list of {CPU_FORM_FLOAT_PARTS}, got {float_parts!r}")
    per_token = resolve_per_token(per_token, tuple(float_parts))
    cpu_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vbedge-cpuform-") as tmp:
        source = fp32_path
        if optimize:
            try:
                from onnxruntime.transformers.optimizer import optimize_model
            except ImportError as exc:
                raise MissingDependencyError(f"onnxruntime.transformers is needed for the CPU form: {exc}") from exc
            # num_heads/hidden_size 0: detected from the graph. opt_level 1 folds the decoder's
            # Slice/Transpose of the tied embeddings into constants the quantizer can pre-pack.
            optimized = optimize_model(str(fp32_path), model_type="bert", num_heads=0, hidden_size=0,
                                       opt_level=1, use_gpu=False)
            source = Path(tmp) / "optimized.onnx"
            optimized.save_model_to_file(str(source))
        kept = _cpu_form_float_nodes(onnx.load(str(source)), tuple(float_parts))
        exclude = sorted({name for names in kept.values() for name in names})
        staged = Path(tmp) / "cpu.onnx"
        try:
            # Dynamic quantization first rewrites every Gemm into MatMul ("<name>_MatMul") + Add and
            # only then reads nodes_to_exclude: exclude both names.
            exclude += [f"{name}_MatMul" for name in exclude]
            quantize_dynamic(str(source), str(staged), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=exclude,
                             reduce_range=weight_bits == 7)
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:
            raise FormatError(f"ONNX Runtime dynamic quantization of {fp32_path.name} failed: {exc}") from exc
        model = onnx.load(str(staged))
        onnx.checker.check_model(model)
        kept = _written_float_nodes(model, kept)
        if per_token:
            found = per_token_quantizer_parts(model)
            missing = [part for part in per_token if not found[part]]
            if missing:
                raise FormatError(f"no run-time activation quantizer found for per-token part(s) {missing}; the "
                                  f"graph's quantizers by part: { {k: len(v) for k, v in found.items()} }")
            per_token_activation_scales(model, names={name for part in per_token for name in found[part]})
        partial = Path(str(cpu_path) + ".partial")
        onnx.save(model, str(partial))
        os.replace(partial, cpu_path)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    keys = ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "MatMul", "SkipLayerNormalization",
            "BiasGelu", "Attention")
    result = {k: counts[k] for k in keys if counts[k]}
    result["float_nodes"] = kept
    result["per_token"] = list(per_token)
    result["weight_bits"] = weight_bits
    result["weight_bits_why"] = bits_why
    return result


def quantize_model(fp32_path, out_path, reader, *, method="minmax", percentile=DEFAULT_PERCENTILE,
                   keep_float=FLOAT_PARTS, cpu_path=None, dynamic_axes=None, progress=True,
                   expected_batches=None, float_nodes=(), cpu_u8_range=DEFAULT_U8_RANGE,
                   cpu_weight_bits=DEFAULT_WEIGHT_BITS, share_concat=True) -> QuantizationResult:
    """Calibrate ``fp32_path`` with ``reader`` and write the INT8 Q/DQ graph to ``out_path``.

    Args:
        fp32_path: the FP32 ONNX graph (an S3D or VideoBERT export, or another CNN/transformer).
        out_path: where to write the Q/DQ graph (TensorRT-ready, checked).
        reader: an ``onnxruntime.quantization.CalibrationDataReader`` (``get_next() -> feeds or
            None``), e.g. from :mod:`vbedge.calib.readers`.
        method: 'minmax', 'entropy' or 'percentile'.
        percentile: for 'percentile': the percentile of |activation| taken as the range.
        keep_float: transformer parts left in float (subset of :data:`FLOAT_PARTS`).
        cpu_path: also write the ONNX Runtime CPU form there (module docstring).
        dynamic_axes: passed to the TensorRT-readiness check.
        progress: show a progress bar over calibration inputs.
        expected_batches: total for the progress bar, when known.
        float_nodes: names of further nodes to keep in float (layer-subset studies, or a MatMul
            a report shows to be sensitive).
        cpu_u8_range, cpu_weight_bits: how the CPU form spends its uint8 codes and weight bits
            (:func:`make_cpu_form`; the Q/DQ graph for TensorRT keeps int8 with 8-bit weights).
        share_concat: quantize each Concat's inputs with its output's scale
            (:func:`share_concat_scales`; both files).

    Raises:
        InvalidInputError: bad options or an empty reader. FormatError: the result is not a
        TensorRT INT8 graph (never written under ``out_path`` then).
    """
    check_options(method, percentile, keep_float)
    if cpu_u8_range not in U8_RANGES or (cpu_weight_bits not in WEIGHT_BITS and cpu_weight_bits != "auto"):
        raise InvalidInputError(f"cpu_u8_range must be one of {U8_RANGES} and cpu_weight_bits 'auto' or one of "
                                f"{WEIGHT_BITS}, got {cpu_u8_range!r} and {cpu_weight_bits!r}")
    _require_quantization()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from vbedge.export.readiness import require_tensorrt_ready

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise FormatError(f"FP32 ONNX model not found: {fp32_path}")
    if not hasattr(reader, "get_next"):
        raise InvalidInputError(f"reader must have get_next() (a CalibrationDataReader), got {type(reader).__name__}")
    if out_path.resolve() == fp32_path.resolve() or (cpu_path and Path(cpu_path).resolve() in (fp32_path.resolve(), out_path.resolve())):
        raise InvalidInputError("the INT8 outputs must not overwrite the FP32 model or each other")
    fp32 = onnx.load(str(fp32_path))
    kind = model_kind(fp32)
    op_types, exclude = _quantization_plan(fp32, kind, tuple(keep_float))
    if isinstance(float_nodes, str):
        raise InvalidInputError("float_nodes must be a list of node names, not one string")
    unknown = sorted(set(float_nodes) - {n.name for n in fp32.graph.node})
    if unknown:
        raise InvalidInputError(f"float_nodes not in {fp32_path.name}: {unknown[:5]}")
    exclude = sorted(set(exclude) | set(float_nodes))
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True,
             # One DQ per consumer: ONNX Runtime fuses a DQ into at most one QLinear* node.
             "DedicatedQDQPair": True,
             # TensorRT reads float biases (it has no INT32 DequantizeLinear) and folds them itself.
             "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    counting = _CountingReader(reader, progress, expected_batches)
    if hasattr(reader, "__len__"):
        if len(reader) == 0:
            raise InvalidInputError("the calibration reader gave no inputs")
        # Bounded memory: see _CountingReader.
        extra["CalibStridedMinMax"] = calibration_stride(len(reader))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vbedge-quant-") as tmp:
        raw = Path(tmp) / "qdq.onnx"
        # The quantizer writes its augmented calibration model into the working directory unless
        # told otherwise; keep it in the temporary folder.
        extra["CalibTensorRangeSymmetric"] = True
        try:
            quantize_static(str(fp32_path), str(raw), counting, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method={"minmax": CalibrationMethod.MinMax,
                                              "entropy": CalibrationMethod.Entropy,
                                              "percentile": CalibrationMethod.Percentile}[method],
                            op_types_to_quantize=op_types, nodes_to_exclude=exclude, extra_options=extra,
                            calibration_providers=["CPUExecutionProvider"])
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:
            if counting.count == 0:
                raise InvalidInputError("the calibration reader gave no inputs") from exc
            raise FormatError(f"ONNX Runtime quantization of {fp32_path.name} failed: {exc}") from exc
        if counting.count == 0:
            raise InvalidInputError("the calibration reader gave no inputs")
        qdq = onnx.load(str(raw))
        stripped = strip_conv_relu_qdq(qdq)
        concats = share_concat_scales(qdq) if share_concat else 0
        check_qdq_for_tensorrt(qdq)
        staged = out_path.with_name(out_path.name + ".partial")
        onnx.save(qdq, str(staged))
        try:
            readiness = require_tensorrt_ready(staged, dynamic_axes).to_dict()
            rewrite = {}
            if cpu_path is not None:
                cpu_model = onnx.load(str(staged))
                float_weights = {i.name: onnx.numpy_helper.to_array(i) for i in fp32.graph.initializer}
                rewrite = make_cpu_form(cpu_model, u8_range=cpu_u8_range, weight_bits=cpu_weight_bits,
                                        float_weights=float_weights)
                del float_weights
                onnx.checker.check_model(cpu_model)
                cpu_staged = Path(str(cpu_path) + ".partial")
                onnx.save(cpu_model, str(cpu_staged))
                os.replace(cpu_staged, cpu_path)
            os.replace(staged, out_path)
        finally:
            if staged.exists():
                staged.unlink()
    rewrite["conv_relu_pairs_removed"] = stripped
    rewrite["concats_sharing_scale"] = concats
    counts = collections.Counter()
    producer_ops = {name: node.op_type for name, node in _producers(qdq.graph).items()}
    for node in qdq.graph.node:
        if node.op_type in op_types and any(producer_ops.get(i) == "DequantizeLinear" for i in node.input):
            counts[node.op_type] += 1
    log.info("quantized %s: %s, %d nodes kept in float", fp32_path.name, dict(counts), len(exclude))
    return QuantizationResult(out_path, Path(cpu_path) if cpu_path else None, kind, method, counting.count,
                              dict(counts), exclude, readiness, rewrite)
