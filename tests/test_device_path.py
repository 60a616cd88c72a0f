"""The pipeline's device-resident S3D -> tokenizer path (vbedge.device_path).

No GPU here. The decision logic is tested for real; the pipeline wiring of the device path runs
with a FAKE GPU backend (ONNX Runtime underneath, its "device" arrays are host arrays behind a
wrapper) and the codebook's CPU kernel standing in for the CUDA tokenizer, LABELLED AS FAKES:
they check that leaves computed in the S3D stage reach the events unchanged and that the
tokenize stage leaves them alone, not that anything ran on a GPU (benchmarks/gpu_check.sh runs the
real path on a lent GPU machine).
"""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from vbedge import device_path  # noqa: E402
from vbedge.errors import InvalidInputError  # noqa: E402
from vbedge.pipeline import Pipeline  # noqa: E402


class _HostBacked:
    """FAKE device array: a NumPy array behind an object that is not one."""

    def __init__(self, array):
        self.array = array


class _FakeGpuBackend:
    """FAKE GPU backend: ONNX Runtime's S3D with a run_to_device that returns _HostBacked arrays."""

    name = "fake-gpu"
    device = 0

    def __init__(self, real):
        self.real = real
        self.device_calls = 0

    def run(self, inputs):
        raise AssertionError("the device path must not use run()")

    def run_to_device(self, inputs):
        self.device_calls += 1
        return {k: _HostBacked(v) for k, v in self.real.run(inputs).items()}

    def close(self):
        self.real.close()


def test_status_says_why_the_host_path_is_used(small_bundle):
    from vbedge.backends.select import create_bundle_backend

    ort = create_bundle_backend(small_bundle, "s3d", backend="onnxruntime")
    assert device_path.device_path_status(ort, small_bundle.codebook) == (
        False, "the onnxruntime backend returns host arrays only")
    assert device_path.device_path_status(ort, small_bundle.codebook, False)[0] is False
    ok, why = device_path.device_path_status(_FakeGpuBackend(ort), small_bundle.codebook)
    assert not ok and "CUDA tokenizer unavailable" in why  # no CUDA extension/GPU here
    with pytest.raises(InvalidInputError, match="device_features=True, but the onnxruntime backend returns host"):
        Pipeline.load(small_bundle, backend="onnxruntime", device_features=True)
    with pytest.raises(InvalidInputError, match="device_features must be"):
        Pipeline.load(small_bundle, backend="onnxruntime", device_features="yes")


def test_pipeline_device_path_wiring_with_fakes(small_bundle, tmp_path, monkeypatch):
    from vbedge.backends import select

    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    base = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for i in range(50):
        writer.write(np.roll(base, 3 * i, axis=0))
    writer.release()
    video = str(tmp_path / "v.avi")
    with Pipeline.load(small_bundle, backend="onnxruntime") as ref:
        want = [(e.clip_index, e.leaf, e.caption) for e in ref.stream(video)]

    real_create = select.create_bundle_backend
    fakes = []

    def create(bundle, model, **kwargs):
        backend = real_create(bundle, model, **dict(kwargs, backend="onnxruntime"))
        if model == "s3d":
            backend = _FakeGpuBackend(backend)
            fakes.append(backend)
        return backend

    codebook = small_bundle.codebook
    real_tokenize = type(codebook).tokenize
    monkeypatch.setattr(select, "create_bundle_backend", create)
    monkeypatch.setattr("vbedge.cuda_tokenizer.cuda_extension_status", lambda: (True, "fake"))
    monkeypatch.setattr(type(codebook), "tokenize", lambda self, f, mode="tree", beam=1, device="auto":
                        real_tokenize(self, f.array if isinstance(f, _HostBacked) else f, mode=mode, beam=beam))
    with Pipeline.load(small_bundle, backend="onnxruntime", device_features=True) as pipe:
        assert pipe.device_features is True
        events = list(pipe.stream(video))
    got = [(e.clip_index, e.leaf, e.caption) for e in events]
    assert got == want and fakes[0].device_calls >= 1
    assert all("s3d+tokenize" in e.latency_ms and "tokenize" not in e.latency_ms for e in events)
