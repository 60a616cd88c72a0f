"""Captions drawn on video frames, and the annotated video that ``vbedge caption --out`` writes.

OpenCV is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from .errors import InvalidInputError

__all__ = ["AnnotatedVideoWriter", "caption_lines", "draw_caption"]


def caption_lines(event) -> list:
    """The lines drawn on the frames of a :class:`~vbedge.pipeline.ClipEvent`: caption, time and token."""
    return [event.caption or event.clip_caption or "",
            f"{event.start:.2f}-{event.end:.2f} s  {event.token}"]


def draw_caption(image, lines):
    """A copy of the BGR ``image`` with ``lines`` of text drawn at its top left."""
    import cv2

    out = image.copy()
    scale = max(0.4, out.shape[0] / 720.0)
    y = int(24 * scale) + 4
    for line in lines:
        if not line:
            continue
        # A dark outline under white text stays readable on any background.
        cv2.putText(out, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
        y += int(26 * scale) + 4
    return out


class AnnotatedVideoWriter:
    """Writes the frames of caption events, captions drawn on them, to a video file.

    The file is created at the first event that carries frames (a pipeline made with
    ``keep_frames=True``), at that event's frame size; ``.avi`` is written as MJPG, anything else
    as mp4v. The padding frames of a short last clip are not written.
    """

    def __init__(self, path, fps):
        self.path = path
        self.fps = fps
        self._writer = None
        self._size = None

    @property
    def started(self) -> bool:
        """Whether a frame was written (the file exists)."""
        return self._writer is not None

    def write(self, event):
        """Draw the caption of ``event`` on its frames and write them; no-op without frames."""
        import cv2

        if not event.frames:
            return
        if self._writer is None:
            height, width = event.frames[0].shape[:2]
            fourcc = "MJPG" if str(self.path).lower().endswith(".avi") else "mp4v"
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                     (width, height))
            if not writer.isOpened():
                raise InvalidInputError(f"OpenCV cannot write {self.path!r} (try a .mp4 or .avi name)")
            self._writer, self._size = writer, (height, width)
        height, width = self._size
        lines = caption_lines(event)
        for image in event.frames[:len(event.frames) - event.padded_frames]:
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height))
            self._writer.write(draw_caption(image, lines))

    def close(self):
        """Finish the file; idempotent."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
