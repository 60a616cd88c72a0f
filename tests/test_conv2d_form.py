"""S3D's separable 3D convolutions as 2D ones for ONNX Runtime's CPU (vbedge.backends.conv2d_form)."""

import collections
import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vbedge.backends.conv2d_form import rewrite_separable_conv3d, write_conv2d_form  # noqa: E402
from vbedge.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402


def _conv_kernels(model):
    """Counter of (rank of the kernel, kernel shape) over the model's Conv nodes."""
    inits = {init.name: init for init in model.graph.initializer}
    return collections.Counter(tuple(inits[n.input[1]].dims[2:]) for n in model.graph.node if n.op_type == "Conv")


def _graph(tmp_path, convs, shape=(3, 6, 10, 12), relu_last=False, name="g.onnx"):
    """A chain of Conv (+ Relu) nodes on a (batch, C, T, H, W) input: each entry of ``convs`` is
    (out_channels, kernel (kt, kh, kw), strides, pads (6), group, bias, relu)."""
    rng = np.random.default_rng(0)
    c = shape[0]
    nodes, inits = [], []
    src = "x"
    for i, (out_c, kernel, strides, pads, group, bias, relu) in enumerate(convs):
        w = rng.standard_normal((out_c, c // group, *kernel)).astype(np.float32) * 0.3
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inputs = [src, f"w{i}"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(out_c).astype(np.float32), f"b{i}"))
            inputs.append(f"b{i}")
        nodes.append(helper.make_node("Conv", inputs, [f"c{i}"], kernel_shape=list(kernel), strides=list(strides),
                                      pads=list(pads), group=group))
        src = f"c{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [src], [f"r{i}"]))
            src = f"r{i}"
        c = out_c
    nodes.append(helper.make_node("Identity", [src], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 5)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _run(path, x, conv2d_form):
    backend = OnnxRuntimeBackend(path, conv2d_form=conv2d_form)
    try:
        return backend.graph_form, backend.run({"x": x})["y"]
    finally:
        backend.close()


def test_each_separable_kind_is_rewritten_and_computes_the_same(tmp_path):
    """Pointwise, spatial (stride 2, padded), temporal (stride 2, padded) and a conv without a
    following Relu or bias: all become 2D, and the graph's output is the same at batch 1 and 3."""
    path = _graph(tmp_path, [
        (16, (1, 1, 1), (1, 1, 1), (0,) * 6, 1, True, True),      # pointwise
        (16, (1, 3, 3), (1, 2, 2), (0, 1, 1, 0, 1, 1), 1, True, True),  # spatial, stride 2
        (8, (3, 1, 1), (2, 1, 1), (1, 0, 0, 1, 0, 0), 1, False, False),  # temporal, stride 2, no bias/relu
    ], shape=(8, 6, 10, 12))
    rewritten, counts = rewrite_separable_conv3d(onnx.load(str(path)))
    assert counts == {"pointwise": 1, "spatial": 1, "temporal": 1, "concat": 0}
    assert all(len(k) == 2 for k in _conv_kernels(rewritten))  # no 3D kernel left
    onnx.checker.check_model(rewritten)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 6, 10, 12)).astype(np.float32)
        form, got = _run(path, x, True)
        assert form == "conv2d form"
        _, want = _run(path, x, False)
        assert got.shape == want.shape == (batch, 8, 3, 5, 6)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_what_is_not_separable_stays_3d(tmp_path):
    """A full 3x3x3 kernel, a grouped conv and a spatial conv on fewer than 8 channels (S3D's RGB
    stem) are left as they are; the graph still runs and matches."""
    path = _graph(tmp_path, [
        (8, (1, 3, 3), (1, 1, 1), (0, 1, 1, 0, 1, 1), 1, True, True),  # 3 input channels: stays 3D
        (8, (3, 3, 3), (1, 1, 1), (1,) * 6, 1, True, True),           # not separable
        (8, (1, 1, 1), (1, 1, 1), (0,) * 6, 2, True, True),           # grouped
    ])
    rewritten, counts = rewrite_separable_conv3d(onnx.load(str(path)))
    assert counts == {"pointwise": 0, "spatial": 0, "temporal": 0, "concat": 0}
    assert _conv_kernels(rewritten) == _conv_kernels(onnx.load(str(path)))
    assert write_conv2d_form(path, tmp_path / "out.onnx") is None
    assert not (tmp_path / "out.onnx").exists()
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 10, 12)).astype(np.float32)
    form, got = _run(path, x, True)
    assert form == "file"  # nothing to rewrite: ONNX Runtime gets the file as it is
    np.testing.assert_allclose(got, _run(path, x, False)[1], rtol=1e-5, atol=1e-5)


def test_bundle_s3d_conv2d_form_matches_the_file_and_is_the_default(small_bundle, caplog):
    """The bundle's real S3D (random init, 16 x 112): the 2D form keeps only the RGB stem 3D,
    joins every inception block's outputs in the 2D layout, and matches the file's features;
    create_bundle_backend uses it for S3D FP32 on ONNX Runtime's CPU and says so."""
    from vbedge.backends.select import create_bundle_backend

    path = small_bundle.onnx_path("s3d")
    original = onnx.load(str(path))
    rewritten, counts = rewrite_separable_conv3d(onnx.load(str(path)))
    assert counts == {"pointwise": 37, "spatial": 19, "temporal": 20, "concat": 9}
    assert [k for k in _conv_kernels(rewritten) if len(k) == 3] == [(1, 7, 7)]
    assert sum(_conv_kernels(rewritten).values()) == sum(_conv_kernels(original).values())

    clips = np.random.default_rng(0).standard_normal((2, 3, 16, 112, 112)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="vbedge"):
        fast = create_bundle_backend(small_bundle, "s3d", backend="onnxruntime")
    plain = OnnxRuntimeBackend(path)
    try:
        assert fast.graph_form == "conv2d form" and plain.graph_form == "file"
        assert "as 2D" in fast.selection
        assert "37 pointwise, 19 spatial, 20 temporal, 9 concat" in caplog.text
        got, want = fast.run({"clip": clips})["feature"], plain.run({"clip": clips})["feature"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
        assert float(np.abs(want).max()) > 0
    finally:
        fast.close()
        plain.close()
    # VideoBERT has no convolution; S3D asked for with conv2d_form=False gets the file.
    with create_bundle_backend(small_bundle, "videobert", backend="onnxruntime") as vb:
        assert vb.graph_form == "file"
    with create_bundle_backend(small_bundle, "s3d", backend="onnxruntime", conv2d_form=False) as off:
        assert off.graph_form == "file"


def test_without_onnx_or_with_a_broken_file(tmp_path, monkeypatch, caplog):
    """No onnx package: the file runs as it is (logged). A file onnx cannot parse: the backend's
    clear FormatError, as without the rewrite."""
    from hidden_imports import hide_package

    from vbedge.errors import FormatError

    path = _graph(tmp_path, [(16, (1, 1, 1), (1, 1, 1), (0,) * 6, 1, True, True)], shape=(8, 2, 4, 4))
    with monkeypatch.context() as hidden:
        hide_package(hidden, "onnx")
        with caplog.at_level(logging.INFO, logger="vbedge"):
            form, _ = _run(path, np.zeros((1, 8, 2, 4, 4), np.float32), True)
    assert form == "file"
    assert "onnx is not installed" in caplog.text

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        with pytest.raises(FormatError, match="onnxruntime cannot load"):
            OnnxRuntimeBackend(broken, conv2d_form=True)
    assert "cannot rewrite broken.onnx as 2D convolutions" in caplog.text
