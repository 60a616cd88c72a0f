"""The TensorRT engine builder: ONNX file in, serialized engine bytes out (TensorRT 8.5-11).

Everything decidable without TensorRT is decided first (:mod:`vbedge.backends.trt_policy`:
profiles, precision plan; :mod:`vbedge.backends.trt_onnx`: what an 8.x parser would misread);
then every TensorRT call that reports failure (None/False/negative) is checked and raises an error
naming the step. Written against the TensorRT Python API and checked by reading Polygraphy and
NVIDIA's samples; NOT RUN against a real TensorRT (docs/tensorrt.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..engine_cache import atomic_write_bytes, file_sha256
from ..errors import FormatError, InvalidInputError, VbedgeError
from .base import BackendUnavailableError
from .trt_onnx import inspect_onnx, parser_problems
from .trt_policy import CONVERSION_VERSION, parse_version, plan_build, validate_profiles

log = logging.getLogger("vbedge")


DEFAULT_WORKSPACE_BYTES = 1 << 30


class TensorRTError(VbedgeError, RuntimeError):
    """A TensorRT step failed (network creation, engine build, deserialization, execution).

    The message names the step and the tensor/shape involved, plus TensorRT's own last errors.
    """


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        from .install_hints import TENSORRT_HINT

        raise BackendUnavailableError(f"TensorRT's Python package cannot be imported ({exc}); {TENSORRT_HINT}") from exc
    return tensorrt


def _make_logger(trt):
    """A TensorRT logger that forwards to logging.getLogger('vbedge') and remembers recent errors."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors = (self.errors + [msg])[-5:]
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == sev.INFO:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _make_progress_monitor(trt, report):
    """A trt.IProgressMonitor (TensorRT 10+) that calls ``report(phase, step, steps)``; never cancels."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = int(num_steps)
            report(phase_name, 0, int(num_steps))

        def step_complete(self, phase_name, step):
            report(phase_name, int(step), self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            total = self.steps.pop(phase_name, 0)
            report(phase_name, total, total)

    return _Monitor()


def _trt_errors(logger):
    return f" TensorRT said: {' | '.join(logger.errors)}" if getattr(logger, "errors", None) else ""


def _parser_errors(parser):
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node, desc = error.node(), error.desc()
        # node_name/node_operator exist in TensorRT >= 8.6; older parsers give only the index.
        name = error.node_name() if hasattr(error, "node_name") else ""
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f"node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        lines.append(f"{where}: {desc}")
    return lines


def build_engine(onnx_path, precision="fp32", profiles=None, workspace_bytes=DEFAULT_WORKSPACE_BYTES,
                 timing_cache_path=None, dla_core=None, strongly_typed="auto", progress=None):
    """Build a serialized TensorRT engine (bytes) from an ONNX file.

    Profiles and the precision/typing plan are validated in pure Python first (see
    :func:`validate_profiles`, :func:`plan_build`). Every TensorRT call that reports failure
    (None/False/negative) raises TensorRTError naming the step. The timing cache at
    ``timing_cache_path`` is loaded when present and written back after the build. ``progress``:
    None, or a callable ``(phase, step, steps)`` that TensorRT's progress monitor reports to
    (TensorRT 10+; older versions build without progress reports). The engine is built with
    detailed layer information so :meth:`TensorRTBackend.layer_precisions` can read it.
    """
    onnx_path = Path(onnx_path)
    if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes <= 0:
        raise InvalidInputError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
    info = inspect_onnx(onnx_path)
    canonical_profiles = validate_profiles(info.inputs, profiles)
    trt = _import_tensorrt()
    plan = plan_build(trt.__version__, precision, strongly_typed, info, dla_core)
    major, _ = parse_version(trt.__version__)
    if major < 10:
        problems = _tensorrt8_problems(onnx_path, trt.__version__)
        if problems:
            raise FormatError(
                f"TensorRT {trt.__version__} would misread {onnx_path.name}: " + "; ".join(problems)
                + ". Convert it first (vbedge.export.trt8.convert_for_tensorrt8; TensorRTBackend.from_onnx does "
                "that automatically into the engine cache)"
            )
    log.info("building TensorRT %s engine for %s: %s", precision, onnx_path.name, plan.reason)

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    if not builder:
        raise TensorRTError(f"trt.Builder could not be created (no CUDA device or driver?).{_trt_errors(logger)}")
    flags = 0
    if major < 10:
        # TensorRT 8.x: the ONNX parser needs an explicit-batch network (implicit batch is the
        # default there; 10 deprecated the flag and is always explicit).
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    elif plan.strongly_typed and major < 11:
        # In TensorRT 11 the flag is deprecated and ignored (always strongly typed), so we pass 0 there.
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if not network:
        raise TensorRTError(f"builder.create_network(flags={flags}) failed.{_trt_errors(logger)}")
    parser = trt.OnnxParser(network, logger)
    if not parser:
        raise TensorRTError(f"trt.OnnxParser could not be created.{_trt_errors(logger)}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or ["no error recorded by the parser"]
        raise FormatError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors))

    config = builder.create_builder_config()
    if not config:
        raise TensorRTError(f"builder.create_builder_config() failed.{_trt_errors(logger)}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if hasattr(trt, "ProfilingVerbosity"):
        # Per-layer precisions in the engine inspector (does not change the kernels chosen).
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _make_progress_monitor(trt, progress)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if dla_core is not None:
        available = builder.num_DLA_cores
        if not 0 <= dla_core < available:
            raise InvalidInputError(f"dla_core {dla_core} does not exist: this device has {available} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core

    for index, profile in enumerate(canonical_profiles):
        trt_profile = builder.create_optimization_profile()
        if not trt_profile:
            raise TensorRTError(f"builder.create_optimization_profile() failed for profile {index}")
        for name, (low, opt, high) in profile:
            if trt_profile.set_shape(name, low, opt, high) is False:
                raise TensorRTError(f"profile {index}: set_shape({name!r}, min={low}, opt={opt}, max={high}) was refused.{_trt_errors(logger)}")
        if config.add_optimization_profile(trt_profile) < 0:
            raise TensorRTError(f"profile {index} ({dict(profile)}) was refused by the builder config.{_trt_errors(logger)}")

    timing_cache = _load_timing_cache(config, timing_cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        shapes = {name: rng for profile in canonical_profiles for name, rng in profile}
        raise TensorRTError(
            f"TensorRT could not build a {precision} engine for {onnx_path.name} "
            f"({'strongly' if plan.strongly_typed else 'weakly'} typed, workspace {workspace_bytes} bytes, "
            f"profiles {shapes or 'static'}, dla_core {dla_core}).{_trt_errors(logger)}"
        )
    if timing_cache_path is not None and timing_cache is not None:
        _save_timing_cache(config, timing_cache_path)
    return bytes(memoryview(serialized))


def _tensorrt8_problems(onnx_path, tensorrt_version):
    """parser_problems of the file for TensorRT 8.x; [] when onnx is missing is not an option: refuse."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt_version} misreads opset-18 graphs, and checking one needs the onnx package: "
            "pip install onnx"
        ) from exc
    return parser_problems(onnx.load(str(onnx_path), load_external_data=False), tensorrt_version)


def prepare_onnx_for(onnx_path, tensorrt_version, folder, profiles=None):
    """The ONNX file to build from for ``tensorrt_version``: ``onnx_path`` itself on TensorRT 10+, or
    its TensorRT 8.x rewrite (:mod:`vbedge.export.trt8`) stored in ``folder`` and checked against the
    original with ONNX Runtime (at the first profile's min shapes, or batch 1). Returns ``(path, notes)``.
    """
    major, _ = parse_version(tensorrt_version)
    onnx_path = Path(onnx_path)
    if major >= 10 or not _tensorrt8_problems(onnx_path, tensorrt_version):
        return onnx_path, []
    import numpy as np

    from ..export.trt8 import check_same_outputs, convert_for_tensorrt8

    target = Path(folder) / f"{onnx_path.stem}.trt{_major_minor(tensorrt_version)}-v{CONVERSION_VERSION}-" \
                            f"{file_sha256(onnx_path)[:12]}.onnx"
    if target.is_file():
        return target, [f"using the TensorRT 8.x rewrite {target.name}"]
    converted, notes = convert_for_tensorrt8(onnx_path, tensorrt_version)
    specs = inspect_onnx(onnx_path).inputs
    first = validate_profiles(specs, profiles)[0] if profiles is not None else ()
    low = {name: rng[0] for name, rng in first}
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = low.get(spec.name, tuple(d if isinstance(d, int) else 1 for d in spec.shape))
        feeds[spec.name] = (rng.normal(size=shape).astype(spec.dtype) if spec.dtype.startswith("float")
                            else np.zeros(shape, dtype=spec.dtype))
    check_same_outputs(onnx_path, converted, feeds)
    atomic_write_bytes(target, [converted.SerializeToString()])
    log.info("TensorRT %s: %s rewritten as %s (%s); outputs match the original in ONNX Runtime",
             tensorrt_version, onnx_path.name, target.name, "; ".join(notes))
    return target, notes


def _major_minor(version):
    major, minor = parse_version(version)
    return f"{major}.{minor}"


def _load_timing_cache(config, path):
    """Attach a timing cache (from ``path`` when it exists) to ``config``; return it, or None."""
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    if not cache and data:
        log.warning("TensorRT could not read the timing cache %s; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    if not cache:
        log.warning("TensorRT could not create a timing cache; building without one")
        return None
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another device/version is refused by TensorRT; start fresh rather than fail.
        log.warning("TensorRT refused the timing cache %s (other device or version?); starting an empty one", path)
        cache = config.create_timing_cache(b"")
        if not cache or not config.set_timing_cache(cache, ignore_mismatch=False):
            return None
    return cache


def _save_timing_cache(config, path):
    cache = config.get_timing_cache()
    if not cache:
        log.warning("TensorRT returned no timing cache to save to %s", path)
        return
    blob = cache.serialize()
    if blob is None:
        log.warning("TensorRT could not serialize the timing cache for %s", path)
        return
    atomic_write_bytes(path, [bytes(memoryview(blob))])
