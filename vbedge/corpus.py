"""The training corpus: one JSON line per video with its visual tokens and its narration.

Each line (documented in docs/training.md, "Corpus")::

    {"video": "pasta.mp4",
     "clips": [{"start": 0.0, "end": 1.5, "leaf": 17}, ...],
     "narration": [{"start": 0.4, "end": 2.9, "text": "boil the water"}, ...]}

Extra fields, in the line or in a clip or sentence, are allowed and ignored. :func:`read_corpus`
checks every line: valid JSON object; ``video`` a non-empty string (each video once);
``clips`` and ``narration`` lists of objects with numeric ``start``/``end`` (finite, ``end >=
start``, starts in non-decreasing order), an integer ``leaf`` inside the codebook's range
(``0 <= leaf < num_leaves``, when the codebook is given) and a string ``text``. Blank lines are
skipped.

Bad lines: with ``strict=True`` (the default) the whole file is read and then refused with a
:class:`CorpusFormatError` listing every bad line as ``file:line: message``; with
``strict=False`` bad lines are skipped, and the result says how many and why
(:attr:`Corpus.problems`). Training should use the default: a corpus with broken lines usually
means a broken export, not a few bad videos.

:func:`build_corpus` (``vbedge corpus``) makes a corpus from ``vbedge tokenize`` output and
narration given as JSON lines or WebVTT / SubRip files (:mod:`vbedge.narration`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FormatError, InvalidInputError
from .narration import SUBTITLE_SUFFIXES, read_narration_jsonl, read_subtitles

__all__ = ["Corpus", "CorpusBuildReport", "CorpusClip", "CorpusFormatError", "CorpusSentence",
           "CorpusVideo", "build_corpus", "parse_corpus_line", "read_corpus", "read_tokens",
           "write_corpus"]

#: How many problems a CorpusFormatError message shows (all are in its ``problems``).
SHOWN_PROBLEMS = 20


class CorpusFormatError(FormatError):
    """A corpus (or tokens file) with bad lines; ``problems`` holds every ``file:line: message``."""

    def __init__(self, path, problems, what="corpus"):
        shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" \
            if len(problems) > SHOWN_PROBLEMS else ""
        super().__init__(f"{path}: {len(problems)} bad {what} line(s):\n  {shown}{more}")
        self.path = str(path)
        self.problems = list(problems)


class _LineProblem(Exception):
    """One bad line (internal; becomes a ``file:line: message`` string)."""


@dataclass(frozen=True)
class CorpusClip:
    """A clip's time span (seconds) and its visual word (codebook leaf)."""

    start: float
    end: float
    leaf: int

    def to_dict(self):
        return {"start": round(self.start, 6), "end": round(self.end, 6), "leaf": self.leaf}


@dataclass(frozen=True)
class CorpusSentence:
    """A narrated sentence's time span (seconds) and text."""

    start: float
    end: float
    text: str

    def to_dict(self):
        return {"start": round(self.start, 6), "end": round(self.end, 6), "text": self.text}


@dataclass(frozen=True)
class CorpusVideo:
    """One corpus line.

    Attributes:
        video: the video's name (as ``vbedge tokenize`` wrote it).
        clips: :class:`CorpusClip` tuple in time order.
        narration: :class:`CorpusSentence` tuple in time order (may be empty).
        line: 1-based line in the file it was read from (0 when built in memory).
    """

    video: str
    clips: tuple
    narration: tuple
    line: int = 0

    @property
    def leaves(self) -> list:
        """The visual words of the clips, in order."""
        return [clip.leaf for clip in self.clips]

    def to_dict(self):
        return {"video": self.video, "clips": [c.to_dict() for c in self.clips],
                "narration": [s.to_dict() for s in self.narration]}


@dataclass
class Corpus:
    """What :func:`read_corpus` read.

    Attributes:
        path: the file.
        videos: the good lines, in file order.
        problems: ``file:line: message`` of each skipped line (``strict=False`` only).
    """

    path: str
    videos: list
    problems: list = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Lines skipped as bad."""
        return len(self.problems)

    def __len__(self):
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos)


def _num_leaves(codebook):
    if codebook is None:
        return None
    value = getattr(codebook, "num_leaves", codebook)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"num_leaves must be a positive integer or a codebook, got "
                                f"{codebook!r}")
    return value


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _span(item, where):
    for key in ("start", "end"):
        if key not in item:
            raise _LineProblem(f"{where} lacks {key!r}")
        if not _number(item[key]):
            raise _LineProblem(f"{where} {key!r} must be a finite number of seconds, got "
                               f"{item[key]!r}")
    if item["end"] < item["start"]:
        raise _LineProblem(f"{where} ends ({item['end']}) before it starts ({item['start']})")
    return float(item["start"]), float(item["end"])


def _leaf(leaf, num_leaves, where):
    if isinstance(leaf, bool) or not isinstance(leaf, int):
        raise _LineProblem(f"{where} 'leaf' missing or not an integer, got {leaf!r}")
    if leaf < 0 or (num_leaves is not None and leaf >= num_leaves):
        bound = f"0..{num_leaves - 1} (the codebook's leaves)" if num_leaves else ">= 0"
        raise _LineProblem(f"{where} leaf {leaf} is outside {bound}")
    return leaf


def _items(data, key, make):
    if key not in data:
        raise _LineProblem(f"missing {key!r} (a list)")
    if not isinstance(data[key], list):
        raise _LineProblem(f"{key!r} must be a list, got {type(data[key]).__name__}")
    out, last = [], -math.inf
    for number, item in enumerate(data[key]):
        where = f"{key}[{number}]"
        if not isinstance(item, dict):
            raise _LineProblem(f"{where} must be an object, got {type(item).__name__}")
        start, end = _span(item, where)
        if start < last:
            raise _LineProblem(f"{where} starts at {start} before the previous one ({last}): "
                               f"{key} must be in time order")
        last = start
        out.append(make(item, where, start, end))
    return tuple(out)


def parse_corpus_line(text, num_leaves=None, line=0) -> CorpusVideo:
    """One corpus line -> :class:`CorpusVideo`.

    Raises:
        FormatError: what is wrong with the line (without the file and line: callers add them).
    """
    try:
        return _parse(text, _num_leaves(num_leaves), line)
    except _LineProblem as exc:
        raise FormatError(str(exc)) from None


def _parse(text, num_leaves, line):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _LineProblem(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _LineProblem(f"expected a JSON object, got {type(data).__name__}")
    video = data.get("video")
    if not isinstance(video, str) or not video:
        raise _LineProblem("'video' missing or not a non-empty string")

    def clip(item, where, start, end):
        return CorpusClip(start, end, _leaf(item.get("leaf"), num_leaves, where))

    def sentence(item, where, start, end):
        if not isinstance(item.get("text"), str):
            raise _LineProblem(f"{where} 'text' missing or not a string")
        return CorpusSentence(start, end, item["text"])

    return CorpusVideo(video, _items(data, "clips", clip), _items(data, "narration", sentence),
                       line)


def read_corpus(path, num_leaves=None, strict=True) -> Corpus:
    """Read and check a corpus file (see the module docstring for the rules).

    Args:
        path: the ``.jsonl`` corpus.
        num_leaves: the codebook (or its number of leaves) leaves must lie inside; None checks
            only ``leaf >= 0``.
        strict: refuse a file with any bad line (:class:`CorpusFormatError` listing them all);
            False: skip bad lines and list them in :attr:`Corpus.problems`.
    """
    num_leaves = _num_leaves(num_leaves)
    videos, problems, seen = [], [], {}
    with open(path, encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                video = _parse(text, num_leaves, number)
                if video.video in seen:
                    raise _LineProblem(f"video {video.video!r} already on line "
                                       f"{seen[video.video]} (one line per video)")
            except _LineProblem as exc:
                problems.append(f"{path}:{number}: {exc}")
                continue
            seen[video.video] = number
            videos.append(video)
    if strict and problems:
        raise CorpusFormatError(path, problems)
    return Corpus(str(path), videos, problems)


def write_corpus(path, videos) -> int:
    """Write :class:`CorpusVideo` objects (or their dicts) as corpus lines; return the count.

    Written under a temporary name and renamed, so a reader never sees half a corpus.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for video in videos:
                data = video.to_dict() if isinstance(video, CorpusVideo) else video
                out.write(json.dumps(data, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


# -- building a corpus from vbedge tokenize output and narration ---------------------------------


def read_tokens(paths, num_leaves=None, strict=True):
    """``vbedge tokenize`` JSON lines -> ``({video: [CorpusClip, ...]}, problems)``.

    Each line is ``{"video", "start", "end", "leaf", "token"}`` (one per clip; ``token`` and
    other fields are ignored); a video's clips may come from several files. Clips are returned
    sorted by start. Bad lines are refused (``strict``) or skipped and listed.
    """
    num_leaves = _num_leaves(num_leaves)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    by_video, problems = {}, []
    for path in paths:
        bad = []
        with open(path, encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    try:
                        item = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise _LineProblem(f"not JSON ({exc.msg})") from None
                    if not isinstance(item, dict):
                        raise _LineProblem("expected a JSON object (a vbedge tokenize line)")
                    if not isinstance(item.get("video"), str) or not item["video"]:
                        raise _LineProblem("'video' missing or not a non-empty string")
                    start, end = _span(item, "clip")
                    leaf = _leaf(item.get("leaf"), num_leaves, "clip")
                except _LineProblem as exc:
                    bad.append(f"{path}:{number}: {exc}")
                    continue
                by_video.setdefault(item["video"], []).append(CorpusClip(start, end, leaf))
        if strict and bad:
            raise CorpusFormatError(path, bad, what="tokens")
        problems += bad
    for clips in by_video.values():
        clips.sort(key=lambda c: c.start)
    return by_video, problems


def _stem(name):
    return Path(name).stem


def _narration_sources(narration):
    """Expand folders; return (jsonl files, subtitle files)."""
    if isinstance(narration, (str, os.PathLike)):
        narration = [narration]
    jsonl, subtitles = [], []
    for entry in narration or []:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in SUBTITLE_SUFFIXES)
            if not found:
                raise InvalidInputError(f"narration folder {path} holds no .vtt or .srt files")
            subtitles += found
        elif not path.is_file():
            raise FileNotFoundError(f"narration file not found: {path}")
        elif path.suffix.lower() in SUBTITLE_SUFFIXES:
            subtitles.append(path)
        elif path.suffix.lower() in (".jsonl", ".json"):
            jsonl.append(path)
        else:
            raise InvalidInputError(f"narration {path}: expected .jsonl (one sentence per line), "
                                    f".vtt, .srt or a folder of subtitles")
    return jsonl, subtitles


def _match_video(videos, name, subtitle):
    """Token videos a narration name refers to: exact, then same file name, then same stem.

    A subtitle file matches by stem, also with a language suffix (``pasta.en.vtt`` for
    ``pasta.mp4``).
    """
    if subtitle:
        stem = _stem(name)
        found = [v for v in videos if _stem(v) == stem]
        while not found and "." in stem:
            stem = stem.rsplit(".", 1)[0]
            found = [v for v in videos if _stem(v) == stem]
        return found
    for same in (lambda v: v == name, lambda v: os.path.basename(v) == os.path.basename(name),
                 lambda v: _stem(v) == _stem(name)):
        found = [v for v in videos if same(v)]
        if found:
            return found
    return []


@dataclass
class CorpusBuildReport:
    """What :func:`build_corpus` wrote.

    Attributes:
        output: the corpus file.
        videos: lines written (one per tokenized video).
        clips, sentences: totals written.
        without_narration: videos written with an empty narration (no narration matched).
        unmatched: narration sources (``file`` or ``file: video``) that matched no tokenized
            video, not written.
        problems: bad token lines skipped (``strict=False`` only).
    """

    output: Path
    videos: int
    clips: int
    sentences: int
    without_narration: list
    unmatched: list
    problems: list


def build_corpus(tokens, narration, output, num_leaves=None, strict=True) -> CorpusBuildReport:
    """Join ``vbedge tokenize`` output with narration into a corpus file.

    Args:
        tokens: one or more ``vbedge tokenize`` ``.jsonl`` files.
        narration: narration files or folders: ``.jsonl`` with one sentence per line
            ``{"video", "start", "end", "text"}`` (``video`` matched to the tokens' video
            exactly, else by file name, else by name without extension), ``.vtt`` / ``.srt``
            subtitle files matched by name (``pasta.vtt`` or ``pasta.en.vtt`` for
            ``videos/pasta.mp4``), or folders of subtitle files. May be empty (a video-only
            corpus).
        output: the corpus ``.jsonl`` to write.
        num_leaves: the codebook (or its leaf count) the tokens' leaves must lie inside.
        strict: refuse bad token lines (default) or skip them (listed in the report). Bad
            narration files are always refused (a subtitle file with a broken timestamp would
            otherwise lose its sentences silently).

    Raises:
        CorpusFormatError / NarrationFormatError: bad lines, named by file and line.
        InvalidInputError: a narration source matching several videos, or a video given
            narration twice.
    """
    by_video, problems = read_tokens(tokens, num_leaves=num_leaves, strict=strict)
    if not by_video:
        raise InvalidInputError(f"the tokens file(s) {tokens} hold no clips")
    videos = list(by_video)
    jsonl, subtitles = _narration_sources(narration)
    assigned, origin, unmatched = {}, {}, []

    def assign(name, cues, source, subtitle):
        found = _match_video(videos, name, subtitle)
        if not found:
            unmatched.append(source)
            return
        if len(found) > 1:
            raise InvalidInputError(f"narration {source} matches several videos {found}; give "
                                    f"the tokens' video names (vbedge tokenize's 'video' field)")
        video = found[0]
        if video in origin:
            raise InvalidInputError(f"video {video!r} is given narration twice: {origin[video]} "
                                    f"and {source}")
        origin[video] = source
        assigned[video] = sorted(cues, key=lambda c: c.start)

    for path in jsonl:
        for name, cues in read_narration_jsonl(path).items():
            assign(name, cues, f"{path}: {name}", subtitle=False)
    for path in subtitles:
        assign(path.name, read_subtitles(path), str(path), subtitle=True)

    lines = []
    for video in videos:
        cues = assigned.get(video, [])
        lines.append(CorpusVideo(video, tuple(by_video[video]),
                                 tuple(CorpusSentence(c.start, c.end, c.text) for c in cues)))
    write_corpus(output, lines)
    read_corpus(output, num_leaves=num_leaves)  # what was written reads back under the rules
    return CorpusBuildReport(Path(output), len(lines), sum(len(v.clips) for v in lines),
                             sum(len(v.narration) for v in lines),
                             [v.video for v in lines if not v.narration], unmatched, problems)
