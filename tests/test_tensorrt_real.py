"""REAL TensorRT: build the small bundle's S3D and VideoBERT engines and compare them with ONNX Runtime.

Skipped with a reason where TensorRT (with pycuda or torch for device buffers, and a GPU) is not
available: always on the development machines, and on the lent H100/H200 as long as its image
has no TensorRT. benchmarks/gpu_check.sh runs this file wherever TensorRT imports. NEVER RUN
YET: written against the TensorRT 8.5-11 Python API and checked against Polygraphy's runner and
NVIDIA's samples by reading (docs/tensorrt.md lists what stays unverified).

References are independent: ONNX Runtime on the CPU runs the same ONNX files.
"""

import numpy as np
import pytest

from vbedge.backends.select import available_backends

TRT_OK, TRT_WHY = available_backends()["tensorrt"]
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu,
              pytest.mark.skipif(not TRT_OK, reason=f"TensorRT unavailable: {TRT_WHY}")]


def _clip(bundle, batch, seed):
    shape = (batch,) + tuple(bundle.manifest["models"]["s3d"]["inputs"][0]["shape"][1:])
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("precision, min_cos", [("fp32", 0.9999), ("fp16", 0.999)])
def test_s3d_engine_matches_onnxruntime(small_bundle, tmp_path, precision, min_cos):
    from vbedge.backends.select import create_bundle_backend

    x = _clip(small_bundle, 3, 0)
    ref = create_bundle_backend(small_bundle, "s3d", backend="onnxruntime").run({"clip": x})["feature"]
    trt = create_bundle_backend(small_bundle, "s3d", backend="tensorrt", precision=precision, limits={"batch": 4},
                                cache_dir=tmp_path)
    got = trt.run({"clip": x})["feature"]
    assert got.shape == ref.shape and got.dtype == np.float32
    assert _cosine(got, ref).min() > min_cos
    # Batch 1 after batch 3 (buffer reuse), and the layer report of the build.
    assert _cosine(trt.run({"clip": x[:1]})["feature"], ref[:1]).min() > min_cos
    counts = trt.layer_precisions()
    assert sum(counts.values()) > 0
    if precision == "fp16":
        assert counts.get("FP16", 0) > 0, counts
    trt.close()


@pytest.mark.parametrize("precision, min_top1", [("fp32", 0.97), ("fp16", 0.85)])
def test_videobert_engine_matches_onnxruntime(small_bundle, tmp_path, precision, min_top1):
    from vbedge.backends.select import create_bundle_backend

    vocab = small_bundle.vocab
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(0, vocab.size, (4, 12)).astype(np.int64),
             "attention_mask": np.ones((4, 12), np.int64), "token_type_ids": np.zeros((4, 12), np.int64),
             "predict_positions": rng.integers(0, 12, (4, 2)).astype(np.int64)}
    ref = create_bundle_backend(small_bundle, "videobert", backend="onnxruntime").run(feeds)
    trt = create_bundle_backend(small_bundle, "videobert", backend="tensorrt", precision=precision,
                                limits={"batch": 4, "sequence": 16, "positions": 2}, cache_dir=tmp_path)
    got = trt.run(feeds)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype and got[name].shape == ref[name].shape, name
    assert (got["text_topk_ids"][..., 0] == ref["text_topk_ids"][..., 0]).mean() >= min_top1
    tol = 2e-3 if precision == "fp32" else 0.25
    assert np.abs(got["alignment_logit"] - ref["alignment_logit"]).max() < max(tol, 0.05)
    trt.close()


def test_s3d_engine_features_go_to_the_cuda_tokenizer_on_the_device(small_bundle, tmp_path):
    from vbedge.backends.select import create_bundle_backend
    from vbedge.cuda_tokenizer import cuda_extension_status

    ok, why = cuda_extension_status()
    if not ok:
        pytest.skip(f"CUDA tokenizer unavailable: {why}")
    x = _clip(small_bundle, 2, 3)
    trt = create_bundle_backend(small_bundle, "s3d", backend="tensorrt", limits={"batch": 2}, cache_dir=tmp_path)
    features = trt.run_to_device({"clip": x})["feature"]
    leaves = small_bundle.codebook.tokenize(features)
    host = leaves.get() if hasattr(leaves, "get") else leaves.cpu().numpy()
    want = small_bundle.codebook.tokenize(trt.run({"clip": x})["feature"])
    np.testing.assert_array_equal(np.asarray(host), want)
    trt.close()
