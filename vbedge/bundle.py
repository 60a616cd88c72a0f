"""Bundles: the unit of deployment, one verified folder per model set.

A bundle folder holds ``manifest.json``, the ONNX models (fp32, fp16, int8 variants), the
codebook and the vocabulary. The manifest lists every file with its sha256 and size, the models'
inputs and outputs, the precisions present, the vocabulary layout, the codebook shape and hash,
the preprocessing constants and the versions of the tools that made it. The format is written
down in docs/bundle.md.

:meth:`Bundle.load` verifies all of it before anything runs. TensorRT engines are not part of
the manifest: they are built on the target and cached in ``<bundle>/engines/``.

Hashes catch corruption, not an attacker: whoever can write the folder can rewrite the manifest
too. So a bundle can be signed (:func:`sign_bundle`, ``vbedge sign``; the format is in
:mod:`vbedge.signing`), and ``Bundle.load(path, trusted_keys=...)`` (or ``VBEDGE_TRUSTED_KEYS``)
refuses a bundle that is not signed by one of the trusted keys. The trust model is written down
in docs/bundle.md.
"""

import datetime
import hashlib
import json
import logging
import os
import platform
from pathlib import Path

from .errors import FormatError, InvalidInputError, SignatureError
from .jsonfile import read_json_object
from .onnx_external import external_data_references
from .signing import (SIGNATURE_NAME, SignatureInfo, load_private_key, resolve_trusted_keys, sign_manifest_bytes,
                      verify_manifest_bytes, write_signature)

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "vbedge.bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINE_DIR_NAME = "engines"
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_NAMES = ("s3d", "videobert")
_HASH_BLOCK = 1 << 20
# A manifest is tens of kilobytes; a bigger one is not a manifest (and is not read into memory).
_MAX_MANIFEST_BYTES = 64 << 20


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_member(root, name):
    """Resolve ``name`` inside ``root``; refuse anything that could point outside the folder."""
    if not isinstance(name, str) or not name:
        raise FormatError(f"bundle file names must be non-empty strings, got {name!r}")
    pure = Path(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or name.startswith("~"):
        raise FormatError(f"bundle file name {name!r} points outside the bundle folder")
    resolved = (root / pure).resolve()
    if resolved != root and root not in resolved.parents:
        raise FormatError(f"bundle file {name!r} resolves outside the bundle folder (symbolic link?)")
    return resolved


def created_by():
    """Versions of the tools present while a bundle is written (recorded in its manifest)."""
    import importlib.metadata

    from . import __version__

    versions = {"vbedge": __version__, "python": platform.python_version()}
    for package in ("numpy", "torch", "torchvision", "transformers", "onnx", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(folder, models, codebook_file, vocabulary, preprocessing, extra=None):
    """Hash every file the bundle refers to and write ``manifest.json``; return the manifest dict.

    ``models``: {"s3d": {"onnx": {"fp32": "s3d.onnx", ...}, "inputs": [...], "outputs": [...],
    "metadata": "s3d.json"}, "videobert": {...}}; ``codebook_file``: name of the codebook .npz in
    ``folder``; ``vocabulary``: {"vocab_file": ..., "layout_file": ...}; ``preprocessing``: the
    preprocessing spec dict. Every name is relative to ``folder``.
    """
    from .codebook import HierarchicalCodebook
    from .vocab import VideoBertVocab

    root = Path(folder).resolve()
    codebook = HierarchicalCodebook.load(_safe_member(root, codebook_file))
    vocab = VideoBertVocab.load(root) if vocabulary.get("layout_file") else None
    files = []
    for spec in models.values():
        files += list(spec["onnx"].values())
        if spec.get("metadata"):
            files.append(spec["metadata"])
        files += spec.get("extra_files", [])
    files += [codebook_file, vocabulary["vocab_file"]]
    if vocabulary.get("layout_file"):
        files.append(vocabulary["layout_file"])
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "created_by": created_by(),
        "files": {},
        "models": models,
        "codebook": {
            "file": codebook_file,
            "levels": codebook.levels,
            "branching": codebook.branching,
            "dim": codebook.dim,
            "num_leaves": codebook.num_leaves,
            "sha256": codebook.sha256,
        },
        "vocabulary": dict(vocabulary, layout=vocab.layout() if vocab is not None else None),
        "preprocessing": preprocessing,
    }
    if extra:
        manifest.update(extra)
    for name in sorted(set(files)):
        path = _safe_member(root, name)
        if not path.is_file():
            raise FileNotFoundError(f"bundle file {name!r} listed for the manifest does not exist in {root}")
        manifest["files"][name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


class Bundle:
    """A verified bundle folder. Create with :meth:`load`."""

    def __init__(self, root, manifest, manifest_sha256=None, signature=None):
        self.root = Path(root)
        self.manifest = manifest
        #: sha256 hex of the manifest.json bytes this bundle was loaded from (engines record it).
        self.manifest_sha256 = manifest_sha256
        #: :class:`vbedge.signing.SignatureInfo` of the verified signature, or None (unauthenticated).
        self.signature = signature
        self._codebook = None
        self._vocab = None

    @classmethod
    def load(cls, path, verify_hashes=True, trusted_keys=None):
        """Open and verify the bundle at ``path``.

        Raises FileNotFoundError for a missing folder or file, FormatError for a manifest of a
        newer format, a file name pointing outside the folder, a size or sha256 mismatch, an ONNX
        file whose external data is not a file the manifest lists, or a codebook that does not
        match the vocabulary or the VideoBERT model. ``verify_hashes=False`` skips only the
        sha256 of the files (sizes and everything else are still checked).

        ``trusted_keys``: public keys (PEM files, folders of them, PEM bytes or key objects; see
        :func:`vbedge.signing.resolve_trusted_keys`). When given, or configured with the
        ``VBEDGE_TRUSTED_KEYS`` environment variable, the bundle must carry a signature by one of
        them over its manifest (SignatureError otherwise), checked before the manifest is even
        parsed. Without keys the bundle loads as before, with a warning that it is
        unauthenticated; ``trusted_keys=False`` skips the check and the warning whatever the
        environment says (for tools on the publisher's side).
        """
        keys = resolve_trusted_keys(trusted_keys)
        if keys and not verify_hashes:
            raise InvalidInputError(
                "trusted_keys with verify_hashes=False would authenticate the manifest but not the files it "
                "lists; verify hashes when checking signatures"
            )
        root, data = _read_manifest_bytes(path)
        signature = None
        if keys:
            signature = verify_manifest_bytes(data, root / SIGNATURE_NAME, keys)
        elif trusted_keys is None:
            log.warning("bundle %s is unauthenticated: no trusted keys given (trusted_keys=, --trusted-key or "
                        "VBEDGE_TRUSTED_KEYS), so nothing shows who made it", root)
        return cls._from_manifest_bytes(root, data, verify_hashes, signature)

    @classmethod
    def _from_manifest_bytes(cls, root, data, verify_hashes, signature):
        manifest_path = root / MANIFEST_NAME
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"{str(manifest_path)!r} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise FormatError(f"{str(manifest_path)!r} must hold a JSON object, got {type(manifest).__name__}")
        _check_manifest_header(manifest, manifest_path)
        bundle = cls(root, manifest, hashlib.sha256(data).hexdigest(), signature)
        bundle._verify_files(verify_hashes)
        bundle._verify_external_data()
        bundle._verify_consistency()
        return bundle

    def require_signed_by(self, trusted_keys):
        """Raise SignatureError unless this bundle was loaded with a signature by one of ``trusted_keys``.

        For code handed an already loaded :class:`Bundle` (e.g. :class:`vbedge.Pipeline`).
        """
        keys = resolve_trusted_keys(trusted_keys)
        if not keys:
            return
        if self.signature is None:
            raise SignatureError(f"bundle {self.root} was loaded without a signature check; load it with trusted_keys")
        if self.signature.key_id not in {k.key_id for k in keys}:
            raise SignatureError(
                f"bundle {self.root} is signed by key {self.signature.key_id[:16]}, which is not among the trusted keys"
            )

    # ------------------------------------------------------------------ verification
    def _verify_files(self, verify_hashes):
        files = self.manifest["files"]
        if not isinstance(files, dict) or not files:
            raise FormatError("bundle manifest lists no files")
        for name, entry in files.items():
            path = _safe_member(self.root, name)
            if not path.is_file():
                raise FileNotFoundError(f"bundle file {name!r} listed in the manifest is missing from {self.root}")
            size = path.stat().st_size
            if size != entry.get("size"):
                raise FormatError(f"bundle file {name!r} has {size} bytes, the manifest says {entry.get('size')}")
            if verify_hashes and sha256_file(path) != entry.get("sha256"):
                raise FormatError(f"bundle file {name!r} does not match its sha256 in the manifest (modified or corrupt)")
        for name in self._referenced_files():
            if name not in files:
                raise FormatError(f"bundle manifest refers to {name!r} but does not list its hash")

    def _verify_external_data(self):
        """Refuse ONNX files whose external data is not a file the manifest lists (and so hashed)."""
        files = self.manifest["files"]
        onnx_names = {name for name in files if name.lower().endswith(".onnx")}
        for spec in self.manifest["models"].values():
            onnx_names.update(spec["onnx"].values())
        listed = {_safe_member(self.root, name): name for name in files}
        for name in sorted(onnx_names):
            path = _safe_member(self.root, name)
            for ref in external_data_references(path):
                _check_external_reference(self.root, name, path, ref, listed, files)

    def _referenced_files(self):
        names = [self.manifest["codebook"]["file"], self.manifest["vocabulary"]["vocab_file"]]
        if self.manifest["vocabulary"].get("layout_file"):
            names.append(self.manifest["vocabulary"]["layout_file"])
        for spec in self.manifest["models"].values():
            names += list(spec["onnx"].values())
            if spec.get("metadata"):
                names.append(spec["metadata"])
        return names

    def _verify_consistency(self):
        codebook = self.codebook
        expected = self.manifest["codebook"]
        if codebook.sha256 != expected.get("sha256"):
            raise FormatError("bundle codebook does not match the codebook hash in the manifest")
        vocab = self.vocab
        vocab.check_matches_codebook(codebook)
        videobert = self.manifest["models"].get("videobert")
        if videobert and videobert.get("codebook_sha256") not in (None, codebook.sha256):
            raise FormatError("bundle VideoBERT was trained for another codebook (codebook sha256 differs)")
        if videobert and videobert.get("vocab_size") not in (None, vocab.size):
            raise FormatError(
                f"bundle VideoBERT expects a vocabulary of {videobert['vocab_size']} tokens, the bundle's has {vocab.size}"
            )
        self.preprocess_spec  # a spec this vbedge cannot apply fails at load, not mid-stream
        s3d = self.manifest["models"].get("s3d")
        if s3d and s3d.get("feature_dim") not in (None, codebook.dim):
            raise FormatError(f"bundle S3D makes {s3d['feature_dim']}-d features but the codebook is {codebook.dim}-d")

    # ------------------------------------------------------------------ access
    @property
    def codebook(self):
        """The bundle's :class:`~vbedge.HierarchicalCodebook` (loaded on first use)."""
        if self._codebook is None:
            from .codebook import HierarchicalCodebook

            self._codebook = HierarchicalCodebook.load(_safe_member(self.root, self.manifest["codebook"]["file"]))
        return self._codebook

    @property
    def vocab(self):
        """The bundle's :class:`~vbedge.VideoBertVocab` (loaded on first use)."""
        if self._vocab is None:
            from .vocab import VideoBertVocab

            self._vocab = VideoBertVocab.load(self.root)
        return self._vocab

    @property
    def preprocessing(self):
        """Preprocessing constants (dict) the S3D model was exported with."""
        return self.manifest["preprocessing"]

    @property
    def preprocess_spec(self):
        """The :class:`~vbedge.preprocess.PreprocessSpec` of :attr:`preprocessing`.

        A manifest written before the resize rule was recorded (no ``resize`` field) reads as
        the rule those bundles used, ``"short_side"``.
        """
        from .preprocess import PreprocessSpec

        try:
            return PreprocessSpec.from_dict(self.manifest["preprocessing"])
        except FormatError as exc:
            raise FormatError(f"{self.root / MANIFEST_NAME}: {exc}") from exc

    @property
    def engine_dir(self):
        """Folder where TensorRT engines built for this bundle are cached."""
        return self.root / ENGINE_DIR_NAME

    def models(self):
        """Names of the models in the bundle."""
        return sorted(self.manifest["models"])

    def precisions(self, model):
        """Precisions available for ``model``, in PRECISIONS order."""
        onnx = self._model(model)["onnx"]
        return [p for p in PRECISIONS if p in onnx]

    def onnx_path(self, model, precision="fp32"):
        """Path of ``model``'s ONNX file at ``precision``; InvalidInputError names what exists."""
        onnx = self._model(model)["onnx"]
        if precision not in onnx:
            raise InvalidInputError(f"bundle has no {precision} {model} model; it has {self.precisions(model)}")
        return _safe_member(self.root, onnx[precision])

    def file_path(self, name):
        """Path of a file the manifest lists (hash-verified at load); InvalidInputError otherwise."""
        if name not in self.manifest["files"]:
            raise InvalidInputError(f"bundle file {name!r} is not listed in the manifest")
        return _safe_member(self.root, name)

    def onnx_sha256(self, model, precision="fp32"):
        """sha256 of the ONNX file as recorded (and verified) in the manifest."""
        return self.manifest["files"][self._model(model)["onnx"][precision]]["sha256"]

    def model_metadata(self, model):
        """The model's metadata JSON written at export (dict), or {} if it has none."""
        spec = self._model(model)
        if not spec.get("metadata"):
            return {}
        return read_json_object(_safe_member(self.root, spec["metadata"]))

    def _model(self, model):
        models = self.manifest["models"]
        if model not in models:
            raise InvalidInputError(f"bundle has no model {model!r}; it has {sorted(models)}")
        return models[model]

    def __repr__(self):
        parts = ", ".join(f"{m}[{'/'.join(self.precisions(m))}]" for m in self.models())
        return f"Bundle({str(self.root)!r}: {parts})"


def _read_manifest_bytes(path):
    """(resolved root, bytes of its manifest.json): what a signature covers and the manifest is parsed from."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder not found: {root}")
    root = root.resolve()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{root} is not a bundle: {MANIFEST_NAME} is missing")
    with open(manifest_path, "rb") as handle:
        data = handle.read(_MAX_MANIFEST_BYTES + 1)
    if len(data) > _MAX_MANIFEST_BYTES:
        raise FormatError(f"{manifest_path} is larger than {_MAX_MANIFEST_BYTES} bytes: not a bundle manifest")
    return root, data


def _check_external_reference(root, onnx_name, onnx_path, ref, listed, files):
    """One external-data reference must name a listed file inside the bundle, within its size."""
    tensor = f"tensor {ref.tensor!r}" if ref.tensor else "a tensor"
    where = f"bundle ONNX file {onnx_name!r}: {tensor}"
    location = ref.location
    if location is None:
        raise FormatError(f"{where} is marked as external data but names no file (no 'location')")
    pure = Path(location)
    if (not location or pure.is_absolute() or ".." in pure.parts or "\\" in location or "\0" in location
            or location.startswith("~")):
        raise FormatError(f"{where} keeps its data in {location!r}, which points outside the bundle folder")
    resolved = (onnx_path.parent / pure).resolve()
    if resolved != root and root not in resolved.parents:
        raise FormatError(f"{where} keeps its data in {location!r}, which resolves outside the bundle folder")
    member = listed.get(resolved)
    if member is None:
        raise FormatError(
            f"{where} keeps its data in {location!r}, a file the manifest does not list, so its hash was never "
            "checked; list it in the manifest (write_manifest extra_files)"
        )
    size = files[member].get("size")
    numbers = {}
    for field in ("offset", "length"):
        text = getattr(ref, field)
        if text is None:
            continue
        if not text.isdigit():
            raise FormatError(f"{where}: external data {field} {text!r} is not a non-negative integer")
        numbers[field] = int(text)
    end = numbers.get("offset", 0) + numbers.get("length", 0)
    if isinstance(size, int) and end > size:
        raise FormatError(
            f"{where}: external data in {member!r} ends at byte {end}, past the end of the file ({size} bytes)"
        )


def sign_bundle(path, private_key, password=None):
    """Sign the bundle at ``path``: verify it, then write ``manifest.sig`` beside its manifest.

    ``private_key``: a PEM file path (see ``vbedge keys new``) or a cryptography Ed25519 private
    key; ``password``: bytes for an encrypted PEM. The bundle is fully verified (every hash)
    from the very manifest bytes that get signed, so a tampered bundle is never signed. Returns
    the :class:`vbedge.signing.SignatureInfo`.
    """
    if isinstance(private_key, (str, os.PathLike)):
        source = str(private_key)
        private_key = load_private_key(private_key, password=password)
    else:
        source = "<key object>"
    root, data = _read_manifest_bytes(path)
    Bundle._from_manifest_bytes(root, data, True, None)
    signature = sign_manifest_bytes(data, private_key)
    write_signature(root / SIGNATURE_NAME, signature)
    log.info("bundle %s signed by key %s", root, signature["key_id"][:16])
    return SignatureInfo(signature["key_id"], signature["manifest_sha256"], source)


def _check_manifest_header(manifest, path):
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise FormatError(f"{path} is not a vbedge bundle manifest (format field missing or wrong)")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise FormatError(f"{path}: format_version must be an integer, got {version!r}")
    if version > BUNDLE_FORMAT_VERSION:
        raise FormatError(
            f"{path} has bundle format version {version}, made by a newer vbedge; this one reads up to "
            f"{BUNDLE_FORMAT_VERSION} (upgrade vbedge)"
        )
    for key in ("files", "models", "codebook", "vocabulary", "preprocessing"):
        if key not in manifest:
            raise FormatError(f"{path} lacks the {key!r} section")
    for name, spec in manifest["models"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("onnx"), dict) or not spec["onnx"]:
            raise FormatError(f"{path}: model {name!r} lists no ONNX files")
        unknown = set(spec["onnx"]) - set(PRECISIONS)
        if unknown:
            raise FormatError(f"{path}: model {name!r} has unknown precisions {sorted(unknown)}")
