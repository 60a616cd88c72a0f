"""ClipAssembler: incremental resampling + grouping, checked against independent computations.

The reference for sampling is vbedge.preprocess.resample_indices (a vectorised batch search
written separately) and, for grouping, plain slicing of its output.
"""

import math

import numpy as np
import pytest

from vbedge.clips import Clip, ClipAssembler, assemble_clips
from vbedge.errors import InvalidInputError
from vbedge.preprocess import PreprocessSpec, resample_indices
from vbedge.sources import Frame, open_source

IMG = np.zeros((4, 6, 3), np.uint8)


def feed(assembler, timestamps, images=None):
    clips = []
    for i, ts in enumerate(timestamps):
        image = IMG if images is None else images[i]
        clips += assembler.push((float(ts), image))
    clips += assembler.finish()
    return clips


def reference_clips(timestamps, fps, clip_frames, hop):
    """Source indices of each clip by slicing the batch resampling (independent of ClipAssembler):
    full clips every ``hop`` sampled frames, then one padded tail if frames remain uncovered."""
    sampled = list(resample_indices(np.asarray(timestamps, dtype=np.float64), fps))
    clips, start, covered_until = [], 0, 0
    while start + clip_frames <= len(sampled):
        clips.append(sampled[start:start + clip_frames])
        covered_until = start + clip_frames
        start += hop
    if start < len(sampled) and len(sampled) > covered_until:
        tail = sampled[start:]
        clips.append(tail + [tail[-1]] * (clip_frames - len(tail)))
    return clips


def jittery_timestamps(rng, count, mean_interval, jitter=0.5, repeats=True):
    intervals = rng.uniform(mean_interval * (1 - jitter), mean_interval * (1 + jitter), count)
    intervals[0] = 0.0
    if repeats:
        intervals[rng.integers(1, count, size=count // 20)] = 0.0  # equal timestamps
    return 3.25 + np.cumsum(intervals)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("input_fps", [7.0, 20.0, 29.97, 60.0])
@pytest.mark.parametrize("clip_frames,hop", [(30, 30), (30, 10), (8, 13), (5, 1)])
def test_matches_batch_resampling(seed, input_fps, clip_frames, hop):
    rng = np.random.default_rng(seed * 1000 + int(input_fps * 100) + hop)
    ts = jittery_timestamps(rng, 180, 1.0 / input_fps)
    clips = feed(ClipAssembler(fps=20, clip_frames=clip_frames, hop=hop), ts)
    expected = reference_clips(ts, 20, clip_frames, hop)
    assert [list(c.source_indices) for c in clips] == expected
    for n, clip in enumerate(clips):
        assert clip.index == n
        assert len(clip) == clip_frames
        np.testing.assert_allclose(clip.source_timestamps, ts[clip.source_indices])


def test_slower_source_duplicates_and_faster_source_skips():
    # Rates chosen so every time is exact in binary floating point (ties are real ties).
    # 2 fps in, 4 fps out: every frame twice (a target midway ties and takes the earlier one).
    slow = feed(ClipAssembler(fps=4, clip_frames=6, hop=6), np.arange(6) / 2.0)
    assert [list(c.source_indices) for c in slow] == [[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]
    assert slow[-1].padded == 1
    # 8 fps in, 4 fps out: every other frame.
    fast = feed(ClipAssembler(fps=4, clip_frames=4, hop=4), np.arange(16) / 8.0)
    assert [list(c.source_indices) for c in fast] == [[0, 2, 4, 6], [8, 10, 12, 14]]
    assert all(c.padded == 0 for c in fast)
    # Decimal rates: 10 fps in, 20 fps out ties in decimal; float noise must not flip the tie.
    decimal = feed(ClipAssembler(fps=20, clip_frames=6, hop=6), np.arange(6) / 10.0)
    assert [list(c.source_indices) for c in decimal] == [[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]


def test_clip_times_and_frames():
    images = [np.full((4, 6, 3), i, np.uint8) for i in range(40)]
    clips = feed(ClipAssembler(fps=20, clip_frames=30, hop=30), 1.0 + np.arange(40) / 20.0,
                 images)
    assert len(clips) == 2
    first, second = clips
    assert first.start == pytest.approx(1.0) and first.end == pytest.approx(2.5)
    np.testing.assert_allclose(first.timestamps, 1.0 + np.arange(30) / 20.0)
    assert second.start == pytest.approx(2.5) and second.padded == 20
    assert [f[0, 0, 0] for f in first.frames] == list(range(30))
    stacked = second.array()
    assert stacked.shape == (30, 4, 6, 3) and stacked.dtype == np.uint8
    assert list(stacked[:, 0, 0, 0]) == list(range(30, 40)) + [39] * 20


def test_offline_gap_is_bridged_and_nothing_is_lost():
    ts = np.concatenate([np.arange(20) / 20.0, 10.0 + np.arange(20) / 20.0])
    assembler = ClipAssembler(fps=20, clip_frames=30)
    clips = feed(assembler, ts)
    sampled = resample_indices(ts, 20)
    assert assembler.stats.restarts == 0 and assembler.stats.frames_discarded == 0
    assert len(clips) == math.ceil(len(sampled) / 30)
    assert np.array_equal(np.concatenate([c.source_indices for c in clips])[:len(sampled)],
                          sampled)


def test_live_gap_restarts_the_clip():
    before = np.arange(45) / 20.0              # 1.5 clips
    after = 5.0 + np.arange(30) / 20.0         # a 2.8 s gap, then one clip
    assembler = ClipAssembler(fps=20, clip_frames=30, max_gap=0.5)
    clips = feed(assembler, np.concatenate([before, after]))
    assert assembler.stats.restarts == 1
    assert assembler.stats.frames_discarded == 15
    assert "gap" in assembler.stats.last_restart_reason
    assert [c.start for c in clips] == [pytest.approx(0.0), pytest.approx(5.0)]
    assert list(clips[1].source_indices) == list(range(45, 75))


def test_backwards_timestamp_restarts_live_and_is_an_error_offline():
    ts = [0.0, 0.05, 0.1, 0.02]
    live = ClipAssembler(fps=20, clip_frames=2, max_gap=1.0)
    clips = feed(live, ts)
    assert live.stats.restarts == 1 and "back" in live.stats.last_restart_reason
    assert clips[-1].start == pytest.approx(0.02)
    offline = ClipAssembler(fps=20, clip_frames=2)
    with pytest.raises(InvalidInputError, match="earlier than the previous"):
        feed(offline, ts)


def test_tail_padding_and_drop():
    short = feed(ClipAssembler(fps=20, clip_frames=30), np.arange(5) / 20.0)
    assert len(short) == 1 and short[0].padded == 25
    no_pad = ClipAssembler(fps=20, clip_frames=30, pad_last=False)
    assert feed(no_pad, np.arange(35) / 20.0) and no_pad.stats.clips == 1
    assert no_pad.stats.frames_discarded == 5
    # With overlap, a tail made only of frames already emitted is not a new clip.
    overlap = ClipAssembler(fps=20, clip_frames=4, hop=2)
    clips = feed(overlap, np.arange(6) / 20.0)
    assert [list(c.source_indices) for c in clips] == [[0, 1, 2, 3], [2, 3, 4, 5]]


def test_exact_end_target_like_resample_indices():
    # A span that is a multiple of 1/fps up to rounding keeps its last target.
    ts = np.array([0.0, 0.1, 0.30000000000000004 - 1e-12])
    clips = feed(ClipAssembler(fps=10, clip_frames=4, hop=4), ts)
    assert list(clips[0].source_indices) == list(resample_indices(ts, 10))


def test_frames_and_sources_as_input():
    frames = [Frame(image=IMG, timestamp=i / 2.0, index=100 + i) for i in range(15)]
    clips = list(assemble_clips(frames, fps=4, clip_frames=10))
    assert clips[0].source_indices[:4].tolist() == [100, 100, 101, 101]
    images = [np.full((4, 6, 3), i, np.uint8) for i in range(30)]
    with open_source(images, fps=20) as source:
        clips = list(assemble_clips(source, fps=20, clip_frames=30))
    assert len(clips) == 1 and [f[0, 0, 0] for f in clips[0].frames] == list(range(30))


def test_from_spec():
    assembler = ClipAssembler.from_spec(PreprocessSpec(fps=10.0, clip_frames=8), hop=4)
    assert (assembler.fps, assembler.clip_frames, assembler.hop) == (10.0, 8, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fps=0), "fps"), (dict(fps=float("nan")), "fps"), (dict(clip_frames=0), "clip_frames"),
    (dict(clip_frames=2.5), "clip_frames"), (dict(hop=-1), "hop"), (dict(max_gap=0), "max_gap"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        ClipAssembler(**kwargs)


def test_invalid_frames():
    assembler = ClipAssembler()
    with pytest.raises(InvalidInputError, match="timestamp"):
        assembler.push(IMG)
    with pytest.raises(InvalidInputError, match="finite"):
        assembler.push((float("nan"), IMG))
    with pytest.raises(InvalidInputError, match="uint8"):
        assembler.push((0.0, IMG.astype(np.float32)))
    with pytest.raises(InvalidInputError, match=r"\(H, W, 3\)"):
        assembler.push(np.zeros((4, 4), np.uint8), timestamp=0.0)
    assembler.finish()
    with pytest.raises(InvalidInputError, match="after finish"):
        assembler.push((1.0, IMG))


def test_mixed_sizes_cannot_stack():
    frames = [np.zeros((4, 6, 3), np.uint8), np.zeros((5, 6, 3), np.uint8)]
    clip = feed(ClipAssembler(fps=20, clip_frames=2), [0.0, 0.05], frames)[0]
    assert isinstance(clip, Clip)
    with pytest.raises(InvalidInputError, match="mixes frame sizes"):
        clip.array()
