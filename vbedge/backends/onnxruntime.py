"""ONNX Runtime backend: the default that runs everywhere (CPU), with CUDA/TensorRT execution providers
when the installed onnxruntime build has them (``pip install onnxruntime-gpu``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from ..errors import FormatError, InvalidInputError
from .base import Backend, BackendUnavailableError, TensorSpec, validate_inputs

log = logging.getLogger("vbedge")

# ONNX Runtime type strings -> NumPy dtype names (what TensorSpec and validate_inputs use).
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

# Provider lists per device, most preferred first. CPU always closes the list so that nodes an
# accelerator does not implement still run (ONNX Runtime partitions the graph).
DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_HINT = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (in place of onnxruntime; needs CUDA and cuDNN), "
    "or on Jetson the onnxruntime-gpu wheel for your JetPack",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu and install TensorRT "
    "(pip install 'vbedge[tensorrt]', or JetPack on Jetson)",
}


def _spec(node_arg):
    dtype = _ORT_TO_NUMPY.get(node_arg.type)
    if dtype is None:
        raise FormatError(f"tensor {node_arg.name!r} has type {node_arg.type}, which vbedge backends do not support")
    shape = []
    for axis, dim in enumerate(node_arg.shape):
        # ORT reports named dynamic dims as str and anonymous ones as None; TensorSpec wants a str.
        shape.append(dim if isinstance(dim, (int, str)) else f"{node_arg.name}_dim{axis}")
    return TensorSpec(node_arg.name, dtype, tuple(shape))


def providers_for(device, available):
    """Provider list for ``device`` ('cpu', 'cuda', 'tensorrt'); raise BackendUnavailableError when missing."""
    if device not in DEVICE_PROVIDERS:
        raise InvalidInputError(f"onnxruntime device must be one of {sorted(DEVICE_PROVIDERS)}, got {device!r}")
    wanted = DEVICE_PROVIDERS[device]
    missing = [p for p in wanted[:1] if p not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime device {device!r} needs {missing[0]}, which this onnxruntime build does not have "
            f"(available: {', '.join(available)}); {_HINT.get(missing[0], '')}".rstrip("; ")
        )
    return [p for p in wanted if p in available]


#: ONNX Runtime's graph optimisation levels by vbedge's names.
OPTIMIZATION_LEVELS = ("all", "basic")


def session_options(threads=None, optimization="all", spinning=True):
    """The ``onnxruntime.SessionOptions`` every vbedge session is made with (the one place they are set).

    Args:
        threads: intra-op threads (None or 0: ONNX Runtime's default, one per core).
        optimization: ``"all"`` (every graph optimisation, ONNX Runtime's default) or ``"basic"``
            (constant folding and redundancy removal only: a Q/DQ graph then runs its
            QuantizeLinear/DequantizeLinear nodes as they are, in float, instead of fused integer kernels).
        spinning: whether idle intra-op threads spin after a run (ONNX Runtime's
            ``session.intra_op.allow_spinning``, on by default). Off, they sleep: no core is burnt
            between runs, at the cost of a wake-up per run. Several sessions run in turn in one
            process want it off: each session's threads otherwise spin on the cores the next one
            runs on (``benchmarks/bench_ort_spinning.py``, docs/benchmarks.md).
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError(f"onnxruntime is not installed ({exc}): pip install onnxruntime") from exc
    if optimization not in OPTIMIZATION_LEVELS:
        raise InvalidInputError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[optimization]
    if threads:
        options.intra_op_num_threads = int(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model with ONNX Runtime.

    Args:
        onnx_path: the ``.onnx`` file.
        device: 'cpu' (default), 'cuda' or 'tensorrt' (ONNX Runtime's execution providers, which
            need the onnxruntime-gpu build).
        precision: what the ONNX file holds ('fp32', 'fp16', 'int8'); recorded for reports.
            ONNX Runtime runs the graph as it is; pick the bundle's file of that precision.
        intra_op_threads: threads for one operator (None: ONNX Runtime's default).
        provider_options: optional dict provider name -> options dict (e.g. device_id).
        conv2d_form: on the CPU, run the graph's separable 3D convolutions as 2D ones
            (:mod:`vbedge.backends.conv2d_form`: S3D about 1.25x faster, same results up to float
            summation order); the bundle's S3D gets it by default. Ignored on other devices.
        spinning: whether idle intra-op threads spin after a run (ONNX Runtime's
            ``session.intra_op.allow_spinning``, on by default). Off, they sleep: no core is burnt
            between runs, at the cost of a wake-up per run.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path, device="cpu", precision="fp32", intra_op_threads=None, provider_options=None,
                 conv2d_form=False, spinning=True):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"onnxruntime is not installed ({exc}): pip install onnxruntime") from exc
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FormatError(f"ONNX model not found: {self.onnx_path}")
        if precision not in ("fp32", "fp16", "int8"):
            raise InvalidInputError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
        self.precision = precision
        self.device = device
        #: Whether the session's idle intra-op threads spin (ONNX Runtime's default) or sleep.
        self.spinning = bool(spinning)
        providers = providers_for(device, ort.get_available_providers())
        options = session_options(intra_op_threads, spinning=spinning)
        provider_options = provider_options or {}
        unknown = sorted(set(provider_options) - set(providers))
        if unknown:
            raise InvalidInputError(f"provider_options for {unknown}, which are not in use (in use: {providers})")
        #: What ONNX Runtime was given: 'file' (the ONNX file as it is) or 'conv2d form'.
        self.graph_form = "file"
        with contextlib.ExitStack() as scratch:
            model = self.onnx_path
            if conv2d_form and device == "cpu":
                model = self._conv2d_form(scratch)
            try:
                self._session = ort.InferenceSession(
                    str(model),
                    sess_options=options,
                    providers=providers,
                    provider_options=[provider_options.get(p, {}) for p in providers],
                )
            except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
                raise FormatError(f"onnxruntime cannot load {self.onnx_path}: {exc}") from exc
        if self.graph_form != "file":
            from .conv2d_form import return_freed_memory

            return_freed_memory()  # what ONNX Runtime freed while optimising the rewritten graph
        used = self._session.get_providers()
        if providers[0] not in used:
            # ORT falls back to CPU silently when an accelerator's libraries fail to load; we do not.
            raise BackendUnavailableError(
                f"onnxruntime could not enable {providers[0]} for {self.onnx_path.name} (using {used}); "
                f"check the CUDA/cuDNN/TensorRT libraries; {_HINT.get(providers[0], '')}".rstrip("; ")
            )
        self.providers = used
        self._inputs = [_spec(arg) for arg in self._session.get_inputs()]
        self._outputs = [_spec(arg) for arg in self._session.get_outputs()]
        log.info("onnxruntime backend: %s (%s) on %s", self.onnx_path.name, self.graph_form, ", ".join(used))

    def _conv2d_form(self, scratch):
        """The path ONNX Runtime should load: the 2D form, in a private temporary folder that
        ``scratch`` (an ExitStack) removes once the session is made, when the rewrite applies (a
        file, not bytes: ONNX Runtime keeps about 30 MB more of a model given as bytes); else the
        ONNX file as it is."""
        from .conv2d_form import write_conv2d_form

        try:
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="vbedge-conv2d-")))
            scratch_path = folder / self.onnx_path.name
            counts = write_conv2d_form(self.onnx_path, scratch_path)
        except Exception as exc:  # a graph onnx cannot read: ONNX Runtime's own error says more next
            log.warning("onnxruntime: cannot rewrite %s as 2D convolutions (%s: %s); running it as it is",
                        self.onnx_path.name, type(exc).__name__, exc)
            return self.onnx_path
        if counts is None:
            return self.onnx_path
        self.graph_form = "conv2d form"
        return scratch_path

    def run(self, inputs):
        """Validate ``inputs`` against the model's specs, run, and return dict output name -> array."""
        if self._session is None:
            raise InvalidInputError(f"{self.onnx_path.name}: backend is closed")
        feeds = validate_inputs(self._inputs, inputs, model=self.onnx_path.name)
        names = [spec.name for spec in self._outputs]
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:  # ORT's runtime errors (shape mismatch inside the graph, ...)
            shapes = {name: tuple(a.shape) for name, a in feeds.items()}
            raise InvalidInputError(f"onnxruntime failed on {self.onnx_path.name} with input shapes {shapes}: {exc}") from exc
        return dict(zip(names, values))

    def close(self):
        self._session = None
