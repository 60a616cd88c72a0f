"""Subtitle outputs: the shown caption as SubRip (``captions.srt``) or WebVTT (``captions.vtt``) cues,
timed to the source (``event.start`` / ``event.end``, source seconds).

One cue per shown caption: consecutive clips with the same :attr:`~vbedge.pipeline.ClipEvent.caption`
make one cue whose end grows with each clip; clips without a caption (``None``: before the first
stable caption) make no cue. Cues are only ever appended, never rewritten, so the cue that is
still open (its caption is still shown) is held in memory and written when

* the caption changes (or becomes ``None``),
* it has lasted ``max_cue_seconds`` of source time (6 s by default): it is then written as it
  stands and the same caption goes on in a new cue starting where it ended, so a player or
  ``tail -f`` following a live file lags the stream by at most that much; players show such
  back-to-back cues with the same text as one continuous caption,
* the output closes (the end of the stream).

Each cue is appended in one write through a file opened for it and closed again, so it is on disk
when :meth:`SubtitleOutput.write` returns, and a file that was rotated, deleted or re-pointed (a
symlink) is picked up at the next cue (a WebVTT file found empty gets its ``WEBVTT`` header first).

Faults (a full disk): a cue that fails is kept and written first at the next attempt (up to
``backlog`` cues are kept; older ones are dropped and counted in :attr:`SubtitleOutput.dropped`);
a partly written cue is cut off again so the file stays valid; the error propagates so
:class:`~vbedge.outputs.OutputSet` counts it, logs it once and retries with ``resume=True``, which
appends to the same file (no second header, the cue numbers go on). Cues still in memory when the
output closes during a failure are lost (the disk was full).

Several sources in one output: each cue's text starts with ``SOURCE: ``; the cues of one source
are in time order, cues of different sources are in the order they were finished (each source has
its own time line).
"""

from __future__ import annotations

import os
import stat

from ..errors import InvalidInputError
from .base import Output, register_output

__all__ = ["SubtitleOutput", "format_timestamp"]


def format_timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SubRip; ``separator="."`` for WebVTT) of ``seconds`` >= 0, rounded to the
    millisecond; hours go past 99 when they must."""
    millis = max(0, int(round(float(seconds) * 1000.0)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


class _OpenCue:
    __slots__ = ("text", "start", "end")

    def __init__(self, text, start, end):
        self.text, self.start, self.end = text, start, end


class SubtitleOutput(Output):
    """The shown caption as subtitle cues in ``target`` (``.srt`` SubRip or ``.vtt`` WebVTT; see the
    module docstring for when cues are written and how faults are handled).

    Args:
        target: the file; its ending picks the format.
        max_cue_seconds: longest cue (source seconds) before an unchanged caption is written and
            continued in a new cue; ``None``: a cue is written only when its caption ends.
        backlog: cues kept while the file cannot be written.

    Attributes:
        cues_written: cues in the file so far (the next cue's number is one more).
        dropped: cues dropped because the backlog was full.
    """

    kind = "subtitles"

    def __init__(self, target, max_cue_seconds: float | None = 6.0, backlog: int = 1000):
        super().__init__(target)
        suffix = os.path.splitext(self.target)[1].lower()
        if suffix not in (".srt", ".vtt"):
            raise InvalidInputError(f"subtitle output {self.target!r}: expected a name ending in .srt or .vtt")
        if max_cue_seconds is not None and not max_cue_seconds > 0:
            raise InvalidInputError(f"max_cue_seconds must be > 0 or None, got {max_cue_seconds!r}")
        if int(backlog) < 1:
            raise InvalidInputError(f"backlog must be >= 1, got {backlog!r}")
        self.vtt = suffix == ".vtt"
        self.max_cue_seconds = max_cue_seconds
        self.backlog = int(backlog)
        self.cues_written = 0
        self.dropped = 0
        self._open_cues: dict = {}   # source id -> _OpenCue still being shown
        self._pending: list = []     # finished cues (text, start, end) not yet in the file
        self._prefix = False
        self._healthy = True         # False after a failed write, until a write works again

    # -- the contract --------------------------------------------------------------------------

    def open(self, context, resume=False):
        self._prefix = len(context.sources) > 1
        if resume:
            # Retry what failed before; an error here makes OutputSet wait and try again.
            self._flush()
            return
        parent = os.path.dirname(os.path.abspath(self.target))
        if not os.path.isdir(parent):
            raise InvalidInputError(f"cannot write {self.target!r}: folder {parent!r} does not exist")
        self.cues_written = self.dropped = 0
        self._open_cues.clear()
        self._pending.clear()
        with open(self.target, "wb") as handle:  # truncate; a full disk shows here, before any model loads
            if self.vtt:
                handle.write(b"WEBVTT\n\n")
        self._healthy = True

    def write(self, event):
        text = event.caption
        if text is not None:
            text = _clean(text)
            if self._prefix and text:
                text = f"{event.source_id}: {text}"
        cue = self._open_cues.get(event.source_id)
        if cue is not None and text != cue.text:
            self._finish(event.source_id)
            cue = None
        if text:
            if cue is None:
                self._open_cues[event.source_id] = _OpenCue(text, event.start, event.end)
            else:
                cue.end = max(cue.end, event.end)
                if self.max_cue_seconds is not None and cue.end - cue.start >= self.max_cue_seconds - 1e-9:
                    self._finish(event.source_id)
                    self._open_cues[event.source_id] = _OpenCue(text, cue.end, cue.end)
        self._flush()

    def close(self):
        if not self._healthy:
            return  # the disk failed just now: writing again would only fail (and log) again
        for source_id in list(self._open_cues):
            self._finish(source_id)
        self._flush()

    # -- cues ----------------------------------------------------------------------------------

    def _finish(self, source_id):
        cue = self._open_cues.pop(source_id)
        if cue.end > cue.start:
            self._pending.append((cue.text, cue.start, cue.end))
            if len(self._pending) > self.backlog:
                del self._pending[0]
                self.dropped += 1

    def _format(self, number, text, start, end):
        sep = "." if self.vtt else ","
        if self.vtt:  # WebVTT cue text is markup: a bare & or < would start an entity or a tag
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return (f"{number}\n{format_timestamp(start, sep)} --> {format_timestamp(end, sep)}\n"
                f"{text}\n\n").encode("utf-8")

    def _flush(self):
        """Append every pending cue, in order; raises the OSError of the first that fails."""
        while self._pending:
            data = self._format(self.cues_written + 1, *self._pending[0])
            self._append(data)
            self._pending.pop(0)
            self.cues_written += 1
        self._healthy = True

    def _append(self, data):
        self._healthy = False
        flags = os.O_WRONLY  # built with |= : vermin reads `a | b` as a 3.10 union type
        flags |= os.O_APPEND
        flags |= os.O_CREAT
        fd = os.open(self.target, flags, 0o644)
        try:
            size = os.fstat(fd).st_size
            if self.vtt and size == 0 and _is_regular(fd):
                data = b"WEBVTT\n\n" + data  # a new or emptied file: it needs its header first
            written = 0
            try:
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError:
                if written:  # cut off the partial cue so the file stays valid for the retry
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass
                raise
        finally:
            os.close(fd)


def _is_regular(fd):
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _clean(text):
    """One line of cue text: line breaks (a blank line would end the cue) and ``-->`` (it would read
    as a timing line) are taken out."""
    text = " ".join(str(text).split())
    return text.replace("-->", "->")


def _subtitle_target(target):
    return "://" not in target and target.lower().endswith((".srt", ".vtt"))


register_output("subtitles", _subtitle_target, SubtitleOutput,
                "captions.srt / captions.vtt (subtitles timed to the source)")
