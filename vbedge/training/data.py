"""Training examples as in the VideoBERT paper, built with NumPy from a corpus.

Three kinds of rows, all in the one layout of :mod:`vbedge.sequence_layout`:

- ``text``: ``[CLS] sentence(s) [SEP]`` for the text-only masked LM (``text_mlm``);
- ``video``: ``[CLS] [>] visual tokens [SEP]`` for the video-only masked LM (``video_mlm``);
- ``joint``: ``[CLS] sentence(s) [>] visual tokens [SEP]`` for the video-text masked LM
  (``joint_mlm``, aligned rows only) and the alignment classification (``alignment``): half the
  joint rows (drawn per row) keep the visual tokens of their own sentence (label 0, "aligned",
  BERT's is-next index), the others get a sentence from another video (label 1).

Data, as in the paper:

- a sentence's visual tokens are the clips whose midpoint falls in its time span;
- 1 to ``max_concat`` neighbouring sentences are concatenated into one long sentence (their
  visual tokens are those of the whole span);
- the visual tokens are subsampled at a random rate of 1 to ``max_subsample`` steps, from a
  random offset;
- BERT's masking: each text / visual position is chosen with probability ``mask_prob`` (at
  least one per row); a chosen position becomes ``[MASK]`` (80%), a random token of its own
  sub-vocabulary (10%: a WordPiece word for a word, a visual token for a visual token) or stays
  (10%); the label is the original id.

A row longer than ``max_length`` is cut: the text keeps its first tokens, the visual part a
random window, each keeping at least half of the budget when both are long.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vbedge.errors import InvalidInputError
from vbedge.sequence_layout import layout_row, row_length

__all__ = ["EncodedVideo", "encode_videos", "ExampleBuilder", "Batch", "KINDS", "IGNORE"]

#: Row kinds, in the order a batch holds them.
KINDS = ("text", "video", "joint")
#: Label of positions that carry no masked-LM loss (PyTorch's cross-entropy ignore index).
IGNORE = -100


@dataclass
class EncodedVideo:
    """One video ready for sampling.

    Attributes:
        name: the video's name.
        visual_ids: vocabulary ids of its clips' visual tokens, in time order.
        sentences: WordPiece ids of each narration sentence, in time order.
        spans: ``(len(sentences), 2)`` int array: sentence i's visual tokens are
            ``visual_ids[spans[i, 0]:spans[i, 1]]``.
    """

    name: str
    visual_ids: np.ndarray
    sentences: list
    spans: np.ndarray


def encode_videos(records, vocab) -> list:
    """:class:`EncodedVideo` for each corpus video (:class:`vbedge.corpus.CorpusVideo`)."""
    out = []
    for record in records:
        leaves = np.asarray([c.leaf for c in record.clips], dtype=np.int64)
        visual = np.asarray(vocab.visual_token_id(leaves), dtype=np.int64).reshape(-1) if leaves.size \
            else np.zeros(0, dtype=np.int64)
        mids = np.asarray([(c.start + c.end) / 2 for c in record.clips], dtype=np.float64)
        sentences, spans = [], []
        for s in record.narration:
            ids = np.asarray(vocab.encode_text(s.text), dtype=np.int64)
            if ids.size == 0:
                continue  # an empty ASR segment carries nothing to learn
            # Clips are sorted by start; their midpoints are then sorted too for equal-length clips,
            # but a corpus may mix lengths, so select by mask and keep the clip order.
            inside = np.flatnonzero((mids >= s.start) & (mids < s.end)) if mids.size else np.zeros(0, int)
            lo, hi = (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)
            sentences.append(ids)
            spans.append((lo, hi))
        out.append(EncodedVideo(record.video, visual, sentences,
                                np.asarray(spans, dtype=np.int64).reshape(-1, 2)))
    return out


@dataclass
class Batch:
    """Padded NumPy arrays of one batch (rows of :data:`KINDS`, in that order).

    Attributes:
        input_ids, attention_mask, token_type_ids: int64 ``(rows, length)``.
        labels: int64 ``(rows, length)``, the original id at masked positions, :data:`IGNORE`
            elsewhere (and on every position of a misaligned joint row).
        kinds: int64 ``(rows,)`` index into :data:`KINDS`.
        alignment: int64 ``(rows,)``: 0 aligned, 1 misaligned, :data:`IGNORE` for non-joint rows.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    alignment: np.ndarray

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(self.input_ids.shape[0])


def _random_text_ids(vocab) -> np.ndarray:
    """WordPiece ids a random replacement may draw: every token but BERT's special/unused ones."""
    ids = []
    for i in range(vocab.text_size):
        tok = vocab.token_string(i)
        if tok.startswith("[") and tok.endswith("]"):
            continue
        ids.append(i)
    if not ids:
        raise InvalidInputError("the WordPiece vocabulary has no ordinary tokens to draw replacements from")
    return np.asarray(ids, dtype=np.int64)


class ExampleBuilder:
    """Draws rows and batches from encoded videos with a caller-owned ``numpy.random.Generator``.

    Args:
        videos: :class:`EncodedVideo` list (the training or the held-out split).
        vocab: the model's :class:`~vbedge.VideoBertVocab`.
        max_length: longest row, in tokens (at most the model's position embeddings).
        max_concat: most neighbouring sentences joined into one.
        max_subsample: highest visual subsampling rate (1 = every clip).
        mask_prob: BERT's masking probability (0.15).
        negatives: videos whose sentences misaligned joint rows take (default: the other videos of
            ``videos``); the held-out split draws them from the training videos when it has too
            few of its own.
    """

    def __init__(self, videos, vocab, *, max_length=128, max_concat=3, max_subsample=5, mask_prob=0.15,
                 negatives=None):
        if max_length < 8:
            raise InvalidInputError(f"max_length must be at least 8 tokens, got {max_length}")
        if max_concat < 1 or max_subsample < 1:
            raise InvalidInputError(f"max_concat and max_subsample must be >= 1, got {max_concat}, {max_subsample}")
        if not 0.0 < mask_prob < 1.0:
            raise InvalidInputError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.videos = list(videos)
        self.vocab = vocab
        self.max_length = int(max_length)
        self.max_concat = int(max_concat)
        self.max_subsample = int(max_subsample)
        self.mask_prob = float(mask_prob)
        self._text_pool = _random_text_ids(vocab)
        # Which videos can serve each kind of row.
        self.text_videos = [i for i, v in enumerate(self.videos) if v.sentences]
        self.video_videos = [i for i, v in enumerate(self.videos) if v.visual_ids.size]
        self.joint_videos = [i for i, v in enumerate(self.videos)
                             if v.sentences and (v.spans[:, 1] > v.spans[:, 0]).any()]
        self.negatives = None if negatives is None else [v for v in negatives if v.sentences]

    def can_build(self, kind) -> bool:
        """Whether the videos hold material for rows of ``kind``."""
        if kind == "text":
            return bool(self.text_videos)
        if kind == "video":
            return bool(self.video_videos)
        # Misaligned pairs need a sentence of another video.
        if self.negatives is not None:
            return bool(self.joint_videos) and bool(self.negatives)
        return bool(self.joint_videos) and len(self.text_videos) >= 2

    # -- pieces -------------------------------------------------------------------------------

    def _sentences(self, video, rng, need_visual):
        """(text ids, visual range) of 1..max_concat neighbouring sentences starting at a random one."""
        candidates = np.flatnonzero(video.spans[:, 1] > video.spans[:, 0]) if need_visual \
            else np.arange(len(video.sentences))
        first = int(candidates[rng.integers(candidates.size)])
        count = int(rng.integers(1, self.max_concat + 1))
        last = min(first + count, len(video.sentences))
        text = np.concatenate(video.sentences[first:last])
        spans = video.spans[first:last]
        spans = spans[spans[:, 1] > spans[:, 0]]
        lo, hi = (int(spans[:, 0].min()), int(spans[:, 1].max())) if spans.size else (0, 0)
        return text, (lo, hi)

    def _subsample(self, tokens, rng):
        rate = int(rng.integers(1, self.max_subsample + 1))
        if tokens.size <= 1:
            return tokens
        offset = int(rng.integers(min(rate, tokens.size)))
        return tokens[offset::rate]

    def _fit(self, text, visual, rng):
        """Cut text (keep its start) and visual (random window) to fit ``max_length``."""
        budget = self.max_length - row_length(0, None if visual is None else 0)
        nv = 0 if visual is None else visual.size
        if text.size + nv <= budget:
            return text, visual
        if visual is None:
            return text[:budget], None
        half = budget // 2
        if text.size <= half:
            keep_text, keep_visual = text.size, budget - text.size
        elif nv <= budget - half:
            keep_text, keep_visual = budget - nv, nv
        else:
            keep_text, keep_visual = half, budget - half
        if keep_visual < nv:
            start = int(rng.integers(nv - keep_visual + 1))
            visual = visual[start:start + keep_visual]
        return text[:keep_text], visual

    def _mask(self, ids, positions, rng, visual):
        """BERT's 80/10/10 masking of ``positions`` (at least one chosen); returns labels."""
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        if positions.size == 0:
            return labels
        chosen = positions[rng.random(positions.size) < self.mask_prob]
        if chosen.size == 0:
            chosen = positions[[int(rng.integers(positions.size))]]
        labels[chosen] = ids[chosen]
        action = rng.random(chosen.size)
        masked = chosen[action < 0.8]
        replaced = chosen[(action >= 0.8) & (action < 0.9)]
        ids[masked] = self.vocab.mask_id
        if replaced.size:
            is_visual = visual[replaced]
            draw_text = self._text_pool[rng.integers(self._text_pool.size, size=replaced.size)]
            draw_visual = self.vocab.visual_offset + rng.integers(self.vocab.num_visual, size=replaced.size)
            ids[replaced] = np.where(is_visual, draw_visual, draw_text)
        return labels

    # -- rows ---------------------------------------------------------------------------------

    def text_row(self, video_index, rng):
        """A text-only row from video ``video_index``: ``(ids, types, labels)``."""
        video = self.videos[video_index]
        text, _ = self._sentences(video, rng, need_visual=False)
        text, _ = self._fit(text, None, rng)
        row = layout_row(self.vocab, text, None)
        return self._finish(row, rng, mask_text=True, mask_visual=False)

    def video_row(self, video_index, rng):
        """A video-only row: a random window of the video's subsampled visual tokens."""
        video = self.videos[video_index]
        rate = int(rng.integers(1, self.max_subsample + 1))
        budget = self.max_length - row_length(0, 0)
        span = budget * rate
        n = video.visual_ids.size
        start = int(rng.integers(max(1, n - span + 1)))
        visual = video.visual_ids[start:start + span:rate]
        row = layout_row(self.vocab, (), visual)
        return self._finish(row, rng, mask_text=False, mask_visual=True)

    def joint_row(self, video_index, rng, aligned):
        """A joint row; ``aligned=False`` pairs the visual tokens with another video's sentence."""
        video = self.videos[video_index]
        text, (lo, hi) = self._sentences(video, rng, need_visual=True)
        visual = self._subsample(video.visual_ids[lo:hi], rng)
        if not aligned:
            if self.negatives is not None:
                other = self.negatives[int(rng.integers(len(self.negatives)))]
            else:
                others = [i for i in self.text_videos if i != video_index]
                other = self.videos[others[int(rng.integers(len(others)))]]
            text, _ = self._sentences(other, rng, need_visual=False)
        text, visual = self._fit(text, visual, rng)
        row = layout_row(self.vocab, text, visual)
        return self._finish(row, rng, mask_text=True, mask_visual=True)

    def _finish(self, row, rng, mask_text, mask_visual):
        ids = row.input_ids.copy()
        is_visual = np.zeros(ids.shape, dtype=bool)
        is_visual[row.visual_slice] = True
        positions = []
        if mask_text:
            positions.append(np.arange(row.text_start, row.text_end))
        if mask_visual:
            positions.append(np.arange(row.visual_start, row.visual_end))
        positions = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        labels = self._mask(ids, positions, rng, is_visual)
        return ids, row.token_type_ids, labels

    # -- batches ------------------------------------------------------------------------------

    def batch(self, plan, rng) -> Batch:
        """A padded :class:`Batch` for ``plan``: a list of ``(kind, video_index)`` rows.

        Joint rows draw aligned / misaligned with probability 1/2 each.
        """
        rows = []
        for kind, index in plan:
            if kind == "text":
                ids, types, labels = self.text_row(index, rng)
                align = IGNORE
            elif kind == "video":
                ids, types, labels = self.video_row(index, rng)
                align = IGNORE
            elif kind == "joint":
                align = int(rng.random() < 0.5)
                ids, types, labels = self.joint_row(index, rng, aligned=align == 0)
                if align:
                    labels[:] = IGNORE  # a misaligned pair teaches the alignment head only
            else:
                raise InvalidInputError(f"unknown row kind {kind!r}; expected one of {KINDS}")
            rows.append((KINDS.index(kind), ids, types, labels, align))
        length = max(r[1].size for r in rows)
        n = len(rows)
        input_ids = np.full((n, length), self.vocab.pad_id, dtype=np.int64)
        attention = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        labels = np.full((n, length), IGNORE, dtype=np.int64)
        for i, (_, ids, t, lab, _) in enumerate(rows):
            input_ids[i, :ids.size] = ids
            attention[i, :ids.size] = 1
            types[i, :ids.size] = t
            labels[i, :ids.size] = lab
        return Batch(input_ids, attention, types, labels,
                     np.asarray([r[0] for r in rows], dtype=np.int64),
                     np.asarray([r[4] for r in rows], dtype=np.int64))
