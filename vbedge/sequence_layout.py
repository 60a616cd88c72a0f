"""The one VideoBERT input layout, shared by training, export checks, calibration and captioning.

Text comes first, as in the VideoBERT paper (Sun et al., 2019, Fig. 3)::

    [CLS] orange chicken with [MASK] sauce [>] v01 [MASK] v08 v72 [SEP]
    types   0     0      0     0     0     1   1    1     1   1    1

- a **joint** row is ``[CLS] text [>] visual [SEP]``;
- a **text-only** row is ``[CLS] text [SEP]`` (no ``[>]``);
- a **video-only** row is ``[CLS] [>] visual [SEP]`` (the joint row with no text).

Token types: 0 for ``[CLS]`` and the text; 1 from ``[>]`` to the end (``[>]``, the visual
tokens and the final ``[SEP]``). So the token type says which segment a position is in, and
``[>]`` opens the video segment the way BERT's segment B follows its first ``[SEP]``. A
text-only row is all 0.

This module needs numpy only (the NumPy captioner uses it; so do the torch trainer and
``vbedge.models.videobert.caption_inputs``), so the layout is written in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

__all__ = ["SequenceRow", "layout_row", "row_length", "TEXT_TYPE", "VIDEO_TYPE"]

#: Token type of ``[CLS]`` and the text.
TEXT_TYPE = 0
#: Token type of ``[>]``, the visual tokens and the final ``[SEP]`` of a row with a video segment.
VIDEO_TYPE = 1


@dataclass(frozen=True)
class SequenceRow:
    """One laid-out VideoBERT input row (no batch axis).

    Attributes:
        input_ids: int64 ids.
        token_type_ids: int64 types (see the module docstring).
        text_start, text_end: ``input_ids[text_start:text_end]`` are the text tokens.
        visual_start, visual_end: ``input_ids[visual_start:visual_end]`` are the visual tokens
            (an empty range for a text-only row).
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    text_start: int
    text_end: int
    visual_start: int
    visual_end: int

    @property
    def text_slice(self) -> slice:
        """Positions of the text tokens."""
        return slice(self.text_start, self.text_end)

    @property
    def visual_slice(self) -> slice:
        """Positions of the visual tokens."""
        return slice(self.visual_start, self.visual_end)


def row_length(text_tokens: int, visual_tokens=None) -> int:
    """Length of a row with ``text_tokens`` text and ``visual_tokens`` visual tokens.

    ``visual_tokens=None`` is a text-only row (no ``[>]``).
    """
    if visual_tokens is None:
        return 1 + int(text_tokens) + 1
    return 1 + int(text_tokens) + 1 + int(visual_tokens) + 1


def _ids(values, what):
    arr = np.asarray(values)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{what} must be integer vocabulary ids, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def layout_row(vocab, text_ids=(), visual_ids=None, max_length=None) -> SequenceRow:
    """``[CLS] text [>] visual [SEP]`` (or a text-only / video-only row) as a :class:`SequenceRow`.

    ``text_ids`` are vocabulary ids of the text (WordPiece ids or ``[MASK]``), ``visual_ids``
    vocabulary ids of the visual part (visual token ids or ``[MASK]``); ``None`` leaves out the
    video segment and its ``[>]``. Raises InvalidInputError when the row would be longer than
    ``max_length`` or would hold neither text nor video.
    """
    text = _ids(text_ids, "text_ids")
    if visual_ids is None:
        if text.size == 0:
            raise InvalidInputError("a VideoBERT row needs text, visual tokens or both; got neither")
        ids = np.concatenate([[vocab.cls_id], text, [vocab.sep_id]]).astype(np.int64)
        types = np.full(ids.shape, TEXT_TYPE, dtype=np.int64)
        end = 1 + text.size
        row = SequenceRow(ids, types, 1, end, end, end)
    else:
        visual = _ids(visual_ids, "visual_ids")
        ids = np.concatenate([[vocab.cls_id], text, [vocab.separator_id], visual,
                              [vocab.sep_id]]).astype(np.int64)
        types = np.full(ids.shape, TEXT_TYPE, dtype=np.int64)
        separator = 1 + text.size
        types[separator:] = VIDEO_TYPE
        row = SequenceRow(ids, types, 1, separator, separator + 1, separator + 1 + visual.size)
    if max_length is not None and row.input_ids.size > max_length:
        raise InvalidInputError(f"VideoBERT input has {row.input_ids.size} tokens; expected at most {max_length}")
    return row
