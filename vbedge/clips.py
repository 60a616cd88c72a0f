"""Frame stream -> fixed-rate clips: timestamp resampling and grouping, one frame at a time.

:class:`ClipAssembler` takes frames with timestamps at any rate (jittery, with gaps) and emits
:class:`Clip` objects of ``clip_frames`` frames sampled at ``fps``, starting a new clip every
``hop`` sampled frames (``hop == clip_frames``: back-to-back clips; smaller: overlapping; larger:
frames between clips are skipped).

Sampling is the same rule as :func:`vbedge.preprocess.resample_indices`, applied incrementally:
target times start at the first frame's timestamp and step by ``1 / fps``; each target takes the
source frame nearest in time (the earlier one on a tie). A slower source therefore repeats frames
and a faster one skips them. Feeding a whole file through the assembler gives exactly the frames
``resample_indices`` picks for the whole list of timestamps, so offline and live processing agree.
Because "nearest" may be the next frame, a target is decided when the first frame at or after it
arrives (one source frame of latency).

Offline (``max_gap=None``, the default) nothing is ever dropped: a gap in the timestamps is
bridged by repeating the frame before it, and :meth:`ClipAssembler.finish` pads the last, partial
clip by repeating its last frame (``Clip.padded`` says how many). For live sources give
``max_gap`` (seconds): a gap longer than that, or a timestamp going backwards (a camera or stream
that restarted), discards the partial clip and starts a new one at the next frame; each restart
is counted in :attr:`ClipAssembler.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .preprocess import DEFAULT_SPEC, _check_frame

__all__ = ["Clip", "ClipAssembler", "ClipStats", "assemble_clips"]

# Same tolerance as resample_indices: keeps the last target when a span is an exact multiple
# of the step despite floating-point error.
_EPS = 1e-9
# Same slack as resample_indices on ties (1 ns), so float noise in the step cannot flip a tie
# that is exact in decimal (10 fps in, 20 fps out); tests compare against resample_indices.
_TIE_SLACK = 1e-9


@dataclass
class Clip:
    """``clip_frames`` frames sampled at a fixed rate.

    Attributes:
        frames: the sampled frames (``(H, W, 3)`` uint8 arrays; a repeated source frame is the
            same array object, not a copy).
        timestamps: the target time of each sampled frame, in seconds (evenly spaced by 1/fps).
        source_indices: index of the source frame picked for each target (the ``index`` of a
            :class:`vbedge.sources.Frame`, else the position in the fed stream).
        source_timestamps: timestamp of the source frame picked for each target.
        start: time of the first target, in seconds.
        end: ``start + clip_frames / fps``: the clip covers ``[start, end)``.
        index: 0, 1, 2... in emission order.
        padded: how many trailing frames are repeats of the last one added by
            :meth:`ClipAssembler.finish` to complete the final clip (0 for full clips).
    """

    frames: list
    timestamps: np.ndarray
    source_indices: np.ndarray
    source_timestamps: np.ndarray
    start: float
    end: float
    index: int
    padded: int = 0

    def __len__(self):
        return len(self.frames)

    def array(self) -> np.ndarray:
        """The frames stacked into one ``(T, H, W, 3)`` uint8 array (frames must share a size)."""
        shapes = {frame.shape for frame in self.frames}
        if len(shapes) != 1:
            raise InvalidInputError(f"clip {self.index} mixes frame sizes {sorted(shapes)}; "
                                    f"stack frames only from a source of one size (or pass the "
                                    f"list to vbedge.preprocess.make_clip, which resizes each)")
        return np.stack(self.frames)


@dataclass
class ClipStats:
    """Counters of a :class:`ClipAssembler`.

    Attributes:
        frames_in: source frames fed.
        frames_sampled: sampled (target) frames produced, repeats included.
        clips: clips emitted.
        restarts: times a gap or a backwards timestamp restarted the clip (live mode only).
        frames_discarded: sampled frames thrown away with a partial clip on a restart.
        last_restart_reason: why the last restart happened (``None`` if none).
    """

    frames_in: int = 0
    frames_sampled: int = 0
    clips: int = 0
    restarts: int = 0
    frames_discarded: int = 0
    last_restart_reason: str | None = None


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class _Picked:
    image: np.ndarray
    target: float
    source_index: int
    source_timestamp: float


class ClipAssembler:
    """Resample a timestamped frame stream to ``fps`` and cut it into clips.

    Feed frames with :meth:`push` (each call returns the clips it completed, usually none or
    one), then call :meth:`finish` at the end of the stream. Deterministic: the same frames and
    timestamps always give the same clips.

    Args:
        fps: output frame rate (the bundle's, 20 by default).
        clip_frames: frames per clip (30 by default).
        hop: sampled frames between the starts of consecutive clips (default ``clip_frames``).
        max_gap: live mode. A gap between consecutive source timestamps longer than this many
            seconds, or a timestamp going backwards, restarts the clip (counted). ``None``
            (offline): gaps are bridged by repeating frames and backwards timestamps are an error.
        pad_last: make :meth:`finish` emit the final partial clip padded with its last frame
            (default True: offline processing never loses the end of a video). With False, the
            partial clip is discarded.
        check_frames: validate every image as an ``(H, W, 3)`` uint8 array (default True).
    """

    def __init__(self, fps=DEFAULT_SPEC.fps, clip_frames=DEFAULT_SPEC.clip_frames, hop=None,
                 max_gap=None, pad_last=True, check_frames=True):
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) \
                or not math.isfinite(fps) or fps <= 0:
            raise InvalidInputError(f"fps must be a positive number, got {fps!r}")
        self.fps = float(fps)
        self.clip_frames = _positive_int("clip_frames", clip_frames)
        self.hop = self.clip_frames if hop is None else _positive_int("hop", hop)
        if max_gap is not None:
            if isinstance(max_gap, bool) or not isinstance(max_gap, (int, float, np.number)) \
                    or not math.isfinite(max_gap) or max_gap <= 0:
                raise InvalidInputError(f"max_gap must be a positive number of seconds or None, "
                                        f"got {max_gap!r}")
            max_gap = float(max_gap)
        self.max_gap = max_gap
        self.pad_last = bool(pad_last)
        self.check_frames = bool(check_frames)
        self.stats = ClipStats()
        self._step = 1.0 / self.fps
        self._finished = False
        self._reset_timeline()
        self._buffer = []       # sampled frames not yet released (the clip being built)
        self._skip = 0          # sampled frames to drop before the next clip (hop > clip_frames)
        self._covered = 0       # frames at the head of _buffer already part of an emitted clip

    @classmethod
    def from_spec(cls, spec=DEFAULT_SPEC, **options) -> "ClipAssembler":
        """An assembler with a :class:`~vbedge.preprocess.PreprocessSpec`'s fps and clip length."""
        return cls(fps=spec.fps, clip_frames=spec.clip_frames, **options)

    def _reset_timeline(self):
        self._origin = None     # timestamp of the first frame of the current run (target 0)
        self._next_target = 0   # number of the next target time to decide
        self._last = None       # (image, timestamp, source index) of the latest source frame

    def _target_time(self, k):
        # Computed from the origin each time (not accumulated) so it equals resample_indices.
        return self._origin + self._step * k

    # -- feeding -------------------------------------------------------------------------------

    def push(self, frame, timestamp=None, index=None) -> list:
        """Feed one source frame; return the clips it completed (a possibly empty list).

        Args:
            frame: a :class:`vbedge.sources.Frame` (or any object with ``image``, ``timestamp``
                and ``index``), a ``(timestamp, image)`` pair, or an image with ``timestamp``.
            timestamp: seconds, when ``frame`` is a bare image.
            index: source frame number (defaults to the frame's own index or a running count).
        """
        if self._finished:
            raise InvalidInputError("push() after finish(): make a new ClipAssembler per stream")
        image, ts, src_index = self._unpack(frame, timestamp, index)
        self.stats.frames_in += 1
        clips = []
        if self._last is not None:
            last_ts = self._last[1]
            if ts < last_ts:
                if self.max_gap is None:
                    raise InvalidInputError(
                        f"timestamp {ts:.6f} s of frame {src_index} is earlier than the previous "
                        f"frame's {last_ts:.6f} s; offline streams must be in time order (pass "
                        f"max_gap= for a live stream that may restart)")
                self._restart(f"timestamp went back from {last_ts:.3f} s to {ts:.3f} s")
            elif self.max_gap is not None and ts - last_ts > self.max_gap:
                self._restart(f"gap of {ts - last_ts:.3f} s between frames exceeds max_gap "
                              f"{self.max_gap:g} s")
        if self._last is None:
            # First frame of a run: it is target 0 whatever follows (as in resample_indices).
            self._origin = ts
            self._next_target = 1
            self._last = (image, ts, src_index)
            clips.extend(self._add_sample(_Picked(image, ts, src_index, ts)))
            return clips
        last_image, last_ts, last_index = self._last
        # Targets in (last_ts, ts] are decided now: the nearest of the previous frame and this
        # one (the previous one on a tie), exactly resample_indices' choice.
        while True:
            target = self._target_time(self._next_target)
            if target > ts:
                break
            if target - last_ts <= ts - target + _TIE_SLACK:
                picked = _Picked(last_image, target, last_index, last_ts)
            else:
                picked = _Picked(image, target, src_index, ts)
            self._next_target += 1
            clips.extend(self._add_sample(picked))
        self._last = (image, ts, src_index)
        return clips

    def _unpack(self, frame, timestamp, index):
        if hasattr(frame, "image") and hasattr(frame, "timestamp"):
            image, ts = frame.image, frame.timestamp
            if index is None:
                index = getattr(frame, "index", None)
        elif isinstance(frame, tuple) and len(frame) == 2 and timestamp is None:
            ts, image = frame
        else:
            image, ts = frame, timestamp
        if ts is None:
            raise InvalidInputError("a frame needs a timestamp: pass a Frame, a (timestamp, "
                                    "image) pair, or push(image, timestamp=seconds)")
        if isinstance(ts, bool) or not isinstance(ts, (int, float, np.number)) \
                or not math.isfinite(ts):
            raise InvalidInputError(f"timestamp must be a finite number of seconds, got {ts!r}")
        if self.check_frames:
            _check_frame(image, what=f"frame {self.stats.frames_in}")
        if index is None:
            index = self.stats.frames_in
        return image, float(ts), int(index)

    def _restart(self, reason):
        self.stats.restarts += 1
        self.stats.last_restart_reason = reason
        self.stats.frames_discarded += len(self._buffer) - self._covered
        self._buffer = []
        self._skip = 0
        self._covered = 0
        self._reset_timeline()

    def _add_sample(self, picked):
        self.stats.frames_sampled += 1
        if self._skip:
            self._skip -= 1
            return []
        self._buffer.append(picked)
        if len(self._buffer) < self.clip_frames:
            return []
        clip = self._make_clip(self._buffer[:self.clip_frames], padded=0)
        if self.hop < len(self._buffer):
            self._buffer = self._buffer[self.hop:]
            self._covered = self.clip_frames - self.hop
        else:
            self._skip = self.hop - len(self._buffer)
            self._buffer = []
            self._covered = 0
        return [clip]

    def _make_clip(self, picks, padded):
        start = picks[0].target
        clip = Clip(
            frames=[p.image for p in picks],
            timestamps=np.array([p.target for p in picks], dtype=np.float64),
            source_indices=np.array([p.source_index for p in picks], dtype=np.int64),
            source_timestamps=np.array([p.source_timestamp for p in picks], dtype=np.float64),
            start=float(start),
            end=float(start + self.clip_frames * self._step),
            index=self.stats.clips,
            padded=padded,
        )
        self.stats.clips += 1
        return clip

    def finish(self) -> list:
        """End of stream: decide the last targets and return the final clip(s).

        With ``pad_last`` the partial clip (if it holds any frame not already emitted) is
        completed by repeating its last frame; otherwise it is discarded. The assembler cannot
        be fed afterwards.
        """
        if self._finished:
            return []
        self._finished = True
        clips = []
        if self._last is not None:
            last_image, last_ts, last_index = self._last
            # resample_indices keeps a target lying within _EPS steps past the last timestamp;
            # it can only be decided now that no later frame will come.
            limit = (last_ts - self._origin) / self._step + _EPS
            while self._next_target <= limit:
                target = self._target_time(self._next_target)
                self._next_target += 1
                clips.extend(self._add_sample(_Picked(last_image, target, last_index, last_ts)))
        if len(self._buffer) > self._covered:
            if self.pad_last:
                picks = list(self._buffer)
                padded = self.clip_frames - len(picks)
                last = picks[-1]
                for k in range(1, padded + 1):
                    picks.append(_Picked(last.image, last.target + k * self._step,
                                         last.source_index, last.source_timestamp))
                clips.append(self._make_clip(picks, padded=padded))
            else:
                self.stats.frames_discarded += len(self._buffer) - self._covered
        self._buffer = []
        self._covered = 0
        return clips


def assemble_clips(frames, fps=DEFAULT_SPEC.fps, clip_frames=DEFAULT_SPEC.clip_frames, hop=None,
                   **options):
    """Yield the clips of a whole stream of frames (a generator over :class:`ClipAssembler`).

    Args:
        frames: an iterable of :class:`vbedge.sources.Frame` objects or ``(timestamp, image)``
            pairs (a :class:`vbedge.sources.VideoSource` works).
        fps, clip_frames, hop, options: as for :class:`ClipAssembler`.
    """
    assembler = ClipAssembler(fps=fps, clip_frames=clip_frames, hop=hop, **options)
    for frame in frames:
        yield from assembler.push(frame)
    yield from assembler.finish()
