"""Rewrite S3D's separable 3D convolutions as 2D ones, for ONNX Runtime's CPU kernels.

ONNX Runtime's CPU execution provider runs a 2D ``Conv`` in MLAS's blocked NCHWc kernels (its
``NchwcTransformer``), but a 3D ``Conv`` goes through the generic im2col + GEMM path. S3D is
built from 3D convolutions that are really 2D or 1D (the "separable" in its name):

- ``1 x k x k`` (spatial): a 2D convolution of every frame, run as ``Conv`` on
  ``(N*T, C, H, W)``: ``Transpose(0,2,1,3,4)`` and ``Reshape`` in, the inverse out;
- ``k x 1 x 1`` (temporal): a 2D convolution with a ``(k, 1)`` kernel on ``(N, C, T, H*W)``,
  a free ``Reshape`` each way;
- ``1 x 1 x 1`` (pointwise): a 1 x 1 ``Conv`` on ``(N, C, T, H*W)``.

The ``Relu`` that follows a convolution moves inside the 2D form so ONNX Runtime still fuses it
into the convolution, and a channel ``Concat`` whose inputs all exist in the ``(N, C, T, H*W)``
form is done there, so a block's outputs and the next block's pointwise convolutions stay in one
NCHWc region. The result computes the same function up to float summation order (checked in
tests/test_conv2d_form.py against the original graph).

Spatial convolutions with fewer than :data:`MIN_SPATIAL_CHANNELS` input channels (S3D's 7 x 7
stem on the RGB input) stay 3D: measured on an Intel Xeon (2 cores, onnxruntime 1.32), the stem
as a 2D convolution saves 18 ms but moving its 30 x 64 x 112 x 112 output between the two
layouts costs 36 ms. With that, S3D at 1 x 3 x 30 x 224 x 224 runs in about 0.83x the time of the
original graph (1.20x faster, ``benchmarks/bench_s3d_cpu.py``; figures in docs/benchmarks.md).

Only ONNX Runtime on the CPU gains from this: TensorRT and OpenVINO run the bundle's graph as it
is. The rewrite needs the ``onnx`` package and static T, H and W (the exported S3D has only a
dynamic batch axis); a convolution it cannot prove the shapes of is left alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

log = logging.getLogger("vbedge")

#: Spatial (1 x k x k) convolutions with fewer input channels than this stay 3D (see above).
MIN_SPATIAL_CHANNELS = 8

_TO_FRAMES = [0, 2, 1, 3, 4]  # (N, C, T, H, W) <-> (N, T, C, H, W); its own inverse


def _attrs(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _static_shape(shapes, name):
    """(C, T, H, W) of a 5D tensor whose dims after the batch are all known, else None."""
    dims = shapes.get(name)
    if dims is None or len(dims) != 5 or any(d is None for d in dims[1:]):
        return None
    return tuple(dims[1:])


def _kind(node, weight, attrs):
    """'pointwise', 'spatial', 'temporal' or None (left as it is) for a 3D Conv node."""
    if weight is None or len(weight.dims) != 5:
        return None
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1, 1])):
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kt, kh, kw = weight.dims[2:]
    strides = attrs.get("strides", [1, 1, 1])
    pads = attrs.get("pads", [0] * 6)
    if (kt, kh, kw) == (1, 1, 1) and list(strides) == [1, 1, 1] and not any(pads):
        return "pointwise"
    if kt == 1 and strides[0] == 1 and pads[0] == 0 and pads[3] == 0:
        if weight.dims[1] < MIN_SPATIAL_CHANNELS:
            return None
        return "spatial"
    if kh == 1 and kw == 1 and strides[1:] == [1, 1] and not any(pads[1:3]) and not any(pads[4:6]):
        return "temporal"
    return None


def _inferred_shapes(model):
    """Tensor name -> dims (None where not static), inferred on a copy without the weights' bytes."""
    import onnx
    from onnx import helper

    skeleton = onnx.ModelProto()  # not a CopyFrom: that would duplicate the weights
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.input.extend(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                       for init in model.graph.initializer)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    shapes = {}
    for info in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def rewrite_separable_conv3d(model):
    """Rewrite the separable 3D convolutions of the ONNX ``model`` (a ``ModelProto``, changed in
    place) as 2D ones (see the module docstring); return ``(model, counts)``, counts being how many
    convolutions of each kind and channel concatenations were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes = _inferred_shapes(model)
    initializers = {init.name: init for init in graph.initializer}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {out.name for out in graph.output}

    new_nodes, new_inits = [], []
    counts = {"pointwise": 0, "spatial": 0, "temporal": 0, "concat": 0}
    flat = {}  # 5D tensor name -> the same tensor as (N, C, T, H*W)
    skipped = set()  # ids of Relu nodes folded into a rewritten convolution
    serial = [0]

    def fresh(stem):
        serial[0] += 1
        return f"conv2d_form/{stem}_{serial[0]}"

    def const(values, stem):
        name = fresh(stem)
        new_inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def reshape(src, dims, dst=None):
        dst = dst or fresh("reshape")
        new_nodes.append(helper.make_node("Reshape", [src, const(dims, "shape")], [dst]))
        return dst

    def transpose(src, dst=None):
        dst = dst or fresh("transpose")
        new_nodes.append(helper.make_node("Transpose", [src], [dst], perm=_TO_FRAMES))
        return dst

    def as_flat(name, c, t, h, w):
        if name not in flat:
            flat[name] = reshape(name, [-1, c, t, h * w])
        return flat[name]

    for node in graph.node:
        if id(node) in skipped:
            continue
        if node.op_type == "Concat" and _attrs(node).get("axis") == 1 and len(node.input) > 1 \
                and all(name in flat for name in node.input):
            out_shape = _static_shape(shapes, node.output[0])
            if out_shape is not None:
                c, t, h, w = out_shape
                joined = fresh("concat")
                new_nodes.append(helper.make_node("Concat", [flat[name] for name in node.input], [joined], axis=1))
                flat[node.output[0]] = joined
                reshape(joined, [-1, c, t, h, w], node.output[0])
                counts["concat"] += 1
                continue
        if node.op_type != "Conv":
            new_nodes.append(node)
            continue
        attrs = _attrs(node)
        weight = initializers.get(node.input[1])
        kind = _kind(node, weight, attrs)
        in_shape = _static_shape(shapes, node.input[0])
        out_shape = _static_shape(shapes, node.output[0])
        if kind is None or in_shape is None or out_shape is None:
            new_nodes.append(node)
            continue
        c, t, h, w = in_shape
        c2, t2, h2, w2 = out_shape
        kernel = numpy_helper.to_array(weight)
        strides = list(attrs.get("strides", [1, 1, 1]))
        pads = list(attrs.get("pads", [0] * 6))
        # The Relu right after the convolution moves into the 2D form, so ONNX Runtime fuses it.
        relu = None
        users = consumers[node.output[0]]
        if len(users) == 1 and users[0].op_type == "Relu" and node.output[0] not in graph_outputs:
            relu = users[0]
            skipped.add(id(relu))
        result = relu.output[0] if relu is not None else node.output[0]
        if kind == "spatial":
            src = reshape(transpose(node.input[0]), [-1, c, h, w])
            kernel2d = kernel[:, :, 0]
            conv_attrs = {"kernel_shape": list(kernel2d.shape[2:]), "strides": strides[1:],
                          "pads": [pads[1], pads[2], pads[4], pads[5]]}
        else:
            src = as_flat(node.input[0], c, t, h, w)
            kernel2d = kernel[..., 0] if kind == "temporal" else kernel[:, :, 0, 0][..., None]
            conv_attrs = {"kernel_shape": list(kernel2d.shape[2:]), "strides": [strides[0], 1],
                          "pads": [pads[0], 0, pads[3], 0]}
        weight_name = fresh("weight")
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(kernel2d), weight_name))
        conv_out = fresh("conv")
        new_nodes.append(helper.make_node("Conv", [src, weight_name, *node.input[2:]], [conv_out], **conv_attrs))
        if relu is not None:
            activated = fresh("relu")
            new_nodes.append(helper.make_node("Relu", [conv_out], [activated]))
            conv_out = activated
        if kind == "spatial":
            transpose(reshape(conv_out, [-1, t2, c2, h2, w2]), result)
        else:
            flat[result] = conv_out
            reshape(conv_out, [-1, c2, t2, h2, w2], result)
        counts[kind] += 1

    # Drop what nothing needs any more: 5D views only 2D consumers used, the 3D weights.
    needed = set(graph_outputs)
    kept = []
    for node in reversed(new_nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    all_inits = list(graph.initializer) + new_inits
    del graph.initializer[:]
    graph.initializer.extend(init for init in all_inits if init.name in needed)
    del graph.value_info[:]  # stale for the rewritten tensors; runtimes infer their own
    return model, counts


def write_conv2d_form(onnx_path, out_path):
    """Write the 2D form of the ONNX file ``onnx_path`` to ``out_path`` and return the rewrite
    counts, or return None (writing nothing) when it has no 3D convolution to rewrite or the
    ``onnx`` package is missing (logged). The rewrite's memory is handed back before returning."""
    try:
        import onnx
    except ImportError:
        log.info("onnx is not installed: %s runs with its 3D convolutions as they are (pip install onnx)", onnx_path)
        return None
    model = onnx.load(str(onnx_path))
    counts = None
    if any(node.op_type == "Conv" for node in model.graph.node):
        model, counts = rewrite_separable_conv3d(model)
        if any(counts[k] for k in ("pointwise", "spatial", "temporal")):
            onnx.save(model, str(out_path))
            log.info("onnxruntime: %s runs with its separable 3D convolutions as 2D ones (%s)", onnx_path,
                     ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        else:
            counts = None
    del model
    return_freed_memory()
    return counts


def return_freed_memory():
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere): glibc
    otherwise keeps the rewrite's freed protobuf and NumPy buffers resident (about 100 MB for the
    paper-size S3D)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
