"""Videos -> S3D features, one 1024-d row per clip, for fitting a codebook (``vbedge features``).

Clips are cut exactly as :meth:`vbedge.pipeline.Pipeline.tokenize_video` cuts them (the same
:func:`vbedge.sources.open_source`, :class:`vbedge.clips.ClipAssembler` and
:func:`vbedge.preprocess.make_clip`, with the model's preprocessing spec: 20 fps, 30-frame clips by
default), so the rows of a features folder and the lines of ``vbedge tokenize`` for the same
videos have the same ``start`` and ``end``. S3D runs through the runtime's backends
(:mod:`vbedge.backends`: ONNX Runtime by default), on batches of clips.

The output is a folder (layout in docs/training.md, "Features")::

    features.npy    float32 (N, 1024): row i is the feature of clip i
    index.jsonl     N lines {"video", "start", "end", "row", "clip", "padded"}, in row order
    features.json   what made it: preprocessing spec, model, backend, per-video clip counts
                    and errors

Files are written under ``.partial`` names and renamed when every video was read, so a folder
with ``features.npy`` is complete. A damaged video does not stop the run: its clips before the
damage are kept (as ``vbedge tokenize`` keeps them), it is listed in :attr:`FeatureReport.failed`
with the reason, and the other videos are all processed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FormatError, InvalidInputError, VbedgeError

__all__ = ["FEATURES_FILE", "INDEX_FILE", "METADATA_FILE", "FeatureModel", "FeatureReport",
           "VideoFeatures", "extract_features", "open_feature_model", "read_features",
           "load_feature_matrix"]

log = logging.getLogger("vbedge.features")

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.jsonl"
METADATA_FILE = "features.json"
FORMAT = "vbedge.features"
FORMAT_VERSION = 1
_PARTIAL = ".partial"
# Fixed size of the .npy header written before the row count is known (rewritten at the end).
_NPY_HEADER_BYTES = 128


# -- the model -----------------------------------------------------------------------------------


@dataclass
class FeatureModel:
    """An S3D backend with the preprocessing spec its clips need.

    Attributes:
        backend: a :class:`vbedge.backends.base.Backend` taking ``clip`` (N, 3, T, H, W) and
            giving ``feature`` (N, D).
        spec: the :class:`~vbedge.preprocess.PreprocessSpec` clips are made with.
        description: where the model came from and what runs it (recorded in features.json).
        spec_source: where the spec came from (bundle manifest, s3d.json, the weights' recipe).
    """

    backend: object
    spec: object
    description: str
    spec_source: str
    _cleanup: list = field(default_factory=list, repr=False)

    def close(self):
        """Release the backend and any temporary export; idempotent."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        while self._cleanup:
            shutil.rmtree(self._cleanup.pop(), ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def _spec_from_export_metadata(onnx_path):
    """The spec in the ``s3d.json`` that ``vbedge export s3d`` writes beside ``s3d.onnx``."""
    from .jsonfile import read_json_object
    from .preprocess import PreprocessSpec

    meta_path = Path(onnx_path).with_name("s3d.json")
    if not meta_path.is_file():
        return None, None
    meta = read_json_object(meta_path)
    if "preprocess" not in meta:
        raise FormatError(f"{meta_path} has no 'preprocess' section (not an S3D export's metadata)")
    try:
        return PreprocessSpec.from_dict(meta["preprocess"]), str(meta_path)
    except FormatError as exc:
        raise FormatError(f"{meta_path}: {exc}") from exc


def open_feature_model(*, bundle=None, s3d_onnx=None, s3d_weights=None, backend="auto",
                       precision="fp32", spec=None, backend_options=None,
                       progress=True, trusted_keys=None) -> FeatureModel:
    """Open exactly one S3D model source for :func:`extract_features`.

    Args:
        bundle: a bundle folder (or :class:`~vbedge.bundle.Bundle`): its S3D at ``precision``
            and its preprocessing spec.
        s3d_onnx: an S3D ``.onnx`` file (``vbedge export s3d``); the spec comes from the
            ``s3d.json`` beside it, or from ``spec`` when there is none.
        s3d_weights: a torchvision S3D state dict (.pth; needs torch). With ``backend="torch"``
            it runs in PyTorch; otherwise it is exported to a temporary FP32 ONNX (checked
            against PyTorch by the exporter) that the chosen backend runs. The spec defaults to
            the weights' recipe (torchvision's 256 x 256 resize, crop 224).
        backend: ``"auto"``, ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"`` (bundles built
            with reference weights, or ``s3d_weights``).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (bundle files only).
        spec: a :class:`~vbedge.preprocess.PreprocessSpec`: required for an ``s3d_onnx``
            without ``s3d.json``; with a bundle or an ``s3d.json`` it must equal theirs (a
            different spec would give features the model was not exported for).
        backend_options: dict passed to the backend (e.g. ``intra_op_threads``).
        progress: show the export's progress bar (``s3d_weights`` only).
        trusted_keys: public keys a bundle must be signed by (see
            :meth:`vbedge.bundle.Bundle.load`; default ``VBEDGE_TRUSTED_KEYS``, else unauthenticated).
    """
    from .preprocess import PreprocessSpec

    given = [name for name, value in (("bundle", bundle), ("s3d_onnx", s3d_onnx),
                                      ("s3d_weights", s3d_weights)) if value is not None]
    if len(given) != 1:
        raise InvalidInputError(f"give exactly one S3D model: bundle, s3d_onnx or s3d_weights "
                                f"(got {given or 'none'})")
    if spec is not None and not isinstance(spec, PreprocessSpec):
        raise InvalidInputError(f"spec must be a PreprocessSpec, got {type(spec).__name__}")
    options = dict(backend_options or {})

    def check_same(found, where):
        if spec is not None and spec != found:
            raise InvalidInputError(f"the spec given differs from the one in {where} "
                                    f"({found.to_dict()}); leave spec out to use the model's own")

    if bundle is not None:
        from .backends.select import create_bundle_backend
        from .bundle import Bundle

        if isinstance(bundle, Bundle):
            loaded = bundle
            if trusted_keys is not False:
                loaded.require_signed_by(trusted_keys)  # a no-op when no keys are given or configured
        else:
            loaded = Bundle.load(bundle, trusted_keys=trusted_keys)
        found = loaded.preprocess_spec
        check_same(found, f"the bundle manifest {loaded.root}")
        model = create_bundle_backend(loaded, "s3d", backend=backend, precision=precision,
                                      **options)
        return FeatureModel(model, found, f"bundle {loaded.root} s3d {precision} on {model.name}",
                            f"bundle manifest {loaded.root}")

    if s3d_onnx is not None:
        from .backends.select import create_backend

        path = Path(s3d_onnx)
        if not path.is_file():
            raise FileNotFoundError(f"S3D ONNX file not found: {path}")
        found, where = _spec_from_export_metadata(path)
        if found is None and spec is None:
            raise InvalidInputError(f"{path} has no s3d.json beside it to say how its clips are "
                                    f"preprocessed; pass spec= (or export it with vbedge export "
                                    f"s3d, which writes s3d.json)")
        if found is not None:
            check_same(found, where)
        model = create_backend(path, backend=backend, precision=precision, **options)
        return FeatureModel(model, found or spec, f"{path} ({precision}) on {model.name}",
                            where or "the spec given")

    # s3d_weights: a torchvision state dict.
    from vbedge.export.s3d import spec_for_weights

    weights = Path(s3d_weights)
    if not weights.is_file():
        raise FileNotFoundError(f"S3D weights not found: {weights}")
    if spec is None:
        spec, why = spec_for_weights(weights)
        spec_source = f"{spec.describe_resize()}: {why}"
    else:
        spec_source = "the spec given"
    if precision != "fp32":
        raise InvalidInputError(f"S3D weights run in fp32; precision {precision!r} needs a "
                                f"bundle built with it (vbedge build --precision)")
    if backend == "torch":
        from .backends.torch_eager import TorchBackend
        from .models.s3d import FEATURE_DIM, build_s3d_feature_extractor

        module = build_s3d_feature_extractor(weights)
        shape = ["batch", 3, spec.clip_frames, spec.crop, spec.crop]
        model = TorchBackend(module, [{"name": "clip", "dtype": "float32", "shape": shape}],
                             [{"name": "feature", "dtype": "float32",
                               "shape": ["batch", FEATURE_DIM]}],
                             model="s3d", threads=options.pop("intra_op_threads", None))
        return FeatureModel(model, spec, f"{weights} on torch", spec_source)
    from vbedge.export.s3d import export_s3d

    from .backends.select import create_backend

    work = tempfile.mkdtemp(prefix="vbedge-features-s3d-")
    try:
        log.info("features: exporting %s to a temporary ONNX in %s", weights, work)
        result = export_s3d(work, weights, spec=spec, fp16=False, check_batches=(1,),
                            progress=progress)
        model = create_backend(result.onnx_path, backend=backend, precision="fp32", **options)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FeatureModel(model, spec, f"{weights} (exported to a temporary FP32 ONNX) on "
                                     f"{model.name}", spec_source, [work])


# -- writing -------------------------------------------------------------------------------------


class _BatchFailed(Exception):
    """S3D failed on a batch: the model's fault, not the video's (re-raised as the cause).

    Deliberately not a VbedgeError/OSError, so the per-video handler cannot take it for a
    damaged video.
    """

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _npy_header(rows, dim):
    """A version 1.0 .npy header for float32 (rows, dim), padded to a fixed length."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    fixed = 10  # magic (6) + version (2) + header length (2)
    padding = _NPY_HEADER_BYTES - fixed - len(header) - 1
    if padding < 0:
        raise InvalidInputError(f"{rows} x {dim} features do not fit a .npy header")
    text = (header + " " * padding + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


class _RowWriter:
    """Appends float32 rows to a .npy file whose row count is written when it is closed."""

    def __init__(self, path, dim):
        self.path = Path(path)
        self.dim = int(dim)
        self.rows = 0
        self._handle = open(self.path, "wb")
        self._handle.write(_npy_header(0, self.dim))

    def write(self, features):
        features = np.ascontiguousarray(features, dtype="<f4")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise FormatError(f"S3D returned features of shape {features.shape}; expected "
                              f"(batch, {self.dim})")
        self._handle.write(features.tobytes())
        self.rows += features.shape[0]

    def close(self):
        if self._handle.closed:
            return
        self._handle.seek(0)
        self._handle.write(_npy_header(self.rows, self.dim))
        self._handle.close()


@dataclass
class VideoFeatures:
    """How one video went.

    Attributes:
        video: the path as given.
        clips: its rows in features.npy.
        error: why it failed (``None`` when it was read to the end).
    """

    video: str
    clips: int = 0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class FeatureReport:
    """What :func:`extract_features` wrote.

    Attributes:
        output_dir: the features folder.
        rows: clips (rows of ``features.npy``) written.
        feature_dim: length of each feature (1024 for S3D).
        videos: one :class:`VideoFeatures` per input video, in order.
        spec: the preprocessing spec used.
        model: description of the model and backend.
        spec_source: where the spec came from.
        seconds: wall time.
    """

    output_dir: Path
    rows: int
    feature_dim: int
    videos: list
    spec: object
    model: str
    spec_source: str
    seconds: float

    @property
    def failed(self) -> list:
        """The :class:`VideoFeatures` of the videos that failed."""
        return [v for v in self.videos if v.failed]


def _prepare_output(output_dir, overwrite):
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {out} exists and is not a folder")
    if out.is_dir() and (out / FEATURES_FILE).exists() and not overwrite:
        raise InvalidInputError(f"{out} already holds {FEATURES_FILE}; pass overwrite=True "
                                f"(--overwrite) to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def extract_features(videos, output_dir, model=None, *, batch_size=8, hop=None, progress=True,
                     overwrite=False, on_video=None, **model_options) -> FeatureReport:
    """Write one S3D feature per clip of ``videos`` into the folder ``output_dir``.

    Args:
        videos: video file paths (anything :func:`vbedge.sources.open_source` opens as an
            offline source).
        output_dir: the features folder to write (created; see the module docstring).
        model: an open :class:`FeatureModel` (left open); or None, and ``model_options`` (the
            arguments of :func:`open_feature_model`: ``bundle=``, ``s3d_onnx=`` or
            ``s3d_weights=``, ``backend=``, ``precision=``, ``spec=``...) open one here.
        batch_size: clips per S3D run (clips of consecutive videos share batches).
        hop: sampled frames between clip starts (default: the clip length, back-to-back clips,
            as ``vbedge tokenize``).
        progress: show a progress bar (videos, with the clip count).
        overwrite: replace an existing features folder's files.
        on_video: called with each video's :class:`VideoFeatures` once it is done (e.g. to
            report a damaged file at once).

    Returns:
        a :class:`FeatureReport`; a damaged or unreadable video is in ``report.failed`` (its
        clips before the damage are written), never an exception.

    Raises:
        InvalidInputError: bad options, no videos, or an existing ``features.npy``.
        VbedgeError: the model could not be opened or failed on a batch (nothing is left under
            the final names).
    """
    from tqdm.auto import tqdm

    from .clips import ClipAssembler
    from .preprocess import make_clip
    from .sources import open_source

    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    videos = [str(v) for v in videos]
    if not videos:
        raise InvalidInputError("no videos given")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if model is not None and model_options:
        raise InvalidInputError(f"give an open model or the options to open one, not both "
                                f"(got model and {sorted(model_options)})")
    out = _prepare_output(output_dir, overwrite)
    owned = model is None
    if owned:
        model = open_feature_model(progress=progress, **model_options)
    started = time.perf_counter()
    spec = model.spec
    partial = {name: out / (name + _PARTIAL) for name in (FEATURES_FILE, INDEX_FILE,
                                                          METADATA_FILE)}
    writer = index = None
    results = []
    try:
        dim = _feature_dim(model)
        writer = _RowWriter(partial[FEATURES_FILE], dim)
        index = open(partial[INDEX_FILE], "w", encoding="utf-8")
        pending = []   # (VideoFeatures, Clip, array) waiting for a batch

        def run_batch():
            if not pending:
                return
            batch = np.stack([item[2] for item in pending])
            try:
                features = model.backend.run({"clip": batch})["feature"]
                if features.shape[0] != len(pending):
                    raise FormatError(f"S3D returned {features.shape[0]} features for a batch "
                                      f"of {len(pending)} clips")
                first = writer.rows
                writer.write(features)
            except Exception as exc:  # noqa: BLE001 - re-raised unchanged below
                raise _BatchFailed(exc) from exc
            for row, (entry, clip, _) in enumerate(pending, start=first):
                index.write(json.dumps({"video": entry.video, "start": round(clip.start, 6),
                                        "end": round(clip.end, 6), "row": row,
                                        "clip": clip.index, "padded": clip.padded}) + "\n")
            pending.clear()

        def add(entry, clip):
            pending.append((entry, clip, make_clip(clip.frames, spec)))
            clip.frames = None  # the preprocessed array is all that is needed now
            entry.clips += 1     # its row is written with the batch (or the run fails)
            if len(pending) >= batch_size:
                run_batch()

        bar = tqdm(videos, desc="features", unit="video", disable=not progress)
        for video in bar:
            bar.set_postfix_str(f"{writer.rows + len(pending)} clips, {video[-30:]}")
            entry = VideoFeatures(video)
            results.append(entry)
            source = None
            assembler = ClipAssembler.from_spec(spec, hop=hop)
            try:
                source = open_source(video)
                if source.is_live:
                    raise InvalidInputError(f"{source.description} is live; vbedge features "
                                            f"reads offline videos")
                for frame in source:
                    for clip in assembler.push(frame):
                        add(entry, clip)
                if source.failed:
                    entry.error = source.end_reason
            except _BatchFailed:
                raise
            except (VbedgeError, OSError) as exc:
                entry.error = str(exc)
            finally:
                if source is not None:
                    source.close()
            # Like the pipeline: the clips assembled before a failure are kept, the last one
            # padded (offline processing never loses a clip).
            for clip in assembler.finish():
                add(entry, clip)
            if entry.failed:
                log.warning("features: %s: %s (%d clip(s) before the failure written)",
                            video, entry.error, entry.clips)
            if on_video is not None:
                on_video(entry)
        run_batch()
        bar.close()
        writer.close()
        index.close()
        report = FeatureReport(out, writer.rows, dim, results, spec, model.description,
                               model.spec_source, time.perf_counter() - started)
        partial[METADATA_FILE].write_text(json.dumps(_metadata(report), indent=2) + "\n",
                                          encoding="utf-8")
        for name, path in partial.items():
            os.replace(path, out / name)
    except _BatchFailed as failed:
        raise failed.error
    finally:
        if writer is not None:
            writer.close()
        if index is not None:
            index.close()
        for path in partial.values():
            if path.exists():
                path.unlink()
        if owned:
            model.close()
    return report


def _feature_dim(model):
    outputs = [o for o in model.backend.outputs if o.name == "feature"]
    if not outputs:
        raise FormatError(f"the S3D model has no 'feature' output (outputs: "
                          f"{[o.name for o in model.backend.outputs]})")
    dim = outputs[0].shape[-1]
    if not isinstance(dim, int):
        raise FormatError(f"the S3D model's feature output has no fixed length ({outputs[0].shape})")
    return dim


def _metadata(report):
    from .bundle import created_by

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rows": report.rows,
        "feature_dim": report.feature_dim,
        "dtype": "float32",
        "files": {"features": FEATURES_FILE, "index": INDEX_FILE},
        "preprocessing": report.spec.to_dict(),
        "preprocessing_source": report.spec_source,
        "model": report.model,
        "videos": [{"video": v.video, "clips": v.clips, "error": v.error} for v in report.videos],
        "failed": len(report.failed),
        "seconds": round(report.seconds, 3),
        "created_by": created_by(),
    }


# -- reading -------------------------------------------------------------------------------------


def load_feature_matrix(path, mmap=False) -> np.ndarray:
    """The (N, D) feature array of a features folder, its ``features.npy``, or any (N, D) .npy.

    This is what ``vbedge codebook fit`` reads. Never unpickles (``allow_pickle=False``).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / FEATURES_FILE).is_file():
            raise FileNotFoundError(f"{path} is a folder without {FEATURES_FILE} (not a "
                                    f"vbedge features folder)")
        path = path / FEATURES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{path} is not a readable .npy array: {exc}") from exc
    if array.ndim != 2:
        raise FormatError(f"{path} holds an array of shape {array.shape}; expected (N, D) "
                          f"features")
    return array


def read_features(folder, mmap=False):
    """A features folder -> ``(features, index)``, checked against each other.

    ``features`` is the (N, D) float32 array, ``index`` the list of N dicts of ``index.jsonl``
    (``video``, ``start``, ``end``, ``row``...); ``index[i]["row"] == i``.

    Raises:
        FileNotFoundError: a file is missing. FormatError: a line that is not JSON, lacks a
        field, or disagrees with the array (row numbers, count), naming the file and line.
    """
    folder = Path(folder)
    features = load_feature_matrix(folder, mmap=mmap)
    if features.dtype != np.float32:
        raise FormatError(f"{folder / FEATURES_FILE} has dtype {features.dtype}; expected float32")
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} is missing (features folder without its index)")
    index = []
    with open(index_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            where = f"{index_path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{where}: not JSON ({exc})") from exc
            if not isinstance(item, dict):
                raise FormatError(f"{where}: expected a JSON object")
            for key, kind in (("video", str), ("start", (int, float)), ("end", (int, float)),
                              ("row", int)):
                if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                    raise FormatError(f"{where}: field {key!r} missing or not a "
                                      f"{getattr(kind, '__name__', 'number')}")
            if item["row"] != number - 1:
                raise FormatError(f"{where}: row {item['row']}, expected {number - 1} (lines "
                                  f"are in row order)")
            index.append(item)
    if len(index) != features.shape[0]:
        raise FormatError(f"{index_path} has {len(index)} lines but {FEATURES_FILE} has "
                          f"{features.shape[0]} rows")
    return features, index
