"""S3D pretraining on a synthetic world (vbedge.synthetic.pretrain): a small real run."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("cv2")

from vbedge.synthetic.pretrain import (MIN_WINDOW_FRAMES, WORLD_SPEC, _channels_last, clip_features,  # noqa: E402
                                       pretrain_s3d, world_clips)
from vbedge.synthetic.world import NOUNS, VERBS, render_world  # noqa: E402


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    render_world(folder, 3, seed=7, steps=2, progress=False)
    return folder


def test_world_clips_are_labelled_like_the_narration(tiny_world):
    data = world_clips(tiny_world, progress=False)
    # 3 videos x 2 steps x 3 s = 4 clips of 1.5 s each per video
    assert data["clips"].shape == (12,) + WORLD_SPEC.clip_shape()
    narration = [json.loads(x) for x in (tiny_world / "narration.jsonl").read_text().splitlines()]
    for video, start, verb, noun in zip(data["video"], data["start"], data["verb"], data["noun"]):
        record = next(r for r in narration if r["video"] == video)
        step = next(s for s in record["narration"] if s["start"] <= start < s["end"])
        assert (VERBS[verb], NOUNS[noun]) == (step["verb"], step["noun"])


def test_world_clips_decoded_on_two_processes_are_the_same(tiny_world):
    one, two = world_clips(tiny_world, progress=False), world_clips(tiny_world, progress=False, workers=2)
    assert sorted(two) == sorted(one)
    for key in one:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_pretraining_learns_and_writes_loadable_weights(tiny_world, tmp_path):
    from vbedge.models.s3d import build_s3d_feature_extractor, check_s3d_state_dict, load_s3d_state_dict

    data = world_clips(tiny_world, progress=False)
    result = pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=5, batch=6, data=data,
                          progress=False)
    assert result.epochs == 5 and result.clips == 12
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    state = load_s3d_state_dict(tmp_path / "s3d.pth")
    check_s3d_state_dict(state)  # the layout export/s3d.py --weights takes
    trained = build_s3d_feature_extractor(tmp_path / "s3d.pth")
    random = build_s3d_feature_extractor(random_init=True, seed=0)
    # the frozen stem is the seeded random one; the top was trained
    assert torch.equal(trained.features[0][0][0].weight, random.features[0][0][0].weight)
    assert not torch.equal(trained.features[15].branch0[0].weight, random.features[15].branch0[0].weight)
    feats = clip_features(trained, data["clips"][:4])
    assert feats.shape == (4, 1024) and np.isfinite(feats).all()
    meta = json.loads((tmp_path / "s3d.pth.json").read_text())
    assert meta["synthetic"] is True and meta["epochs"] == 5


def test_window_pretraining_trains_the_stem_and_refuses_bad_options(tiny_world, tmp_path, monkeypatch):
    from vbedge.errors import InvalidInputError
    from vbedge.models.s3d import build_s3d_feature_extractor
    from vbedge.synthetic import pretrain

    window_shapes = []
    step = pretrain._training_step

    def recording_step(network, heads, x, *args):
        if x.shape[1] == 3:  # a batch of frames (the window phase), not the stem's activations
            window_shapes.append(tuple(x.shape[2:]))
        return step(network, heads, x, *args)

    monkeypatch.setattr(pretrain, "_training_step", recording_step)

    data = world_clips(tiny_world, progress=False)
    for bad, match in (({"window_frames": 7}, "window_frames"), ({"window_frames": 13}, "window_frames"),
                       ({"stem_cache": np.zeros(1)}, "stem_cache"), ({"window_epochs": -1}, "window_epochs"),
                       ({"window_crop": 8}, "window_crop"), ({"window_crop": 65}, "window_crop")):
        options = {"window_epochs": 1, **bad}
        with pytest.raises(InvalidInputError, match=match):
            pretrain_s3d(tiny_world, tmp_path / "bad.pth", max_epochs=1, batch=6, data=data, progress=False, **options)
    assert not (tmp_path / "bad.pth").exists()

    result = pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=2, batch=6, data=data,
                          window_epochs=2, window_frames=8, window_crop=56, progress=False)
    window = [h for h in result.history if h.get("phase") == "window"]
    assert len(window) == 2 and result.epochs == 2 and len(result.history) == 4, result.history
    assert all(np.isfinite(h["loss"]) for h in result.history), result.history
    trained = build_s3d_feature_extractor(tmp_path / "s3d.pth")
    random = build_s3d_feature_extractor(random_init=True, seed=0)
    # every layer was trained this time, the first convolution too
    assert not torch.equal(trained.features[0][0][0].weight, random.features[0][0][0].weight)
    # the stem's batch-norm statistics were reset and re-counted on the 12 full-length clips (2 batches
    # of 6), not left at what the 8 training steps on windows accumulated
    assert int(trained.features[0][0][1].num_batches_tracked) == 2
    feats = clip_features(trained, data["clips"][:4])
    assert feats.shape == (4, 1024) and np.isfinite(feats).all()
    meta = json.loads((tmp_path / "s3d.pth.json").read_text())
    assert meta["window_epochs"] == 2 and meta["window_frames"] == 8 and "every layer" in meta["note"]
    assert meta["window_crop"] == 56 and window_shapes and set(window_shapes) == {(8, 56, 56)}


def _first_block_weight_gradients(frames, dtype, layout):
    """Gradients of S3D's first block (spatial 7 x 7, then temporal 7 with stride 2) for one seeded batch."""
    from vbedge.models.s3d import build_s3d_feature_extractor

    block = build_s3d_feature_extractor(random_init=True, seed=0).features[0].to(dtype).to(memory_format=layout)
    block.train()
    x = torch.randn(4, 3, frames, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = block(x.contiguous(memory_format=layout))
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (y * weight).sum().backward()
    return [p.grad.double() for p in block.parameters()]


def test_window_training_gets_the_stem_gradient_right():
    # PyTorch 2.14's CPU weight gradient of the first temporal convolution (kernel 7, stride 2,
    # padding 3) is garbage on 7 frames or fewer (1e20-1e34, NaN, or a crash): the window length
    # pretraining allows, in the channels-last layout it trains in, must match a float64 reference.
    reference = _first_block_weight_gradients(MIN_WINDOW_FRAMES, torch.float64, torch.contiguous_format)
    trained = _first_block_weight_gradients(MIN_WINDOW_FRAMES, torch.float32, torch.channels_last_3d)
    for got, want in zip(trained, reference):
        assert torch.isfinite(got).all()
        assert float((got - want).abs().max()) <= 1e-3 * float(want.abs().max())


def test_channels_last_copy_keeps_the_values():
    x = torch.randn(2, 3, 12, 8, 8)[:, :, 2:10]  # a time slice: a strided view
    dense = _channels_last(x)
    assert dense.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(dense, x)


def test_augmentation_flips_some_clips_and_shifts_each_colour_channel():
    from vbedge.synthetic.pretrain import _augment

    ramp = torch.arange(8.0).expand(64, 3, 2, 8, 8).contiguous()  # grows along the width
    out = _augment(ramp, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape
    # each clip and channel is an affine map of the ramp or of its mirror image
    slope = out[..., 1] - out[..., 0]
    flipped = slope < 0
    assert 10 < int(flipped[:, 0, 0, 0].sum()) < 54  # about half of the 64 clips
    assert bool((flipped == flipped[:, :1]).all())  # one flip per clip, all channels and frames
    gains = slope.abs()[:, :, 0, 0]
    assert float(gains.min()) >= 0.75 - 1e-6 and float(gains.max()) <= 1.25 + 1e-6
    assert float(gains.std()) > 0.05  # gains differ between clips and channels


def test_balanced_pretraining_runs_with_augmentation(tiny_world, tmp_path):
    data = world_clips(tiny_world, progress=False)
    result = pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=1, batch=6, data=data,
                          window_epochs=1, augment=True, balance=True, progress=False)
    assert all(np.isfinite(h["loss"]) for h in result.history), result.history
    meta = json.loads((tmp_path / "s3d.pth.json").read_text())
    assert meta["augment"] is True and meta["balance"] is True


def test_zoom_out_shrinks_a_fraction_of_the_clips_and_keeps_the_rest():
    from vbedge.errors import InvalidInputError
    from vbedge.synthetic.pretrain import ZOOM_OUT_SCALES, zoom_out_clips

    clips = np.zeros((20, 3, 2, 32, 32), np.float32)
    clips[..., 8:24, 8:24] = 1.0  # a bright square on a dark frame: 256 pixels of 1024
    out, chosen = zoom_out_clips(clips, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == clips.shape and len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert np.array_equal(clips[..., 8:24, 8:24], np.ones((20, 3, 2, 16, 16))), "the input must not change"
    rest = np.setdiff1d(np.arange(20), chosen)
    assert np.array_equal(out[rest], clips[rest])
    lo, hi = ZOOM_OUT_SCALES
    for i in chosen:
        area = float(out[i, 0, 0].sum())  # the square's area shrinks with the scale squared
        assert 256 * lo ** 2 * 0.8 < area < 256 * hi ** 2 * 1.1, area
        assert out[i, 0, 0, 0, 0] == 0.0 and out[i, 0, 0, -1, -1] == 0.0  # the dark border repeats outwards
        assert np.array_equal(out[i, 0], out[i, 1]) and np.array_equal(out[i, :, 0], out[i, :, 1])  # one scale per clip
    again, chosen_again = zoom_out_clips(clips, 0.5, torch.Generator().manual_seed(0))
    assert np.array_equal(again, out) and np.array_equal(chosen_again, chosen)
    assert len(zoom_out_clips(clips, 0.0, torch.Generator())[1]) == 0
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(InvalidInputError, match="zoom_out"):
            zoom_out_clips(clips, bad, torch.Generator())


def test_pretraining_with_zoomed_out_clips_records_it(tiny_world, tmp_path):
    from vbedge.errors import InvalidInputError

    data = world_clips(tiny_world, progress=False)
    before = data["clips"].copy()
    pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=1, batch=6, data=data, zoom_out=0.5,
                 progress=False)
    assert np.array_equal(data["clips"], before), "the caller's clips must not be zoomed in place"
    assert json.loads((tmp_path / "s3d.pth.json").read_text())["zoom_out"] == 0.5
    with pytest.raises(InvalidInputError, match="stem_cache"):
        pretrain_s3d(tiny_world, tmp_path / "s3d2.pth", data=data, zoom_out=0.5, stem_cache=np.zeros(1),
                     progress=False)


def _record_pretraining(monkeypatch):
    """Record each stem pass's clips and each training batch (frames or stem activations, size, labels)."""
    from vbedge.synthetic import pretrain

    stem_inputs, batches = [], []
    stem, step = pretrain.stem_activations, pretrain._training_step

    def recording_stem(extractor, clips, trainable_from, **kw):
        stem_inputs.append(np.array(clips))
        return stem(extractor, clips, trainable_from, **kw)

    def recording_step(network, heads, x, verbs, nouns, *args):
        # a batch of frames (the window phase) has 3 channels; the stem's activations have more
        batches.append({"frames": x.shape[1] == 3, "size": len(x), "verbs": verbs.clone(), "nouns": nouns.clone()})
        return step(network, heads, x, verbs, nouns, *args)

    monkeypatch.setattr(pretrain, "stem_activations", recording_stem)
    monkeypatch.setattr(pretrain, "_training_step", recording_step)
    return stem_inputs, batches


def _twice(labels):
    return torch.from_numpy(np.concatenate([labels] * 2).astype(np.int64)).sort().values


def test_top_zoom_copies_doubles_the_top_phase_only(tiny_world, tmp_path, monkeypatch):
    data = world_clips(tiny_world, progress=False)
    before = data["clips"].copy()
    stem_inputs, batches = _record_pretraining(monkeypatch)
    result = pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=1, batch=6, data=data,
                          window_epochs=1, top_zoom_copies=True, progress=False)
    assert np.array_equal(data["clips"], before), "the caller's clips must not be zoomed in place"
    # the stem runs on the clips as decoded, then on a zoomed-out copy of every clip
    assert len(stem_inputs) == 2 and np.array_equal(stem_inputs[0], before)
    assert stem_inputs[1].shape == before.shape
    assert all(not np.array_equal(z, c) for z, c in zip(stem_inputs[1], before))
    # the window phase keeps the 12 clips; the top phase trains 24 with every label twice
    assert sum(b["size"] for b in batches if b["frames"]) == 12 and result.clips == 24
    verbs = torch.cat([b["verbs"] for b in batches if not b["frames"]]).sort().values
    assert torch.equal(verbs, _twice(data["verb"]))
    assert json.loads((tmp_path / "s3d.pth.json").read_text())["top_zoom_copies"] is True


def test_zoom_copies_trains_every_phase_on_the_clips_and_a_zoomed_copy(tiny_world, tmp_path, monkeypatch):
    from vbedge.errors import InvalidInputError

    data = world_clips(tiny_world, progress=False)
    before = data["clips"].copy()
    stem_inputs, batches = _record_pretraining(monkeypatch)
    result = pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=1, batch=6, data=data,
                          window_epochs=1, zoom_copies=True, progress=False)
    assert np.array_equal(data["clips"], before), "the caller's clips must not change"
    # one stem pass, over the 12 clips as decoded followed by their 12 zoomed-out copies
    assert len(stem_inputs) == 1 and np.array_equal(stem_inputs[0][:12], before)
    assert all(not np.array_equal(z, c) for z, c in zip(stem_inputs[0][12:], before))
    # both phases train on the 24 clips, each noun twice
    assert sum(b["size"] for b in batches if b["frames"]) == 24 and result.clips == 24
    top_nouns = torch.cat([b["nouns"] for b in batches if not b["frames"]]).sort().values
    assert torch.equal(top_nouns, _twice(data["noun"]))
    assert json.loads((tmp_path / "s3d.pth.json").read_text())["zoom_copies"] is True
    for clash in ({"zoom_out": 0.5}, {"top_zoom_copies": True}, {"stem_cache": np.zeros(1)}):
        with pytest.raises(InvalidInputError, match="zoom_copies"):
            pretrain_s3d(tiny_world, tmp_path / "bad.pth", data=data, zoom_copies=True, progress=False, **clash)


def test_window_zoom_copies_doubles_the_window_phase_only(tiny_world, tmp_path, monkeypatch):
    from vbedge.errors import InvalidInputError

    data = world_clips(tiny_world, progress=False)
    before = data["clips"].copy()
    stem_inputs, batches = _record_pretraining(monkeypatch)
    result = pretrain_s3d(tiny_world, tmp_path / "s3d.pth", seconds=60, max_epochs=1, batch=6, data=data,
                          window_epochs=1, window_zoom_copies=True, progress=False)
    assert np.array_equal(data["clips"], before), "the caller's clips must not change"
    # the window phase trains on the 12 clips and their 12 zoomed-out copies, each noun twice
    window = [b for b in batches if b["frames"]]
    assert sum(b["size"] for b in window) == 24
    assert torch.equal(torch.cat([b["nouns"] for b in window]).sort().values, _twice(data["noun"]))
    # the stem is cached once, for the clips as decoded; the top phase trains on those 12
    assert len(stem_inputs) == 1 and np.array_equal(stem_inputs[0], before)
    assert sum(b["size"] for b in batches if not b["frames"]) == 12 and result.clips == 12
    assert json.loads((tmp_path / "s3d.pth.json").read_text())["window_zoom_copies"] is True
    for clash in ({"zoom_copies": True}, {"top_zoom_copies": True}, {"zoom_out": 0.5}, {"window_epochs": 0}):
        options = {"window_epochs": 1, **clash}
        with pytest.raises(InvalidInputError, match="window_zoom_copies"):
            pretrain_s3d(tiny_world, tmp_path / "bad.pth", data=data, window_zoom_copies=True, progress=False,
                         **options)
