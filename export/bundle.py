"""Build a deployable bundle: export S3D and VideoBERT, add the codebook and vocabulary, write the manifest.

``vbedge build --s3d W.pth --videobert DIR --codebook C.npz -o BUNDLE`` is a thin front over
:func:`build_bundle`. The bundle is assembled in a staging folder beside the destination and
moved into place only after every export check passed and :meth:`vbedge.bundle.Bundle.load`
verified it, so a failed build never leaves a folder that looks like a bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from vbedge.bundle import PRECISIONS, Bundle, sha256_file, sign_bundle, write_manifest
from vbedge.errors import FormatError, InvalidInputError

log = logging.getLogger(__name__)

#: Where optional PyTorch reference weights live inside a bundle (for the torch backend).
REFERENCE_DIR = "reference"


def _check_precisions(precisions):
    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise InvalidInputError(f"precisions must be among {PRECISIONS}, got {unknown}")
    if "fp32" not in precisions:
        raise InvalidInputError("precisions must include fp32: it is the reference the other variants are checked against")
    return precisions


def build_bundle(output_dir, *, videobert, codebook, s3d_weights=None, s3d_random_init=False, seed=0,
                 precisions=("fp32", "fp16"), spec=None, top_k=None, reference_weights=False,
                 overwrite=False, progress=True, calib_videos=None, calib_method="minmax",
                 spec_reason=None, sign_key=None, sign_password=None, s3d_export=None):
    """Export both models into a new bundle folder ``output_dir`` and return the verified :class:`Bundle`.

    Args:
        videobert: a :class:`~vbedge.models.videobert.VideoBert` built for ``codebook``.
        codebook: the :class:`~vbedge.HierarchicalCodebook` (or the path of its .npz).
        s3d_weights: torchvision S3D state dict (.pth); or ``s3d_random_init=True`` (tests, demo).
        precisions: subset of ('fp32', 'fp16'); fp32 is required (int8 is not available yet).
        spec: :class:`~vbedge.preprocess.PreprocessSpec` for S3D; when None, the recipe of the
            weights (:func:`vbedge.export.s3d.spec_for_weights`: torchvision weights get
            torchvision's 256 x 256 resize and 224 crop, random weights the short-side rule),
            logged and recorded in the manifest (``models.s3d.preprocessing_recipe``).
        top_k: k of the VideoBERT top-k outputs (default: the exporter's).
        reference_weights: also store the PyTorch weights under ``reference/`` so the torch
            backend can run the bundle (larger bundle; not needed on a device).
        overwrite: replace an existing ``output_dir`` (only after the new bundle is complete).
        calib_videos: video files/folders to calibrate INT8 on (required with 'int8'); the INT8
            Q/DQ graphs, the ONNX Runtime CPU forms of S3D and VideoBERT and ``int8_report.json`` join the bundle.
        calib_method: 'minmax', 'entropy' or 'percentile'.
        spec_reason: why ``spec`` is what it is (recorded as ``preprocessing_recipe``).
        sign_key: an Ed25519 private key (PEM path or key object, see ``vbedge keys new``) to sign
            the bundle with (``manifest.sig``, :func:`vbedge.bundle.sign_bundle`); read before the
            export starts, so a wrong key or passphrase fails in seconds, not after minutes.
        sign_password: bytes passphrase of an encrypted ``sign_key`` PEM.
        s3d_export: an :class:`~vbedge.export.s3d.S3DExportResult` (or its folder) that
            :func:`~vbedge.export.s3d.export_s3d` already made from these weights and ``spec``:
            its checked files are copied instead of exporting S3D again (about 14 s at the demo's
            size). Refused unless its recorded weights hash, preprocessing and file hashes match.
    """
    from vbedge.codebook import HierarchicalCodebook
    from vbedge.export.s3d import export_s3d, spec_for_weights
    from vbedge.export.videobert import DEFAULT_TOP_K, export_videobert

    if isinstance(sign_key, (str, os.PathLike)):
        from vbedge.signing import load_private_key

        sign_key = load_private_key(sign_key, password=sign_password)
    precisions = _check_precisions(precisions)
    if "int8" in precisions and not calib_videos:
        raise InvalidInputError("int8 needs calibration videos: pass calib_videos (--calib CLIPS)")
    if not isinstance(codebook, HierarchicalCodebook):
        codebook = HierarchicalCodebook.load(codebook)
    if videobert.codebook_ref.get("sha256") != codebook.sha256:
        raise FormatError("the VideoBERT model was built for another codebook (sha256 differs)")
    if spec is None:
        spec, recipe = spec_for_weights(s3d_weights, s3d_random_init)
    else:
        recipe = spec_reason or "the spec given"
    log.info("bundle: preprocessing: %s (%s)", spec.describe_resize(), recipe)
    out = Path(output_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"{out} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        fp16 = "fp16" in precisions
        if s3d_export is None:
            log.info("bundle: exporting S3D")
            s3d = export_s3d(staging, s3d_weights, random_init=s3d_random_init, seed=seed, spec=spec, fp16=fp16,
                             progress=progress)
        else:
            log.info("bundle: S3D exported already (%s)", s3d_export)
            s3d = _reuse_s3d_export(s3d_export, staging, s3d_weights, s3d_random_init, seed, spec, fp16)
        feature_dim = int(s3d.metadata["outputs"][0]["shape"][-1])
        if feature_dim != codebook.dim:
            raise FormatError(f"S3D makes {feature_dim}-d features but the codebook is {codebook.dim}-d")
        log.info("bundle: exporting VideoBERT")
        vb_meta = export_videobert(videobert, staging, top_k=top_k or DEFAULT_TOP_K, fp16=fp16, progress=progress)
        codebook.save(staging / "codebook.npz")
        videobert.vocab.save(staging)
        if "int8" in precisions:
            from vbedge.calib.calibrate import calibrate_models

            log.info("bundle: INT8 calibration")
            int8 = calibrate_models(staging, videos=calib_videos, spec=spec, codebook=codebook, vocab=videobert.vocab,
                                    s3d_fp32=staging / s3d.metadata["files"]["fp32"]["path"],
                                    videobert_fp32=staging / vb_meta["files"]["fp32"]["path"], method=calib_method,
                                    progress=progress)
            s3d.metadata["files"]["int8"] = {"path": int8["files"]["s3d"]["int8"]}
            vb_meta["files"]["int8"] = {"path": int8["files"]["videobert"]["int8"]}
        models = {
            "s3d": {
                "onnx": {p: s3d.metadata["files"][p]["path"] for p in precisions},
                "metadata": "s3d.json",
                "inputs": s3d.metadata["inputs"],
                "outputs": s3d.metadata["outputs"],
                "feature_dim": feature_dim,
                "preprocessing_recipe": recipe,
            },
            "videobert": {
                "onnx": {p: vb_meta["files"][p]["path"] for p in precisions},
                "metadata": "videobert.json",
                "inputs": vb_meta["inputs"],
                "outputs": vb_meta["outputs"],
                "top_k": vb_meta["top_k"],
                "vocab_size": videobert.vocab.size,
                "codebook_sha256": codebook.sha256,
            },
        }
        if "int8" in precisions:
            # The ONNX Runtime CPU forms of the INT8 graphs and the report ride along as extra files.
            models["s3d"]["int8_cpu"] = int8["files"]["s3d"]["int8_cpu"]
            models["s3d"]["extra_files"] = [int8["files"]["s3d"]["int8_cpu"], "int8_report.json"]
            models["videobert"]["int8_cpu"] = int8["files"]["videobert"]["int8_cpu"]
            models["videobert"]["extra_files"] = [int8["files"]["videobert"]["int8_cpu"]]
            # Their weight bits (7 or 8, chosen for the calibrating CPU unless named): a device
            # without VNNI warns when it loads 8-bit weights (backends.select.check_cpu_form_bits).
            models["s3d"]["int8_cpu_weight_bits"] = int8["s3d_quantization"]["cpu_rewrite"]["weight_bits"]
            models["videobert"]["int8_cpu_weight_bits"] = int8["videobert_quantization"]["cpu_form"]["weight_bits"]
        if reference_weights:
            _write_reference_weights(staging, s3d_weights, s3d_random_init, seed, videobert, models)
        write_manifest(staging, models, "codebook.npz",
                       {"vocab_file": "vocab.txt", "layout_file": "vocab_layout.json"}, spec.to_dict())
        if sign_key is not None:
            sign_bundle(staging, sign_key)  # verifies every hash of the manifest it signs
        else:
            Bundle.load(staging, trusted_keys=False)  # verify exactly what a device will verify
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if sign_key is not None:
        # Loaded as a device would, with the public half as the only trusted key.
        return Bundle.load(out, trusted_keys=[sign_key.public_key()])
    log.info("bundle %s is not signed: devices that check signatures will refuse it (vbedge sign)", out)
    return Bundle.load(out, verify_hashes=False, trusted_keys=False)


def _reuse_s3d_export(export, staging, weights, random_init, seed, spec, fp16):
    """Copy an earlier :func:`export_s3d` result into ``staging`` after checking it was made from the same inputs."""
    import json

    from vbedge.export.s3d import S3DExportResult

    folder = Path(export.metadata_path).parent if isinstance(export, S3DExportResult) else Path(export)
    meta_path = folder / "s3d.json"
    if not meta_path.is_file():
        raise FormatError(f"s3d_export: {meta_path} not found (give the folder export_s3d wrote)")
    meta = json.loads(meta_path.read_text())
    source = meta.get("source", {})
    expected = ({"kind": "random-init", "seed": int(seed)} if random_init else
                {"kind": "torchvision-s3d-state-dict", "sha256": sha256_file(weights)})
    if any(source.get(k) != v for k, v in expected.items()):
        raise FormatError(f"s3d_export {folder} was made from other S3D weights ({source}), not {expected}")
    if meta.get("preprocess") != spec.to_dict():
        raise FormatError(f"s3d_export {folder} was exported for another preprocessing: {meta.get('preprocess')}")
    wanted = ("fp32", "fp16") if fp16 else ("fp32",)
    missing = [p for p in wanted if p not in meta.get("files", {})]
    if missing:
        raise FormatError(f"s3d_export {folder} has no {', '.join(missing)} file")
    paths = {}
    for precision in wanted:
        entry = meta["files"][precision]
        src = folder / entry["path"]
        if not src.is_file() or sha256_file(src) != entry["sha256"]:
            raise FormatError(f"s3d_export: {src} is missing or does not match the hash in {meta_path}")
        paths[precision] = staging / entry["path"]
        shutil.copy2(src, paths[precision])
    if set(meta["files"]) == set(wanted):
        shutil.copy2(meta_path, staging / "s3d.json")
    else:  # an fp16 file the bundle does not take stays out of its metadata too
        meta["files"] = {p: meta["files"][p] for p in wanted}
        (staging / "s3d.json").write_text(json.dumps(meta, indent=2) + "\n")
    return S3DExportResult(paths["fp32"], paths.get("fp16"), staging / "s3d.json", meta)


def _write_reference_weights(staging, s3d_weights, s3d_random_init, seed, videobert, models):
    import torch

    from vbedge.models.s3d import build_s3d_feature_extractor

    ref = staging / REFERENCE_DIR
    ref.mkdir()
    extractor = build_s3d_feature_extractor(s3d_weights, random_init=s3d_random_init, seed=seed)
    # A plain tensor state dict: loadable with torch.load(weights_only=True), no pickled objects.
    torch.save(extractor.state_dict(), ref / "s3d.pth")
    models["s3d"]["reference"] = f"{REFERENCE_DIR}/s3d.pth"
    models["s3d"]["extra_files"] = models["s3d"].get("extra_files", []) + [f"{REFERENCE_DIR}/s3d.pth"]
    vb_dir = videobert.save(ref / "videobert")
    models["videobert"]["reference"] = f"{REFERENCE_DIR}/videobert"
    # Keep extra files already listed (the INT8 CPU form) beside the reference weights.
    models["videobert"]["extra_files"] = models["videobert"].get("extra_files", []) + sorted(
        f"{REFERENCE_DIR}/videobert/{p.name}" for p in Path(vb_dir).iterdir() if p.is_file()
    )
