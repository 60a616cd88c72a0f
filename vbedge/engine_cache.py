"""Cache of TensorRT engines beside a bundle: keys, file names, the engine file header, rebuild decisions.

Pure Python on purpose (no TensorRT import): everything that decides *whether* an engine may be
loaded is testable on a machine without a GPU, and the TensorRT side only ever sees engine bytes
that passed these checks.

An engine is only valid for the exact TensorRT version, GPU model / compute capability and build
settings that produced it; TensorRT may crash or silently misbehave when fed a foreign engine. So:

* the :class:`EngineKey` holds every input that changes the engine;
* the file name is derived from the key (readable prefix + short hash of the full key), so two
  keys never share a file;
* each file starts with a fixed header and JSON metadata carrying the full key and the sha256 of
  the engine bytes; on load every field is compared and the hash re-computed, and anything that
  differs means "rebuild", with a log line saying what differed. A mismatched engine is never
  handed to TensorRT.
* a cache bound to a bundle (``EngineCache(dir, manifest_sha256=bundle.manifest_sha256)``) records
  the sha256 of the bundle's (signed) manifest in each engine and loads only engines that carry
  it, so an engine of another bundle, an older version of it, or one planted without it is
  rebuilt; and every engine must sit where vbedge wrote it (a regular file in the cache folder
  under the name it recorded, not a symbolic link), owned by this user or root,
  with write permissions no looser than the folder's, in a folder that is not world-writable
  (:func:`check_engine_placement`). The trust model is in docs/bundle.md.

File layout (all integers little endian)::

    b"VBEDGE-TRT\\0"   11 bytes magic
    uint16            header format version (HEADER_VERSION)
    uint32            length N of the JSON metadata
    N bytes           UTF-8 JSON: {"key": {...}, "created": ..., "vbedge_version": ...,
                                   "engine_sha256": ..., "engine_size": ...,
                                   "file_name": ..., "manifest_sha256": ... (bound caches)}
    rest              the serialized TensorRT engine
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FormatError, InvalidInputError

log = logging.getLogger("vbedge")

MAGIC = b"VBEDGE-TRT\0"
HEADER_VERSION = 1
_FIXED = struct.Struct("<HI")  # format version, metadata length
HEADER_SIZE = len(MAGIC) + _FIXED.size
# Metadata is a few hundred bytes; a bigger length field means a corrupt or foreign file, and the
# bound keeps us from allocating gigabytes on garbage.
MAX_METADATA_BYTES = 1 << 20
ENGINE_SUFFIX = ".engine"

PRECISIONS = ("fp32", "fp16", "int8")


def _canonical_profiles(profiles):
    """Profiles as a hashable, JSON-stable tuple: ((name, (min, opt, max)), ...) per profile."""
    if profiles is None:
        return ()
    if isinstance(profiles, dict):
        profiles = [profiles]
    out = []
    for profile in profiles:
        if isinstance(profile, dict):
            items = profile.items()
        else:  # already canonical (from JSON: list of [name, [min, opt, max]])
            items = profile
        entry = []
        for name, shapes in sorted(items, key=lambda item: item[0]):
            entry.append((str(name), tuple(tuple(int(d) for d in shape) for shape in shapes)))
        out.append(tuple(entry))
    return tuple(out)


def _canonical_options(options):
    if options is None:
        return ()
    if isinstance(options, dict):
        options = options.items()
    return tuple(sorted((str(k), v if not isinstance(v, list) else tuple(v)) for k, v in options))


@dataclass(frozen=True)
class EngineKey:
    """Everything that changes a TensorRT engine; two builds with equal keys are interchangeable.

    Attributes:
        model: readable model name (used in the file name, e.g. 's3d').
        tensorrt_version: ``tensorrt.__version__`` of the builder, e.g. '10.3.0'.
        gpu_name: device name, e.g. 'NVIDIA H100 80GB HBM3' or 'Orin'.
        compute_capability: 'major.minor', e.g. '8.7'.
        precision: 'fp32', 'fp16' or 'int8'.
        onnx_sha256: hex sha256 of the ONNX file the engine was built from.
        profiles: optimisation profiles, ((input, (min, opt, max)), ...) per profile.
        dla_core: DLA core index, or None for the GPU.
        strongly_typed: whether the network was created strongly typed.
        builder_options: other builder settings that change the engine (workspace, flags),
            as sorted (name, value) pairs.
    """

    model: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    onnx_sha256: str
    profiles: tuple = ()
    dla_core: int | None = None
    strongly_typed: bool = True
    builder_options: tuple = field(default=())

    def __post_init__(self):
        # Normalise here so keys made from dicts, lists or JSON compare and hash equal.
        object.__setattr__(self, "profiles", _canonical_profiles(self.profiles))
        object.__setattr__(self, "builder_options", _canonical_options(self.builder_options))
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"engine precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dla_core is not None and (not isinstance(self.dla_core, int) or self.dla_core < 0):
            raise InvalidInputError(f"dla_core must be None or a non-negative int, got {self.dla_core!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.onnx_sha256)):
            raise InvalidInputError(f"onnx_sha256 must be 64 lowercase hex digits, got {self.onnx_sha256!r}")

    def to_dict(self):
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`; raises FormatError when a field is missing or unexpected."""
        if not isinstance(data, dict):
            raise FormatError(f"engine key must be a JSON object, got {type(data).__name__}")
        names = set(cls.__dataclass_fields__)
        missing, unexpected = sorted(names - set(data)), sorted(set(data) - names)
        if missing or unexpected:
            raise FormatError(f"engine key fields differ: missing {missing}, unexpected {unexpected}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"engine key is invalid: {exc}") from exc

    def digest(self):
        """sha256 hex of the canonical JSON of the full key."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def file_name(self):
        """Readable, unique file name: ``<model>-<precision>-sm<cc>[-dla<n>]-trt<version>-<hash12>.engine``."""
        parts = [
            _slug(self.model),
            self.precision,
            "sm" + _slug(self.compute_capability.replace(".", "")),
        ]
        if self.dla_core is not None:
            parts.append(f"dla{self.dla_core}")
        parts.append("trt" + _slug(self.tensorrt_version))
        parts.append(self.digest()[:12])
        return "-".join(parts) + ENGINE_SUFFIX


def _slug(text):
    """File-name-safe form of a free string (GPU names have spaces, versions have '+')."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_.")
    return slug or "x"


def describe_key_difference(expected: EngineKey, found: EngineKey):
    """One readable line per field that differs, e.g. "tensorrt_version: file '10.0.1', wanted '10.3.0'"."""
    want, have = expected.to_dict(), found.to_dict()
    return [f"{name}: file {have[name]!r}, wanted {want[name]!r}" for name in want if want[name] != have[name]]


def file_sha256(path, chunk=1 << 20):
    """sha256 hex of a file, read in chunks (ONNX files with weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def atomic_write_bytes(path, chunks):
    """Write ``chunks`` (bytes-likes) to ``path`` via a temporary file in the same folder + os.replace.

    A reader (or a crash) never sees half a file: either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Clean up the temporary file whatever went wrong, then let the error propagate.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def encode_engine_file(key: EngineKey, engine_bytes, created=None, vbedge_version=None, file_name=None,
                       manifest_sha256=None):
    """Header + metadata + engine, as one bytes object (what :func:`write_engine_file` stores).

    ``file_name`` (where the file is written) and ``manifest_sha256`` (the bundle manifest the
    engine was built for) are recorded when given.
    """
    if vbedge_version is None:
        from . import __version__ as vbedge_version
    engine_bytes = bytes(engine_bytes)
    if not engine_bytes:
        raise InvalidInputError("refusing to store an empty engine")
    metadata = {
        "key": key.to_dict(),
        "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vbedge_version": vbedge_version,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "engine_size": len(engine_bytes),
    }
    if file_name is not None:
        metadata["file_name"] = str(file_name)
    if manifest_sha256 is not None:
        metadata["manifest_sha256"] = str(manifest_sha256)
    meta = json.dumps(metadata, sort_keys=True).encode()
    return MAGIC + _FIXED.pack(HEADER_VERSION, len(meta)) + meta + engine_bytes


def write_engine_file(path, key: EngineKey, engine_bytes, manifest_sha256=None):
    """Store an engine atomically with its header (recording its file name); return the path."""
    path = Path(path)
    atomic_write_bytes(path, [encode_engine_file(key, engine_bytes, file_name=path.name,
                                                 manifest_sha256=manifest_sha256)])
    return path


def read_engine_header(path):
    """Read and check the header and metadata of an engine file; return (metadata, data_offset).

    Raises FormatError naming what is wrong (not a vbedge engine, newer header, bad JSON...).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
            raise FormatError(f"{path.name} is not a vbedge engine file (no {MAGIC!r} header)")
        version, meta_len = _FIXED.unpack(head[len(MAGIC):])
        if version != HEADER_VERSION:
            raise FormatError(
                f"{path.name} has engine header format {version}; this vbedge reads format {HEADER_VERSION}"
            )
        if meta_len == 0 or meta_len > MAX_METADATA_BYTES:
            raise FormatError(f"{path.name}: metadata length {meta_len} is out of range (corrupt header)")
        meta = handle.read(meta_len)
    if len(meta) != meta_len:
        raise FormatError(f"{path.name} is truncated inside its metadata ({len(meta)} of {meta_len} bytes)")
    try:
        metadata = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path.name}: engine metadata is not valid JSON ({exc})") from exc
    for name in ("key", "engine_sha256", "engine_size"):
        if not isinstance(metadata, dict) or name not in metadata:
            raise FormatError(f"{path.name}: engine metadata lacks {name!r}")
    return metadata, HEADER_SIZE + meta_len


def check_engine_placement(path, directory):
    """Raise FormatError unless ``path`` sits in ``directory`` the way vbedge writes engines there.

    A regular file (not a symbolic link) directly in ``directory``; file and folder owned by this
    process's user or root (nobody else could have written them); no group/world write permission
    the folder does not have too; and the folder itself not world-writable (anyone on the device
    could plant an engine there).
    """
    path, directory = Path(path), Path(directory)
    try:
        info = os.lstat(path)
        folder = os.stat(directory)
    except OSError as exc:
        raise FormatError(f"cannot inspect {path.name} ({exc})") from None
    if stat.S_ISLNK(info.st_mode):
        raise FormatError(f"{path.name} is a symbolic link; vbedge writes engines as regular files")
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(f"{path.name} is not a regular file")
    if path.resolve().parent != directory.resolve():
        raise FormatError(f"{path.name} does not sit in the engine cache folder {directory}")
    if folder.st_mode & stat.S_IWOTH:
        raise FormatError(f"engine cache folder {directory} is world-writable: anyone could plant an engine there")
    if hasattr(os, "geteuid"):
        allowed = (os.geteuid(), 0)
        if folder.st_uid not in allowed:
            raise FormatError(f"engine cache folder {directory} is owned by uid {folder.st_uid}, neither this user nor root")
        if info.st_uid not in allowed:
            raise FormatError(f"{path.name} is owned by uid {info.st_uid}, neither this user nor root")
    shared_write = stat.S_IWGRP
    shared_write |= stat.S_IWOTH  # not `a | b`: vermin reads that as a 3.10 union type
    looser = info.st_mode & shared_write & ~folder.st_mode
    if looser:
        raise FormatError(
            f"{path.name} has mode {stat.S_IMODE(info.st_mode):o}, writable by more users than its folder "
            f"(mode {stat.S_IMODE(folder.st_mode):o})"
        )


def read_engine_file(path, expected_key: EngineKey | None = None, expected_manifest_sha256=None):
    """Read an engine file; return (metadata, engine_bytes) only when everything checks out.

    Raises FormatError when the header is wrong, the file is truncated or has extra bytes, the
    engine bytes do not match their recorded sha256, (with ``expected_key``) the stored key
    differs (the message lists each differing field), the file is not under the name it
    recorded, or (with ``expected_manifest_sha256``) it was not built for that bundle manifest.
    """
    path = Path(path)
    metadata, offset = read_engine_header(path)
    found_key = EngineKey.from_dict(metadata["key"])
    if expected_key is not None and found_key != expected_key:
        # Checked before reading the (large) engine: a foreign engine is never even read.
        diffs = "; ".join(describe_key_difference(expected_key, found_key))
        raise FormatError(f"{path.name} was built for another configuration: {diffs}")
    # Engines of older vbedge versions lack file_name; a bundle-bound cache requires it.
    if metadata.get("file_name", path.name) != path.name or (expected_manifest_sha256 and "file_name" not in metadata):
        raise FormatError(f"{path.name} is not where vbedge wrote it (recorded name {metadata.get('file_name')!r})")
    if expected_manifest_sha256 is not None and metadata.get("manifest_sha256") != expected_manifest_sha256:
        found = metadata.get("manifest_sha256")
        raise FormatError(
            f"{path.name} was not built for this bundle: it records manifest "
            f"{str(found)[:16] + '...' if found else 'nothing'}, the bundle's manifest is "
            f"{expected_manifest_sha256[:16]}... (an engine from another bundle or version, or planted)"
        )
    with open(path, "rb") as handle:
        handle.seek(offset)
        engine = handle.read()
    size = int(metadata["engine_size"])
    if len(engine) != size:
        what = "truncated" if len(engine) < size else "longer than recorded"
        raise FormatError(f"{path.name} is {what}: engine has {len(engine)} bytes, header says {size}")
    digest = hashlib.sha256(engine).hexdigest()
    if digest != metadata["engine_sha256"]:
        raise FormatError(
            f"{path.name}: engine sha256 {digest[:16]}... does not match the recorded "
            f"{str(metadata['engine_sha256'])[:16]}... (corrupt or tampered)"
        )
    return metadata, engine


class EngineCache:
    """A folder of engine files (e.g. ``BUNDLE/engines/``) with load / store / build-if-needed.

    The cache never deletes engines for other keys: a bundle folder copied between devices may
    legitimately hold engines for several GPUs or TensorRT versions.
    """

    def __init__(self, directory, manifest_sha256=None):
        self.directory = Path(directory)
        #: sha256 of the bundle manifest this cache serves (engines must record it), or None.
        self.manifest_sha256 = manifest_sha256

    def path_for(self, key: EngineKey):
        """Where the engine for ``key`` lives (whether or not it exists)."""
        return self.directory / key.file_name()

    def timing_cache_path(self, tensorrt_version, gpu_name, compute_capability):
        """Timing-cache file for one TensorRT version on one GPU model (shared by all models)."""
        name = f"timing-trt{_slug(tensorrt_version)}-{_slug(gpu_name)}-sm{_slug(str(compute_capability).replace('.', ''))}.cache"
        return self.directory / name

    def load(self, key: EngineKey):
        """Engine bytes for ``key``, or None (with a log line saying why) when it must be (re)built."""
        path = self.path_for(key)
        if not path.is_file():
            self._explain_miss(key)
            return None
        try:
            check_engine_placement(path, self.directory)
            metadata, engine = read_engine_file(path, expected_key=key, expected_manifest_sha256=self.manifest_sha256)
        except FormatError as exc:
            log.warning("engine cache: not loading %s: %s; rebuilding", path, exc)
            return None
        except OSError as exc:
            log.warning("engine cache: cannot read %s (%s); rebuilding", path, exc)
            return None
        log.info("engine cache: loaded %s (built %s)", path.name, metadata.get("created", "?"))
        return engine

    def store(self, key: EngineKey, engine_bytes):
        """Write the engine for ``key`` atomically; return its path."""
        path = write_engine_file(self.path_for(key), key, engine_bytes, manifest_sha256=self.manifest_sha256)
        log.info("engine cache: stored %s (%d bytes)", path.name, len(engine_bytes))
        return path

    def get_or_build(self, key: EngineKey, build, rebuild=False):
        """Return (engine_bytes, path, built) for ``key``, calling ``build()`` when no valid engine is cached.

        ``build`` is a zero-argument callable returning serialized engine bytes (injected so the
        decision logic is testable without TensorRT). ``rebuild=True`` ignores the cache.
        """
        engine = None if rebuild else self.load(key)
        if engine is not None:
            return engine, self.path_for(key), False
        log.info("engine cache: building %s engine for %s (this can take minutes)", key.precision, key.model)
        engine = build()
        if engine is None or len(engine) == 0:
            raise FormatError(f"engine builder for {key.model} returned no engine")
        path = self.store(key, engine)
        return bytes(engine), path, True

    def _explain_miss(self, key):
        """Log why no engine matched: the closest other engine of this model and what differs from it."""
        best = None
        for other in sorted(self.directory.glob(f"{_slug(key.model)}-*{ENGINE_SUFFIX}")):
            try:
                metadata, _ = read_engine_header(other)
                other_key = EngineKey.from_dict(metadata["key"])
            except (FormatError, OSError):
                continue
            diffs = describe_key_difference(key, other_key)
            if best is None or len(diffs) < len(best[1]):
                best = (other.name, diffs)
        if best is None:
            log.info("engine cache: no engine for %s in %s", key.model, self.directory)
        else:
            log.warning(
                "engine cache: no engine matches this configuration; closest is %s, which differs in %s; building a new one",
                best[0], "; ".join(best[1]),
            )
