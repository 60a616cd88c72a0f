"""Clip preprocessing shared by every S3D backend, in NumPy/OpenCV (no torch).

The spec mirrors torchvision's Kinetics video transform that S3D was trained with:

1. frames are resampled to ``fps`` (20) and cut into ``clip_frames`` (30) frame clips (1.5 s);
2. each frame (BGR uint8 from OpenCV) becomes RGB, scaled to [0, 1];
3. it is resized (bilinear, half-pixel centres, no antialiasing, like torchvision's
   ``antialias=False``) by one of two rules, ``resize``:

   * ``"square"``: to a fixed ``short_side`` x ``short_side`` square, changing the aspect ratio.
     This is the recipe of torchvision's ``S3D_Weights.KINETICS400_V1`` (its ``transforms()``
     resizes to 256 x 256, then crops 224), the weights users bring;
   * ``"short_side"``: the short side to ``short_side``, the long side keeping the aspect ratio
     (truncated as torchvision truncates it). vbedge's rule before the option existed: a spec
     without a ``resize`` field (an older bundle) means this rule;
4. a centred ``crop`` x ``crop`` square is cut (torchvision's rounding of the offset);
5. channels are normalised with the Kinetics ``mean``/``std`` torchvision uses;
6. the clip is laid out (3, T, H, W); a batch of clips is (N, 3, T, H, W).

Resizing happens in float32 rather than on uint8 as torchvision does, so values differ from
torchvision's by at most its own uint8 rounding (0.5/255 before normalisation).

The spec is stored as JSON with every export (:meth:`PreprocessSpec.to_dict`), so a bundle
always preprocesses the way its model was exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .errors import FormatError, InvalidInputError, MissingDependencyError

#: torchvision's Kinetics-400 normalisation constants (``VideoClassification`` preset).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

#: Version written by :meth:`PreprocessSpec.to_dict`. 2 added ``resize``; version 1 specs (no
#: ``resize`` field) are read with the rule they always meant, ``"short_side"``.
SPEC_VERSION = 2
_READABLE_VERSIONS = (1, 2)

#: The resize rules (see the module docstring).
RESIZE_RULES = ("short_side", "square")


@dataclass(frozen=True)
class PreprocessSpec:
    """How frames become an S3D input clip. All fields are stored with an export.

    Attributes:
        fps: frame rate clips are sampled at (frames per second).
        clip_frames: frames per clip (T).
        short_side: length the short side of a frame is resized to, in pixels; with
            ``resize="square"`` both sides are (the frame becomes ``short_side`` squared).
        crop: side of the centred square crop (H = W), in pixels.
        mean, std: per-channel (R, G, B) normalisation of [0, 1] values.
        layout: axis order of a batch of clips; always ``"NCTHW"``.
        input_color: channel order of the frames given to :func:`preprocess_frame` (OpenCV's
            ``"BGR"``); the model sees RGB.
        resize: ``"short_side"`` (keep the aspect ratio; the default, and what a spec stored
            without this field means) or ``"square"`` (torchvision's S3D Kinetics recipe). Use
            :meth:`torchvision_kinetics` for the recipe of torchvision's S3D weights.
    """

    fps: float = 20.0
    clip_frames: int = 30
    short_side: int = 256
    crop: int = 224
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD
    layout: str = "NCTHW"
    input_color: str = "BGR"
    resize: str = "short_side"

    def __post_init__(self):
        # Normalise sequences to tuples so specs loaded from JSON compare equal to built ones.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise InvalidInputError(f"fps must be a positive number, got {self.fps!r}")
        for name in ("clip_frames", "short_side", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.short_side < self.crop:
            raise InvalidInputError(f"short_side ({self.short_side}) must be >= crop "
                                    f"({self.crop}) so the crop lies inside the resized frame")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InvalidInputError(f"mean and std need 3 values (R, G, B), got {self.mean} "
                                    f"and {self.std}")
        if not all(s > 0 and math.isfinite(s) for s in self.std):
            raise InvalidInputError(f"std values must be positive, got {self.std}")
        if self.layout != "NCTHW":
            raise InvalidInputError(f"layout must be 'NCTHW', got {self.layout!r}")
        if self.input_color not in ("BGR", "RGB"):
            raise InvalidInputError(f"input_color must be 'BGR' or 'RGB', got {self.input_color!r}")
        if self.resize not in RESIZE_RULES:
            raise InvalidInputError(f"resize must be one of {RESIZE_RULES}, got {self.resize!r}")

    @classmethod
    def torchvision_kinetics(cls, **changes) -> "PreprocessSpec":
        """The recipe of torchvision's ``S3D_Weights.KINETICS400_V1``: 256 x 256, crop 224.

        ``changes`` override fields (``clip_frames``, ``crop``...) of the recipe; the resize rule
        stays ``"square"`` unless given.
        """
        values = {"resize": "square", "short_side": 256, "crop": 224}
        values.update(changes)
        return cls(**values)

    def describe_resize(self) -> str:
        """One line saying how frames are resized and cropped (for logs and build output)."""
        if self.resize == "square":
            return (f"resize to {self.short_side}x{self.short_side} (aspect ratio not kept), "
                    f"centre crop {self.crop}")
        return (f"resize the short side to {self.short_side} (aspect ratio kept), centre crop "
                f"{self.crop}")

    @property
    def clip_seconds(self) -> float:
        """Duration of one clip in seconds (1.5 s by default)."""
        return self.clip_frames / self.fps

    def clip_shape(self, batch=None) -> tuple:
        """Shape of one clip ``(3, T, H, W)``, or of a batch ``(batch, 3, T, H, W)``."""
        shape = (3, self.clip_frames, self.crop, self.crop)
        return shape if batch is None else (batch,) + shape

    def to_dict(self) -> dict:
        """JSON-serialisable form (with a format version)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["version"] = SPEC_VERSION
        return out

    @classmethod
    def from_dict(cls, data) -> "PreprocessSpec":
        """Rebuild a spec from :meth:`to_dict` output; raise :class:`FormatError` if invalid."""
        if not isinstance(data, dict):
            raise FormatError(f"preprocessing spec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version not in _READABLE_VERSIONS:
            raise FormatError(f"preprocessing spec version {version!r} is not supported "
                              f"(this vbedge reads {list(_READABLE_VERSIONS)}; a newer vbedge "
                              f"wrote it?)")
        if version == 1 and "resize" in data:
            raise FormatError("a version 1 preprocessing spec has no 'resize' field (it was "
                              "added in version 2)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FormatError(f"preprocessing spec has unknown fields {unknown}; expected "
                              f"{sorted(known)}")
        try:
            return cls(**data)
        except (InvalidInputError, TypeError) as exc:
            raise FormatError(f"invalid preprocessing spec: {exc}") from exc


DEFAULT_SPEC = PreprocessSpec()


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError("preprocessing needs OpenCV (cv2): use the system's OpenCV "
                                     "(JetPack) or install vbedge[opencv]") from exc
    return cv2


def resample_indices(timestamps, fps) -> np.ndarray:
    """Indices of the source frames that make a stream at ``fps`` frames per second.

    Target times start at the first timestamp and step by ``1 / fps`` up to the last one; each
    takes the source frame nearest in time (the earlier one on a tie), so a slower source
    repeats frames and a faster one skips them.

    Args:
        timestamps: 1-D non-decreasing frame times in seconds.
        fps: target frame rate, > 0.

    Returns:
        int64 indices into ``timestamps``.
    """
    ts = np.asarray(timestamps)
    if ts.ndim != 1 or ts.size == 0:
        raise InvalidInputError(f"timestamps must be a non-empty 1-D array of seconds, got shape "
                                f"{ts.shape}")
    if not np.issubdtype(ts.dtype, np.number) or np.issubdtype(ts.dtype, np.complexfloating):
        raise InvalidInputError(f"timestamps must be real numbers, got dtype {ts.dtype}")
    ts = ts.astype(np.float64)
    if not np.all(np.isfinite(ts)):
        raise InvalidInputError("timestamps contain NaN or Inf")
    if np.any(np.diff(ts) < 0):
        raise InvalidInputError("timestamps must be non-decreasing (sort frames by time)")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) \
            or not math.isfinite(fps) or fps <= 0:
        raise InvalidInputError(f"fps must be a positive number, got {fps!r}")
    step = 1.0 / float(fps)
    # A tiny epsilon keeps the last target when the span is an exact multiple of the step.
    count = int(math.floor((ts[-1] - ts[0]) / step + 1e-9)) + 1
    targets = ts[0] + step * np.arange(count)
    right = np.clip(np.searchsorted(ts, targets, side="left"), 0, ts.size - 1)
    left = np.clip(right - 1, 0, ts.size - 1)
    # Ties go to the earlier frame; 1 ns of slack so float noise in the step cannot flip a tie.
    take_left = np.abs(targets - ts[left]) <= np.abs(ts[right] - targets) + 1e-9
    return np.where(take_left, left, right).astype(np.int64)


def _check_frame(frame, what="frame"):
    if not isinstance(frame, np.ndarray):
        raise InvalidInputError(f"{what} must be a numpy array (H, W, 3) uint8, got "
                                f"{type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InvalidInputError(f"{what} must have dtype uint8 (as OpenCV decodes video), got "
                                f"{frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InvalidInputError(f"{what} must have shape (H, W, 3) with H, W > 0, got "
                                f"{frame.shape}")


def resized_size(height, width, short_side, rule="short_side"):
    """(new_height, new_width) after resizing by ``rule``, as torchvision computes it.

    ``"short_side"``: the short side becomes ``short_side``, the long one keeps the aspect ratio
    (truncated); ``"square"``: both become ``short_side``.
    """
    if rule == "square":
        return short_side, short_side
    if rule != "short_side":
        raise InvalidInputError(f"resize rule must be one of {RESIZE_RULES}, got {rule!r}")
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if height <= width else (new_long, short_side)


def preprocess_frame(frame, spec=DEFAULT_SPEC) -> np.ndarray:
    """One video frame -> normalised ``(3, crop, crop)`` float32 RGB array.

    Args:
        frame: ``(H, W, 3)`` uint8 array in ``spec.input_color`` order (BGR from OpenCV).
        spec: the :class:`PreprocessSpec` to apply.
    """
    _check_frame(frame)
    cv2 = _cv2()
    height, width = frame.shape[:2]
    new_h, new_w = resized_size(height, width, spec.short_side, spec.resize)
    image = frame.astype(np.float32) * np.float32(1.0 / 255.0)
    if (new_h, new_w) != (height, width):
        # INTER_LINEAR on float32 is exact bilinear with half-pixel centres and no antialiasing,
        # the interpolation torchvision applies with antialias=False.
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top = int(round((new_h - spec.crop) / 2.0))
    left = int(round((new_w - spec.crop) / 2.0))
    image = image[top:top + spec.crop, left:left + spec.crop]
    if spec.input_color == "BGR":
        image = image[:, :, ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = np.asarray([1.0 / s for s in spec.std], dtype=np.float32)
    image = (image - mean) * inv_std
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def make_clip(frames, spec=DEFAULT_SPEC) -> np.ndarray:
    """``spec.clip_frames`` frames (already at ``spec.fps``) -> ``(3, T, crop, crop)`` float32.

    Args:
        frames: a sequence of ``(H, W, 3)`` uint8 frames, or one ``(T, H, W, 3)`` uint8 array.
            Frames may differ in size (each is resized on its own).
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise InvalidInputError(f"frames array must have shape (T, H, W, 3), got "
                                    f"{frames.shape}")
        frames = list(frames)
    else:
        try:
            frames = list(frames)
        except TypeError as exc:
            raise InvalidInputError(f"frames must be a sequence of (H, W, 3) uint8 arrays, got "
                                    f"{type(frames).__name__}") from exc
    if len(frames) != spec.clip_frames:
        raise InvalidInputError(f"a clip needs exactly {spec.clip_frames} frames "
                                f"(clip_frames of the spec), got {len(frames)}")
    for index, frame in enumerate(frames):
        _check_frame(frame, what=f"frame {index}")
    clip = np.empty(spec.clip_shape(), dtype=np.float32)
    for index, frame in enumerate(frames):
        clip[:, index] = preprocess_frame(frame, spec)
    return clip
