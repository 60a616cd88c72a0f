"""Export the S3D feature extractor to ONNX (FP32 and FP16), checked against PyTorch.

``export_s3d`` writes into one folder:

- ``s3d.onnx``: FP32 graph, input ``clip`` (batch, 3, T, H, W) float32 with a dynamic batch
  axis, output ``feature`` (batch, 1024) float32;
- ``s3d.fp16.onnx``: the same graph in FP16 with fragile ops in FP32 and FP32 inputs/outputs;
- ``s3d.json``: metadata: preprocessing spec, input/output names and shapes, opset, file hashes,
  the source weights, and the results of every check.

Each graph is run with ONNX Runtime (CPU) on fresh random clips at every batch size in
``check_batches`` and compared with the PyTorch module; a tolerance miss raises
:class:`~vbedge.export.verify.ExportCheckError`, and a graph TensorRT could not parse raises
:class:`~vbedge.errors.FormatError`. Nothing is left half-written under the final names: files
are written under temporary names and renamed once every check passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbedge.errors import InvalidInputError, VbedgeError
from vbedge.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

INPUT_NAME = "clip"
OUTPUT_NAME = "feature"
BATCH_AXIS_NAME = "batch"
#: Opset of the exported graph: torch's ONNX exporter implements 18+, TensorRT 10 parses <= 20.
DEFAULT_OPSET = 18
#: The largest batch the exported graph is traced for (TensorRT profiles pick their own range).
MAX_EXPORT_BATCH = 256
FORMAT_VERSION = 1

# Tolerances of the automatic checks (documented in docs/export.md). max_abs is relative to the
# largest magnitude of the PyTorch feature (S3D features of different checkpoints differ in scale
# by orders of magnitude); cosine is scale-free.
#: FP32 ONNX vs FP32 PyTorch: only summation order differs.
FP32_TOLERANCE = {"rel_max_abs": 1e-4, "min_cos": 0.99999}
#: FP16 ONNX vs FP32 PyTorch: FP16 storage and arithmetic over ~60 conv layers.
FP16_TOLERANCE = {"rel_max_abs": 1e-2, "min_cos": 0.999}


@dataclass
class S3DExportResult:
    """What :func:`export_s3d` wrote and checked."""

    onnx_path: Path
    fp16_path: Path | None
    metadata_path: Path
    metadata: dict = field(default_factory=dict)

    @property
    def files(self):
        """Paths written, FP32 model first."""
        return [p for p in (self.onnx_path, self.fp16_path, self.metadata_path) if p is not None]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_for_weights(weights=None, random_init=False, resize=None, **changes):
    """The preprocessing spec for S3D weights, following the recipe they were trained with.

    Returns ``(spec, why)``. With ``resize=None`` the rule is the weights' recipe: a torchvision
    S3D state dict (the only checkpoint format vbedge loads: ``torchvision.models.video.s3d``'s
    weights, ``S3D_Weights.KINETICS400_V1``) gets torchvision's recipe, a 256 x 256 resize
    (aspect ratio not kept) and a 224 centre crop
    (:meth:`~vbedge.preprocess.PreprocessSpec.torchvision_kinetics`); random weights have no
    recipe and keep vbedge's default rule (short side to 256, aspect ratio kept), which is also
    what bundles made before the option existed use. ``resize`` (``"short_side"`` or
    ``"square"``) chooses the rule explicitly; ``changes`` set other fields (``clip_frames``,
    ``crop``, ``short_side``, ``fps``).
    """
    if resize is None and weights is not None and not random_init:
        spec = PreprocessSpec.torchvision_kinetics(**changes)
        why = ("the torchvision recipe (S3D_Weights.KINETICS400_V1.transforms()), chosen for a "
               "torchvision S3D state dict")
    elif resize is None:
        spec = PreprocessSpec(**changes)
        why = "vbedge's default rule, chosen because random weights have no training recipe"
    else:
        spec = PreprocessSpec(resize=resize, **changes)
        why = f"resize={resize!r} requested"
    return spec, why


def _check_against_torch(session_path, references, tolerance, what):
    """Run ``session_path`` on each reference input; raise on a tolerance miss."""
    from vbedge.export.verify import check_features, make_session

    session = make_session(session_path)
    results = []
    for clip, ref in references:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: clip})[0]
        if got.shape != ref.shape or got.dtype != np.float32:
            from vbedge.export.verify import ExportCheckError

            raise ExportCheckError(f"{what} returned {got.dtype} {got.shape} for a batch of "
                                   f"{clip.shape[0]}; expected float32 {ref.shape}")
        scale = float(np.max(np.abs(ref))) or 1.0
        metrics = check_features(ref, got, max_abs=tolerance["rel_max_abs"] * scale,
                                 min_cos=tolerance["min_cos"],
                                 what=f"{what} at batch {clip.shape[0]}")
        metrics["batch"] = int(clip.shape[0])
        metrics["ref_max_abs_value"] = scale
        results.append(metrics)
    return results


def export_s3d(output_dir, weights=None, *, random_init=False, seed=0, spec=None, fp16=True,
               check_batches=(1, 3), opset=DEFAULT_OPSET, check_seed=None, progress=True,
               spec_reason=None):
    """Export S3D to ONNX in ``output_dir`` and check it; return an :class:`S3DExportResult`.

    Args:
        output_dir: folder to write ``s3d.onnx``, ``s3d.fp16.onnx`` and ``s3d.json`` into.
        weights: path of a torchvision S3D state dict; or None with ``random_init=True``.
        random_init: export a seeded random model (tests, demos).
        seed: seed of the random initialisation.
        spec: :class:`~vbedge.preprocess.PreprocessSpec` (clip length, resize rule, crop)
            stored with the export; when None, :func:`spec_for_weights` picks the weights'
            recipe (torchvision weights: 256 x 256 resize, crop 224; random weights: short side
            256, crop 224) and logs which.
        fp16: also write and check the FP16 variant.
        check_batches: batch sizes the graphs are checked at (at least one; one should be > 1
            to prove the dynamic batch axis works).
        opset: ONNX opset, 18..20.
        check_seed: seed of the random check inputs; drawn fresh (and recorded) when None.
        progress: show a progress bar.
        spec_reason: why ``spec`` is what it is (logged, printed and recorded in s3d.json as
            ``preprocess_recipe``; e.g. the reason :func:`spec_for_weights` returns).

    Raises:
        InvalidInputError: bad options. FormatError: bad checkpoint, or a graph TensorRT could
        not parse. ExportCheckError: ONNX Runtime disagrees with PyTorch beyond the tolerance.
    """
    if spec is None:
        spec, recipe = spec_for_weights(weights, random_init)
    else:
        recipe = spec_reason or "the spec given"
    if not isinstance(spec, PreprocessSpec):
        raise InvalidInputError(f"spec must be a PreprocessSpec, got {type(spec).__name__}")
    batches = [int(b) for b in check_batches]
    if not batches or any(b < 1 or b > MAX_EXPORT_BATCH for b in batches):
        raise InvalidInputError(f"check_batches must be batch sizes in 1..{MAX_EXPORT_BATCH}, got "
                                f"{list(check_batches)}")
    if not 18 <= int(opset) <= 20:
        raise InvalidInputError(f"opset must be in 18..20 (torch's exporter implements >= 18, "
                                f"TensorRT 10 parses <= 20), got {opset}")

    import onnx
    import torch
    from tqdm.auto import tqdm

    from vbedge.export.fp16 import convert_to_fp16
    from vbedge.export.readiness import require_tensorrt_ready
    from vbedge.models.s3d import FEATURE_DIM, build_s3d_feature_extractor

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    final = {"fp32": out / "s3d.onnx", "fp16": out / "s3d.fp16.onnx", "json": out / "s3d.json"}
    tmp = {k: p.with_name(p.name + ".partial") for k, p in final.items()}

    steps = ["load model", "export ONNX", "check FP32", "TensorRT readiness"]
    if fp16:
        steps += ["convert FP16", "check FP16"]
    steps.append("write metadata")
    bar = tqdm(total=len(steps), desc="export s3d", unit="step", disable=not progress)

    def step(name):
        bar.set_postfix_str(name)
        log.info("export s3d: %s", name)

    started = time.perf_counter()
    log.info("export s3d: preprocessing: %s (%s)", spec.describe_resize(), recipe)
    try:
        step("load model")
        model = build_s3d_feature_extractor(weights, random_init=random_init, seed=seed)
        bar.update()

        step("export ONNX")
        example = torch.zeros(spec.clip_shape(batch=1), dtype=torch.float32)
        batch_dim = torch.export.Dim(BATCH_AXIS_NAME, min=1, max=MAX_EXPORT_BATCH)
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    model, (example,), str(tmp["fp32"]), dynamo=True, opset_version=int(opset),
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch_dim},), external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many types; name the step and the shape
            raise VbedgeError(f"torch.onnx.export of S3D for clips {spec.clip_shape()} failed: "
                              f"{exc}") from exc
        exported = onnx.load(str(tmp["fp32"]))
        onnx.checker.check_model(exported)
        graph_opset = next(i.version for i in exported.opset_import if i.domain in ("", "ai.onnx"))
        bar.update()

        step("check FP32")
        rng_seed = int(check_seed) if check_seed is not None else secrets.randbits(31)
        rng = np.random.default_rng(rng_seed)
        references = []
        with torch.inference_mode():
            for batch in batches:
                # Standard-normal clips: the value range of normalised video.
                clip = rng.standard_normal(spec.clip_shape(batch=batch), dtype=np.float32)
                ref = model(torch.from_numpy(clip)).numpy()
                references.append((clip, ref))
        fp32_checks = _check_against_torch(tmp["fp32"], references, FP32_TOLERANCE, "s3d.onnx")
        bar.update()

        step("TensorRT readiness")
        dynamic_axes = {INPUT_NAME: [0]}
        readiness = {"s3d.onnx": require_tensorrt_ready(tmp["fp32"], dynamic_axes).to_dict()}
        bar.update()

        fp16_checks = None
        if fp16:
            step("convert FP16")
            convert_to_fp16(tmp["fp32"], tmp["fp16"])
            readiness["s3d.fp16.onnx"] = require_tensorrt_ready(tmp["fp16"], dynamic_axes).to_dict()
            bar.update()
            step("check FP16")
            fp16_checks = _check_against_torch(tmp["fp16"], references, FP16_TOLERANCE,
                                               "s3d.fp16.onnx")
            bar.update()

        step("write metadata")
        for key in ("fp32", "fp16"):
            if tmp[key].exists():
                os.replace(tmp[key], final[key])
        if not fp16 and final["fp16"].exists():
            final["fp16"].unlink()  # a stale FP16 file from an earlier export would not match
        metadata = _metadata(spec, weights, random_init, seed, graph_opset, final, fp16,
                             FEATURE_DIM, rng_seed, fp32_checks, fp16_checks, readiness,
                             time.perf_counter() - started)
        metadata["preprocess_recipe"] = recipe
        tmp["json"].write_text(json.dumps(metadata, indent=2) + "\n")
        os.replace(tmp["json"], final["json"])
        bar.update()
    finally:
        bar.close()
        for path in tmp.values():
            if path.exists():
                path.unlink()
    return S3DExportResult(final["fp32"], final["fp16"] if fp16 else None, final["json"], metadata)


def _metadata(spec, weights, random_init, seed, opset, final, fp16, feature_dim, check_seed,
              fp32_checks, fp16_checks, readiness, seconds):
    import onnx
    import onnxruntime
    import torch
    import torchvision

    files = {"fp32": {"path": final["fp32"].name, "sha256": _sha256(final["fp32"])}}
    if fp16:
        files["fp16"] = {"path": final["fp16"].name, "sha256": _sha256(final["fp16"])}
    if random_init:
        source = {"kind": "random-init", "seed": int(seed)}
    else:
        source = {"kind": "torchvision-s3d-state-dict", "path": str(weights),
                  "sha256": _sha256(weights)}
    return {
        "format_version": FORMAT_VERSION,
        "model": "s3d",
        "source": source,
        "opset": int(opset),
        "preprocess": spec.to_dict(),
        "inputs": [{"name": INPUT_NAME, "dtype": "float32",
                    "shape": [BATCH_AXIS_NAME, 3, spec.clip_frames, spec.crop, spec.crop],
                    "dynamic_axes": {"0": BATCH_AXIS_NAME}}],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32",
                     "shape": [BATCH_AXIS_NAME, feature_dim]}],
        "files": files,
        "checks": {
            "reference": "PyTorch eager FP32 on CPU",
            "runtime": "ONNX Runtime CPUExecutionProvider",
            "input_seed": int(check_seed),
            "fp32": fp32_checks,
            "fp16": fp16_checks,
            "tolerances": {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE if fp16 else None},
            "tensorrt_readiness": readiness,
        },
        "exported_with": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                          "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                          "python": platform.python_version()},
        "export_seconds": round(seconds, 1),
    }


def format_summary(result):
    """Readable summary of an :class:`S3DExportResult`: files written and checks passed."""
    meta = result.metadata
    lines = ["vbedge export s3d: wrote"]
    for path in result.files:
        size = path.stat().st_size
        lines.append(f"  {path}  ({size / 1e6:.1f} MB)" if size >= 100_000
                     else f"  {path}  ({size / 1e3:.1f} kB)")
    checks = meta["checks"]
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    lines.append(f"  preprocessing: {spec.describe_resize()}"
                 + (f" ({meta['preprocess_recipe']})" if meta.get("preprocess_recipe") else ""))
    for precision in ("fp32", "fp16"):
        for item in checks.get(precision) or []:
            lines.append(f"  check {precision} vs PyTorch, batch {item['batch']}: max_abs "
                         f"{item['max_abs']:.2e} (<= {item['tol_max_abs']:.2e}), min cos "
                         f"{item['min_cos']:.6f} (>= {item['tol_min_cos']}) passed")
    for name, report in checks["tensorrt_readiness"].items():
        lines.append(f"  TensorRT readiness {name}: passed (opset {report['opset']}, "
                     f"{sum(report['ops'].values())} nodes)")
    return "\n".join(lines)
