"""The resize rule of PreprocessSpec against torchvision's own S3D preset transform.

torchvision's ``S3D_Weights.KINETICS400_V1.transforms()`` resizes every frame to a fixed 256 x 256
(the aspect ratio changes) and centre-crops 224. ``PreprocessSpec(resize="square")`` must give the
same tensor within torchvision's uint8 rounding, and the other rule (short side, aspect kept) must
not, on a 16:9 frame: otherwise the comparison could not tell the rules apart.

The frames are synthetic (no video can be downloaded here): a drawn 16:9 kitchen-like scene
(gradients, shapes, text) written to an mp4v file with OpenCV and decoded back, so the frame has
the codec's blocks and ringing of a real decoded frame.
"""

import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.video import S3D_Weights  # noqa: E402

from vbedge.errors import FormatError, InvalidInputError  # noqa: E402
from vbedge.preprocess import KINETICS_STD, PreprocessSpec, make_clip, preprocess_frame  # noqa: E402

# torchvision rounds the resized frame to uint8 before converting to float; vbedge resizes in
# float32. The difference is at most half a grey level before dividing by std.
ROUNDING_TOL = 0.5 / 255 / min(KINETICS_STD) + 1e-4


def _scene(height, width, seed):
    """A structured BGR frame: gradients, shapes and text (smooth areas and sharp edges)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs / width * 200 + 20, ys / height * 180 + 30,
                      (xs + ys) / (width + height) * 150 + 50], axis=-1).astype(np.uint8)
    for _ in range(12):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, centre, int(rng.integers(10, height // 4)), colour, -1, cv2.LINE_AA)
    cv2.rectangle(image, (width // 10, height // 3), (width // 3, height - 20), (30, 200, 240), -1)
    cv2.putText(image, "chop the onions", (width // 2, height // 2), cv2.FONT_HERSHEY_SIMPLEX,
                height / 300, (255, 255, 255), 2, cv2.LINE_AA)
    return image


@pytest.fixture(scope="module")
def decoded_frames(tmp_path_factory):
    """Three 16:9 frames (360 x 640) that went through an mp4v encode and decode."""
    path = tmp_path_factory.mktemp("resize") / "scene.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (640, 360))
    assert writer.isOpened()
    for k in range(3):
        writer.write(_scene(360, 640, seed=k))
    writer.release()
    from video_files import decode_frames

    frames = decode_frames(path)
    assert len(frames) == 3 and frames[0].shape == (360, 640, 3)
    return frames


def _torchvision_preset(frames_bgr):
    """torchvision's S3D preset on BGR uint8 frames: (T, C, H, W) RGB uint8 -> (C, T, 224, 224)."""
    preset = S3D_Weights.KINETICS400_V1.transforms()
    video = torch.from_numpy(np.stack([f[:, :, ::-1] for f in frames_bgr])).permute(0, 3, 1, 2)
    return preset(video.contiguous()).numpy()


def test_recipe_is_torchvisions_preset():
    preset = S3D_Weights.KINETICS400_V1.transforms()
    spec = PreprocessSpec.torchvision_kinetics()
    assert spec.resize == "square"
    assert [spec.short_side, spec.short_side] == list(preset.resize_size)
    assert [spec.crop, spec.crop] == list(preset.crop_size)
    np.testing.assert_allclose(spec.mean, preset.mean)
    np.testing.assert_allclose(spec.std, preset.std)


def test_square_rule_matches_torchvision_preset_on_16_9_frame(decoded_frames):
    spec = PreprocessSpec.torchvision_kinetics(clip_frames=len(decoded_frames))
    got = make_clip(decoded_frames, spec)
    ref = _torchvision_preset(decoded_frames)
    assert got.shape == ref.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(got, ref, atol=ROUNDING_TOL, rtol=0)


def test_short_side_rule_fails_the_same_comparison(decoded_frames):
    """The tolerance separates the rules: the aspect-keeping rule is far from the preset."""
    wrong = PreprocessSpec(resize="short_side", short_side=256, crop=224,
                           clip_frames=len(decoded_frames))
    got = make_clip(decoded_frames, wrong)
    ref = _torchvision_preset(decoded_frames)
    error = np.abs(got - ref)
    assert error.max() > 20 * ROUNDING_TOL
    assert error.mean() > 2 * ROUNDING_TOL


def test_short_side_rule_keeps_aspect_ratio(decoded_frames):
    """Reference for the other rule: torchvision's resize to [256] (short side) + crop 224."""
    import torchvision.transforms.functional as tvF

    frame = decoded_frames[0]
    spec = PreprocessSpec()  # short_side, vbedge's rule before the option
    rgb = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1])).permute(2, 0, 1)
    image = tvF.resize(rgb, [256], antialias=False)  # uint8, like the preset
    assert tuple(image.shape[1:]) == (256, 455)
    image = tvF.center_crop(image, [224, 224]).float() / 255.0
    ref = tvF.normalize(image, mean=list(spec.mean), std=list(spec.std)).numpy()
    np.testing.assert_allclose(preprocess_frame(frame, spec), ref, atol=ROUNDING_TOL, rtol=0)


def test_portrait_frame_square_rule(decoded_frames):
    """A 9:16 (portrait) frame: the square rule squeezes the height, as torchvision's does."""
    frame = np.ascontiguousarray(np.rot90(decoded_frames[1]))
    assert frame.shape == (640, 360, 3)
    spec = PreprocessSpec.torchvision_kinetics(clip_frames=1)
    np.testing.assert_allclose(make_clip([frame], spec), _torchvision_preset([frame]),
                               atol=ROUNDING_TOL, rtol=0)


def test_spec_round_trip_and_old_specs():
    spec = PreprocessSpec.torchvision_kinetics(clip_frames=16, crop=112, short_side=128)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["resize"] == "square" and data["version"] == 2
    assert PreprocessSpec.from_dict(data) == spec
    # A spec written before the field existed (version 1, no 'resize') is today's old rule.
    old = {k: v for k, v in PreprocessSpec().to_dict().items() if k != "resize"}
    old["version"] = 1
    assert PreprocessSpec.from_dict(old).resize == "short_side"
    with pytest.raises(FormatError, match="version 1"):
        PreprocessSpec.from_dict({**old, "resize": "square"})
    with pytest.raises(InvalidInputError, match="resize must be one of"):
        PreprocessSpec(resize="stretch")
    with pytest.raises(FormatError, match="resize must be one of"):
        PreprocessSpec.from_dict({**data, "resize": "fit"})


def test_spec_for_weights_defaults_to_the_weights_recipe(tmp_path):
    from vbedge.export.s3d import spec_for_weights

    spec, why = spec_for_weights(tmp_path / "s3d.pth")
    assert spec == PreprocessSpec.torchvision_kinetics() and "torchvision recipe" in why
    spec, why = spec_for_weights(None, random_init=True)
    assert spec == PreprocessSpec() and spec.resize == "short_side" and "random" in why
    spec, why = spec_for_weights(tmp_path / "s3d.pth", resize="short_side", clip_frames=16)
    assert spec.resize == "short_side" and spec.clip_frames == 16 and "requested" in why
    spec, _ = spec_for_weights(tmp_path / "s3d.pth", crop=112, short_side=128)
    assert (spec.resize, spec.short_side, spec.crop) == ("square", 128, 112)


def test_bundle_manifest_without_resize_reads_as_short_side(tmp_path):
    from vbedge.bundle import Bundle

    old = {k: v for k, v in PreprocessSpec().to_dict().items() if k != "resize"}
    old["version"] = 1
    assert Bundle(tmp_path, {"preprocessing": old}).preprocess_spec.resize == "short_side"
    new = PreprocessSpec.torchvision_kinetics().to_dict()
    assert Bundle(tmp_path, {"preprocessing": new}).preprocess_spec.resize == "square"
    with pytest.raises(FormatError, match="manifest.json"):
        Bundle(tmp_path, {"preprocessing": {**new, "resize": "fit"}}).preprocess_spec


@pytest.mark.slow
def test_export_cli_uses_and_says_the_torchvision_recipe_for_torchvision_weights(tmp_path, capsys):
    """``vbedge export s3d --weights`` (a torchvision S3D state dict) picks the square rule."""
    from torchvision.models.video import s3d

    from vbedge.cli import main

    torch.manual_seed(0)
    weights = tmp_path / "s3d_torchvision.pth"
    torch.save(s3d(weights=None).state_dict(), weights)   # torchvision's own architecture
    out = tmp_path / "export"
    assert main(["export", "s3d", "--weights", str(weights), "--frames", "8", "--size", "112",
                 "--short-side", "128", "--no-fp16", "--check-batches", "1", "-q",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preprocessing: resize to 128x128 (aspect ratio not kept), centre crop 112 (the " \
           "torchvision recipe" in printed
    meta = json.loads((out / "s3d.json").read_text())
    assert PreprocessSpec.from_dict(meta["preprocess"]) == PreprocessSpec.torchvision_kinetics(
        clip_frames=8, crop=112, short_side=128)
    assert "torchvision S3D state dict" in meta["preprocess_recipe"]
