"""Reading narration: timed sentences from WebVTT (.vtt), SubRip (.srt) and JSON lines.

These are the files people have for the speech of their videos (ASR output, YouTube
subtitles). Each reader returns :class:`Cue` objects ``(start, end, text, line)`` in file order,
with times in seconds and the 1-based line of the cue's timing line (or JSON line), so a later
check can point at the file and line.

What the subtitle readers accept (docs/training.md, "Corpus"):

- a UTF-8 BOM, CRLF or CR line ends;
- timestamps ``hh:mm:ss.mmm`` or ``hh:mm:ss,mmm`` (either separator in either format; hours may
  be omitted, ``mm:ss.mmm``, and may have more than two digits), fractions of 1 to 3 digits;
- VTT: the ``WEBVTT`` header (with text after it and header lines up to the first blank line),
  ``NOTE``, ``STYLE`` and ``REGION`` blocks (skipped), cue ids, cue settings after the end time
  (``align:start position:10%``);
- SRT: the cue number line (optional), coordinates after the end time, a missing blank line
  before the next cue (a number line then a timing line inside a cue's text start a new cue);
- cue text over several lines (joined with a space); markup removed: tags (``<i>``, ``<c.red>``,
  ``<v Speaker>``, inline ``<00:00:01.000>`` times), ``{\\an8}`` overrides and the entities
  ``&amp; &lt; &gt; &nbsp; &quot; &#39;``; a cue left without text is dropped.

A malformed timestamp, a timing line without ``-->``, an end before the start or a missing VTT
header raise :class:`NarrationFormatError` naming the file and the line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError

__all__ = ["Cue", "NarrationFormatError", "SUBTITLE_SUFFIXES", "parse_srt", "parse_timestamp",
           "parse_vtt", "read_narration_jsonl", "read_subtitles"]

#: File name endings read as subtitles.
SUBTITLE_SUFFIXES = (".vtt", ".srt")

_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?$")
_TAG = re.compile(r"<[^>]*>")
_OVERRIDE = re.compile(r"\{\\[^}]*\}")
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&nbsp;": " ", "&quot;": '"', "&#39;": "'",
             "&apos;": "'", "&lrm;": "", "&rlm;": ""}
_SPACES = re.compile(r"\s+")


class NarrationFormatError(FormatError):
    """A narration file that cannot be read; ``path`` and ``line`` say where."""

    def __init__(self, path, line, message):
        super().__init__(f"{path}:{line}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class Cue:
    """One timed piece of narration.

    Attributes:
        start, end: seconds (``end >= start``).
        text: the words, markup removed, lines joined with spaces.
        line: 1-based line of the cue in its file (its timing line, or its JSON line).
    """

    start: float
    end: float
    text: str
    line: int


def parse_timestamp(text, path="<string>", line=0) -> float:
    """``hh:mm:ss.mmm`` / ``hh:mm:ss,mmm`` / ``mm:ss.mmm`` -> seconds.

    Raises:
        NarrationFormatError: not a timestamp (minutes or seconds of 60 or more included).
    """
    match = _TIMESTAMP.match(text.strip())
    if not match:
        raise NarrationFormatError(path, line, f"malformed timestamp {text.strip()!r}; expected "
                                               f"hh:mm:ss.mmm or hh:mm:ss,mmm")
    hours, minutes, seconds, fraction = match.groups()
    if int(minutes) >= 60 or int(seconds) >= 60:
        raise NarrationFormatError(path, line, f"malformed timestamp {text.strip()!r}: minutes "
                                               f"and seconds must be below 60")
    value = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
    if fraction:
        value += int(fraction) / 10 ** len(fraction)
    return float(value)


def _clean_text(lines):
    text = " ".join(lines)
    text = _OVERRIDE.sub("", _TAG.sub("", text))
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    return _SPACES.sub(" ", text).strip()


def _read_lines(path):
    """The file's lines without line ends; BOM, CRLF and CR handled."""
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise FormatError(f"{path} is a folder, not a subtitle file") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise NarrationFormatError(path, line, f"not UTF-8 text ({exc.reason} at byte "
                                               f"{exc.start}); save the file as UTF-8") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _blocks(lines):
    """(first line number, [lines]) of each blank-line separated block."""
    block, start = [], None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if start is None:
                start = number
            block.append(line)
        elif block:
            yield start, block
            block, start = [], None
    if block:
        yield start, block


def _timing(line, path, number):
    if "-->" not in line:
        raise NarrationFormatError(path, number, f"expected a timing line 'start --> end', got "
                                                 f"{line.strip()[:60]!r}")
    left, right = line.split("-->", 1)
    right = right.strip().split()
    if not right:
        raise NarrationFormatError(path, number, "timing line has no end time after '-->'")
    start = parse_timestamp(left, path, number)
    end = parse_timestamp(right[0], path, number)  # cue settings / coordinates follow
    if end < start:
        raise NarrationFormatError(path, number, f"cue ends ({right[0]}) before it starts "
                                                 f"({left.strip()})")
    return start, end


def parse_vtt(path) -> list:
    """The cues of a WebVTT file, in file order (see the module docstring for what is accepted)."""
    lines = _read_lines(path)
    if not lines or not lines[0].startswith("WEBVTT") or \
            (len(lines[0]) > 6 and lines[0][6] not in " \t"):
        raise NarrationFormatError(path, 1, "not a WebVTT file: the first line must be 'WEBVTT'")
    cues = []
    for first, block in _blocks(lines):
        if first == 1:
            continue  # the header block (WEBVTT line and header metadata)
        head = block[0].strip()
        if head.split(maxsplit=1)[0] in ("NOTE", "STYLE", "REGION") and "-->" not in head:
            continue
        # An optional cue id line precedes the timing line.
        offset = 0 if "-->" in block[0] else 1
        if offset >= len(block):
            raise NarrationFormatError(path, first, f"cue {head[:40]!r} has no timing line")
        start, end = _timing(block[offset], path, first + offset)
        text = _clean_text(block[offset + 1:])
        if text:
            cues.append(Cue(start, end, text, first + offset))
    return cues


def parse_srt(path) -> list:
    """The cues of a SubRip file, in file order (see the module docstring for what is accepted)."""
    lines = _read_lines(path)
    cues = []
    for first, block in _srt_blocks(_blocks(lines)):
        # The cue number line is optional (some writers leave it out).
        offset = 0 if "-->" in block[0] else 1
        if offset >= len(block) or "-->" not in block[offset]:
            where = first + min(offset, len(block) - 1)
            raise NarrationFormatError(path, where, f"expected a cue number and a timing line "
                                                    f"'00:00:01,000 --> 00:00:02,000', got "
                                                    f"{block[min(offset, len(block) - 1)].strip()[:60]!r}")
        if offset == 1 and not block[0].strip().isdigit():
            raise NarrationFormatError(path, first, f"expected a cue number, got "
                                                    f"{block[0].strip()[:60]!r}")
        start, end = _timing(block[offset], path, first + offset)
        text = _clean_text(block[offset + 1:])
        if text:
            cues.append(Cue(start, end, text, first + offset))
    return cues


def _srt_blocks(blocks):
    """Split blocks where a writer left out the blank line before the next cue.

    A cue number line followed by a timing line inside a cue's text starts a new cue.
    """
    for first, block in blocks:
        start = 0
        for i in range(2, len(block)):
            if "-->" in block[i] and block[i - 1].strip().isdigit() and i - 1 > start + 1:
                yield first + start, block[start:i - 1]
                start = i - 1
        yield first + start, block[start:]


def read_subtitles(path) -> list:
    """Cues of a ``.vtt`` or ``.srt`` file, chosen by its name's ending."""
    suffix = Path(path).suffix.lower()
    if suffix == ".vtt":
        return parse_vtt(path)
    if suffix == ".srt":
        return parse_srt(path)
    raise FormatError(f"{path}: subtitle files must end in {' or '.join(SUBTITLE_SUFFIXES)}")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_narration_jsonl(path) -> dict:
    """Narration JSON lines -> ``{video: [Cue, ...]}`` (videos in first-seen order).

    One line per sentence: ``{"video": str, "start": s, "end": s, "text": str}``; extra fields
    are ignored, blank lines skipped.

    Raises:
        NarrationFormatError: a line that is not a JSON object, lacks a field, has a field of
            the wrong type, or ends before it starts (file and line named).
    """
    by_video = {}
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NarrationFormatError(path, number, f"not JSON ({exc.msg})") from exc
            if not isinstance(item, dict):
                raise NarrationFormatError(path, number, "expected a JSON object {\"video\", "
                                                         "\"start\", \"end\", \"text\"}")
            if not isinstance(item.get("video"), str) or not item["video"]:
                raise NarrationFormatError(path, number, "'video' missing or not a non-empty "
                                                         "string")
            for key in ("start", "end"):
                if not _number(item.get(key)):
                    raise NarrationFormatError(path, number, f"{key!r} missing or not a number "
                                                             f"of seconds")
            if not isinstance(item.get("text"), str):
                raise NarrationFormatError(path, number, "'text' missing or not a string")
            if item["end"] < item["start"]:
                raise NarrationFormatError(path, number, f"end {item['end']} is before start "
                                                         f"{item['start']}")
            text = _SPACES.sub(" ", item["text"]).strip()
            if text:
                by_video.setdefault(item["video"], []).append(
                    Cue(float(item["start"]), float(item["end"]), text, number))
    return by_video
