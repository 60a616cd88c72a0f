"""Graphs for TensorRT 8.5 / 8.6: what the 8.x ONNX parser would read, and vbedge's rewrite.

No TensorRT here. The checks read each graph the way onnx-tensorrt 8.5-GA / 8.6-GA import it
(Reduce ops read ``axes`` only from the attribute, opsets up to 17, no LayerNormalization on
8.5), and compare the rewritten graphs with the originals in ONNX Runtime (an independent
evaluation of both). The bundle tests use the small real bundle (random S3D, MiniLM VideoBERT).
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vbedge.backends.trt_onnx import AXES_INPUT_AT_18, maxpool_ceil_problems, parser_problems  # noqa: E402
from vbedge.errors import FormatError  # noqa: E402
from vbedge.export.trt8 import check_same_outputs, convert_for_tensorrt8  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), opset=18):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def reduce_mean_model():
    """mean over axes (2, 3) of a (N, C, H, W) tensor, axes as an input (opset 18)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 3, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    return _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], [x], [y], [axes])


def layernorm_model(dtype=TensorProto.FLOAT):
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    x = helper.make_tensor_value_info("x", dtype, ["n", 7, 6])
    y = helper.make_tensor_value_info("y", dtype, ["n", 7, 6])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=6).astype(np_dtype), "w"),
             numpy_helper.from_array(rng.normal(size=6).astype(np_dtype), "b")]
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5)
    return _model([node], [x], [y], inits, opset=18)


def read_like_tensorrt8(model):
    """Assert what the 8.x parser relies on: opset <= 17 and every Reduce op's axes in its attribute."""
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    assert opset <= 17
    for node in model.graph.node:
        if node.op_type in AXES_INPUT_AT_18:
            assert len(node.input) == 1 or not node.input[1], f"{node.name} still has an axes input"
            assert "axes" in {a.name for a in node.attribute}, f"{node.name} has no axes attribute"
        if node.op_type == "Pad":
            assert len(node.input) <= 3
        if node.op_type == "Split":
            assert "num_outputs" not in {a.name for a in node.attribute}


def test_parser_problems_name_the_silent_reduce_mean():
    model = reduce_mean_model()
    problems = parser_problems(model, "8.6.1")
    assert any("ReduceMean" in p and "reduces over every axis" in p for p in problems)
    assert any("opset 18" in p for p in problems)
    assert parser_problems(model, "10.3.0") == [] and parser_problems(model, "11.0") == []


def test_reduce_mean_rewrite_keeps_axes_and_values():
    converted, notes = convert_for_tensorrt8(reduce_mean_model(), "8.6")
    read_like_tensorrt8(converted)
    node = next(n for n in converted.graph.node if n.op_type == "ReduceMean")
    assert list(helper.get_attribute_value(next(a for a in node.attribute if a.name == "axes"))) == [2, 3]
    x = np.random.default_rng(1).normal(size=(2, 4, 3, 5)).astype(np.float32)
    check_same_outputs(reduce_mean_model(), converted, {"x": x})
    assert notes and parser_problems(converted, "8.6.1") == []


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_layernorm_is_decomposed_for_8_5_only(dtype):
    model = layernorm_model(dtype)
    assert any("no LayerNormalization importer" in p for p in parser_problems(model, "8.5.3"))
    assert not any("LayerNormalization" in p for p in parser_problems(model, "8.6.1"))
    for_86, _ = convert_for_tensorrt8(model, "8.6.1")
    assert "LayerNormalization" in {n.op_type for n in for_86.graph.node}  # 8.6 imports it natively
    for_85, notes = convert_for_tensorrt8(model, "8.5.3")
    assert "LayerNormalization" not in {n.op_type for n in for_85.graph.node}
    assert any("1 LayerNormalization decomposed" in n for n in notes)
    read_like_tensorrt8(for_85)
    x = np.random.default_rng(2).normal(size=(3, 7, 6)).astype(np.float16 if dtype == TensorProto.FLOAT16 else np.float32)
    tol = 2e-3 if dtype == TensorProto.FLOAT16 else 1e-5
    check_same_outputs(model, for_85, {"x": x}, rtol=tol, atol=tol)


def test_check_same_outputs_catches_a_changed_graph():
    x = np.ones((2, 4, 3, 5), np.float32)
    other = reduce_mean_model()
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([2], np.int64), "axes"))
    other.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "c"
    x[:, :, 0] = 5
    with pytest.raises(FormatError, match="differs|shape"):
        check_same_outputs(reduce_mean_model(), other, {"x": x})


def _maxpool(size, kernel, stride, pad, ceil):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=[pad] * 4, ceil_mode=ceil)
    return _model([node], [x], [y], opset=17)


def test_maxpool_ceil_mode_output_shape_against_pytorch():
    torch = pytest.importorskip("torch")
    # 5 wide, kernel 2, stride 2, pad 1: ONNX's ceil rule gives 4, PyTorch drops the last window (3).
    problems = maxpool_ceil_problems(_maxpool(5, 2, 2, 1, 1))
    got = torch.nn.functional.max_pool2d(torch.zeros(1, 1, 5, 5), 2, 2, 1, ceil_mode=True).shape[-1]
    assert got == 3 and len(problems) == 2 and "gives 4 in ONNX but 3 in PyTorch" in problems[0]
    # Where both rules agree, nothing is reported (checked against PyTorch too).
    assert torch.nn.functional.max_pool2d(torch.zeros(1, 1, 6, 6), 2, 2, 1, ceil_mode=True).shape[-1] == 4
    assert maxpool_ceil_problems(_maxpool(6, 2, 2, 1, 1)) == []
    assert maxpool_ceil_problems(_maxpool(5, 2, 2, 1, 0)) == []


@pytest.mark.parametrize("version", ["8.5.3", "8.6.1"])
def test_bundle_graphs_rewritten_for_tensorrt8_read_correctly_and_match(small_bundle, version):
    """The small bundle's real S3D and VideoBERT graphs, as the 8.x parser would read their rewrites."""

    s3d_path, vb_path = small_bundle.onnx_path("s3d"), small_bundle.onnx_path("videobert")
    s3d = onnx.load(str(s3d_path))
    assert any("ReduceMean" in p for p in parser_problems(s3d, version))  # the silent channel-averaging
    assert maxpool_ceil_problems(s3d) == []  # S3D's pools use ceil_mode=0
    for path in (s3d_path, vb_path):
        converted, _ = convert_for_tensorrt8(path, version)
        read_like_tensorrt8(converted)
        assert parser_problems(converted, version) == []
        if version.startswith("8.5"):
            assert "LayerNormalization" not in {n.op_type for n in converted.graph.node}
    rng = np.random.default_rng(3)
    clip_shape = (2,) + tuple(small_bundle.manifest["models"]["s3d"]["inputs"][0]["shape"][1:])
    check_same_outputs(s3d_path, convert_for_tensorrt8(s3d_path, version)[0],
                       {"clip": rng.normal(size=clip_shape).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    vocab = small_bundle.vocab
    feeds = {"input_ids": rng.integers(0, vocab.size, (2, 9)).astype(np.int64),
             "attention_mask": np.ones((2, 9), np.int64), "token_type_ids": np.zeros((2, 9), np.int64),
             "predict_positions": np.array([[1, 4], [2, 3]], np.int64)}
    check_same_outputs(vb_path, convert_for_tensorrt8(vb_path, version)[0], feeds, rtol=1e-3, atol=1e-3)
