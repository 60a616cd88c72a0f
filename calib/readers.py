"""Calibration data for INT8: S3D clips from videos, VideoBERT inputs from token sequences.

S3D inputs go through exactly the runtime's path (:func:`vbedge.sources.open_source` ->
:class:`vbedge.clips.ClipAssembler` -> :func:`vbedge.preprocess.make_clip`), so the ranges the
quantizer sees are the ranges the deployed model sees. A video that cannot be opened or decoded is
skipped with a :class:`CalibrationWarning` and counted; a file that ends early keeps the clips
decoded before the damage (also warned and counted). Too few clips or sequences to trust the
calibration give a :class:`CalibrationWarning` naming the number used.

Readers implement ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next``/``rewind``)
without importing onnxruntime.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbedge.errors import FormatError, InvalidInputError, VbedgeError
from vbedge.sequence_layout import layout_row

log = logging.getLogger(__name__)

#: Fewer S3D calibration clips than this give a warning (per-tensor ranges of ~130 activations
#: estimated from a handful of clips follow the content of those clips, not of the domain).
MIN_S3D_CLIPS = 32
#: Fewer VideoBERT calibration sequences than this give a warning.
MIN_VIDEOBERT_SEQUENCES = 64
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
#: Caption templates of the paper's zero-shot classification plus a few kitchen variants.
DEFAULT_TEMPLATES = (
    "now let me show you how to [MASK] the [MASK].",
    "now [MASK] the [MASK] in the pan.",
    "first we [MASK] the [MASK] and then we [MASK] it.",
    "add the [MASK] and [MASK] it well.",
)


class CalibrationWarning(UserWarning):
    """A calibration input was skipped, or the calibration set is too small to be trusted."""


def warn_if_small(count, minimum, what):
    """Warn (:class:`CalibrationWarning`) when ``count < minimum``; return whether it warned."""
    if count < minimum:
        message = (f"only {count} {what} used for INT8 calibration (fewer than {minimum}): the "
                   f"activation ranges may not represent real inputs; treat the accuracy report "
                   f"with care and calibrate on more data")
        warnings.warn(message, CalibrationWarning, stacklevel=3)
        log.warning(message)
        return True
    return False


@dataclass
class ClipSet:
    """Preprocessed S3D clips and where they came from.

    Attributes:
        clips: list of ``(3, T, crop, crop)`` float32 arrays.
        origins: ``(video path, clip index in that video)`` per clip.
        videos_used: videos that gave at least one clip.
        skipped: ``(path, reason)`` of videos that gave no clip (corrupt, unreadable, empty).
        damaged: ``(path, reason)`` of videos that ended early (their earlier clips are kept).
    """

    clips: list = field(default_factory=list)
    origins: list = field(default_factory=list)
    videos_used: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    damaged: list = field(default_factory=list)

    def __len__(self):
        return len(self.clips)

    def split(self, holdout_fraction=0.25, seed=0):
        """(calibration, held-out) ClipSets; held-out clips are never calibrated on.

        Whole videos go to one side when there are at least 2 videos (neighbouring clips of one
        video look alike, so a per-clip split would overstate held-out accuracy).
        """
        if not 0.0 < float(holdout_fraction) < 1.0:
            raise InvalidInputError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
        if len(self.clips) < 2:
            raise InvalidInputError(f"need at least 2 clips to hold some out, got {len(self.clips)}")
        rng = np.random.default_rng(seed)
        videos = sorted({o[0] for o in self.origins})
        if len(videos) >= 2:
            order = [videos[i] for i in rng.permutation(len(videos))]
            n_held = min(len(videos) - 1, max(1, int(round(len(videos) * holdout_fraction))))
            held_videos = set(order[:n_held])
            held = [i for i, o in enumerate(self.origins) if o[0] in held_videos]
        else:
            n_held = min(len(self.clips) - 1, max(1, int(round(len(self.clips) * holdout_fraction))))
            held = sorted(rng.permutation(len(self.clips))[:n_held].tolist())
        held_set = set(held)
        calib = [i for i in range(len(self.clips)) if i not in held_set]

        def subset(indices):
            return ClipSet([self.clips[i] for i in indices], [self.origins[i] for i in indices],
                           sorted({self.origins[i][0] for i in indices}), list(self.skipped), list(self.damaged))

        return subset(calib), subset(held)

    def summary(self):
        """JSON-ready counts."""
        return {"clips": len(self.clips), "videos_used": len(self.videos_used),
                "videos_skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "videos_damaged": [{"path": p, "reason": r} for p, r in self.damaged]}


def find_videos(paths):
    """Expand files and folders (recursively, by :data:`VIDEO_EXTENSIONS`) into a sorted list."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.exists():
            found.append(path)
        else:
            raise InvalidInputError(f"calibration video or folder not found: {path}")
    if not found:
        raise InvalidInputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {[str(p) for p in paths]}")
    return found


def collect_clips(paths, spec=None, *, max_clips=None, clips_per_video=None, progress=True) -> ClipSet:
    """Decode videos into preprocessed S3D clips through the runtime's own pipeline.

    Args:
        paths: video files and/or folders.
        spec: the bundle's :class:`~vbedge.preprocess.PreprocessSpec` (default spec when None).
        max_clips: stop after this many clips in total.
        clips_per_video: take at most this many clips from each video (spreads the set over
            more videos).
        progress: show a progress bar over videos.
    """
    from tqdm.auto import tqdm

    from vbedge.clips import ClipAssembler
    from vbedge.preprocess import DEFAULT_SPEC, make_clip
    from vbedge.sources import open_source

    spec = spec or DEFAULT_SPEC
    for name, value in (("max_clips", max_clips), ("clips_per_video", clips_per_video)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidInputError(f"{name} must be a positive integer or None, got {value!r}")
    videos = find_videos(paths)
    result = ClipSet()
    for video in tqdm(videos, desc="calibration videos", unit="video", disable=not progress):
        if max_clips is not None and len(result) >= max_clips:
            break
        try:
            source = open_source(str(video))
        except (VbedgeError, OSError) as exc:  # FormatError, SourceNotFoundError, SourceOpenError
            reason = str(exc)
            result.skipped.append((str(video), reason))
            warnings.warn(f"skipping calibration video {video}: {reason}", CalibrationWarning, stacklevel=2)
            continue
        assembler = ClipAssembler.from_spec(spec)
        taken = 0

        def take(clips):
            nonlocal taken
            for clip in clips:
                if (clips_per_video is not None and taken >= clips_per_video) or \
                        (max_clips is not None and len(result) >= max_clips):
                    return False
                result.clips.append(make_clip(clip.frames, spec))
                result.origins.append((str(video), clip.index))
                taken += 1
            return True

        with source:
            for frame in source:
                if not take(assembler.push(frame)):
                    break
            else:
                take(assembler.finish())
            if source.failed:
                result.damaged.append((str(video), str(source.end_reason)))
                warnings.warn(f"calibration video {video} ended early ({source.end_reason}); "
                              f"kept its {taken} clip(s) decoded before the damage", CalibrationWarning, stacklevel=2)
        if taken:
            result.videos_used.append(str(video))
        elif not source.failed:
            result.skipped.append((str(video), "too short for one clip"))
    if not result.clips:
        raise InvalidInputError(f"no clip could be made from {len(videos)} video(s) ({len(result.skipped)} skipped)")
    return result


class ArrayReader:
    """A ``CalibrationDataReader`` over a list of feed dicts (``get_next``, ``rewind``, ``len``)."""

    def __init__(self, feeds):
        self._feeds = list(feeds)
        if not self._feeds:
            raise InvalidInputError("a calibration reader needs at least one input")
        self._next = 0

    def __len__(self):
        return len(self._feeds)

    def get_next(self):
        """The next feed dict, or None at the end."""
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self):
        """Start again from the first input."""
        self._next = 0


class S3DCalibrationReader(ArrayReader):
    """S3D calibration inputs (``{"clip": (1, 3, T, H, W)}``) from a :class:`ClipSet`."""

    def __init__(self, clipset, input_name="clip", warn_minimum=MIN_S3D_CLIPS):
        if not isinstance(clipset, ClipSet):
            raise InvalidInputError(f"clipset must be a ClipSet (from collect_clips), got {type(clipset).__name__}")
        warn_if_small(len(clipset), warn_minimum, "S3D clips")
        super().__init__({input_name: clip[None]} for clip in clipset.clips)


def caption_feeds(vocab, leaves, text, max_length=512) -> dict:
    """``[CLS] text [>] visual tokens [SEP]`` as int64 feeds with a batch axis of 1.

    vbedge's one input layout (:mod:`vbedge.sequence_layout`, the layout of
    :func:`vbedge.models.videobert.caption_inputs`), built from the vocabulary alone so
    calibration needs no torch.
    """
    leaves = np.atleast_1d(np.asarray(leaves, dtype=np.int64))
    visual = [int(vocab.visual_token_id(int(leaf))) for leaf in leaves]
    row = layout_row(vocab, vocab.encode_text(text), visual, max_length=max_length)
    ids = row.input_ids
    positions = np.flatnonzero(ids == vocab.mask_id).astype(np.int64)
    if positions.size == 0:
        raise InvalidInputError(f"template {text!r} has no [MASK] to predict")
    return {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None],
            "token_type_ids": row.token_type_ids[None], "predict_positions": positions[None]}


def template_sequences(vocab, visual_sequences, templates=DEFAULT_TEMPLATES):
    """VideoBERT feeds: each visual-token sequence (leaf ids) under one template (in turn)."""
    if not templates:
        raise InvalidInputError("templates must be a non-empty list of texts with [MASK] slots")
    feeds = []
    for i, leaves in enumerate(visual_sequences):
        if len(leaves) == 0:
            raise InvalidInputError(f"visual sequence {i} is empty")
        feeds.append(caption_feeds(vocab, leaves, templates[i % len(templates)]))
    return feeds


#: Pieces of the built-in kitchen sentences (:func:`kitchen_sentences`): real WordPiece text for
#: calibration and evaluation when the user gives no corpus (templates alone repeat ~20 words).
_VERBS = ("cut", "chop", "slice", "stir", "mix", "pour", "add", "fry", "boil", "bake", "peel", "wash",
          "season", "whisk", "grill", "roast", "melt", "spread", "fold", "knead")
_NOUNS = ("onion", "garlic", "butter", "flour", "egg", "chicken", "tomato", "rice", "pasta", "sauce",
          "cheese", "potato", "carrot", "dough", "oil", "salt", "pepper", "milk", "sugar", "bread")
_PLACES = ("pan", "pot", "bowl", "oven", "plate", "board", "tray", "skillet")
_FORMS = ("now let me show you how to {v} the {n}.", "{v} the {n} in the {p} for a few minutes.",
          "first we {v} the {n} and then we put it in the {p}.", "you want to {v} the {n} until it is golden.",
          "take the {n} out of the {p} and {v} it.", "then i am going to {v} some {n} into the {p}.",
          "make sure you {v} the {n} well before serving.", "here we {v} the {n} with a little bit of {m}.")


def kitchen_sentences(count, seed=0):
    """``count`` distinct instructional kitchen sentences, drawn with ``seed``.

    Different seeds overlap; :func:`split_sentences` makes calibration and held-out sets disjoint.
    """
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    limit = len(_FORMS) * len(_VERBS) * len(_NOUNS) * len(_PLACES)
    while len(out) < min(count, limit // 4):
        form = _FORMS[rng.integers(len(_FORMS))]
        text = form.format(v=_VERBS[rng.integers(len(_VERBS))], n=_NOUNS[rng.integers(len(_NOUNS))],
                           m=_NOUNS[rng.integers(len(_NOUNS))], p=_PLACES[rng.integers(len(_PLACES))])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def split_sentences(count_calibration, count_held_out, seed=0):
    """(calibration sentences, held-out sentences): disjoint, so the report never sees a calibrated text."""
    both = kitchen_sentences(count_calibration + count_held_out, seed)
    return both[:count_calibration], both[count_calibration:count_calibration + count_held_out]


def sentence_sequences(vocab, sentences, visual_sequences, mask_fraction=0.15, mask_visual=0.5, seed=0):
    """VideoBERT feeds from real text: ``[CLS] sentence [>] visual [SEP]`` with words masked.

    Like BERT's pre-training inputs: ``mask_fraction`` of each sentence's WordPieces (at least one)
    become ``[MASK]``, and with probability ``mask_visual`` one visual token is masked too (the
    visual predictions are measured as well). Sentence i is paired with visual sequence
    ``i % len(visual_sequences)``.
    """
    if not sentences:
        raise InvalidInputError("sentences must be a non-empty list of texts")
    if not visual_sequences:
        raise InvalidInputError("visual_sequences must be a non-empty list of leaf-id sequences")
    if not 0.0 < float(mask_fraction) <= 1.0:
        raise InvalidInputError(f"mask_fraction must be in (0, 1], got {mask_fraction!r}")
    rng = np.random.default_rng(seed)
    feeds = []
    for i, text in enumerate(sentences):
        pieces = list(vocab.encode_text(text))
        if not pieces:
            raise InvalidInputError(f"sentence {i} ({text!r}) has no WordPiece tokens")
        count = max(1, int(round(len(pieces) * mask_fraction)))
        for p in rng.choice(len(pieces), count, replace=False):
            pieces[int(p)] = vocab.mask_id
        leaves = np.atleast_1d(np.asarray(visual_sequences[i % len(visual_sequences)], dtype=np.int64))
        if leaves.size == 0:
            raise InvalidInputError(f"visual sequence {i % len(visual_sequences)} is empty")
        visual = [int(vocab.visual_token_id(int(leaf))) for leaf in leaves]
        if rng.random() < mask_visual:
            visual[int(rng.integers(len(visual)))] = vocab.mask_id
        row = layout_row(vocab, pieces, visual)
        ids = row.input_ids
        feeds.append({"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None],
                      "token_type_ids": row.token_type_ids[None],
                      "predict_positions": np.flatnonzero(ids == vocab.mask_id).astype(np.int64)[None]})
    return feeds


def corpus_sequences(vocab, jsonl_path, max_sequences=None):
    """VideoBERT feeds from a tokenized corpus: one JSON object per line.

    Each line: ``{"input_ids": [...], "token_type_ids": [...] (optional), "predict_positions":
    [...] (optional: the positions of [MASK] ids otherwise)}``; ids must be in the vocabulary.

    Raises:
        FormatError: a line that is not such an object (the message names the line).
    """
    path = Path(jsonl_path)
    if not path.is_file():
        raise InvalidInputError(f"corpus file not found: {path}")
    feeds = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if max_sequences is not None and len(feeds) >= max_sequences:
                break
            try:
                row = json.loads(line)
                ids = np.asarray(row["input_ids"], dtype=np.int64)
            except (ValueError, KeyError, TypeError) as exc:
                raise FormatError(f"{path}:{number}: expected a JSON object with integer input_ids ({exc})") from exc
            if ids.ndim != 1 or ids.size < 2 or ids.min() < 0 or ids.max() >= vocab.size:
                raise FormatError(f"{path}:{number}: input_ids must be a list of >= 2 ids in [0, {vocab.size})")
            types = np.asarray(row.get("token_type_ids", np.zeros_like(ids)), dtype=np.int64)
            positions = np.asarray(row.get("predict_positions", np.flatnonzero(ids == vocab.mask_id)), dtype=np.int64)
            if types.shape != ids.shape or positions.size == 0 or positions.min() < 0 or positions.max() >= ids.size:
                raise FormatError(f"{path}:{number}: token_type_ids must match input_ids and there must be "
                                  f"at least one predict position inside the sequence")
            feeds.append({"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None],
                          "token_type_ids": types[None], "predict_positions": positions[None]})
    if not feeds:
        raise InvalidInputError(f"corpus {path} holds no sequences")
    return feeds


class VideoBertCalibrationReader(ArrayReader):
    """VideoBERT calibration inputs from feed dicts (:func:`template_sequences`, :func:`corpus_sequences`).


    Sequences are padded to one length (``[PAD]``, attention mask 0) and one number of predict
    positions (the last repeated): ONNX Runtime's histogram calibrators (entropy, percentile)
    stack every activation across inputs, so shapes must agree.
    """

    def __init__(self, feeds, pad_id=0, warn_minimum=MIN_VIDEOBERT_SEQUENCES):
        feeds = list(feeds)
        warn_if_small(len(feeds), warn_minimum, "VideoBERT sequences")
        if feeds:
            feeds = pad_feeds(feeds, pad_id)
        super().__init__(feeds)


def pad_feeds(feeds, pad_id=0):
    """Pad batch-1 VideoBERT feeds to a common sequence length and number of predict positions."""
    seq = max(f["input_ids"].shape[1] for f in feeds)
    npos = max(f["predict_positions"].shape[1] for f in feeds)
    out = []
    for f in feeds:
        extra = seq - f["input_ids"].shape[1]
        padded = {
            "input_ids": np.pad(f["input_ids"], ((0, 0), (0, extra)), constant_values=pad_id),
            "attention_mask": np.pad(f["attention_mask"], ((0, 0), (0, extra))),
            "token_type_ids": np.pad(f["token_type_ids"], ((0, 0), (0, extra))),
            "predict_positions": np.pad(f["predict_positions"], ((0, 0), (0, npos - f["predict_positions"].shape[1])),
                                        mode="edge"),
        }
        out.append(padded)
    return out
