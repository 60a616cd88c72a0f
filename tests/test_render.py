"""Caption overlay: wrapped to the frame, lines stacked without overlap, text actually drawn."""

import itertools

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from vbedge.render import draw_caption, layout_caption  # noqa: E402

CAPTION = ("now let me show you how to cut the onion and then put it into the hot pan with a little "
           "olive oil")
TIME_LINE = "12.00-13.50 s  [V:03.07.01.11]"
FONT = cv2.FONT_HERSHEY_SIMPLEX


def measured(line, layout):
    """The line's text extent measured independently: (x0, top, x1, bottom) in pixels."""
    (w, h), baseline = cv2.getTextSize(line.text, FONT, layout.font_scale, layout.thickness)
    x, y = line.origin
    return x, y - h, x + w, y + baseline


def check_fits(layout, width, height):
    assert layout.lines
    for line in layout.lines:
        x0, top, x1, bottom = measured(line, layout)
        bx0, by0, bx1, by1 = line.box
        assert 0 <= bx0 <= x0 and x1 <= bx1 <= width, (line, width)
        assert 0 <= by0 <= top and bottom <= by1 <= height, (line, height)
    for a, b in itertools.combinations(layout.lines, 2):
        # Stacked top down: boxes share no row (and so no pixel).
        assert a.box[3] <= b.box[1], (a, b)


def test_long_caption_wraps_inside_a_320x240_frame():
    layout = layout_caption([CAPTION, TIME_LINE], 320, 240)
    check_fits(layout, 320, 240)
    texts = [line.text for line in layout.lines]
    assert len(texts) >= 3                            # the caption needed more than one line
    assert " ".join(texts[:-1]).split() == CAPTION.split()   # no word lost, order kept
    assert texts[-1] == TIME_LINE                     # a line that fits is kept as given
    assert not layout.dropped_text
    # The caption as one line would not fit: the wrap is needed, not decorative.
    assert cv2.getTextSize(CAPTION, FONT, layout.font_scale, layout.thickness)[0][0] > 320


def test_drawn_text_stays_in_its_boxes_inside_the_frame():
    gray = np.full((240, 320, 3), 128, np.uint8)
    layout = layout_caption([CAPTION, TIME_LINE], 320, 240)
    out = draw_caption(gray, [CAPTION, TIME_LINE])
    assert out.shape == gray.shape and np.array_equal(gray, np.full_like(gray, 128))  # input untouched
    inside = np.zeros((240, 320), bool)
    for line in layout.lines:
        x0, y0, x1, y1 = line.box
        inside[y0:y1, x0:x1] = True
        box = out[y0:y1, x0:x1]
        bright = (box > 200).all(axis=2)
        assert bright.sum() >= 5 * len(line.text.replace(" ", "")) // 2, line  # text drawn here
        assert (box < 128).all(axis=2).any()          # on a darkened background
    changed = (out != gray).any(axis=2)
    assert changed.any() and not changed[~inside].any()   # nothing drawn outside the boxes


def test_the_font_scales_with_the_frame():
    small = layout_caption([CAPTION, TIME_LINE], 320, 240)
    big = layout_caption([CAPTION, TIME_LINE], 1920, 1080)
    check_fits(big, 1920, 1080)
    assert big.font_scale > small.font_scale
    height = lambda line: line.box[3] - line.box[1]  # noqa: E731
    assert height(big.lines[0]) > 2 * height(small.lines[0])


def test_a_word_wider_than_the_frame_is_cut():
    word = "x" * 120
    layout = layout_caption([word], 320, 240)
    check_fits(layout, 320, 240)
    assert len(layout.lines) >= 2 and "".join(line.text for line in layout.lines) == word


def test_empty_lines_are_skipped_and_a_short_frame_drops_what_does_not_fit():
    layout = layout_caption(["", TIME_LINE], 320, 240)
    assert [line.text for line in layout.lines] == [TIME_LINE]
    short = layout_caption([CAPTION, TIME_LINE], 320, 50)
    check_fits(short, 320, 50)
    assert short.dropped_text and len(short.lines) < 3
    assert short.lines[0].text == layout_caption([CAPTION], 320, 240).lines[0].text
