"""Caption events written to files: JSON lines and an annotated video (``vbedge caption``).

::

    with Pipeline.load("bundle/", keep_frames=True) as pipe, \\
            EventFiles(jsonl="events.jsonl", video="out.mp4") as files:
        for event in pipe.stream("kitchen.mp4"):
            files.write(event, fps=pipe.spec.fps)
"""

from __future__ import annotations

import json

__all__ = ["EventFiles", "caption_to_files", "format_event_line"]


def format_event_line(event) -> str:
    """One readable line per event: times, token, ``*`` when the caption changed, caption."""
    mark = "*" if event.caption_changed else " "
    return (f"[{event.start:8.2f} - {event.end:8.2f}] {event.token} {mark} "
            f"{event.caption or '...'}   (clip: {event.clip_caption})")


class EventFiles:
    """Writes each event as a JSON line to ``jsonl`` and, drawn on its frames, to ``video``.

    Either may be ``None``. The JSONL file is opened (truncated) at once and flushed after every
    event, so a reader can follow a live stream; the video is created at the first event with
    frames (see :class:`vbedge.render.AnnotatedVideoWriter`).
    """

    def __init__(self, jsonl=None, video=None):
        self._jsonl = open(jsonl, "w", encoding="utf-8") if jsonl is not None else None
        self.video_path = video
        self._video = None

    @property
    def video_written(self) -> bool:
        """Whether at least one frame was written to the video."""
        return self._video is not None and self._video.started

    def write(self, event, fps):
        """Append ``event``; ``fps`` is the frame rate of its frames (the bundle's ``spec.fps``)."""
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(event.to_dict()) + "\n")
            self._jsonl.flush()
        if self.video_path is not None and event.frames:
            if self._video is None:
                from .render import AnnotatedVideoWriter

                self._video = AnnotatedVideoWriter(self.video_path, fps)
            self._video.write(event)

    def close(self):
        """Close both files; idempotent."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._video is not None:
            self._video.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def caption_to_files(bundle, source, backend="auto", precision="fp32", jsonl=None, video=None,
                     on_event=None, **options) -> bool:
    """Caption ``source`` with the bundle's pipeline, writing the events to ``jsonl`` and ``video``.

    What ``vbedge caption`` does: ``on_event(event)`` is called for each event after it was
    written; ``options`` go to :meth:`vbedge.pipeline.Pipeline.load` (frames are kept when a
    ``video`` is asked for). The JSONL file is opened before the bundle is loaded, so a bad
    output path fails at once. Returns whether the video was written (``False`` when no clip
    was captioned, or no ``video`` was asked for).
    """
    from .pipeline import Pipeline

    with EventFiles(jsonl=jsonl, video=video) as files:
        with Pipeline.load(bundle, backend=backend, precision=precision,
                           keep_frames=video is not None, **options) as pipe:
            for event in pipe.stream(source):
                files.write(event, fps=pipe.spec.fps)
                if on_event is not None:
                    on_event(event)
        return files.video_written
