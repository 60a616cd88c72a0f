"""Rewrite an exported graph so that TensorRT 8.5 / 8.6 (JetPack 5.1 / 6.0) parse it as meant.

The bundle's graphs are opset 18 (torch's exporter writes 18+). TensorRT 8.x reads opset 17, and
reading an opset-18 ReduceMean there silently reduces over every axis (see
:mod:`vbedge.backends.trt_onnx`). :func:`convert_for_tensorrt8`:

1. converts the graph to opset 17 with ONNX's version converter, which moves the Reduce ops'
   ``axes`` from an input back to an attribute (and Pad/Split back to their opset-17 forms);
2. for TensorRT 8.5, replaces every LayerNormalization with the primitive ops it stands for
   (ReduceMean, Sub, Mul, Add, Sqrt, Div; computed in float32 as ``stash_type=1`` asks);
3. checks the result with :func:`vbedge.backends.trt_onnx.parser_problems` and raises
   FormatError if anything is left.

:func:`check_same_outputs` runs both graphs with ONNX Runtime on the same inputs, so a rewrite
that changed the arithmetic is caught before an engine is built from it. Needs the ``onnx``
package (and ``onnxruntime`` for the check), not torch.
"""

from __future__ import annotations

import logging

import numpy as np

from vbedge.errors import FormatError

log = logging.getLogger("vbedge")

from vbedge.backends.trt_policy import CONVERSION_VERSION  # noqa: E402,F401 - re-exported: the rewrite's version


def _decompose_layernorm(model):
    """Replace LayerNormalization nodes by primitive ops (opset 17, axes as attributes); return the count."""
    import onnx
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type for vi in list(inferred.graph.input) + list(inferred.graph.value_info)
             + list(inferred.graph.output)}
    for init in model.graph.initializer:
        types.setdefault(init.name, None)
    graph = model.graph
    new_nodes, count, extra_inits = [], 0, []
    for node in graph.node:
        if node.op_type != "LayerNormalization":
            new_nodes.append(node)
            continue
        if len([o for o in node.output if o]) > 1:
            raise FormatError(f"LayerNormalization {node.name!r} uses its Mean/InvStdDev outputs; cannot decompose it")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        ttype = types.get(node.input[0])
        rank = len(ttype.shape.dim) if ttype is not None and ttype.HasField("shape") else None
        if axis < 0:
            axes = list(range(axis, 0))
        elif rank is not None:
            axes = list(range(axis, rank))
        else:
            raise FormatError(f"LayerNormalization {node.name!r}: rank of its input is unknown, cannot decompose it")
        elem = ttype.elem_type if ttype is not None else TensorProto.FLOAT
        base = f"{node.name or 'layernorm'}_{count}"
        x = node.input[0]
        produced = []
        if elem != TensorProto.FLOAT:  # stash_type=1: compute in float32
            produced.append(helper.make_node("Cast", [x], [f"{base}/x32"], to=TensorProto.FLOAT))
            x = f"{base}/x32"
        eps_name = f"{base}/eps"
        extra_inits.append(onnx.numpy_helper.from_array(np.array(eps, np.float32), eps_name))
        produced += [
            helper.make_node("ReduceMean", [x], [f"{base}/mean"], axes=axes, keepdims=1),
            helper.make_node("Sub", [x, f"{base}/mean"], [f"{base}/centred"]),
            helper.make_node("Mul", [f"{base}/centred", f"{base}/centred"], [f"{base}/square"]),
            helper.make_node("ReduceMean", [f"{base}/square"], [f"{base}/var"], axes=axes, keepdims=1),
            helper.make_node("Add", [f"{base}/var", eps_name], [f"{base}/var_eps"]),
            helper.make_node("Sqrt", [f"{base}/var_eps"], [f"{base}/std"]),
            helper.make_node("Div", [f"{base}/centred", f"{base}/std"], [f"{base}/normed"]),
        ]
        y = f"{base}/normed"
        if elem != TensorProto.FLOAT:
            produced.append(helper.make_node("Cast", [y], [f"{base}/normed_t"], to=elem))
            y = f"{base}/normed_t"
        scale = node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        produced.append(helper.make_node("Mul", [y, scale], [node.output[0] if bias is None else f"{base}/scaled"]))
        if bias is not None:
            produced.append(helper.make_node("Add", [f"{base}/scaled", bias], [node.output[0]]))
        new_nodes += produced
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(extra_inits)
    return count


def _drop_noop_with_empty_axes(model):
    """ONNX's converter keeps opset 18's ``noop_with_empty_axes`` on Reduce ops, which opset 17 lacks.

    With axes given (or the attribute 0) dropping it changes nothing; a node that asked for the
    no-op behaviour without axes has no opset-17 form and is refused.
    """
    from onnx import helper

    from vbedge.backends.trt_onnx import AXES_INPUT_AT_18

    for node in model.graph.node:
        if node.op_type not in AXES_INPUT_AT_18:
            continue
        kept = []
        for attr in node.attribute:
            if attr.name != "noop_with_empty_axes":
                kept.append(attr)
                continue
            has_axes = "axes" in {a.name for a in node.attribute}
            if helper.get_attribute_value(attr) and not has_axes:
                raise FormatError(f"{node.op_type} {node.name!r} is a no-op without axes (noop_with_empty_axes=1); "
                                  "opset 17 has no such form")
        del node.attribute[:]
        node.attribute.extend(kept)


def convert_for_tensorrt8(model, tensorrt_version="8.5"):
    """An ``onnx.ModelProto`` the TensorRT ``tensorrt_version`` (8.x) parser reads as meant.

    ``model``: a ModelProto or the path of an ``.onnx`` file. Returns ``(converted, notes)`` where
    ``notes`` lists what was changed. Raises FormatError when the result would still be misread.
    """
    import onnx
    from onnx import version_converter

    from vbedge.backends.trt_onnx import TENSORRT8_MAX_OPSET, parser_problems
    from vbedge.backends.trt_policy import parse_version

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    major, minor = parse_version(tensorrt_version)
    notes = []
    opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 0)
    if opset > TENSORRT8_MAX_OPSET:
        try:
            model = version_converter.convert_version(model, TENSORRT8_MAX_OPSET)
        except Exception as exc:  # the converter raises its own C++ exception types
            raise FormatError(f"ONNX's version converter cannot take this graph from opset {opset} to "
                              f"{TENSORRT8_MAX_OPSET}: {exc}") from exc
        notes.append(f"opset {opset} -> {TENSORRT8_MAX_OPSET} (Reduce axes as attributes)")
        _drop_noop_with_empty_axes(model)
    if (major, minor) < (8, 6):
        count = _decompose_layernorm(model)
        if count:
            notes.append(f"{count} LayerNormalization decomposed (TensorRT 8.5 has no importer for it)")
    left = parser_problems(model, tensorrt_version)
    if left:
        raise FormatError(f"the graph still has problems for TensorRT {tensorrt_version} after conversion: "
                          + "; ".join(left))
    onnx.checker.check_model(model)
    return model, notes


def check_same_outputs(original, converted, feeds, rtol=1e-4, atol=1e-5):
    """Run both graphs (paths or ModelProtos) with ONNX Runtime on ``feeds``; raise FormatError if any output differs.

    Integer outputs (top-k ids) must be equal; float outputs within ``rtol``/``atol``.
    """
    import onnxruntime as ort

    def session(model):
        source = str(model) if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") \
            else model.SerializeToString()
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"])

    a, b = session(original), session(converted)
    names = [o.name for o in a.get_outputs()]
    for name, x, y in zip(names, a.run(names, feeds), b.run(names, feeds)):
        if x.shape != y.shape:
            raise FormatError(f"converted graph output {name!r} has shape {y.shape}, the original {x.shape}")
        if x.dtype.kind in "iub":
            if not np.array_equal(x, y):
                raise FormatError(f"converted graph output {name!r} differs from the original's "
                                  f"({int((x != y).sum())} of {x.size} values)")
        elif not np.allclose(x, y, rtol=rtol, atol=atol):
            raise FormatError(f"converted graph output {name!r} differs from the original's by up to "
                              f"{float(np.max(np.abs(x.astype(np.float64) - y))):.3g}")
