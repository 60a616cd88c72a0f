"""A synthetic live camera: frames produced at a fixed rate in real time."""

import threading
import time

import numpy as np

from ..errors import InvalidInputError


class SyntheticLiveFrames:
    """An iterator of BGR frames paced at ``fps`` in real time, for a live source.

    Open it with ``vbedge.sources.open_source(frames, live=True)``: the source's reader thread
    pulls frames at the camera's pace and keeps only the newest, so the pipeline's live drop
    policy applies exactly as with a camera. Each frame is a copy of one of a few pre-drawn
    noise images with a moving bar (drawing them fresh would cost CPU a camera does not), so
    there is no decoding cost: the ``decode`` stage then measures reading and clip assembly only.

    Args:
        fps: frames per second delivered.
        width, height: frame size in pixels.
        seed: seeds the images.
    """

    def __init__(self, fps=30.0, width=640, height=480, seed=0):
        for name, value in (("fps", fps), ("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidInputError(f"synthetic source {name} must be a positive number, "
                                        f"got {value!r}")
        self.fps = float(fps)
        rng = np.random.default_rng(seed)
        self._images = [rng.integers(0, 256, size=(int(height), int(width), 3), dtype=np.uint8)
                        for _ in range(4)]
        self._stop = threading.Event()
        self._index = 0
        self._t0 = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._index / self.fps
        if due > now:
            # Sleep in short steps so stop() ends a waiting reader promptly.
            while not self._stop.is_set() and time.monotonic() < due:
                time.sleep(min(0.02, max(0.0, due - time.monotonic())))
        image = self._images[self._index % len(self._images)].copy()
        bar = (self._index * 8) % image.shape[1]
        image[:, bar:bar + 8] = 255
        self._index += 1
        return image

    def stop(self):
        """End the stream (the iterator raises StopIteration from the next frame on)."""
        self._stop.set()

    def close(self):
        """Called by the source when it closes."""
        self.stop()
