"""The torch backend: CPU behaviour checked here against ONNX Runtime; the CUDA (FP16) path needs a GPU.

The GPU tests are marked ``gpu`` and skip with a reason without CUDA (always on the development
machines; benchmarks/gpu_check.sh runs them on the lent GPU machine).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vbedge.backends.select import create_bundle_backend  # noqa: E402
from vbedge.errors import InvalidInputError  # noqa: E402

def _clip(bundle, batch=2, seed=0):
    shape = (batch,) + tuple(bundle.manifest["models"]["s3d"]["inputs"][0]["shape"][1:])
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_cpu_torch_matches_onnxruntime_and_refuses_fp16_on_cpu(small_bundle):
    x = _clip(small_bundle)
    ref = create_bundle_backend(small_bundle, "s3d", backend="onnxruntime").run({"clip": x})["feature"]
    backend = create_bundle_backend(small_bundle, "s3d", backend="torch", intra_op_threads=1)
    got = backend.run({"clip": x})["feature"]
    assert got.dtype == np.float32 and np.allclose(got, ref, rtol=1e-3, atol=1e-4)
    assert "torch requested on cpu" in backend.selection
    with pytest.raises(InvalidInputError, match="fp16' needs device='cuda'"):
        create_bundle_backend(small_bundle, "s3d", backend="torch", precision="fp16")
    with pytest.raises(InvalidInputError, match="run_device needs the torch backend on CUDA"):
        backend.run_device({"clip": torch.from_numpy(x)})


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_torch_s3d_and_videobert_match_the_cpu_reference(small_bundle, precision):
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    x = _clip(small_bundle, batch=3, seed=1)
    cpu = create_bundle_backend(small_bundle, "s3d", backend="torch").run({"clip": x})["feature"]
    gpu = create_bundle_backend(small_bundle, "s3d", backend="torch", device="cuda", precision=precision)
    on_device = gpu.run_to_device({"clip": x})["feature"]
    assert on_device.is_cuda and on_device.dtype == torch.float32
    got = on_device.cpu().numpy()
    cos = (got * cpu).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(cpu, axis=1)
    assert cos.min() > (0.9999 if precision == "fp32" else 0.995)
    # Device inputs, on a side stream: the producer (the current stream) is waited on.
    stream = torch.cuda.Stream()
    clip = torch.from_numpy(x).cuda()
    out = gpu.run_device({"clip": clip}, stream=stream)["feature"]
    stream.synchronize()
    assert torch.allclose(out.cpu(), on_device.cpu(), rtol=1e-2, atol=1e-3)
    vb = create_bundle_backend(small_bundle, "videobert", backend="torch", device="cuda", precision=precision)
    vocab = small_bundle.vocab
    rng = np.random.default_rng(2)
    feeds = {"input_ids": rng.integers(0, vocab.size, (2, 8)).astype(np.int64),
             "attention_mask": np.ones((2, 8), np.int64), "token_type_ids": np.zeros((2, 8), np.int64),
             "predict_positions": np.array([[1, 2], [3, 4]], np.int64)}
    ref = create_bundle_backend(small_bundle, "videobert", backend="torch").run(feeds)
    res = vb.run(feeds)
    assert res["text_topk_ids"].dtype == np.int64 and res["text_topk_scores"].dtype == np.float32
    agree = (res["text_topk_ids"][..., 0] == ref["text_topk_ids"][..., 0]).mean()
    assert agree >= (1.0 if precision == "fp32" else 0.75)

