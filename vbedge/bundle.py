"""Bundles: the unit of deployment, one verified folder per model set.

A bundle folder holds ``manifest.json``, the ONNX models (fp32, fp16, int8 variants), the
codebook and the vocabulary. The manifest lists every file with its sha256 and size, the models'
inputs and outputs, the precisions present, the vocabulary layout, the codebook shape and hash,
the preprocessing constants and the versions of the tools that made it. The format is written
down in docs/bundle.md.

:meth:`Bundle.load` verifies all of it before anything runs. TensorRT engines are not part of
the manifest: they are built on the target and cached in ``<bundle>/engines/``.
"""

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path

from .errors import FormatError, InvalidInputError
from .jsonfile import read_json_object

BUNDLE_FORMAT = "vbedge.bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINE_DIR_NAME = "engines"
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_NAMES = ("s3d", "videobert")
_HASH_BLOCK = 1 << 20


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

    def __init__(self, root, manifest):
        self.root = Path(root)
        self.manifest = manifest
        self._codebook = None
        self._vocab = None

    @classmethod
    def load(cls, path, verify_hashes=True):
        """Open and verify the bundle at ``path``.

        Raises FileNotFoundError for a missing folder or file, FormatError for a manifest of a
        newer format, a file name pointing outside the folder, a size or sha256 mismatch, or a
        codebook that does not match the vocabulary or the VideoBERT model. ``verify_hashes=False``
        skips only the sha256 of the files (sizes and everything else are still checked).
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"bundle folder not found: {root}")
        root = root.resolve()
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{root} is not a bundle: {MANIFEST_NAME} is missing")
        manifest = read_json_object(manifest_path)
        _check_manifest_header(manifest, manifest_path)
        bundle = cls(root, manifest)
        bundle._verify_files(verify_hashes)
        bundle._verify_consistency()
        return bundle

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
