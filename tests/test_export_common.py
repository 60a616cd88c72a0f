"""Shared export tools: FP16 conversion, TensorRT-readiness check, verification helpers."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vbedge.errors import FormatError, InvalidInputError  # noqa: E402
from vbedge.export.fp16 import DEFAULT_KEEP_FP32, convert_to_fp16  # noqa: E402
from vbedge.export.readiness import (  # noqa: E402
    check_tensorrt_readiness,
    require_tensorrt_ready,
)
from vbedge.export.verify import (  # noqa: E402
    ExportCheckError,
    check_features,
    check_topk,
    compare_features,
    compare_topk,
    run_onnx,
)

HIDDEN, VOCAB = 32, 50


def _tiny_encoder(path, opset=17):
    """ids (int64) -> embedding -> LayerNorm -> MatMul -> Softmax; also a fp32 side input."""
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)
    w = rng.normal(0, 0.3, (HIDDEN, HIDDEN)).astype(np.float32)
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.ones(HIDDEN, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta")]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["x"]),
        helper.make_node("Add", ["x", "bias_in"], ["xb"]),
        helper.make_node("LayerNormalization", ["xb", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("bias_in", TensorProto.FLOAT, [HIDDEN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return emb, w


def _numpy_reference(emb, w, ids, bias):
    x = emb[ids] + bias
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(var + 1e-5)
    h = ln @ w
    e = np.exp(h - h.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    src = folder / "tiny.onnx"
    emb, w = _tiny_encoder(src)
    dst = convert_to_fp16(src, folder / "tiny.fp16.onnx")
    return src, dst, emb, w


def test_fp16_keeps_io_types_and_fragile_ops_in_fp32(tiny):
    src, dst, _, _ = tiny
    model = onnx.shape_inference.infer_shapes(onnx.load(str(dst)))
    io_types = {v.name: v.type.tensor_type.elem_type
                for v in list(model.graph.input) + list(model.graph.output)}
    assert io_types == {"ids": TensorProto.INT64, "bias_in": TensorProto.FLOAT,
                        "probs": TensorProto.FLOAT}
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    by_op = {n.op_type: n for n in model.graph.node}
    # The matmul runs in FP16 with an FP16 weight; LayerNorm and Softmax get FP32 inputs.
    assert types[by_op["MatMul"].input[1]] == TensorProto.FLOAT16
    assert types[by_op["MatMul"].output[0]] == TensorProto.FLOAT16
    for op in ("LayerNormalization", "Softmax"):
        assert op in DEFAULT_KEEP_FP32
        assert types[by_op[op].input[0]] == TensorProto.FLOAT, op
    assert any(n.op_type == "Cast" for n in model.graph.node)
    onnx.checker.check_model(model)  # includes topological order


def test_fp16_output_close_to_independent_numpy_reference(tiny):
    src, dst, emb, w = tiny
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (3, 7)).astype(np.int64)
    bias = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    ref = _numpy_reference(emb, w, ids, bias)
    fp32 = run_onnx(src, {"ids": ids, "bias_in": bias})["probs"]
    fp16 = run_onnx(dst, {"ids": ids, "bias_in": bias})["probs"]
    assert fp16.dtype == np.float32
    np.testing.assert_allclose(fp32, ref, atol=1e-5)
    np.testing.assert_allclose(fp16, ref, atol=1e-2)
    assert compare_features(ref, fp16)["min_cos"] > 0.999


def test_fp16_conversion_errors(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        convert_to_fp16(tmp_path / "none.onnx", tmp_path / "out.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf" * 10)
    with pytest.raises(FormatError):
        convert_to_fp16(junk, tmp_path / "out.onnx")


def test_readiness_passes_on_supported_graph(tiny):
    src, dst, _, _ = tiny
    for path in (src, dst):
        report = require_tensorrt_ready(path)
        assert report.ok and report.problems == [] and report.opset == 17
        assert report.ops["LayerNormalization"] == 1


def _single_node_model(node, inputs, outputs, inits=(), opset=17, domains=()):
    graph = helper.make_graph([node], "g", inputs, outputs, list(inits))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports)


def test_readiness_fails_on_unsupported_op():
    model = _single_node_model(
        helper.make_node("Det", ["x"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    report = check_tensorrt_readiness(model)
    assert not report.ok
    assert any("Det" in p and "supported" in p for p in report.problems)
    with pytest.raises(FormatError, match="Det"):
        require_tensorrt_ready(model)


def test_readiness_fails_on_float64():
    model = _single_node_model(
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])])
    report = check_tensorrt_readiness(model)
    assert not report.ok
    assert any("DOUBLE" in p for p in report.problems)


def test_readiness_fails_on_string_custom_domain_and_opset():
    custom = _single_node_model(
        helper.make_node("FusedThing", ["x"], ["y"], domain="com.microsoft"),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], domains=["com.microsoft"])
    assert any("com.microsoft" in p for p in check_tensorrt_readiness(custom).problems)
    new_opset = _single_node_model(
        helper.make_node("Relu", ["x"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], opset=23)
    assert any("opset 23" in p for p in check_tensorrt_readiness(new_opset).problems)
    strings = _single_node_model(
        helper.make_node("Identity", ["s"], ["t"]),
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [2])])
    assert any("STRING" in p for p in check_tensorrt_readiness(strings).problems)


def test_readiness_dynamic_dims_must_be_declared():
    model = _single_node_model(
        helper.make_node("Relu", ["x"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])])
    assert check_tensorrt_readiness(model).ok  # named dims count as declared by default
    report = check_tensorrt_readiness(model, dynamic_axes={"x": [0]})
    assert not report.ok and any("axis 1" in p for p in report.problems)
    assert check_tensorrt_readiness(model, dynamic_axes={"x": [0, 1]}).ok
    no_rank = _single_node_model(
        helper.make_node("Relu", ["x"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert any("rank" in p for p in check_tensorrt_readiness(no_rank).problems)


def test_readiness_topk_k_must_be_constant():
    model = _single_node_model(
        helper.make_node("TopK", ["x", "k"], ["v", "i"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, None]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [1, None])])
    assert any("TopK" in p and "constant" in p for p in check_tensorrt_readiness(model).problems)


def test_readiness_missing_file(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        check_tensorrt_readiness(tmp_path / "missing.onnx")


def test_compare_features_values():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    got = np.array([[1.0, 0.1], [0.0, 2.0]], np.float32)
    m = compare_features(ref, got)
    assert m["max_abs"] == pytest.approx(0.1, rel=1e-6)
    assert m["min_cos"] == pytest.approx(1 / np.sqrt(1.01), rel=1e-6)
    assert m["mean_cos"] == pytest.approx((1 + 1 / np.sqrt(1.01)) / 2, rel=1e-6)
    with pytest.raises(InvalidInputError):
        compare_features(ref, got[:1])


def test_check_features_raises_export_check_error():
    ref = np.ones((2, 8), np.float32)
    check_features(ref, ref + 1e-6, max_abs=1e-4, min_cos=0.9999)
    with pytest.raises(ExportCheckError, match="max abs"):
        check_features(ref, ref + 0.5, max_abs=1e-4, min_cos=0.5)
    flipped = ref.copy()
    flipped[1] *= -1
    with pytest.raises(ExportCheckError, match="cosine"):
        check_features(ref, flipped, max_abs=10, min_cos=0.99)
    nan = ref.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ExportCheckError):
        check_features(ref, nan, max_abs=10, min_cos=0.0)
    assert issubclass(ExportCheckError, FormatError)


def test_compare_and_check_topk():
    ref = np.array([[[5, 1, 2], [7, 8, 9]]])
    got = np.array([[[5, 2, 3], [8, 7, 9]]])
    m = compare_topk(ref, got)
    assert m["top1_agreement"] == 0.5
    assert m["topk_overlap"] == pytest.approx((2 / 3 + 1) / 2)
    check_topk(ref, ref, min_top1=1.0, min_overlap=1.0)
    with pytest.raises(ExportCheckError, match="top-1"):
        check_topk(ref, got, min_top1=0.9, min_overlap=0.5)


def test_tie_aware_topk_counts_tied_ids_as_agreeing():
    from vbedge.export.verify import tie_aware_topk

    ref_ids = np.array([[7, 3, 9], [1, 2, 4], [5, 6, 8]])
    ref_scores = np.array([[2.0, 2.0, 1.0], [3.0, 1.0, 0.5], [1.0, 0.9, 0.1]])
    # Row 0: id 3 ties id 7 exactly -> agrees; row 1: id 2 is 2.0 below the best -> disagrees;
    # row 2: id 6 is 0.1 below: agrees only with a tolerance of at least 0.1.
    got = np.array([[3, 7, 9], [2, 1, 4], [6, 5, 8]])
    m = tie_aware_topk(ref_ids, ref_scores, got, tol=1e-6)
    assert m["top1_agreement"] == pytest.approx(1 / 3) and m["top1_id_agreement"] == 0.0
    assert m["tied_rows"] == 1 and m["topk_overlap"] == 1.0
    assert tie_aware_topk(ref_ids, ref_scores, got, tol=0.1 + 1e-9)["top1_agreement"] == pytest.approx(2 / 3)
    # An id outside the reference's top-k is below its k-th score without a lookup table...
    outside = np.array([[11, 7, 9], [1, 2, 4], [5, 6, 8]])
    assert tie_aware_topk(ref_ids, ref_scores, outside, tol=1e-6)["top1_agreement"] == pytest.approx(2 / 3)
    # ...and scored from the full table with one (id 11 tied with the best here).
    lookup = np.zeros((3, 12))
    lookup[0, [7, 3, 11]] = 2.0
    lookup[1, [1, 2, 4]] = [3.0, 1.0, 0.5]
    lookup[2, [5, 6, 8]] = [1.0, 0.9, 0.1]
    assert tie_aware_topk(ref_ids, ref_scores, outside, tol=1e-6, ref_lookup=lookup)["top1_agreement"] == 1.0
    with pytest.raises(InvalidInputError, match="rows"):
        tie_aware_topk(ref_ids, ref_scores, got[:2], tol=1e-6)
    with pytest.raises(InvalidInputError, match="does not cover"):
        tie_aware_topk(ref_ids, ref_scores, outside, tol=1e-6, ref_lookup=lookup[:, :5])
