"""Captions drawn on video frames, and the annotated video that ``vbedge caption --out`` writes.

OpenCV is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInputError

__all__ = ["AnnotatedVideoWriter", "CaptionLayout", "CaptionLine", "caption_lines", "draw_caption",
           "layout_caption"]


def caption_lines(event) -> list:
    """The lines drawn on the frames of a :class:`~vbedge.pipeline.ClipEvent`: caption, time and token."""
    return [event.caption or event.clip_caption or "",
            f"{event.start:.2f}-{event.end:.2f} s  {event.token}"]


@dataclass(frozen=True)
class CaptionLine:
    """One drawn line: its text, the baseline-left point given to ``cv2.putText`` and its box.

    ``box`` is ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive: the dark background
    rectangle, which holds the whole measured text.
    """

    text: str
    origin: tuple
    box: tuple


@dataclass(frozen=True)
class CaptionLayout:
    """Where :func:`draw_caption` puts each line, for a frame of a given size."""

    font_scale: float
    thickness: int
    lines: tuple
    #: Whether some wrapped lines did not fit the frame's height and were left out.
    dropped_text: bool = False


_FONT_NAME = "FONT_HERSHEY_SIMPLEX"


def _font_scale(width, height):
    # Hershey at scale 1.0 is ~27 px tall: 1.0 suits a 1280x720 frame; never below 0.4, where
    # the letters are about 11 px tall and still readable.
    return max(0.4, min(height / 720.0, width / 1280.0))


def _wrap(text, max_width, measure):
    """Greedy word wrap of ``text`` to lines no wider than ``max_width`` (as ``measure`` says).

    A word wider than a whole line is cut between characters.
    """
    if measure(text) <= max_width:
        return [text]   # as given, inner spacing kept
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        while measure(word) > max_width:
            cut = 1
            while cut < len(word) and measure(word[:cut + 1]) <= max_width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def layout_caption(lines, width, height) -> CaptionLayout:
    """Wrap ``lines`` of text to a ``width`` x ``height`` frame and stack them from the top left.

    The font scales with the frame (never below a readable minimum); every line is measured
    with ``cv2.getTextSize`` and wrapped at word boundaries so that it and its background box
    fit inside the frame; the boxes are stacked top down without overlapping. Empty lines are
    skipped; wrapped lines that would run past the bottom of the frame are left out
    (:attr:`CaptionLayout.dropped_text`).
    """
    import cv2

    font = getattr(cv2, _FONT_NAME)
    scale = _font_scale(width, height)
    thickness = max(1, int(round(scale * 1.5)))
    margin = max(4, int(round(8 * scale)))
    pad = max(2, int(round(4 * scale)))
    gap = max(1, int(round(3 * scale)))

    def measure(text):
        return cv2.getTextSize(text, font, scale, thickness)[0][0]

    max_text = max(1, width - 2 * margin - 2 * pad)
    wrapped = [w for line in lines if line for w in _wrap(line, max_text, measure)]
    placed, y, dropped = [], margin, False
    for text in wrapped:
        (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
        box_h = text_h + baseline + 2 * pad
        if y + box_h > height - margin and placed:
            dropped = True
            break
        box = (margin, y, min(width, margin + text_w + 2 * pad), min(height, y + box_h))
        placed.append(CaptionLine(text, (margin + pad, y + pad + text_h), box))
        y += box_h + gap
    return CaptionLayout(scale, thickness, tuple(placed), dropped)


def draw_caption(image, lines):
    """A copy of the BGR ``image`` with ``lines`` of text drawn at its top left.

    Long lines wrap to the frame width and each line sits on a darkened box (see
    :func:`layout_caption`), so the text stays inside the frame and readable on any background.
    """
    import cv2

    out = image.copy()
    height, width = out.shape[:2]
    layout = layout_caption(lines, width, height)
    font = getattr(cv2, _FONT_NAME)
    for line in layout.lines:
        x0, y0, x1, y1 = line.box
        # Darken rather than paint over: the scene stays faintly visible behind the text.
        out[y0:y1, x0:x1] = (out[y0:y1, x0:x1] * 0.35).astype(out.dtype)
        cv2.putText(out, line.text, line.origin, font, layout.font_scale, (255, 255, 255),
                    layout.thickness, cv2.LINE_AA)
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
