"""OpenVINO backend: Intel's CPU runtime, which runs the bundle's ONNX faster than ONNX Runtime on
CPUs with AVX-512/BF16 (docs/openvino.md). Install it with ``pip install 'vbedge[openvino]'``.

Precision is always explicit (OpenVINO's own default on a BF16-capable CPU is BF16, which vbedge
never picks silently):

* ``fp32``: the FP32 ONNX with ``INFERENCE_PRECISION_HINT=f32``;
* ``bf16``: the FP32 ONNX with ``INFERENCE_PRECISION_HINT=bf16``, only where OpenVINO reports
  ``BF16`` in the CPU's ``OPTIMIZATION_CAPABILITIES`` (refused elsewhere: OpenVINO would emulate it);
* ``int8``: the bundle's Q/DQ graph (OpenVINO runs its quantized layers in INT8, the rest in f32).

After compiling, :attr:`OpenVinoBackend.precision_report` says what actually ran: the compiled
model's ``INFERENCE_PRECISION_HINT`` and how many executed layers ran in each precision.
"""

from __future__ import annotations

import io
import logging
import platform
import threading
from collections import Counter
from pathlib import Path

from ..errors import FormatError, InvalidInputError
from .base import Backend, BackendUnavailableError, TensorSpec, validate_inputs

log = logging.getLogger("vbedge")

OPENVINO_HINT = "pip install 'vbedge[openvino]' (or pip install openvino)"
#: Precisions the OpenVINO backend runs, and the inference precision hint each uses.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# Executed-layer precisions OpenVINO reports, in vbedge's names.
_RUNTIME_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}
# Layers that carry the compute; their runtime precision is what "ran in INT8/BF16" means.
_COMPUTE_LAYERS = {"Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"}


def import_openvino():
    """``openvino`` module, or BackendUnavailableError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"the openvino backend needs OpenVINO, which is not installed ({exc}): {OPENVINO_HINT}") from exc
    return openvino


def cpu_capabilities(core=None):
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the CPU, e.g. ['BF16', 'FP32', 'INT8', ...]."""
    if core is None:
        core = import_openvino().Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def check_precision(precision, capabilities):
    """Raise InvalidInputError / BackendUnavailableError when ``precision`` cannot run on this CPU."""
    if precision not in PRECISION_HINTS:
        raise InvalidInputError(
            f"openvino precision must be one of {sorted(PRECISION_HINTS)}, got {precision!r} "
            "(FP16 graphs: use the onnxruntime or tensorrt backend)"
        )
    if precision == "bf16" and "BF16" not in capabilities:
        raise BackendUnavailableError(
            f"precision 'bf16' needs a CPU with native BF16 (AVX512_BF16 or AMX); OpenVINO reports "
            f"capabilities {capabilities} here; use precision 'fp32'"
        )


def _expose_concat_outputs(ov, model) -> int:
    """Make every float Concat's output a model output (OpenVINO INT8 workaround); return how many.

    Measured on OpenVINO 2026.4 (CPU plugin, AMD EPYC with AVX-512 VNNI and without; docs/openvino.md):
    the S3D Q/DQ graph compiled as it is gave features at cosine 0.94 (worst 0.77) to the same Q/DQ
    arithmetic run by ONNX Runtime, and kept about half of the visual tokens; with each of its 9
    Concat outputs also a model output the cosine is 0.997 (worst 0.992), at about 16% more time.
    Exposing the ReLU or MaxPool outputs instead changed nothing, and removing the Q/DQ after the
    concats or giving their inputs one scale did not help either, so some CPU-plugin optimisation
    of an internal INT8 concat is wrong; which one was not found. The extra outputs are computed
    anyway and never copied out (:meth:`OpenVinoBackend.run` returns the model's own outputs).
    """
    extra = [op.output(0) for op in model.get_ops()
             if op.get_type_name() == "Concat" and op.get_output_element_type(0) == ov.Type.f32]
    if extra:
        model.add_outputs(extra)
    return len(extra)


def _spec(port, kind, index):
    try:
        name = port.get_any_name()
    except RuntimeError as exc:  # a tensor without a name cannot be fed by name
        raise FormatError(f"model {kind} {index} has no tensor name") from exc
    try:
        dtype = port.get_element_type().to_dtype().name
    except (RuntimeError, TypeError) as exc:
        raise FormatError(f"tensor {name!r} has type {port.get_element_type()}, which vbedge backends do not support") from exc
    shape = tuple(dim.get_length() if dim.is_static else f"{name}_dim{axis}"
                  for axis, dim in enumerate(port.get_partial_shape()))
    return TensorSpec(name, dtype, shape)


class OpenVinoBackend(Backend):
    """Runs an ONNX model with OpenVINO on the CPU.

    Args:
        onnx_path: the ``.onnx`` file (FP32, or the Q/DQ graph for ``precision='int8'``).
        precision: 'fp32', 'bf16' or 'int8' (see the module docstring).
        intra_op_threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, all cores).
        cache_dir: folder for compiled models (:mod:`vbedge.openvino_cache`); None disables caching.
        model_name: readable name for cache files and logs (default: the file's stem).
        device: 'cpu' only (accepted for symmetry with the onnxruntime backend's option).
    """

    name = "openvino"

    def __init__(self, onnx_path, precision="fp32", intra_op_threads=None, cache_dir=None,
                 model_name=None, device="cpu"):
        ov = import_openvino()
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FormatError(f"ONNX model not found: {self.onnx_path}")
        if device != "cpu":
            raise InvalidInputError(f"the openvino backend runs on device 'cpu' only, got {device!r}")
        core = ov.Core()
        self.capabilities = cpu_capabilities(core)
        check_precision(precision, self.capabilities)
        self.precision = precision
        self.device = device
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if intra_op_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        try:
            model = core.read_model(str(self.onnx_path))
        except RuntimeError as exc:
            raise FormatError(f"openvino cannot read {self.onnx_path}: {exc}") from exc
        self._inputs = [_spec(p, "input", i) for i, p in enumerate(model.inputs)]
        self._outputs = [_spec(p, "output", i) for i, p in enumerate(model.outputs)]
        # Read after the specs: run() returns only the model's own outputs.
        self.concat_outputs_added = _expose_concat_outputs(ov, model) if precision == "int8" else 0
        self.cache_path = None
        self.cache_hit = False
        self._compiled = self._compile(ov, core, model, config, cache_dir, model_name or self.onnx_path.stem)
        self._request = self._compiled.create_infer_request()
        # One infer request holds its input/output buffers: runs from several threads (the
        # pipeline's S3D stage) take turns on it, as ONNX Runtime's session.run may be shared.
        self._lock = threading.Lock()
        self.precision_report = self._precision_report()
        if precision == "int8" and self.precision_report["compute_layers"].get("int8", 0) == 0:
            log.warning("openvino backend: %s was asked for int8 but no compute layer runs in INT8 "
                        "(is it a Q/DQ graph?): %s", self.onnx_path.name, self.precision_report)
        log.info("openvino backend: %s, %s requested, ran %s (cache %s)", self.onnx_path.name, precision,
                 self.precision_report["compute_layers"], "hit" if self.cache_hit else "miss")

    def _compile(self, ov, core, model, config, cache_dir, model_name):
        try:
            if cache_dir is None:
                return core.compile_model(model, "CPU", config)
            from ..engine_cache import file_sha256
            from ..openvino_cache import CompiledModelCache, CompiledModelKey

            cache = CompiledModelCache(cache_dir)
            key = CompiledModelKey(
                model=model_name, openvino_version=ov.get_version(),
                # OpenVINO's device name is the CPUID brand string (what /proc/cpuinfo shows).
                cpu=f"{core.get_property('CPU', 'FULL_DEVICE_NAME')} | {platform.machine()} | {','.join(self.capabilities)}",
                precision=self.precision, onnx_sha256=file_sha256(self.onnx_path),
                # The key only: a model compiled without the INT8 concat workaround is another model.
                options={**config, "vbedge_concat_outputs": str(self.concat_outputs_added)},
            )
            self.cache_path = cache.path_for(key)
            blob = cache.load(key)
            if blob is not None:
                try:
                    compiled = core.import_model(io.BytesIO(blob), "CPU", config)
                    self.cache_hit = True
                    return compiled
                except RuntimeError as exc:  # verified bytes OpenVINO still refuses: recompile
                    log.warning("openvino cache: OpenVINO refused %s (%s); recompiling", self.cache_path.name, exc)
            compiled = core.compile_model(model, "CPU", config)
            if cache.store(key, compiled.export_model().getvalue()) is None:
                self.cache_path = None
            return compiled
        except RuntimeError as exc:  # OpenVINO's compile errors (unsupported op, bad config)
            raise FormatError(f"openvino cannot compile {self.onnx_path.name} with {config}: {exc}") from exc

    def _precision_report(self):
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.to_string() if hasattr(hint, "to_string") else str(hint).lower()
        layers, compute = Counter(), Counter()
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            rt_info = op.get_rt_info()
            kind = rt_info["layerType"].astype(str)
            if kind in ("Input", "Output", "Const", "Parameter", "Result"):
                continue
            precision = rt_info["runtimePrecision"].astype(str).lower()
            precision = _RUNTIME_NAMES.get(precision, precision)
            layers[precision] += 1
            if kind in _COMPUTE_LAYERS:
                compute[precision] += 1
        return {"requested": self.precision, "inference_precision_hint": _RUNTIME_NAMES.get(hint, hint),
                "compute_layers": dict(compute), "layers": dict(layers)}

    @property
    def actual_precision(self):
        """The precision most compute layers (convolutions, matmuls) ran in: 'fp32', 'bf16' or 'int8'."""
        compute = self.precision_report["compute_layers"]
        return max(compute, key=compute.get) if compute else self.precision_report["inference_precision_hint"]

    def run(self, inputs):
        """Validate ``inputs`` against the model's specs, run, and return dict output name -> array."""
        if self._compiled is None:
            raise InvalidInputError(f"{self.onnx_path.name}: backend is closed")
        feeds = validate_inputs(self._inputs, inputs, model=self.onnx_path.name)
        with self._lock:
            request = self._request
            if request is None:
                raise InvalidInputError(f"{self.onnx_path.name}: backend is closed")
            try:
                request.infer(feeds)
            except RuntimeError as exc:  # shape mismatch inside the graph, ...
                shapes = {name: tuple(a.shape) for name, a in feeds.items()}
                raise InvalidInputError(f"openvino failed on {self.onnx_path.name} with input shapes {shapes}: {exc}") from exc
            # The request reuses its output buffers on the next run: hand out copies.
            return {spec.name: request.get_tensor(spec.name).data.copy() for spec in self._outputs}

    def close(self):
        with self._lock:  # not while a run is using the request
            self._request = None
            self._compiled = None
