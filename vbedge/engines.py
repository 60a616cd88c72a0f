"""The TensorRT engines of a bundle: pre-build the ones a pipeline will need, list and verify the cache.

``vbedge engines build|list|verify --bundle B`` calls these. Listing and verifying read only the
engine files' headers and metadata (no TensorRT needed: a cache can be checked on the
development machine); building needs TensorRT and a GPU and uses exactly the profiles a
:class:`~vbedge.pipeline.Pipeline` with the same options derives, so the pipeline then loads the
engines from the cache instead of building them at start-up.

The cache folder is the bundle's ``engines/`` unless ``cache_dir`` or ``$VBEDGE_ENGINE_CACHE``
says otherwise (see :func:`vbedge.backends.select.engine_cache_dir`), so a read-only bundle works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .engine_cache import ENGINE_SUFFIX, EngineKey, check_engine_placement, read_engine_file, read_engine_header
from .errors import FormatError

MODELS = ("s3d", "videobert")


@dataclass
class EngineEntry:
    """One engine file of a cache folder, as ``list``/``verify`` see it."""

    path: Path
    key: EngineKey | None
    created: str = ""
    layers: dict = field(default_factory=dict)
    problem: str | None = None  # None when the file checks out
    current: bool | None = None  # built from the bundle's present ONNX (None: unknown model/precision)

    def describe(self):
        """One readable line: file, model, precision, GPU, TensorRT, layer precisions, state."""
        from .backends.trt_inspect import format_precisions

        if self.key is None:
            return f"{self.path.name}: {self.problem}"
        k = self.key
        state = "ok" if self.problem is None else f"BAD: {self.problem}"
        if self.problem is None and self.current is False:
            state = "stale (built from another ONNX than the bundle's)"
        layers = format_precisions(self.layers) if self.layers else "no layer report"
        return (f"{self.path.name}: {k.model} {k.precision}, TensorRT {k.tensorrt_version}, {k.gpu_name} "
                f"(sm {k.compute_capability}), {'strongly' if k.strongly_typed else 'weakly'} typed; "
                f"layers: {layers}; {state}")


def _cache_dir(bundle, cache_dir):
    from .backends.select import engine_cache_dir

    return Path(engine_cache_dir(bundle, cache_dir))


def _bundle_hashes(bundle):
    """ONNX sha256 -> (model, precision) of every ONNX file the bundle lists."""
    hashes = {}
    for model in bundle.models():
        for precision in bundle.precisions(model):
            hashes[bundle.onnx_sha256(model, precision)] = (model, precision)
    return hashes


def list_engines(bundle, cache_dir=None, verify=False):
    """:class:`EngineEntry` for every engine file in the bundle's cache folder (sorted by name).

    With ``verify`` each engine's bytes are re-hashed against its header (slower: engines are
    tens to hundreds of MB) and the checks the cache makes before loading one applied (placement,
    permissions, this bundle's manifest digest); otherwise only the header and metadata are read.
    """
    from .backends.trt_inspect import read_report

    folder = _cache_dir(bundle, cache_dir)
    hashes = _bundle_hashes(bundle)
    entries = []
    for path in sorted(folder.glob(f"*{ENGINE_SUFFIX}")) if folder.is_dir() else []:
        try:
            if verify:
                # The checks the cache makes before it hands an engine to TensorRT (placement,
                # this bundle's manifest digest), so verify agrees with what a pipeline would load.
                check_engine_placement(path, folder)
                metadata = read_engine_file(path, expected_manifest_sha256=bundle.manifest_sha256)[0]
            else:
                metadata = read_engine_header(path)[0]
            key = EngineKey.from_dict(metadata["key"])
        except (FormatError, OSError) as exc:
            entries.append(EngineEntry(path, None, problem=str(exc)))
            continue
        report = read_report(path) or {}
        current = key.onnx_sha256 in hashes
        entries.append(EngineEntry(path, key, str(metadata.get("created", "")), report.get("layers", {}),
                                   None, current))
    return entries


def verify_engines(bundle, cache_dir=None):
    """``(entries, bad)``: every engine re-hashed; ``bad`` lists the damaged or stale ones."""
    entries = list_engines(bundle, cache_dir, verify=True)
    bad = [e for e in entries if e.problem is not None or e.current is False]
    return entries, bad


def build_engines(bundle, precision="fp32", models=MODELS, cache_dir=None, progress=None, rebuild=False,
                  **pipeline_options):
    """Build (or find in the cache) the TensorRT engines a pipeline with ``pipeline_options`` will load.

    ``pipeline_options``: the Pipeline options that shape the profiles (``max_batch``,
    ``queue_size``, ``template``, ``context_clips``, ``forecast_step``, ``verbs``, ``nouns``,
    ``captioning``) and
    per-model ``s3d_options`` / ``videobert_options``. ``progress``: callable ``(model, phase,
    step, steps)`` for TensorRT's build progress. Returns a list of dicts (model, engine path,
    layer precisions). Raises when TensorRT is unavailable or a build fails (no fallback here).
    """
    from .backends.select import create_bundle_backend
    from .backends.trt_policy import pipeline_limits
    from .pipeline import _check_options, pipeline_captioners, profile_max_batch

    options = _check_options(pipeline_options)
    captioners = pipeline_captioners(bundle.vocab, options)[1]  # per-source ``captioning`` included
    limits = pipeline_limits(profile_max_batch(options["max_batch"]), options["queue_size"],
                             list(captioners.values()))
    built = []
    for model in models:
        extra = {**(options["backend_options"] or {}), **(options[f"{model}_options"] or {})}
        if progress is not None:
            extra["progress"] = (lambda m: (lambda phase, step, steps: progress(m, phase, step, steps)))(model)
        backend = create_bundle_backend(bundle, model, backend="tensorrt", precision=precision, limits=limits[model],
                                        cache_dir=cache_dir, rebuild=rebuild, **extra)
        try:
            built.append({"model": model, "engine": backend.engine_path, "layers": backend.layer_precisions()})
        finally:
            backend.close()
    return built
