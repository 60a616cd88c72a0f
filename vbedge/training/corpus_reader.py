"""The trainer's view of a corpus: one :class:`VideoRecord` per video.

SEAM: this is a deliberately small JSON-lines reader written so the trainer could be built
while ``vbedge.corpus`` (the project's corpus reader and ``vbedge corpus``) was being written.
When ``vbedge.corpus`` is on main, :func:`read_corpus` should become a thin adapter over it
(its records carry the same fields); nothing else in ``vbedge.training`` reads files.

One JSON object per line (docs/training.md, "Corpus")::

    {"video": "v1.mp4",
     "clips": [{"start": 0.0, "end": 1.5, "leaf": 17}, ...],
     "narration": [{"start": 0.4, "end": 3.1, "text": "cut the onion"}, ...]}

Extra fields are ignored. Blank lines are skipped. A bad line (not JSON, a missing or wrongly
typed field, end before start, a leaf outside the codebook) is refused: the reader raises
:class:`~vbedge.FormatError` naming the file and line, since training on a silently shortened
corpus would give a model whose data nobody can state.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from vbedge.errors import FormatError

__all__ = ["Clip", "Sentence", "VideoRecord", "read_corpus", "corpus_sha256"]


@dataclass(frozen=True)
class Clip:
    """One tokenized clip: its time span (seconds) and codebook leaf."""

    start: float
    end: float
    leaf: int


@dataclass(frozen=True)
class Sentence:
    """One narration segment (ASR sentence): its time span (seconds) and text."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class VideoRecord:
    """One video of the corpus: clips and narration, each sorted by start time."""

    video: str
    clips: tuple
    narration: tuple


def _number(value, where, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{where}: {name} must be a finite number of seconds, got {value!r}")
    return float(value)


def _span(item, where, name):
    if not isinstance(item, dict):
        raise FormatError(f"{where}: each {name} must be an object, got {type(item).__name__}")
    for key in ("start", "end"):
        if key not in item:
            raise FormatError(f"{where}: a {name} lacks {key!r}; expected start, end")
    start = _number(item["start"], where, f"{name} start")
    end = _number(item["end"], where, f"{name} end")
    if end < start:
        raise FormatError(f"{where}: a {name} ends ({end}) before it starts ({start})")
    return start, end


def _parse_line(obj, where, num_leaves):
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    for key in ("video", "clips", "narration"):
        if key not in obj:
            raise FormatError(f"{where}: missing field {key!r}; expected video, clips, narration")
    if not isinstance(obj["video"], str) or not obj["video"]:
        raise FormatError(f"{where}: video must be a non-empty string, got {obj['video']!r}")
    if not isinstance(obj["clips"], list) or not isinstance(obj["narration"], list):
        raise FormatError(f"{where}: clips and narration must be lists")
    clips = []
    for item in obj["clips"]:
        start, end = _span(item, where, "clip")
        leaf = item.get("leaf")
        if isinstance(leaf, bool) or not isinstance(leaf, int):
            raise FormatError(f"{where}: clip leaf must be an integer, got {leaf!r}")
        if leaf < 0 or (num_leaves is not None and leaf >= num_leaves):
            raise FormatError(f"{where}: clip leaf {leaf} is outside the codebook's "
                              f"{num_leaves} leaves" if num_leaves is not None else
                              f"{where}: clip leaf {leaf} is negative")
        clips.append(Clip(start, end, leaf))
    narration = []
    for item in obj["narration"]:
        start, end = _span(item, where, "narration segment")
        text = item.get("text")
        if not isinstance(text, str):
            raise FormatError(f"{where}: narration text must be a string, got {text!r}")
        narration.append(Sentence(start, end, text))
    clips.sort(key=lambda c: (c.start, c.end))
    narration.sort(key=lambda s: (s.start, s.end))
    return VideoRecord(obj["video"], tuple(clips), tuple(narration))


def read_corpus(path, num_leaves=None) -> list:
    """All :class:`VideoRecord` of the JSON-lines corpus ``path`` (see the module docstring).

    ``num_leaves`` (the codebook's) bounds the leaf ids. Raises FormatError naming
    ``path:line`` for the first bad line, or when the corpus holds no video.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"corpus {str(path)!r} does not exist; expected a JSON-lines file")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise FormatError(f"{where}: not valid JSON ({exc})") from None
            records.append(_parse_line(obj, where, num_leaves))
    if not records:
        raise FormatError(f"corpus {str(path)!r} holds no video; expected one JSON object per line")
    return records


def corpus_sha256(path) -> str:
    """Content hash of the corpus file (a resumed run must read the same data)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
