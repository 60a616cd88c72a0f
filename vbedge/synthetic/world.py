"""The synthetic kitchen: verbs are motions, nouns are shapes, videos are short recipes.

Each video is a recipe of ``steps`` steps drawn from a small grammar over verbs (wash -> peel or
cut, cut -> pour or stir, ...), so the next step is predictable from the current one; a step
keeps the previous step's ingredient (the noun) half of the time. Every step lasts ``step_seconds`` and is narrated by one
sentence in one of several phrasings ("now cut the tomato", "let's cut the tomato into
pieces"); the narration line records the step's ``verb`` and ``noun`` beside its text.

Neither label can be read off one cue: every noun is rendered with several verbs and every verb
with several nouns; the ingredient's colour shade and size, its position, the motion's speed
(per step), the counter's colour, the lighting and the camera shake (per video) vary
independently of the labels. Nouns that share a hue (tomato and carrot are reddish, banana and
bread yellowish, potato and bread brown) differ by shape only.

Held-out pairs: a ``split="train"`` world never shows the verb-noun pairs in
:data:`HELD_OUT_PAIRS`; a ``split="test"`` world may, so the pairs give a compositional split.

Output of :func:`render_world` in ``out_dir``:

- ``<name>.mp4``: the videos (``fps`` frames per second, ``size`` x ``size`` pixels, mp4v);
- ``narration.jsonl``: one line per video, ``{"video": "<name>.mp4", "narration": [{"start",
  "end", "text", "verb", "noun"}, ...]}`` (the corpus format's narration; times in seconds);
- ``world.json``: the seed, split, vocabulary, grammar and held-out pairs it was made with.

NumPy and OpenCV only (no torch). Everything here is synthetic, and figures measured on it are
figures about this world, not about real cooking videos.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .parallel import bar_map, check_workers
from ..errors import InvalidInputError, MissingDependencyError

__all__ = ["HELD_OUT_PAIRS", "NOUNS", "PHRASINGS", "START_VERBS", "VERBS", "VERB_TRANSITIONS",
           "WorldVideo", "render_world", "sample_recipe", "step_sentence"]

#: Verbs, each a distinct motion (see :func:`_draw_step`). All single bert-base-uncased WordPieces.
VERBS = ("wash", "peel", "cut", "roll", "pour", "stir", "shake", "flip")
#: Nouns, each a distinct shape. All single bert-base-uncased WordPieces.
NOUNS = ("tomato", "carrot", "potato", "onion", "egg", "bread", "banana", "fish")

#: First step of a recipe: verb -> probability.
START_VERBS = {"wash": 0.5, "peel": 0.25, "roll": 0.25}
#: The recipe grammar: verb -> {next verb: probability}.
VERB_TRANSITIONS = {
    "wash": {"peel": 0.5, "cut": 0.5},
    "peel": {"cut": 0.6, "roll": 0.4},
    "cut": {"pour": 0.5, "stir": 0.5},
    "roll": {"cut": 0.5, "flip": 0.5},
    "pour": {"stir": 0.7, "shake": 0.3},
    "stir": {"flip": 0.5, "shake": 0.5},
    "shake": {"pour": 0.5, "flip": 0.5},
    "flip": {"stir": 0.5, "shake": 0.5},
}
#: Probability that a step keeps the previous step's ingredient (else a new one is drawn).
NOUN_KEEP = 0.5
#: Verb-noun pairs a ``split="train"`` world never shows (the compositional split).
HELD_OUT_PAIRS = (("cut", "fish"), ("stir", "egg"), ("roll", "tomato"), ("peel", "bread"),
                  ("shake", "carrot"), ("pour", "banana"))

#: Sentence frames of a step; ``{tail}`` is the verb's phrase ending (:data:`_TAILS`) or nothing.
PHRASINGS = (
    "now {verb} the {noun}",
    "let's {verb} the {noun}{tail}",
    "next we {verb} the {noun}",
    "now i will show you how to {verb} the {noun}{tail}",
    "then you {verb} the {noun}{tail}",
    "time to {verb} the {noun}",
    "okay so we {verb} the {noun}{tail}",
)
_TAILS = {"wash": " under the water", "peel": " with the peeler", "cut": " into pieces",
          "roll": " on the board", "pour": " with some sauce", "stir": " in the pot",
          "shake": " in the jar", "flip": " in the pan"}

# Base colours (BGR) of the nouns; each step scales and jitters them (the shade).
_NOUN_COLOURS = {"tomato": (40, 45, 200), "carrot": (30, 110, 230), "potato": (60, 110, 150),
                 "onion": (150, 120, 190), "egg": (215, 230, 235), "bread": (80, 170, 210),
                 "banana": (60, 210, 230), "fish": (150, 130, 110)}


@dataclass
class WorldVideo:
    """One rendered video: its file name, seed and steps (``[{"start", "end", "text", "verb", "noun"}]``)."""

    name: str
    seed: tuple
    steps: list = field(default_factory=list)

    def narration_line(self) -> dict:
        """The video's ``narration.jsonl`` record."""
        return {"video": self.name, "narration": self.steps}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choice(rng, table):
    keys = list(table)
    probs = np.asarray([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=probs / probs.sum()))]


def sample_recipe(rng, steps=4, split="train"):
    """A recipe: ``steps`` (verb, noun) pairs, verbs drawn from the grammar, the noun kept with :data:`NOUN_KEEP`.

    A ``"train"`` recipe never contains a pair of :data:`HELD_OUT_PAIRS` (it is redrawn).
    """
    steps = _check_positive_int("steps", steps)
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
    held_out = set(HELD_OUT_PAIRS) if split == "train" else set()
    for _ in range(1000):
        nouns = [NOUNS[int(rng.integers(len(NOUNS)))]]
        verbs = [_choice(rng, START_VERBS)]
        while len(verbs) < steps:
            verbs.append(_choice(rng, VERB_TRANSITIONS[verbs[-1]]))
            # Half the time the cook moves on to another ingredient: each noun then meets many
            # backgrounds (a noun fixed per video met only a handful, and a classifier learned those).
            nouns.append(nouns[-1] if rng.random() < NOUN_KEEP else NOUNS[int(rng.integers(len(NOUNS)))])
        recipe = list(zip(verbs, nouns))
        if not held_out.intersection(recipe):
            return recipe
    raise InvalidInputError("could not draw a recipe without held-out pairs")  # pragma: no cover


def step_sentence(rng, verb, noun):
    """One narration sentence for a step, in a random phrasing."""
    frame = PHRASINGS[int(rng.integers(len(PHRASINGS)))]
    return frame.format(verb=verb, noun=noun, tail=_TAILS[verb] if rng.random() < 0.5 else "")


# -- drawing -----------------------------------------------------------------------------------


def _ring(ax, ay, n=28, wobble=0.0, lobes=3):
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    radius = 1.0 + wobble * np.sin(lobes * theta)
    return np.stack([ax * radius * np.cos(theta), ay * radius * np.sin(theta)], axis=1)


def _noun_parts(noun):
    """The noun's shape in unit coordinates: [(points (K, 2), colour scale, is_filled)]."""
    if noun == "tomato":
        stem = np.array([[-0.35, -0.95], [0.0, -0.75], [0.35, -0.95], [0.0, -1.3]])
        return [(_ring(1.0, 0.92), 1.0, True), (stem, "green", True)]
    if noun == "carrot":
        body = np.array([[-0.42, -1.0], [0.42, -1.0], [0.08, 1.25], [-0.08, 1.25]])
        leaves = np.array([[-0.35, -1.6], [-0.05, -1.0], [0.05, -1.0], [0.35, -1.6], [0.0, -1.2]])
        return [(body, 1.0, True), (leaves, "green", True)]
    if noun == "potato":
        spots = [(_ring(0.12, 0.1, 8) + [x, y], 0.55, True) for x, y in ((-0.5, -0.2), (0.3, 0.25), (0.55, -0.3))]
        return [(_ring(1.25, 0.8, wobble=0.08), 1.0, True)] + spots
    if noun == "onion":
        body = _ring(0.95, 0.9) + [0.0, 0.15]
        tip = np.array([[-0.3, -0.6], [0.0, -1.35], [0.3, -0.6]])
        rings = [(_ring(0.55, 0.75, 16)[4:13] + [0.0, 0.15], 0.7, False)]
        return [(body, 1.0, True), (tip, 0.85, True)] + rings
    if noun == "egg":
        theta = np.linspace(0.0, 2.0 * np.pi, 28, endpoint=False)
        y = np.sin(theta)
        pts = np.stack([0.72 * np.cos(theta) * (1.0 + 0.18 * y), 1.0 * y], axis=1)
        return [(pts, 1.0, True)]
    if noun == "bread":
        # A slice of bread: a square body under a wide rounded top, a darker crust and a crumb
        # dot pattern. Its silhouette (straight sides, corners) sets it apart from the potato's
        # oval and the banana's crescent, which share its hue.
        theta = np.linspace(np.pi, 2.0 * np.pi, 14)
        top = np.stack([1.15 * np.cos(theta), -0.35 + 0.75 * np.sin(theta)], axis=1)
        pts = np.concatenate([[[-0.95, 1.0]], top, [[0.95, 1.0]]])
        crust = (np.concatenate([pts, pts[:1]]), 0.55, False)
        crumbs = [(_ring(0.09, 0.09, 6) + [x, y], 0.8, True) for x, y in ((-0.4, 0.0), (0.35, 0.3), (-0.1, 0.6))]
        return [(pts, 1.0, True), crust] + crumbs
    if noun == "banana":
        outer = np.linspace(np.deg2rad(200), np.deg2rad(340), 14)
        inner = outer[::-1]
        pts = np.concatenate([np.stack([1.35 * np.cos(outer), 1.35 * np.sin(outer) + 0.9], 1),
                              np.stack([1.2 * np.cos(inner), 0.75 * np.sin(inner) + 0.9], 1)])
        tips = [(_ring(0.12, 0.12, 8) + p, 0.35, True) for p in (pts[0], pts[13])]
        return [(pts, 1.0, True)] + tips
    if noun == "fish":
        # A long body with a wide forked tail and a fin, so it is not read as a round onion.
        tail = np.array([[1.0, 0.0], [1.75, -0.75], [1.5, 0.0], [1.75, 0.75]])
        fin = np.array([[-0.2, -0.38], [0.3, -0.8], [0.45, -0.3]])
        eye = _ring(0.1, 0.1, 8) + [-0.8, -0.08]
        return [(_ring(1.2, 0.42), 1.0, True), (tail, 0.85, True), (fin, 0.7, True), (eye, 0.2, True)]
    raise InvalidInputError(f"unknown noun {noun!r}; expected one of {NOUNS}")  # pragma: no cover


def _transform(points, cx, cy, radius, angle=0.0, sx=1.0, sy=1.0):
    c, s = math.cos(angle), math.sin(angle)
    x = points[:, 0] * sx * radius
    y = points[:, 1] * sy * radius
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _poly(cv2, image, points, colour, filled=True, thickness=1):
    pts = np.round(points * 16.0).astype(np.int32).reshape(-1, 1, 2)
    colour = tuple(int(v) for v in np.clip(colour, 0, 255))
    if filled:
        cv2.fillPoly(image, [pts], colour, lineType=cv2.LINE_AA, shift=4)
    else:
        cv2.polylines(image, [pts], False, colour, thickness, lineType=cv2.LINE_AA, shift=4)


def _line(cv2, image, p, q, colour, thickness):
    cv2.line(image, (int(round(p[0])), int(round(p[1]))), (int(round(q[0])), int(round(q[1]))),
             tuple(int(v) for v in np.clip(colour, 0, 255)), max(1, int(round(thickness))), cv2.LINE_AA)


def _draw_noun(cv2, image, noun, colour, cx, cy, radius, angle=0.0, sx=1.0, sy=1.0):
    colour = np.asarray(colour, dtype=np.float64)
    for points, scale, filled in _noun_parts(noun):
        part_colour = np.array([40, 150, 60]) if scale == "green" else colour * scale
        _poly(cv2, image, _transform(points, cx, cy, radius, angle, sx, sy), part_colour, filled,
              thickness=max(1, int(radius / 8)))


@dataclass
class _StepLook:
    """The nuisance factors of one step (drawn independently of the labels)."""

    colour: tuple
    radius: float
    cx: float
    cy: float
    speed: float
    direction: float
    phase: float


def _step_look(rng, noun, size):
    base = np.asarray(_NOUN_COLOURS[noun], dtype=np.float64)
    colour = np.clip(base * rng.uniform(0.75, 1.15) + rng.uniform(-18, 18, size=3), 0, 255)
    return _StepLook(colour=tuple(colour), radius=size * rng.uniform(0.17, 0.23),
                     cx=size / 2 + rng.uniform(-0.06, 0.06) * size,
                     cy=size / 2 + rng.uniform(-0.04, 0.08) * size,
                     speed=rng.uniform(0.75, 1.3), direction=float(rng.choice([-1.0, 1.0])),
                     phase=rng.uniform(0.0, 1.0))


def _draw_step(cv2, image, verb, noun, look, t, duration, seeds):
    """Draw frame time ``t`` (seconds into the step) of ``verb`` on ``noun``."""
    r, cx, cy, s = look.radius, look.cx, look.cy, look.speed
    progress = t / duration
    grey = (170, 170, 175)
    if verb == "wash":
        _draw_noun(cv2, image, noun, look.colour, cx, cy, r, 0.3 * math.sin(2 * math.pi * 0.8 * s * t))
        top = cy - 2.6 * r
        for k, (dx, ph) in enumerate(seeds):  # falling droplets
            y = top + ((90.0 * s * t / r + ph * 3.0) % 3.0) * r
            x = cx + dx * 1.2 * r
            _line(cv2, image, (x, y), (x, y + 0.45 * r), (235, 205, 120), max(1, r / 7))
    elif verb == "pour":
        side = look.direction
        jx, jy = cx - side * 1.7 * r, cy - 2.3 * r
        jug = _transform(np.array([[-0.45, -0.6], [0.45, -0.6], [0.45, 0.6], [-0.45, 0.6]]), jx, jy, r,
                         side * (0.9 + 0.15 * math.sin(2 * math.pi * 0.5 * s * t)))
        _poly(cv2, image, jug, (225, 225, 225))
        puddle = 0.6 + 1.2 * progress
        cv2.ellipse(image, (int(cx), int(cy + 0.9 * r)), (int(puddle * r), int(0.35 * puddle * r)), 0, 0, 360,
                    (40, 120, 200), -1, cv2.LINE_AA)
        _draw_noun(cv2, image, noun, look.colour, cx, cy, r)
        wiggle = 0.15 * r * math.sin(2 * math.pi * 1.7 * s * t)
        _line(cv2, image, (jx + side * 0.5 * r, jy + 0.3 * r), (cx + wiggle, cy - 0.6 * r), (40, 120, 200), max(2, r / 4))
    elif verb == "cut":
        cv2.rectangle(image, (int(cx - 1.9 * r), int(cy - 1.1 * r)), (int(cx + 1.9 * r), int(cy + 1.2 * r)),
                      (110, 160, 200), -1)
        _draw_noun(cv2, image, noun, look.colour, cx, cy, r)
        strokes = 1.6 * s * t
        done = int(strokes)
        xs = [cx + r * (-0.8 + 0.4 * (k % 5)) for k in range(done)]
        for x in xs:
            _line(cv2, image, (x, cy - 0.9 * r), (x, cy + 0.9 * r), (30, 30, 30), max(1, r / 10))
        x = cx + r * (-0.8 + 0.4 * (done % 5))
        depth = abs(math.sin(math.pi * strokes))
        y = cy - 2.2 * r + depth * 2.0 * r
        blade = np.array([[x - 0.12 * r, y - 1.6 * r], [x + 0.12 * r, y - 1.6 * r], [x + 0.12 * r, y], [x - 0.12 * r, y]])
        _poly(cv2, image, blade, (215, 215, 220))
        _line(cv2, image, (x, y - 1.6 * r), (x, y - 2.4 * r), (30, 50, 70), max(2, r / 4))
    elif verb == "roll":
        _line(cv2, image, (cx - 2.6 * r, cy + 1.05 * r), (cx + 2.6 * r, cy + 1.05 * r), (90, 90, 90), max(1, r / 6))
        dx = 1.4 * r * math.sin(2 * math.pi * (0.5 * s * t + look.phase))
        _draw_noun(cv2, image, noun, look.colour, cx + dx, cy, r, angle=dx / r)
    elif verb == "peel":
        _draw_noun(cv2, image, noun, look.colour, cx, cy, r)
        flesh = np.clip(np.asarray(look.colour) * 0.45 + 140, 0, 255)
        if progress > 0.05:
            cv2.ellipse(image, (int(cx), int(cy)), (max(1, int(0.75 * progress * r)), max(1, int(0.55 * progress * r))),
                        0, 0, 360, tuple(float(v) for v in flesh), -1, cv2.LINE_AA)
        theta = look.direction * 2 * math.pi * 0.6 * s * t
        px, py = cx + 1.05 * r * math.cos(theta), cy + 0.9 * r * math.sin(theta)
        strip = np.array([[px + (0.3 + 0.25 * k) * r * math.cos(theta + 0.5 * k),
                           py + (0.3 + 0.25 * k) * r * math.sin(theta + 0.5 * k)] for k in range(5)])
        _poly(cv2, image, np.concatenate([[[px, py]], strip]), look.colour, filled=False, thickness=max(1, int(r / 6)))
        handle = _transform(np.array([[-0.15, 0.0], [0.15, 0.0], [0.15, 1.2], [-0.15, 1.2]]), px, py, r, theta - math.pi / 2)
        _poly(cv2, image, handle, grey)
    elif verb == "stir":
        cv2.circle(image, (int(cx), int(cy)), int(1.9 * r), (60, 60, 65), -1, cv2.LINE_AA)
        cv2.circle(image, (int(cx), int(cy)), int(1.6 * r), (95, 100, 105), -1, cv2.LINE_AA)
        theta = look.direction * 2 * math.pi * 0.7 * s * t + 2 * math.pi * look.phase
        ox, oy = cx + 0.55 * r * math.cos(theta + math.pi), cy + 0.55 * r * math.sin(theta + math.pi)
        _draw_noun(cv2, image, noun, look.colour, ox, oy, 0.65 * r, angle=theta)
        tip = (cx + 1.05 * r * math.cos(theta), cy + 1.05 * r * math.sin(theta))
        _line(cv2, image, tip, (cx + 2.4 * r, cy - 2.4 * r), (40, 90, 150), max(2, r / 4))
    elif verb == "shake":
        dx = 0.55 * r * math.sin(2 * math.pi * (2.0 * s * t + look.phase))
        x0, y0, x1, y1 = cx + dx - 1.5 * r, cy - 1.6 * r, cx + dx + 1.5 * r, cy + 1.4 * r
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), (200, 200, 190), -1)
        _draw_noun(cv2, image, noun, look.colour, cx + dx, cy, 0.8 * r, angle=0.4 * dx / r)
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), (120, 120, 120), max(1, int(r / 6)))
        cv2.rectangle(image, (int(x0), int(y0 - 0.4 * r)), (int(x1), int(y0)), (60, 60, 180), -1)
    elif verb == "flip":
        cv2.ellipse(image, (int(cx), int(cy + 1.0 * r)), (int(1.8 * r), int(0.5 * r)), 0, 0, 360, (45, 45, 50), -1,
                    cv2.LINE_AA)
        _line(cv2, image, (cx + look.direction * 1.7 * r, cy + 1.0 * r), (cx + look.direction * 3.0 * r, cy + 0.8 * r),
              (45, 45, 50), max(2, r / 3))
        phase = (0.8 * s * t + look.phase) % 1.0
        lift = 1.5 * r * math.sin(math.pi * phase)
        _draw_noun(cv2, image, noun, look.colour, cx, cy - lift, r, sy=math.cos(math.pi * phase))
    else:  # pragma: no cover - VERBS is closed
        raise InvalidInputError(f"unknown verb {verb!r}; expected one of {VERBS}")


@dataclass
class _VideoLook:
    background: tuple
    counter: tuple
    horizon: float
    brightness: float
    gradient: float
    shake: float


def _video_look(rng, size):
    background = rng.uniform(60, 200, size=3)
    counter = np.clip(background * rng.uniform(0.5, 0.9) + rng.uniform(-20, 20, size=3), 0, 255)
    return _VideoLook(tuple(background), tuple(counter), rng.uniform(0.35, 0.6) * size,
                      rng.uniform(0.7, 1.2), rng.uniform(-0.2, 0.2), rng.uniform(0.0, 1.5))


def _render_frames(cv2, rng, recipe, look, size, fps, step_seconds):
    """Yield the BGR uint8 frames of one recipe."""
    frames_per_step = int(round(step_seconds * fps))
    ramp = (1.0 + look.gradient * np.linspace(-1.0, 1.0, size))[None, :, None] * look.brightness
    base = np.empty((size, size, 3), np.float64)
    base[:] = look.background
    base[int(look.horizon):] = look.counter
    base = np.clip(base, 0, 255).astype(np.uint8)
    for verb, noun in recipe:
        step = _step_look(rng, noun, size)
        droplets = [(rng.uniform(-1.0, 1.0), rng.uniform(0.0, 1.0)) for _ in range(7)]
        for i in range(frames_per_step):
            image = base.copy()
            _draw_step(cv2, image, verb, noun, step, i / fps, step_seconds, droplets)
            lit = np.clip(image * ramp, 0, 255).astype(np.uint8)
            if look.shake > 0:
                m = np.float32([[1, 0, rng.normal(0, look.shake)], [0, 1, rng.normal(0, look.shake)]])
                lit = cv2.warpAffine(lit, m, (size, size), borderMode=cv2.BORDER_REFLECT)
            yield lit


def _render_video(job):
    """Render video ``index`` of world ``seed`` into ``out``; return its :class:`WorldVideo` (a process-pool job)."""
    out, seed, index, split, steps, step_seconds, fps, size = job
    cv2 = _cv2()
    rng = np.random.default_rng([seed, index])
    recipe = sample_recipe(rng, steps, split)
    look = _video_look(rng, size)
    name = f"synth-s{seed}-{index:04d}.mp4"
    path = Path(out) / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise MissingDependencyError(f"OpenCV cannot write {path} with the mp4v codec")
    try:
        for frame in _render_frames(cv2, rng, recipe, look, size, fps, step_seconds):
            writer.write(frame)
    finally:
        writer.release()
    frames_per_step = int(round(step_seconds * fps))
    spans = [(k * frames_per_step / fps, (k + 1) * frames_per_step / fps) for k in range(len(recipe))]
    return WorldVideo(name, (seed, index), [
        {"start": round(a, 6), "end": round(b, 6), "text": step_sentence(rng, v, n), "verb": v, "noun": n}
        for (a, b), (v, n) in zip(spans, recipe)])


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError("rendering the synthetic world needs OpenCV: install vbedge[opencv]") from exc
    return cv2


def render_world(out_dir, videos, seed, *, split="train", steps=4, step_seconds=3.0, fps=20.0, size=96,
                 progress=True, workers=1):
    """Render ``videos`` recipe videos into ``out_dir``; return their :class:`WorldVideo` list.

    Args:
        out_dir: folder for the videos, ``narration.jsonl`` and ``world.json`` (created).
        videos: how many videos.
        seed: the world's seed. Video ``i`` is drawn from ``numpy.random.default_rng([seed, i])``
            and named ``synth-s<seed>-<i>.mp4``, so two seeds give disjoint videos.
        split: ``"train"`` leaves out :data:`HELD_OUT_PAIRS`; ``"test"`` may show them.
        steps: steps per recipe.
        step_seconds: duration of a step (a multiple of the 1.5 s clip keeps clips inside steps).
        fps: frame rate of the videos.
        size: width and height in pixels.
        progress: show a progress bar.
        workers: processes that render videos side by side (None: one per CPU core). Every
            video has its own random stream, so the files are the same for any number.

    Raises:
        InvalidInputError: a bad option. MissingDependencyError: no OpenCV, or no mp4v writer.
    """
    videos = _check_positive_int("videos", videos)
    steps = _check_positive_int("steps", steps)
    size = _check_positive_int("size", size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
    for name, value in (("step_seconds", step_seconds), ("fps", fps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
    if size < 48:
        raise InvalidInputError(f"size must be at least 48 pixels, got {size}")
    workers = check_workers(workers)
    _cv2()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    jobs = [(str(out), int(seed), index, split, steps, step_seconds, float(fps), size) for index in range(videos)]
    bar = tqdm(total=videos, desc=f"rendering synthetic world (seed {seed})", unit="video", disable=not progress)
    try:
        made = list(bar_map(_render_video, jobs, workers, bar))
    finally:
        bar.close()
    with open(out / "narration.jsonl", "w", encoding="utf-8") as handle:
        for video in made:
            handle.write(json.dumps(video.narration_line()) + "\n")
    world = {"kind": "vbedge.synthetic_world", "synthetic": True, "seed": int(seed), "split": split,
             "videos": videos, "steps": steps, "step_seconds": step_seconds, "fps": fps, "size": size,
             "verbs": list(VERBS), "nouns": list(NOUNS), "start_verbs": START_VERBS,
             "verb_transitions": VERB_TRANSITIONS,
             "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
             "shows_held_out_pairs": split == "test"}
    with open(out / "world.json", "w", encoding="utf-8") as handle:
        json.dump(world, handle, indent=1)
    return made
