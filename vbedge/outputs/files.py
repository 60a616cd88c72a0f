"""File outputs: one JSON line per event (``events.jsonl``) and the annotated video (``.mp4``/``.avi``)."""

from __future__ import annotations

import json
import os

from .base import Output, register_output

__all__ = ["JsonlOutput", "VideoFileOutput"]


class JsonlOutput(Output):
    """One JSON object per clip (:meth:`vbedge.pipeline.ClipEvent.to_dict`), flushed after each, so
    a reader can follow a live stream. Truncated at the first open, appended to after a failure."""

    kind = "jsonl"

    def __init__(self, target):
        super().__init__(target)
        self._file = None

    def open(self, context, resume=False):
        self._file = open(self.target, "a" if resume else "w", encoding="utf-8")

    def write(self, event):
        self._file.write(json.dumps(event.to_dict()) + "\n")
        self._file.flush()

    def close(self):
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None


class VideoFileOutput(Output):
    """The source's frames with the caption drawn on them (:class:`vbedge.render.AnnotatedVideoWriter`).

    The file is created at the first event with frames, at their size. A video cannot be appended
    to, so after a failure the output goes on in ``NAME.partN.EXT`` (2, 3...) and keeps what was
    written before.
    """

    kind = "video"
    needs_frames = True

    def __init__(self, target):
        super().__init__(target)
        self._writer = None
        self._fps = None
        self.parts = []      # paths written so far (the first is ``target``)

    @property
    def written(self) -> bool:
        """Whether at least one frame was written."""
        return bool(self.parts)

    def open(self, context, resume=False):
        self._fps = context.fps
        if not resume:
            parent = os.path.dirname(os.path.abspath(self.target))
            if not os.path.isdir(parent):
                from ..errors import InvalidInputError

                raise InvalidInputError(f"cannot write {self.target!r}: folder {parent!r} does not exist")

    def _next_path(self):
        if not self.parts:
            return self.target
        stem, ext = os.path.splitext(self.target)
        return f"{stem}.part{len(self.parts) + 1}{ext}"

    def write(self, event):
        if not event.frames:
            return
        if self._writer is None:
            from ..render import AnnotatedVideoWriter

            path = self._next_path()
            self._writer = AnnotatedVideoWriter(path, self._fps)
            self._writer.write(event)
            self.parts.append(path)
            return
        self._writer.write(event)

    def close(self):
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None


def _extension(*extensions):
    return lambda target: "://" not in target and target.lower().endswith(extensions)


register_output("jsonl", _extension(".jsonl"), JsonlOutput, "events.jsonl (one JSON event per clip)")
register_output("video", _extension(".mp4", ".avi"), VideoFileOutput,
                "out.mp4 / out.avi (annotated video)")
