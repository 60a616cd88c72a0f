"""Supervised S3D pretraining on a synthetic world (torch), standing in for Kinetics.

The paper's S3D was pretrained, supervised, on Kinetics before VideoBERT saw a token; no such
weights can be downloaded here, and a random S3D's features group by nuisance (background,
colour) rather than by action or object. So vbedge pretrains its S3D on the *training* world's
clips with two linear heads (verb and noun) for a short time on the CPU, then discards the
heads: what is kept is a torchvision-layout S3D state dict (``features.*`` keys) that
``vbedge export s3d --weights`` and ``vbedge build --s3d`` take like any other.

Budget (the demo must fit in minutes on 2 CPU cores): a full S3D training step (forward and
backward through all ~60 convolutions) measured 2.1 s per clip at 15 x 112 x 112 and 1.4 s at
15 x 80 x 80 on the shared 2-core machine, so only the top of the network is trained: the stem
(``S3D.features[:trainable_from]``, by default everything before Mixed_4b) keeps its seeded
random initialisation, its output is computed once per clip and cached, and the blocks from
``trainable_from`` on plus the heads are trained on the cached activations for several epochs
(an epoch over 384 clips took 10-20 s from Mixed_5b and 13-20 s from Mixed_4e on that loaded
machine, 60-90 s from Mixed_4b).
Random low-level filters keep the motion and shape information (a ridge probe finds it in a
random S3D's features); the trained top makes the pooled 1024-d feature *group* by label, which
is what a k-means codebook needs.

``window_epochs`` (off by default) first trains every layer, the stem too, on random 8-frame
windows of the clips (:data:`MIN_WINDOW_FRAMES`: shorter ones meet a PyTorch bug), then caches
the trained stem and trains the top as above (the demo's default and large sizes; figures in
docs/synthetic.md). Training runs on channels-last tensors, on which oneDNN's CPU convolutions
train 1.2-1.4x faster than on the default layout (``benchmarks/bench_s3d_training_step.py``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError, InvalidInputError
from .world import NOUNS, VERBS

__all__ = ["PretrainResult", "WORLD_SPEC", "clip_features", "pretrain_s3d", "stem_activations", "top_features",
           "world_clips"]


#: First block of S3D.features that pretraining trains (8 = Mixed_4b; 12 would be Mixed_4f); the
#: blocks before (the stem, Mixed_3b and Mixed_3c) stay at their seeded random initialisation.
DEFAULT_TRAINABLE_FROM = 8


def _world_spec():
    from ..preprocess import PreprocessSpec

    # 12 frames at 8 fps = the paper's 1.5 s clip; 64 x 64 crop of the 72-pixel short side. A
    # small input so S3D pretraining, feature extraction and the demo fit a few CPU minutes.
    return PreprocessSpec(fps=8.0, clip_frames=12, short_side=72, crop=64)


#: The preprocessing the synthetic world is tokenized with (1.5 s clips of 12 frames, 64 x 64).
WORLD_SPEC = _world_spec()


def read_world_narration(world_dir):
    """The ``narration.jsonl`` records of a rendered world, as a list of dicts."""
    path = Path(world_dir) / "narration.jsonl"
    if not path.is_file():
        raise FormatError(f"{path} not found: a world folder made by `vbedge synth` holds narration.jsonl")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise FormatError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(record, dict) or not isinstance(record.get("video"), str) \
                    or not isinstance(record.get("narration"), list):
                raise FormatError(f"{path}:{number}: expected {{\"video\": str, \"narration\": [...]}}")
            for step in record["narration"]:
                if not isinstance(step, dict) or not {"start", "end", "verb", "noun"} <= set(step):
                    raise FormatError(f"{path}:{number}: every narration step needs start, end, verb and noun")
            records.append(record)
    return records


def step_of(steps, start, end):
    """Index of the step whose span holds the clip's midpoint, or None."""
    mid = 0.5 * (start + end)
    for index, step in enumerate(steps):
        if step["start"] <= mid < step["end"]:
            return index
    return None


def _video_clips(job):
    """The narrated clips of one world video: (clips, verb, noun, start, end, step) lists (a process-pool job)."""
    from ..clips import ClipAssembler
    from ..preprocess import make_clip
    from ..sources import open_source

    world_dir, record, spec = job
    assembler = ClipAssembler.from_spec(spec)
    with open_source(str(Path(world_dir) / record["video"])) as source:
        clips = [c for frame in source for c in assembler.push(frame)] + list(assembler.finish())
    out = {k: [] for k in ("clips", "verb", "noun", "start", "end", "step")}
    for clip in clips:
        index = step_of(record["narration"], clip.start, clip.end)
        if index is None:
            continue
        step = record["narration"][index]
        out["clips"].append(make_clip(clip.frames, spec))
        out["verb"].append(VERBS.index(step["verb"]))
        out["noun"].append(NOUNS.index(step["noun"]))
        out["start"].append(clip.start)
        out["end"].append(clip.end)
        out["step"].append(index)
    return out


def world_clips(world_dir, spec=WORLD_SPEC, progress=True, workers=1):
    """Every clip of a world's videos, preprocessed as the runtime does, with its labels.

    Clips are cut as :class:`vbedge.Pipeline` cuts them (:class:`~vbedge.clips.ClipAssembler`
    at ``spec``'s frame rate, consecutive clips, the same :func:`~vbedge.preprocess.make_clip`).
    A clip whose midpoint lies in no narrated step is left out. ``workers`` processes decode
    videos side by side (None: one per CPU core); the result is the same for any number.

    Returns a dict of arrays: ``clips`` (N, 3, T, H, W) float32, ``verb`` and ``noun`` (indices
    into :data:`VERBS` / :data:`NOUNS`), ``video`` (names), ``start``, ``end`` and ``step``.
    """
    from tqdm.auto import tqdm

    from .parallel import bar_map, check_workers

    workers = check_workers(workers)
    records = read_world_narration(world_dir)
    out = {k: [] for k in ("clips", "verb", "noun", "video", "start", "end", "step")}
    bar = tqdm(total=len(records), desc="decoding world clips", unit="video", disable=not progress)
    try:
        jobs = [(str(world_dir), record, spec) for record in records]
        for record, video in zip(records, bar_map(_video_clips, jobs, workers, bar)):
            for key, values in video.items():
                out[key].extend(values)
            out["video"].extend([record["video"]] * len(video["clips"]))
    finally:
        bar.close()
    if not out["clips"]:
        raise InvalidInputError(f"no narrated clip in {world_dir}")
    result = {k: np.asarray(v) for k, v in out.items() if k != "clips"}
    result["clips"] = np.stack(out["clips"]).astype(np.float32)
    return result


@dataclass
class PretrainResult:
    """What :func:`pretrain_s3d` made: the weights file and how training went."""

    weights: Path
    seconds: float
    epochs: int
    clips: int
    history: list = field(default_factory=list)
    extractor: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON form (the weights' side file)."""
        return {"weights": str(self.weights), "seconds": round(self.seconds, 2), "epochs": self.epochs,
                "clips": self.clips, "history": self.history}


def stem_activations(extractor, clips, trainable_from, batch=16, progress=False):
    """Output of ``extractor.features[:trainable_from]`` (the frozen stem) for ``clips``, as a tensor."""
    import torch
    from tqdm.auto import tqdm

    stem = extractor.features[:trainable_from].eval()
    with torch.no_grad():
        return torch.cat([stem(_channels_last(torch.from_numpy(np.ascontiguousarray(clips[i:i + batch]))))
                          for i in tqdm(range(0, len(clips), batch), desc="S3D stem (frozen)", disable=not progress)])


def top_features(extractor, stem_output, trainable_from, batch=64):
    """1024-d features from :func:`stem_activations` output through the rest of ``extractor``."""
    import torch

    top = extractor.features[trainable_from:].eval()
    with torch.no_grad():
        return torch.cat([top(stem_output[i:i + batch]).mean(dim=(2, 3, 4))
                          for i in range(0, len(stem_output), batch)]).numpy().astype(np.float32)


def clip_features(extractor, clips, batch=16):
    """1024-d S3D features of ``clips`` (N, 3, T, H, W) with a torch extractor (eval, no grad)."""
    import torch

    extractor.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            feats.append(extractor(torch.from_numpy(np.ascontiguousarray(clips[i:i + batch]))).numpy())
    return np.concatenate(feats).astype(np.float32)


def _channels_last(x):
    """``x`` (N, C, T, H, W) as a dense channels-last tensor (a copy unless it already is one).

    A training step of S3D on channels-last tensors and weights is 1.2-1.4x faster on the CPU
    (``benchmarks/bench_s3d_training_step.py``); the values are the same."""
    import torch

    return x.contiguous(memory_format=torch.channels_last_3d)


def _recompute_batch_norm(module, batches):
    """Batch-norm running statistics of ``module`` from a clean pass over ``batches`` (cumulative average).

    Eval-mode outputs then match the trained network rather than the last few noisy batches (or,
    after training on short windows, the statistics of full-length clips)."""
    import torch
    from torch import nn

    momenta = {}
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            momenta[layer] = layer.momentum
            layer.reset_running_stats()
            layer.momentum = None
    module.train()
    with torch.no_grad():
        for batch in batches:
            module(_channels_last(batch))
    for layer, momentum in momenta.items():
        layer.momentum = momentum
    module.eval()


def _training_step(network, heads, x, verbs, nouns, losses, optimizer, schedule):
    """One optimisation step of ``network`` (pooled to 1024-d) and the verb and noun heads on ``x``.

    Returns the batch's summed loss and its right verb and noun answers."""
    feature = network(_channels_last(x)).mean(dim=(2, 3, 4))
    out_v, out_n = heads["verb"](feature), heads["noun"](feature)
    loss = losses["verb"](out_v, verbs) + losses["noun"](out_n, nouns)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    return (float(loss.detach()) * len(x), int((out_v.argmax(1) == verbs).sum()),
            int((out_n.argmax(1) == nouns).sum()))


def _augment(x, generator):
    """Label-preserving augmentation of a batch (N, 3, T, H, W): a random horizontal flip per clip (the
    world draws most motions both ways, and a mirrored cut is still a cut) and a random gain and
    offset per clip and colour channel (in the normalised space), so that shade alone names the
    ingredient less often."""
    import torch

    n = len(x)
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    gain = 1.0 + 0.25 * (2.0 * torch.rand(n, 3, 1, 1, 1, generator=generator) - 1.0)
    offset = 0.25 * (2.0 * torch.rand(n, 3, 1, 1, 1, generator=generator) - 1.0)
    return x * gain + offset


def _train_on_windows(extractor, heads, clips, verbs, nouns, *, epochs, frames, batch, lr, generator, losses,
                      augment, progress, crop=None):
    """Train every layer of ``extractor`` (and the heads) on random ``frames``-long windows of ``clips``.

    Returns the history entries (one per epoch, ``"phase": "window"``)."""
    import torch
    from tqdm.auto import tqdm

    params = list(extractor.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(clips) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.15)
    history = []
    extractor.train()
    for epoch in tqdm(range(epochs), desc="S3D pretraining (whole network, short windows)", unit="epoch",
                      disable=not progress):
        order = torch.randperm(len(clips), generator=generator)
        total, right_v, right_n, seen = 0.0, 0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            offset = int(torch.randint(0, clips.shape[2] - frames + 1, (1,), generator=generator))
            x = clips[idx][:, :, offset:offset + frames]  # _training_step makes it a dense channels-last copy
            if crop is not None:  # one random spatial crop for the batch, as the time window
                top_px, left_px = (int(torch.randint(0, side - crop + 1, (1,), generator=generator))
                                   for side in x.shape[-2:])
                x = x[..., top_px:top_px + crop, left_px:left_px + crop]
            if augment:
                x = _augment(x, generator)
            loss, hits_v, hits_n = _training_step(extractor.features, heads, x, verbs[idx], nouns[idx], losses,
                                                  optimizer, schedule)
            total, right_v, right_n, seen = total + loss, right_v + hits_v, right_n + hits_n, seen + len(idx)
        history.append({"phase": "window", "epoch": epoch + 1, "loss": round(total / seen, 4),
                        "train_verb_acc": round(right_v / seen, 4), "train_noun_acc": round(right_n / seen, 4)})
    return history


#: Scale range of :func:`zoom_out_clips`: the frame shrinks to 55-90% of its side.
ZOOM_OUT_SCALES = (0.55, 0.9)


def zoom_out_clips(clips, fraction, generator, scales=ZOOM_OUT_SCALES):
    """A copy of ``clips`` (N, 3, T, H, W) in which a random ``fraction`` of the clips are zoomed out.

    Each chosen clip's frames shrink by one factor drawn from ``scales`` (antialiased bilinear), land
    at a random place and the border repeats the frame's edge; the labels still hold. Why try it: the
    world draws each ingredient at 17-23% of the frame, but smaller inside the stirring pot (x0.65)
    and the shaking jar (x0.8), and the unseen pairs S3D reads worst are stir-egg and shake-carrot.
    Returns ``(clips, chosen)`` with ``chosen`` the zoomed clips' indices.
    """
    import torch
    import torch.nn.functional as F

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise InvalidInputError(f"zoom_out must be a fraction in [0, 1], got {fraction!r}")
    lo, hi = scales
    out = np.array(clips, dtype=np.float32, copy=True)
    n, _, _, height, width = out.shape
    chosen = torch.randperm(n, generator=generator)[:int(round(fraction * n))].sort().values.numpy()
    for i in chosen:
        scale = lo + (hi - lo) * float(torch.rand(1, generator=generator))
        h, w = max(8, int(round(height * scale))), max(8, int(round(width * scale)))
        top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        frames = torch.from_numpy(out[i]).permute(1, 0, 2, 3)  # (T, 3, H, W)
        small = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[i] = F.pad(small, (left, width - w - left, top, height - h - top), mode="replicate").permute(1, 0, 2, 3).numpy()
    return out, chosen


#: Full-length clips whose batch-norm statistics re-set the stem after training on short windows.
WINDOW_BN_CLIPS = 256
#: Shortest window ``window_epochs`` trains on. On 7 frames or fewer, PyTorch's (2.14) CPU
#: weight gradient of S3D's first temporal convolution (kernel 7, stride 2, padding 3) reads
#: memory it does not own: values of 1e20-1e34 or NaN, sometimes a crash (``double free``).
#: From 8 frames on it matches a float64 reference (``tests/test_synthetic_pretrain.py``).
MIN_WINDOW_FRAMES = 8


def pretrain_s3d(world_dir, out_path, *, spec=WORLD_SPEC, seconds=120.0, max_epochs=40, trainable_from=DEFAULT_TRAINABLE_FROM,
                 batch=32, lr=2e-3, seed=0, data=None, stem_cache=None, window_epochs=0,
                 window_frames=MIN_WINDOW_FRAMES, window_crop=None, augment=False, balance=False, zoom_out=0.0,
                 zoom_copies=False, top_zoom_copies=False, window_zoom_copies=False, progress=True):
    """Pretrain S3D with verb and noun heads on a world's clips; save its state dict at ``out_path``.

    Args:
        world_dir: a training world (``render_world(..., split="train")``).
        out_path: the ``.pth`` state dict to write (torchvision S3D keys, no classifier).
        spec: preprocessing of the clips (the bundle must use the same).
        seconds: training time budget (the stem pass is not counted); training stops at the end
            of the epoch that crosses it, or after ``max_epochs``.
        trainable_from: index in ``S3D.features`` of the first trained block (8 = Mixed_4b);
            the blocks before stay at their seeded random initialisation.
        batch, lr, seed: optimisation (AdamW, cosine decay over ``max_epochs``).
        data: the :func:`world_clips` output, when already decoded.
        stem_cache: :func:`stem_activations` of ``data["clips"]`` for the same ``seed`` and
            ``trainable_from``, when already computed (only without ``window_epochs``: the
            cache is the random stem's).
        window_epochs: first train *every* layer, the stem too, for this many epochs on random
            ``window_frames``-long windows of the clips (a full S3D step on 8 of the 12 frames
            costs about two thirds of one on the whole clip), then re-set the stem's batch-norm
            statistics on full-length clips, cache the trained stem and train the top as
            usual. 0 (the default) keeps the stem random. Measured in docs/synthetic.md: 2
            epochs lift the noun's codebook-leaf accuracy by about 10 points on the demo's world.
        window_frames: frames per window, at least :data:`MIN_WINDOW_FRAMES` (8).
        window_crop: train the window phase on random ``window_crop`` x ``window_crop`` crops of
            the frames (one crop per batch); None (the default) keeps the whole frame.
        augment: in the window phase, flip each clip left-right at random and jitter each colour
            channel's gain and offset (:func:`_augment`). Measured: it cost the noun 5-8 points
            of codebook-leaf accuracy on the demo's world (docs/synthetic.md), so it is off.
        balance: weigh each verb and noun class in the loss by the inverse of its frequency.
            Measured together with ``augment`` only (same cost); off.
        zoom_out: train on a copy of the clips in which this fraction is zoomed out
            (:func:`zoom_out_clips`, drawn once, so the stem cache holds what was trained on);
            0 (the default) trains on the clips as decoded. Measured with 0.5 on the demo's world
            (``benchmarks/study_s3d_zoom_out.py``, docs/synthetic.md): the seen pairs' noun barely
            moves (top-1 87.6 -> 86.8%) and the unseen pairs' noun top-5 falls from 77% to 32%; off.
        zoom_copies: train on the clips *and* a zoomed-out copy of each (:func:`zoom_out_clips`,
            every clip, drawn once), in every phase: twice the clips, steps and memory. Measured
            on the demo's world (``benchmarks/study_s3d_zoom_out.py --mode copies``,
            docs/synthetic.md): the best fresh-world figures (noun top-1 84.4% against 78.8%)
            for 339 s of pretraining instead of 153 s; ``vbedge demo --size large`` used it until
            2026-12-07 (then 4 window epochs on the clips did as well for less).
        top_zoom_copies: train the top blocks (after the window phase, which keeps the clips as
            decoded) on the clips *and* a zoomed-out copy of each (:func:`zoom_out_clips`, every
            clip, drawn once): twice the top phase's clips and steps; the stem never trains on
            the copies but runs once more to cache them. Measured on the demo's world
            (docs/synthetic.md, "A fresh held-out world"): on a fresh 288-step world the noun's
            top-1 gains 2.4-3.5 points and its top-5 1.1-1.8, for 129 s more pretraining (the
            first demo run near 8 minutes); with 5 top epochs instead of 8 the gain is gone. Off.
        window_zoom_copies: train the window phase (every layer) on the clips *and* a zoomed-out
            copy of each (:func:`zoom_out_clips`, every clip, drawn once, as ``zoom_copies`` draws
            it); the batch-norm reset and the top phase keep the clips as decoded. Twice the
            window phase's clips and steps. Measured on the demo's world (docs/synthetic.md,
            "Why 4 window epochs"): the noun's ridge probe on a validation world
            84.9% against 80.4% with seed 0, but 79.5% with seed 1: on average no better than
            4 window epochs on the clips, which cost the same. ``vbedge demo --size large`` uses it
            with 4 window epochs.
        progress: show progress bars.

    Returns:
        :class:`PretrainResult`; a ``<out_path>.json`` side file records it.
    """
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    from ..models.s3d import build_s3d_feature_extractor

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InvalidInputError(f"seconds must be a positive number, got {seconds!r}")
    data = world_clips(world_dir, spec, progress=progress) if data is None else data
    started = time.perf_counter()
    torch.manual_seed(seed)
    if zoom_copies and (zoom_out or top_zoom_copies or stem_cache is not None):
        raise InvalidInputError("zoom_copies already trains every phase on the clips plus a zoomed-out copy of "
                                "each; leave zoom_out, top_zoom_copies and stem_cache out")
    if window_zoom_copies and (zoom_copies or zoom_out or top_zoom_copies or not window_epochs):
        raise InvalidInputError("window_zoom_copies trains the window phase on the clips plus a zoomed-out copy of "
                                "each: it needs window_epochs > 0, and leaves zoom_copies, zoom_out and "
                                "top_zoom_copies out")
    if zoom_copies:
        zoomed, _ = zoom_out_clips(data["clips"], 1.0, torch.Generator().manual_seed(seed + 1))
        data = {**data, "clips": np.concatenate([data["clips"], zoomed]),
                "verb": np.concatenate([data["verb"]] * 2), "noun": np.concatenate([data["noun"]] * 2)}
        del zoomed
    if zoom_out:
        if stem_cache is not None:
            raise InvalidInputError("stem_cache holds the stem's output of the clips as decoded; with zoom_out the "
                                    "clips are zoomed first, so leave stem_cache out")
        zoomed, _ = zoom_out_clips(data["clips"], zoom_out, torch.Generator().manual_seed(seed + 1))
        data = {**data, "clips": zoomed}
    extractor = build_s3d_feature_extractor(random_init=True, seed=seed)
    # Channels-last weights and activations throughout training (about 2x faster on the CPU);
    # the weights go back to the default layout before they are saved.
    extractor.to(memory_format=torch.channels_last_3d)
    blocks = extractor.features
    if not 1 <= trainable_from < len(blocks):
        raise InvalidInputError(f"trainable_from must be in [1, {len(blocks) - 1}], got {trainable_from}")
    clip_frames = data["clips"].shape[2]
    if isinstance(window_epochs, bool) or not isinstance(window_epochs, int) or window_epochs < 0:
        raise InvalidInputError(f"window_epochs must be a whole number >= 0, got {window_epochs!r}")
    if window_epochs:
        if isinstance(window_frames, bool) or not isinstance(window_frames, int) \
                or not MIN_WINDOW_FRAMES <= window_frames <= clip_frames:
            raise InvalidInputError(
                f"window_frames must be a whole number in [{MIN_WINDOW_FRAMES}, {clip_frames}] (the clips have "
                f"{clip_frames} frames; on fewer than {MIN_WINDOW_FRAMES}, PyTorch's CPU weight gradient of S3D's "
                f"first temporal convolution is garbage), got {window_frames!r}")
        side = min(data["clips"].shape[-2:])
        if window_crop is not None and (isinstance(window_crop, bool) or not isinstance(window_crop, int)
                                        or not 16 <= window_crop <= side):
            raise InvalidInputError(f"window_crop must be None or a whole number in [16, {side}], got {window_crop!r}")
        if stem_cache is not None:
            raise InvalidInputError("stem_cache holds the random stem's output; with window_epochs the stem is "
                                    "trained first, so leave stem_cache out")
    top = blocks[trainable_from:]
    verbs = torch.from_numpy(data["verb"].astype(np.int64))
    nouns = torch.from_numpy(data["noun"].astype(np.int64))
    heads = nn.ModuleDict({"verb": nn.Linear(1024, len(VERBS)), "noun": nn.Linear(1024, len(NOUNS))})
    def loss_for(labels, classes):
        weight = None
        if balance:  # each class weighs as much as the others in the loss, however often the world drew it
            counts = torch.bincount(labels, minlength=classes).clamp(min=1).float()
            weight = counts.sum() / (classes * counts)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)

    losses = {"verb": loss_for(verbs, len(VERBS)), "noun": loss_for(nouns, len(NOUNS))}
    history = []
    generator = torch.Generator().manual_seed(seed)
    if window_epochs:
        clips = torch.from_numpy(np.ascontiguousarray(data["clips"]))
        window_clips, window_verbs, window_nouns = clips, verbs, nouns
        if window_zoom_copies:
            zoomed, _ = zoom_out_clips(data["clips"], 1.0, torch.Generator().manual_seed(seed + 1))
            window_clips = torch.cat([clips, torch.from_numpy(zoomed)])
            del zoomed
            window_verbs, window_nouns = torch.cat([verbs, verbs]), torch.cat([nouns, nouns])
        history += _train_on_windows(extractor, heads, window_clips, window_verbs, window_nouns,
                                     epochs=window_epochs, frames=window_frames, batch=max(2, batch // 2), lr=lr,
                                     generator=generator, losses=losses, augment=augment, progress=progress,
                                     crop=window_crop)
        del window_clips
        subset = clips[torch.randperm(len(clips), generator=generator)[:WINDOW_BN_CLIPS]]
        _recompute_batch_norm(blocks[:trainable_from], (subset[i:i + batch] for i in range(0, len(subset), batch)))
    if stem_cache is None:
        stem_cache = stem_activations(extractor, data["clips"], trainable_from, progress=progress)
    cached = torch.as_tensor(stem_cache)
    if top_zoom_copies:
        zoomed, _ = zoom_out_clips(data["clips"], 1.0, torch.Generator().manual_seed(seed + 2))
        cached = torch.cat([cached, torch.as_tensor(stem_activations(extractor, zoomed, trainable_from,
                                                                     progress=progress))])
        del zoomed
        verbs, nouns = torch.cat([verbs, verbs]), torch.cat([nouns, nouns])
    params = list(top.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(cached) / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs * steps_per_epoch)
    train_started = time.perf_counter()
    bar = tqdm(total=max_epochs, desc="S3D pretraining", unit="epoch", disable=not progress)
    epoch = 0
    try:
        top.train()
        while epoch < max_epochs and (time.perf_counter() - train_started) < seconds:
            order = torch.randperm(len(cached), generator=generator)
            total, right_v, right_n = 0.0, 0, 0
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                if len(idx) < 2:
                    continue  # batch norm needs two items
                x = cached[idx]
                # Cheap augmentation on the cached activations: a random temporal flip is not
                # label-preserving (stir direction, cut strokes are fine; pour is not), so only
                # small noise is added.
                x = x + 0.05 * torch.randn(x.shape, generator=generator) * x.std()
                loss, hits_v, hits_n = _training_step(top, heads, x, verbs[idx], nouns[idx], losses, optimizer,
                                                      schedule)
                total, right_v, right_n = total + loss, right_v + hits_v, right_n + hits_n
            epoch += 1
            entry = {"epoch": epoch, "loss": round(total / len(order), 4),
                     "train_verb_acc": round(right_v / len(order), 4), "train_noun_acc": round(right_n / len(order), 4)}
            history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=entry["loss"], verb=entry["train_verb_acc"], noun=entry["train_noun_acc"])
        _recompute_batch_norm(top, (cached[i:i + batch] for i in range(0, len(cached), batch)))
    finally:
        bar.close()
    extractor.to(memory_format=torch.contiguous_format).eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    torch.save(extractor.state_dict(), str(tmp))
    tmp.replace(out_path)
    result = PretrainResult(out_path, time.perf_counter() - started, epoch, int(len(cached)), history, extractor)
    meta = {**result.to_dict(), "synthetic": True, "spec": spec.to_dict(), "trainable_from": trainable_from,
            "seed": seed, "world": str(world_dir), "window_epochs": window_epochs,
            "window_frames": window_frames if window_epochs else None,
            "window_crop": window_crop if window_epochs else None,
            "augment": bool(augment), "balance": bool(balance), "zoom_out": float(zoom_out),
            "zoom_copies": bool(zoom_copies), "top_zoom_copies": bool(top_zoom_copies),
            "window_zoom_copies": bool(window_zoom_copies),
            "note": "S3D pretrained (supervised, verb + noun heads) on a synthetic world; " + (
                f"every layer first trained {window_epochs} epochs on {window_frames}-frame windows, then blocks "
                f"from index {trainable_from} on full clips" if window_epochs else
                f"blocks before index {trainable_from} keep their seeded random initialisation")}
    with open(str(out_path) + ".json", "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1)
    return result
