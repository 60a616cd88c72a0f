"""Preprocessing (vbedge.preprocess) against an independent torch/torchvision computation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from vbedge.errors import FormatError, InvalidInputError
from vbedge.preprocess import (
    DEFAULT_SPEC,
    KINETICS_MEAN,
    KINETICS_STD,
    PreprocessSpec,
    make_clip,
    preprocess_frame,
    resample_indices,
)

torch = pytest.importorskip("torch")
tvF = pytest.importorskip("torchvision.transforms.functional")


def _torch_reference(frame_bgr, spec):
    """The same transform written with torch/torchvision ops (float pipeline)."""
    rgb = torch.from_numpy(np.ascontiguousarray(frame_bgr[:, :, ::-1])).permute(2, 0, 1)
    image = rgb.float() / 255.0
    image = tvF.resize(image, [spec.short_side], antialias=False)  # bilinear, short side
    image = tvF.center_crop(image, [spec.crop, spec.crop])
    image = tvF.normalize(image, mean=list(spec.mean), std=list(spec.std))
    return image.numpy()


@pytest.mark.parametrize("shape", [(240, 320), (480, 360), (256, 300), (720, 1280), (224, 224)])
def test_frame_matches_torchvision_float_pipeline(shape):
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    spec = PreprocessSpec(short_side=max(224, min(256, min(shape))), crop=224)
    got = preprocess_frame(frame, spec)
    ref = _torch_reference(frame, spec)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    # 5e-4 in normalised units is ~0.03 grey levels: float32 rounding of two bilinear codes.
    np.testing.assert_allclose(got, ref, atol=5e-4, rtol=0)


def test_clip_matches_torchvision_video_preset():
    """torchvision's own Kinetics video preset (uint8 resize, then float) within its rounding."""
    from torchvision.transforms._presets import VideoClassification

    rng = np.random.default_rng(7)
    # Smooth frames (a gradient plus mild noise) like real video, so bilinear rounding stays small.
    ys, xs = np.mgrid[0:240, 0:320]
    base = np.stack([xs * 0.7, ys * 0.9, (xs + ys) * 0.4], axis=-1)
    frames = [np.clip(base + rng.normal(0, 3, base.shape) + t, 0, 255).astype(np.uint8)
              for t in range(DEFAULT_SPEC.clip_frames)]
    clip = make_clip(frames)
    video = torch.from_numpy(np.stack([f[:, :, ::-1] for f in frames])).permute(0, 3, 1, 2)
    preset = VideoClassification(crop_size=(224, 224), resize_size=(256,),
                                 mean=KINETICS_MEAN, std=KINETICS_STD)
    ref = preset(video.contiguous()).numpy()  # (C, T, H, W)
    assert clip.shape == ref.shape == (3, 30, 224, 224)
    # torchvision rounds the resized image to uint8: at most 0.5/255 before dividing by std.
    np.testing.assert_allclose(clip, ref, atol=0.5 / 255 / min(KINETICS_STD) + 1e-4, rtol=0)


def test_make_clip_layout_and_array_input():
    rng = np.random.default_rng(1)
    spec = PreprocessSpec(clip_frames=4, short_side=64, crop=48)
    frames = rng.integers(0, 256, size=(4, 60, 80, 3), dtype=np.uint8)
    clip = make_clip(frames, spec)
    assert clip.shape == (3, 4, 48, 48)
    for t in range(4):
        np.testing.assert_allclose(clip[:, t], _torch_reference(frames[t], spec), atol=5e-4)
    np.testing.assert_array_equal(make_clip(list(frames), spec), clip)


def test_bgr_input_becomes_rgb():
    frame = np.zeros((256, 256, 3), np.uint8)
    frame[:, :, 2] = 255  # red in BGR
    out = preprocess_frame(frame)
    expected_red = (1.0 - KINETICS_MEAN[0]) / KINETICS_STD[0]
    np.testing.assert_allclose(out[0], expected_red, rtol=1e-6)
    np.testing.assert_allclose(out[1], -KINETICS_MEAN[1] / KINETICS_STD[1], rtol=1e-6)


def _assert_nearest(ts, fps, idx):
    """Each index is a nearest frame to its target time (ties, up to float noise, go earlier)."""
    ts = list(ts)
    targets = [ts[0] + k / fps for k in range(len(idx))]
    assert targets[-1] <= ts[-1] + 1e-9 and targets[-1] + 1 / fps > ts[-1] - 1e-9
    for target, chosen in zip(targets, idx):
        dist = [abs(x - target) for x in ts]
        best = min(dist)
        assert dist[chosen] <= best + 1e-9, (target, chosen)
        # on a tie, the earliest of the nearest frames
        assert chosen == min(i for i, d in enumerate(dist) if d <= best + 1e-9)


@pytest.mark.parametrize("source_fps", [30.0, 25.0, 20.0, 10.0, 59.94])
def test_resample_indices_nearest_frame(source_fps):
    ts = np.arange(0, 3.0, 1.0 / source_fps) + 0.123
    idx = resample_indices(ts, 20)
    assert idx.dtype == np.int64
    _assert_nearest(ts, 20.0, idx.tolist())
    # About 20 frames per second of video.
    assert abs(len(idx) - (ts[-1] - ts[0]) * 20) <= 1


def test_resample_irregular_timestamps():
    ts = np.array([0.0, 0.01, 0.2, 0.21, 0.5, 0.52])
    idx = resample_indices(ts, 10)
    _assert_nearest(ts, 10.0, idx.tolist())
    assert idx.tolist() == [0, 1, 2, 3, 4, 4]


@pytest.mark.parametrize("ts, fps", [
    ([], 20), ([[0.0, 1.0]], 20), ([0.0, 0.2, 0.1], 20), ([0.0, float("nan")], 20),
    ([0.0, 1.0], 0), ([0.0, 1.0], -5), (["a", "b"], 20),
])
def test_resample_rejects_bad_input(ts, fps):
    with pytest.raises(InvalidInputError):
        resample_indices(np.array(ts) if ts and not isinstance(ts[0], str) else ts, fps)


@pytest.mark.parametrize("frame", [
    np.zeros((240, 320, 3), np.float32),  # wrong dtype
    np.zeros((240, 320), np.uint8),  # grey
    np.zeros((240, 320, 4), np.uint8),  # BGRA
    np.zeros((0, 320, 3), np.uint8),  # empty
    [[1, 2, 3]],  # not an array
])
def test_preprocess_frame_rejects_bad_frames(frame):
    with pytest.raises(InvalidInputError):
        preprocess_frame(frame)


def test_make_clip_rejects_wrong_frame_count_and_bad_frames():
    frame = np.zeros((240, 320, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="exactly 30 frames"):
        make_clip([frame] * 29)
    with pytest.raises(InvalidInputError):
        make_clip([])
    with pytest.raises(InvalidInputError, match="frame 3"):
        make_clip([frame] * 3 + [frame.astype(np.float32)] + [frame] * 26)


def test_spec_roundtrip_and_validation():
    spec = PreprocessSpec(fps=15.0, clip_frames=16, short_side=160, crop=128)
    data = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(data) == spec
    assert DEFAULT_SPEC.to_dict()["mean"] == list(KINETICS_MEAN)
    assert DEFAULT_SPEC.clip_seconds == 1.5
    with pytest.raises(FormatError, match="unknown fields"):
        PreprocessSpec.from_dict({**data, "gamma": 2.2})
    with pytest.raises(FormatError, match="version"):
        PreprocessSpec.from_dict({**data, "version": 99})
    with pytest.raises(FormatError):
        PreprocessSpec.from_dict({**data, "crop": -1})
    with pytest.raises(InvalidInputError, match="short_side"):
        PreprocessSpec(short_side=200, crop=224)
    with pytest.raises(InvalidInputError):
        PreprocessSpec(std=(0.2, 0.0, 0.2))
    with pytest.raises(InvalidInputError):
        PreprocessSpec(clip_frames=0)


def test_preprocess_does_not_import_torch():
    code = ("import sys, vbedge.preprocess; "
            "bad = [m for m in ('torch', 'torchvision', 'onnx', 'transformers') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
