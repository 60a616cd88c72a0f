"""Cache of compiled OpenVINO models: keys, where the folder lives, and a verified file format.

The same rules as the TensorRT engine cache (vbedge/engine_cache.py): a compiled model is only
valid for the exact OpenVINO version, CPU, precision and ONNX file that produced it, so

* the :class:`CompiledModelKey` holds all of them (and the compile options that change the blob);
* the file name is derived from the key (readable prefix + short hash of the full key);
* each file starts with a header and JSON metadata carrying the full key and the sha256 of the
  blob; on load every field is compared and the hash re-computed. Anything that differs means
  "recompile", with a log line saying why. A blob that fails the checks is never handed to OpenVINO.

Why not OpenVINO's own ``CACHE_DIR``: its entries are named by a hash we do not control and
``Core.import_model`` accepts a blob with flipped bytes without complaint (checked with
openvino 2026.4: only truncated or foreign blobs are refused), so a corrupted entry would be
trusted. vbedge therefore stores ``CompiledModel.export_model()`` bytes in its own verified files.

Pure Python (no OpenVINO import), so the decisions are testable without OpenVINO.

File layout (integers little endian)::

    b"VBEDGE-OV\\0"   10 bytes magic
    uint16           header format version (HEADER_VERSION)
    uint32           length N of the JSON metadata
    N bytes          UTF-8 JSON: {"key": {...}, "created": ..., "blob_sha256": ..., "blob_size": ...}
    rest             the exported OpenVINO compiled model
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .engine_cache import atomic_write_bytes
from .errors import FormatError, InvalidInputError

log = logging.getLogger("vbedge")

MAGIC = b"VBEDGE-OV\0"
HEADER_VERSION = 1
_FIXED = struct.Struct("<HI")
HEADER_SIZE = len(MAGIC) + _FIXED.size
MAX_METADATA_BYTES = 1 << 20
SUFFIX = ".ovblob"
#: Environment variable naming the folder for compiled OpenVINO models (overrides the default).
CACHE_ENV = "VBEDGE_OPENVINO_CACHE"
#: Sub-folder of a bundle's engine folder used when the bundle is writable.
BUNDLE_SUBDIR = "openvino"


@dataclass(frozen=True)
class CompiledModelKey:
    """Everything that changes an OpenVINO compiled model; equal keys are interchangeable.

    Attributes:
        model: readable model name (used in the file name, e.g. 's3d').
        openvino_version: ``openvino.get_version()``, e.g. '2026.4.1-22982-...'.
        cpu: the CPU's model name and OpenVINO's optimisation capabilities for it.
        precision: 'fp32', 'bf16' or 'int8' (what vbedge asked for).
        onnx_sha256: hex sha256 of the ONNX file.
        options: the compile configuration (precision hint, threads, ...), sorted (name, value) pairs.
    """

    model: str
    openvino_version: str
    cpu: str
    precision: str
    onnx_sha256: str
    options: tuple = field(default=())

    def __post_init__(self):
        options = self.options.items() if isinstance(self.options, dict) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), str(v)) for k, v in options)))
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.onnx_sha256)):
            raise InvalidInputError(f"onnx_sha256 must be 64 lowercase hex digits, got {self.onnx_sha256!r}")

    def to_dict(self):
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`; FormatError when fields are missing or unexpected."""
        names = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != names:
            raise FormatError(f"compiled-model key must be a JSON object with fields {sorted(names)}")
        return cls(**data)

    def digest(self):
        """sha256 hex of the canonical JSON of the full key."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def file_name(self):
        """``<model>-<precision>-ov<version>-<hash12>.ovblob``."""
        version = re.sub(r"[^A-Za-z0-9_.]+", "_", self.openvino_version.split("-")[0]) or "x"
        model = re.sub(r"[^A-Za-z0-9_.]+", "_", self.model) or "x"
        return f"{model}-{self.precision}-ov{version}-{self.digest()[:12]}{SUFFIX}"


def default_cache_dir(bundle_engine_dir=None):
    """Folder for compiled OpenVINO models: ``$VBEDGE_OPENVINO_CACHE`` if set; else the bundle's
    ``engines/openvino`` when that can be written; else ``$XDG_CACHE_HOME/vbedge/openvino``
    (``~/.cache/vbedge/openvino``), so a read-only bundle (a mounted image, a package) still works.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    if bundle_engine_dir is not None:
        folder = Path(bundle_engine_dir) / BUNDLE_SUBDIR
        if _writable(folder):
            return folder
        log.info("openvino cache: %s is not writable; using the user cache folder", folder)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vbedge" / "openvino"


def _writable(folder):
    """Whether ``folder`` exists and is writable, or could be created under a writable parent."""
    folder = Path(folder)
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    # (two calls rather than W_OK | X_OK, which vermin mistakes for a 3.10 union type)
    return folder.is_dir() and os.access(folder, os.W_OK) and os.access(folder, os.X_OK)


def encode(key: CompiledModelKey, blob):
    """Header + metadata + blob as bytes."""
    blob = bytes(blob)
    if not blob:
        raise InvalidInputError("refusing to store an empty compiled model")
    meta = json.dumps({
        "key": key.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "blob_size": len(blob),
    }, sort_keys=True).encode()
    return MAGIC + _FIXED.pack(HEADER_VERSION, len(meta)) + meta + blob


def decode(data, expected_key: CompiledModelKey, name="blob"):
    """The blob inside ``data`` (bytes of a cache file) when every check passes; FormatError otherwise."""
    if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
        raise FormatError(f"{name} is not a vbedge OpenVINO cache file (no {MAGIC!r} header)")
    version, meta_len = _FIXED.unpack_from(data, len(MAGIC))
    if version != HEADER_VERSION:
        raise FormatError(f"{name} has header format {version}; this vbedge reads {HEADER_VERSION}")
    if meta_len == 0 or meta_len > MAX_METADATA_BYTES or HEADER_SIZE + meta_len > len(data):
        raise FormatError(f"{name}: metadata length {meta_len} is out of range (corrupt or truncated)")
    try:
        metadata = json.loads(data[HEADER_SIZE:HEADER_SIZE + meta_len].decode("utf-8"))
        found = CompiledModelKey.from_dict(metadata["key"])
        size, digest = int(metadata["blob_size"]), str(metadata["blob_sha256"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, InvalidInputError) as exc:
        raise FormatError(f"{name}: metadata is not valid ({exc})") from exc
    if found != expected_key:
        want, have = expected_key.to_dict(), found.to_dict()
        diffs = "; ".join(f"{k}: file {have[k]!r}, wanted {want[k]!r}" for k in want if want[k] != have[k])
        raise FormatError(f"{name} was compiled for another configuration: {diffs}")
    blob = data[HEADER_SIZE + meta_len:]
    if len(blob) != size:
        raise FormatError(f"{name} has {len(blob)} blob bytes, header says {size} (truncated or extended)")
    if hashlib.sha256(blob).hexdigest() != digest:
        raise FormatError(f"{name}: blob sha256 does not match the recorded one (corrupt or tampered)")
    return blob


class CompiledModelCache:
    """A folder of verified compiled-model files with load / store (never deletes other keys)."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def path_for(self, key: CompiledModelKey):
        """Where the compiled model for ``key`` lives (whether or not it exists)."""
        return self.directory / key.file_name()

    def load(self, key: CompiledModelKey):
        """The verified blob for ``key``, or None (with a log line saying why) when it must be compiled."""
        path = self.path_for(key)
        if not path.is_file():
            log.info("openvino cache: no compiled %s (%s) in %s", key.model, key.precision, self.directory)
            return None
        try:
            return decode(path.read_bytes(), key, name=path.name)
        except FormatError as exc:
            log.warning("openvino cache: not loading %s: %s; recompiling", path, exc)
        except OSError as exc:
            log.warning("openvino cache: cannot read %s (%s); recompiling", path, exc)
        return None

    def store(self, key: CompiledModelKey, blob):
        """Write the blob atomically; return the path, or None (logged) when the folder cannot be written."""
        path = self.path_for(key)
        try:
            atomic_write_bytes(path, [encode(key, blob)])
        except OSError as exc:
            log.warning("openvino cache: cannot write %s (%s); the model will be compiled again next time", path, exc)
            return None
        log.info("openvino cache: stored %s (%d bytes)", path.name, len(blob))
        return path
