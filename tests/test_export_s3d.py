"""S3D export: random-init model exported once, checked against PyTorch at batch 1 and 3."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")

from vbedge.errors import FormatError, InvalidInputError  # noqa: E402
from vbedge.export.readiness import check_tensorrt_readiness  # noqa: E402
from vbedge.export.s3d import (  # noqa: E402
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    _check_against_torch,
    export_s3d,
)
from vbedge.export.verify import ExportCheckError, compare_features, make_session  # noqa: E402
from vbedge.models.s3d import build_s3d_feature_extractor  # noqa: E402
from vbedge.preprocess import PreprocessSpec  # noqa: E402

SEED = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export per session (slow on 2 cores): 224x224, 30 frames, checked at batch 1 and 3."""
    out = tmp_path_factory.mktemp("s3d")
    return export_s3d(out, random_init=True, seed=SEED, check_batches=(1, 3), progress=False)


@pytest.fixture(scope="module")
def torch_model():
    # Built independently of the export, from the same seed.
    return build_s3d_feature_extractor(random_init=True, seed=SEED)


@pytest.fixture(scope="module")
def fresh_batch(torch_model):
    """Batch of 2 (a size the export did not check) with its PyTorch features."""
    clip = np.random.default_rng(11).standard_normal((2, 3, 30, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        ref = torch_model(torch.from_numpy(clip)).numpy()
    return clip, ref


def test_files_and_metadata(exported):
    names = sorted(p.name for p in exported.files)
    assert names == ["s3d.fp16.onnx", "s3d.json", "s3d.onnx"]
    assert not list(exported.onnx_path.parent.glob("*.partial"))
    meta = json.loads(exported.metadata_path.read_text())
    assert meta["opset"] >= 17
    assert meta["inputs"][0]["shape"] == ["batch", 3, 30, 224, 224]
    assert meta["outputs"][0]["shape"] == ["batch", 1024]
    assert PreprocessSpec.from_dict(meta["preprocess"]) == PreprocessSpec()
    assert [c["batch"] for c in meta["checks"]["fp32"]] == [1, 3]
    assert [c["batch"] for c in meta["checks"]["fp16"]] == [1, 3]
    assert meta["source"] == {"kind": "random-init", "seed": SEED}
    import hashlib

    assert meta["files"]["fp32"]["sha256"] == hashlib.sha256(
        exported.onnx_path.read_bytes()).hexdigest()
    model = onnx.load(str(exported.onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 30, 224, 224]


def test_fp32_onnx_matches_torch_on_new_batch(exported, fresh_batch):
    clip, ref = fresh_batch
    got = make_session(exported.onnx_path).run(["feature"], {"clip": clip})[0]
    assert got.shape == (2, 1024) and got.dtype == np.float32
    metrics = compare_features(ref, got)
    assert metrics["min_cos"] >= FP32_TOLERANCE["min_cos"]
    assert metrics["max_abs"] <= FP32_TOLERANCE["rel_max_abs"] * np.abs(ref).max()
    # Not a degenerate model: the features of two clips differ by far more than the export error.
    assert np.abs(ref[0] - ref[1]).max() > 100 * max(metrics["max_abs"], 1e-6)


def test_fp16_onnx_matches_fp32_torch_loosely(exported, fresh_batch):
    clip, ref = fresh_batch
    session = make_session(exported.fp16_path)
    assert session.get_inputs()[0].type == "tensor(float)"
    got = session.run(["feature"], {"clip": clip})[0]
    assert got.dtype == np.float32
    metrics = compare_features(ref, got)
    assert metrics["min_cos"] >= FP16_TOLERANCE["min_cos"]
    assert metrics["max_abs"] <= FP16_TOLERANCE["rel_max_abs"] * np.abs(ref).max()
    # FP16 really is FP16: the conv weights are stored in half precision.
    model = onnx.load(str(exported.fp16_path))
    kinds = {init.data_type for init in model.graph.initializer if init.dims and
             len(init.dims) == 5}
    assert kinds == {onnx.TensorProto.FLOAT16}


def test_readiness_passes_on_both_exports(exported):
    for path in (exported.onnx_path, exported.fp16_path):
        report = check_tensorrt_readiness(path, dynamic_axes={"clip": [0]})
        assert report.ok, report.problems
        assert report.ops["Conv"] > 50


def test_check_fails_when_outputs_differ(exported, fresh_batch):
    clip, ref = fresh_batch
    with pytest.raises(ExportCheckError, match="differs from PyTorch"):
        _check_against_torch(exported.onnx_path, [(clip, ref * 1.01)], FP32_TOLERANCE, "s3d.onnx")


def test_loaded_checkpoint_matches_source_model(tmp_path):
    """A saved state dict (plain, wrapped, DataParallel-prefixed) reloads to the same model."""
    model = build_s3d_feature_extractor(random_init=True, seed=5)
    full = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    full["classifier.1.weight"] = torch.zeros(400, 1024, 1, 1, 1)
    full["classifier.1.bias"] = torch.zeros(400)
    clip = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(clip)
    for name, obj in (("plain.pth", full), ("wrapped.pth", {"state_dict": full, "epoch": 3}),
                      ("dp.pth", {f"module.{k}": v for k, v in full.items()})):
        torch.save(obj, tmp_path / name)
        loaded = build_s3d_feature_extractor(tmp_path / name)
        with torch.inference_mode():
            torch.testing.assert_close(loaded(clip), expected)


@pytest.fixture(scope="module")
def s3d_state_dict():
    return {f"features.{k}": v for k, v in
            build_s3d_feature_extractor(random_init=True, seed=1).features.state_dict().items()}


def test_bad_checkpoints(tmp_path, s3d_state_dict):
    with pytest.raises(FormatError, match="not found"):
        build_s3d_feature_extractor(tmp_path / "missing.pth")

    good = tmp_path / "good.pth"
    torch.save(s3d_state_dict, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FormatError, match="truncated"):
        build_s3d_feature_extractor(truncated)

    other = tmp_path / "resnet.pth"
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), other)
    with pytest.raises(FormatError, match="missing keys .*unexpected keys"):
        build_s3d_feature_extractor(other)

    reshaped = dict(s3d_state_dict)
    key = "features.0.0.0.weight"
    reshaped[key] = torch.zeros(32, 3, 1, 7, 7)
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(FormatError, match="shape mismatches 1 .*features.0.0.0.weight"):
        build_s3d_feature_extractor(tmp_path / "reshaped.pth")

    torch.save(["not", "a", "dict"], tmp_path / "list.pth")
    with pytest.raises(FormatError, match="state dict"):
        build_s3d_feature_extractor(tmp_path / "list.pth")


class _NotATensor:
    """Any object other than tensors/containers needs code unpickling: weights_only refuses it."""


def test_checkpoint_with_code_objects_is_refused(tmp_path):
    torch.save({"features.x": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(FormatError, match="objects other than tensors.*_NotATensor") as info:
        build_s3d_feature_extractor(tmp_path / "evil.pth")
    # torch's own advice (weights_only=False: run the file's code) must not reach the user.
    assert "weights_only" not in str(info.value) and "documentation of torch.load" not in str(info.value)


@pytest.mark.parametrize("content", [b"hello, this is a text file\n", bytes(range(256)) * 8, b"\x80\x02garbage"])
def test_garbage_checkpoint_says_it_is_not_a_pytorch_checkpoint(tmp_path, content):
    import subprocess
    import sys

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(content)
    with pytest.raises(FormatError, match="not a PyTorch checkpoint|not a readable PyTorch checkpoint|damaged"):
        build_s3d_feature_extractor(garbage)
    run = subprocess.run([sys.executable, "-m", "vbedge.cli", "export", "s3d", "--weights", str(garbage),
                          "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "documentation of torch.load" not in run.stderr
    assert "torchvision S3D state dict saved with torch.save" in run.stderr


def test_options_are_explicit(tmp_path):
    with pytest.raises(InvalidInputError, match="random_init"):
        build_s3d_feature_extractor()
    with pytest.raises(InvalidInputError, match="not both"):
        build_s3d_feature_extractor(tmp_path / "w.pth", random_init=True)
    with pytest.raises(InvalidInputError):
        export_s3d(tmp_path, random_init=True, check_batches=())
    with pytest.raises(InvalidInputError, match="opset"):
        export_s3d(tmp_path, random_init=True, opset=13)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_s3d_feature_extractor(random_init=True, seed=9)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_s3d_feature_extractor(random_init=True, seed=9)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_cli_error_for_missing_weights(tmp_path, capsys):
    from vbedge.cli import main

    code = main(["export", "s3d", "--weights", str(tmp_path / "nope.pth"), "-o", str(tmp_path)])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", "s3d", "-o", str(tmp_path)]) == 2
    assert "--random-init" in capsys.readouterr().err


def test_cli_parser_does_not_import_torch():
    code = ("import sys; from vbedge.cli import build_parser; "
            "a = build_parser().parse_args(['export', 's3d', '--random-init', '-o', 'x']);"
            "assert a.random_init and a.frames == 30 and a.size == 224;"
            "bad = [m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
