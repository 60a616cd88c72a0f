"""The trainer's view of a corpus: :func:`read_corpus` over :mod:`vbedge.corpus`.

The corpus format and its checks belong to :mod:`vbedge.corpus` (docs/training.md, "Corpus");
this module is the one place the trainer reads a corpus, so the trainer depends on nothing but
each video's ``video``, ``clips`` (``start``, ``end``, ``leaf``) and ``narration`` (``start``,
``end``, ``text``), in time order. Training reads strictly: a file with a bad line is refused
(``vbedge.corpus.CorpusFormatError`` listing every bad ``file:line``), since a model trained on a
silently shortened corpus has data nobody can state.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vbedge.corpus import read_corpus as _read_corpus
from vbedge.errors import FormatError

__all__ = ["read_corpus", "corpus_sha256"]


def read_corpus(path, num_leaves=None) -> list:
    """The videos (:class:`vbedge.corpus.CorpusVideo`) of the corpus ``path``, read strictly.

    ``num_leaves`` (the codebook's) bounds the leaf ids. Raises FormatError for a missing file,
    a bad line (naming each ``file:line``) or a corpus without any video.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"corpus {str(path)!r} does not exist; expected a JSON-lines file")
    videos = list(_read_corpus(path, num_leaves=num_leaves, strict=True))
    if not videos:
        raise FormatError(f"corpus {str(path)!r} holds no video; expected one JSON object per line")
    return videos


def corpus_sha256(path) -> str:
    """Content hash of the corpus file (a resumed run must read the same data)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
