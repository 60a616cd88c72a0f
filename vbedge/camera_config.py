"""Camera configuration files: several cameras, each with its outputs and captioning, in one YAML.

::

    from vbedge.camera_config import load_camera_config

    config = load_camera_config("cameras.yaml")
    for camera in config.cameras:
        print(camera.name, camera.input, camera.outputs, camera.captioning, camera.source_options)

The format (docs/cameras.md)::

    bundle: bundles/kitchen        # optional
    defaults: {template: howto, stable: 2}
    outputs: [http://@:8080]        # served with every camera's events (optional)
    cameras:
      cam0:
        input: rtsp://10.0.0.5/stream
        outputs: [cam0.jsonl, cam0.srt]
        template: caption
        verbs: [cut, stir]
        input-rtsp-latency: 200
      cam1:
        input: 0

Keys are the ``vbedge caption`` option names without the dashes in front. Relative file paths
(inputs, file outputs, word-list files, the bundle) are relative to the folder of the YAML file.
Everything is checked strictly when the file is read: an unknown key, a wrong type, a camera
without ``input``, a template without slots or two outputs writing the same file is a
:class:`CameraConfigError` naming the file, the camera and the key. Word lists are checked
against the bundle's vocabulary later, when the pipeline loads (still before any frame is read).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError, MissingDependencyError

__all__ = ["CAMERA_KEYS", "CameraConfig", "CameraConfigError", "CamerasConfig", "load_camera_config",
           "parse_camera_config"]


class CameraConfigError(InvalidInputError):
    """A camera configuration file is unreadable or invalid; the message names the file, camera and key."""


# key in the file -> (where it goes, option name there)
_CAPTIONING_KEYS = {
    "template": "template",
    "verbs": "verbs",
    "nouns": "nouns",
    "context": "context_clips",
    "stable": "stable_clips",
    "min-confidence": "min_confidence",
    "forecast-step": "forecast_step",
}
_SOURCE_KEYS = {
    "live": "live",
    "input-loop": "loop",
    "input-rate": "rate",
    "input-rtsp-latency": "rtsp_latency",
}
#: Keys a camera (or ``defaults:``) may set, besides a camera's ``input`` and ``outputs``.
CAMERA_KEYS = tuple(_CAPTIONING_KEYS) + tuple(_SOURCE_KEYS)
_TOP_KEYS = ("bundle", "defaults", "outputs", "cameras")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class CameraConfig:
    """One camera of a configuration file.

    Attributes:
        name: the camera's name (the events' ``source``).
        input: what :func:`vbedge.sources.open_source` opens (a camera index is an ``int``).
        outputs: output targets of this camera only (file paths resolved against the YAML's folder).
        captioning: :data:`vbedge.pipeline.CAPTIONING_OPTIONS` set by ``defaults:`` or the camera.
        source_options: :func:`vbedge.sources.open_source` options set by ``defaults:`` or the camera.
    """

    name: str
    input: object
    outputs: tuple = ()
    captioning: dict = field(default_factory=dict)
    source_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CamerasConfig:
    """A whole configuration file.

    Attributes:
        path: the file.
        bundle: the ``bundle:`` folder (resolved), or ``None``.
        outputs: targets that serve every camera.
        cameras: the cameras, in file order.
    """

    path: Path
    bundle: Path | None
    outputs: tuple
    cameras: tuple

    @property
    def sources(self) -> dict:
        """``{name: input}`` for :func:`vbedge.caption_job.caption_sources`."""
        return {camera.name: camera.input for camera in self.cameras}

    @property
    def captioning(self) -> dict:
        """``{name: captioning options}`` of the cameras that set any (``Pipeline.load(captioning=)``)."""
        return {camera.name: dict(camera.captioning) for camera in self.cameras if camera.captioning}

    @property
    def source_options(self) -> dict:
        """``{name: source options}`` of the cameras that set any (``caption_sources(per_source_options=)``)."""
        return {camera.name: dict(camera.source_options) for camera in self.cameras if camera.source_options}


def load_camera_config(path) -> CamerasConfig:
    """Read and check a camera configuration file (YAML, parsed with ``yaml.safe_load``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CameraConfigError(f"{path}: camera configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CameraConfigError(f"{path}: cannot read the camera configuration: {exc}") from None
    return parse_camera_config(text, path)


def parse_camera_config(text, path="<config>") -> CamerasConfig:
    """Check the YAML ``text`` of a configuration file at ``path`` (relative paths resolve against its folder)."""
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError("camera configuration files need PyYAML: pip install pyyaml") from exc
    path = Path(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CameraConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    return _Checker(path).config(data)


class _Checker:
    def __init__(self, path):
        self.path = path
        self.folder = path.parent

    def fail(self, where, message):
        raise CameraConfigError(f"{self.path}: {where}{message}")

    def config(self, data):
        if data is None:
            self.fail("", "the file is empty; expected a mapping with 'cameras:'")
        if not isinstance(data, dict):
            self.fail("", f"expected a mapping with 'cameras:' at the top, got {_kind(data)}")
        self.unknown(data, _TOP_KEYS, "")
        bundle = data.get("bundle")
        if bundle is not None:
            if not isinstance(bundle, str) or not bundle.strip():
                self.fail("key 'bundle': ", f"expected a folder path, got {_kind(bundle)}")
            bundle = self.resolve(bundle)
        defaults = data.get("defaults", {})
        if defaults is None:
            defaults = {}
        if not isinstance(defaults, dict):
            self.fail("key 'defaults': ", f"expected a mapping of camera keys, got {_kind(defaults)}")
        self.unknown(defaults, CAMERA_KEYS, "defaults: ", extra="('input' and 'outputs' belong to a camera)")
        base = self.options(defaults, "defaults: ")
        shared = self.outputs(data.get("outputs", []), "key 'outputs': ")
        cameras = data.get("cameras")
        if cameras is None:
            self.fail("", "no 'cameras:' mapping; expected cameras: {NAME: {input: ...}, ...}")
        if not isinstance(cameras, dict) or not cameras:
            self.fail("key 'cameras': ", f"expected a non-empty mapping of camera names to settings, "
                                         f"got {_kind(cameras)}")
        result = []
        for name, settings in cameras.items():
            result.append(self.camera(name, settings, base))
        self.no_shared_files(shared, result)
        return CamerasConfig(path=self.path, bundle=bundle, outputs=tuple(shared), cameras=tuple(result))

    def unknown(self, mapping, known, where, extra=""):
        for key in mapping:
            if key not in known:
                hint = f" {extra}" if extra else ""
                self.fail(where, f"unknown key {key!r}; expected one of {list(known)}{hint}")

    def camera(self, name, settings, base):
        if not isinstance(name, str) or not _NAME_RE.match(name):
            self.fail("", f"camera name {name!r}: expected letters, digits, '_', '.' or '-' (it names the "
                          f"events' source)")
        where = f"camera {name!r}: "
        if settings is None or not isinstance(settings, dict):
            self.fail(where, f"expected a mapping with 'input:', got {_kind(settings)}")
        self.unknown(settings, ("input", "outputs") + CAMERA_KEYS, where)
        if "input" not in settings:
            self.fail(where, "missing key 'input' (a video file, camera index, /dev/videoN, rtsp:// URL, ...)")
        source = settings["input"]
        if isinstance(source, bool) or not isinstance(source, (str, int)) or source == "" or \
                (isinstance(source, int) and source < 0):
            self.fail(where + "key 'input': ", f"expected a path, URI or camera index >= 0, got {_kind(source)}")
        if isinstance(source, str):
            source = source.strip()
            if source.isdigit():
                source = int(source)
            elif "://" not in source and "!" not in source and not source.startswith("/dev/"):
                source = str(self.resolve(source))
        outputs = self.outputs(settings.get("outputs", []), where + "key 'outputs': ")
        own = self.options({k: v for k, v in settings.items() if k not in ("input", "outputs")}, where)
        captioning = {**base[0], **own[0]}
        source_options = {**base[1], **own[1]}
        return CameraConfig(name=name, input=source, outputs=tuple(outputs), captioning=captioning,
                            source_options=source_options)

    def outputs(self, value, where):
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(where, f"expected a list of output targets, got {_kind(value)}")
        targets = []
        for target in value:
            if not isinstance(target, str) or not target.strip():
                self.fail(where, f"expected output targets as strings (events.jsonl, http://@:8080, ...), "
                                 f"got {_kind(target)}")
            target = target.strip()
            targets.append(target if "://" in target else str(self.resolve(target)))
        return targets

    def options(self, mapping, where):
        """(captioning options, source options) of the camera keys in ``mapping``."""
        captioning, source = {}, {}
        for key, value in mapping.items():
            at = f"{where}key {key!r}: "
            if key in _CAPTIONING_KEYS:
                captioning[_CAPTIONING_KEYS[key]] = self.captioning_value(key, value, at)
            else:
                source[_SOURCE_KEYS[key]] = self.source_value(key, value, at)
        return captioning, source

    def captioning_value(self, key, value, at):
        if key == "template":
            from .captioner import CaptionTemplate

            if not isinstance(value, str):
                self.fail(at, f"expected a template name or a text with [VERB]/[NOUN]/[MASK] slots, got "
                              f"{_kind(value)}")
            try:
                CaptionTemplate.parse(value)
            except InvalidInputError as exc:
                self.fail(at, str(exc))
            return value
        if key in ("verbs", "nouns"):
            return self.words(value, at)
        if key == "min-confidence":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                self.fail(at, f"expected a number in [0, 1], got {_kind(value)}")
            return float(value)
        minimum = 1 if key == "stable" else 0
        return self.integer(value, minimum, at)

    def source_value(self, key, value, at):
        if key == "live":
            if not isinstance(value, bool):
                self.fail(at, f"expected true or false, got {_kind(value)}")
            return value
        if key == "input-loop":
            return self.integer(value, -1, at, hint=" (-1: forever, 0: no loop, N: N plays)")
        if key == "input-rate":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                self.fail(at, f"expected a positive number of frames per second, got {_kind(value)}")
            return float(value)
        return self.integer(value, 0, at, hint=" (milliseconds)")

    def integer(self, value, minimum, at, hint=""):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(at, f"expected an integer >= {minimum}{hint}, got {_kind(value)}")
        return value

    def words(self, value, at):
        """A list of words, or a string: a word-list file (one per line, '#' comments) or comma-separated words."""
        if isinstance(value, list):
            if not value or not all(isinstance(w, str) and w.strip() for w in value):
                self.fail(at, f"expected a non-empty list of words, got {value!r}")
            return [w.strip() for w in value]
        if not isinstance(value, str) or not value.strip():
            self.fail(at, f"expected a list of words, a word-list file or comma-separated words, got "
                          f"{_kind(value)}")
        candidate = self.resolve(value.strip())
        if candidate.is_file():
            try:
                lines = candidate.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(at, f"cannot read the word list {candidate}: {exc}")
            words = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not words:
                self.fail(at, f"the word list {candidate} has no words")
            return words
        if "," not in value and ("/" in value or value.strip().endswith(".txt")):
            self.fail(at, f"the word-list file {candidate} does not exist (a list of words is [a, b] or 'a, b')")
        return [w.strip() for w in value.split(",") if w.strip()]

    def resolve(self, text):
        return Path(os.path.normpath(self.folder / Path(text).expanduser()))

    def no_shared_files(self, shared, cameras):
        """Two outputs writing the same file (or serving the same URI) would clobber each other."""
        seen = {}
        owners = [("outputs", shared)] + [(f"camera {c.name!r}", c.outputs) for c in cameras]
        for owner, targets in owners:
            for target in targets:
                key = target if "://" in target else os.path.realpath(target)
                if key in seen:
                    first = seen[key]
                    also = "twice in its outputs" if first == owner else f"in the outputs of {first} and {owner}"
                    self.fail("", f"output {target!r} appears {also}: two outputs would write the same "
                                  f"file (an output in the top-level 'outputs:' already serves every camera)")
                seen[key] = owner


def _kind(value):
    """A value for an error message: its repr, and its YAML type when that is the problem."""
    names = {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing (null)"}
    kind = names.get(type(value))
    if kind is not None:
        return kind if not isinstance(value, bool) else f"{kind} ({value!r})"
    return f"{value!r} ({type(value).__name__})"
