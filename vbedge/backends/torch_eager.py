"""PyTorch eager backend: runs a bundle's models from their PyTorch weights, on the CPU or a GPU.

On the CPU it is the reference the other backends (ONNX Runtime, TensorRT) are checked against.
On CUDA it is a real GPU backend for machines without TensorRT: ``device='cuda'`` (or
``'cuda:N'``) with ``precision='fp16'`` runs under ``torch.autocast`` (convolutions and matmuls
in FP16, normalisations and softmax in FP32), and :meth:`TorchBackend.run_to_device` /
:meth:`TorchBackend.run_device` keep outputs on the GPU as torch tensors, so S3D features go to
the CUDA tokenizer without a copy, on the stream they were computed on. It needs torch
(vbedge[export]) and a bundle built with ``--reference-weights``.
"""

import contextlib

import numpy as np

from ..cuda_interop import is_torch_tensor, view_device_array, wait_for_producer
from ..errors import FormatError, InvalidInputError
from .base import Backend, BackendUnavailableError, TensorSpec, validate_inputs

PRECISIONS = ("fp32", "fp16")


class TorchBackend(Backend):
    """Runs a torch module whose forward takes the model's inputs in spec order.

    Args:
        module: the torch module.
        inputs, outputs: TensorSpec lists (or their dicts).
        model: name for messages.
        threads: CPU threads for torch (None: torch's default).
        device: 'cpu', 'cuda', 'cuda:N' or a CUDA index.
        precision: 'fp32', or 'fp16' (CUDA only: torch.autocast to float16).
    """

    name = "torch"

    def __init__(self, module, inputs, outputs, model="model", threads=None, device="cpu", precision="fp32"):
        import torch

        if precision not in PRECISIONS:
            raise InvalidInputError(f"the torch backend runs precision 'fp32' or 'fp16', got {precision!r}")
        self._device = _torch_device(device)
        if precision == "fp16" and self._device.type != "cuda":
            raise InvalidInputError("precision 'fp16' needs device='cuda' for the torch backend (CPU runs fp32)")
        self._module = module.eval().to(self._device)
        self._inputs = [spec if isinstance(spec, TensorSpec) else TensorSpec.from_dict(spec) for spec in inputs]
        self._outputs = [spec if isinstance(spec, TensorSpec) else TensorSpec.from_dict(spec) for spec in outputs]
        self._model = model
        self._threads = threads
        self.precision = precision
        self._torch = torch

    @property
    def device(self):
        """The torch device the module runs on."""
        return self._device

    @classmethod
    def from_bundle(cls, bundle, model, threads=None, device="cpu", precision="fp32"):
        """The backend of ``model`` ('s3d' or 'videobert') in ``bundle`` (see the class for ``device``/``precision``)."""
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                "the torch backend needs torch: pip install 'vbedge[export]'"
            ) from exc
        spec = bundle.manifest["models"][model] if model in bundle.models() else None
        if spec is None:
            raise FormatError(f"bundle has no model {model!r}; it has {bundle.models()}")
        reference = spec.get("reference")
        if not reference:
            raise BackendUnavailableError(
                f"bundle {bundle.root} has no PyTorch reference weights for {model}; rebuild it with "
                "vbedge build --reference-weights to use the torch backend"
            )
        path = bundle.root / reference
        if model == "s3d":
            from vbedge.models.s3d import build_s3d_feature_extractor

            module = build_s3d_feature_extractor(weights=path)
        elif model == "videobert":
            from vbedge.export.videobert import edge_module
            from vbedge.models.videobert import VideoBert

            videobert = VideoBert.load(path, codebook=bundle.codebook)
            module = edge_module(videobert.model, videobert.vocab, int(spec["top_k"]))
        else:
            raise FormatError(f"the torch backend does not know how to build model {model!r}")
        return cls(module, spec["inputs"], spec["outputs"], model=model, threads=threads, device=device,
                   precision=precision)

    def _autocast(self):
        if self.precision == "fp16":
            return self._torch.autocast("cuda", dtype=self._torch.float16)
        return contextlib.nullcontext()

    def _forward(self, args):
        torch = self._torch
        if self._threads:
            torch.set_num_threads(int(self._threads))
        with torch.inference_mode(), self._autocast():
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self._outputs):
            raise FormatError(f"{self._model} reference returned {len(result)} outputs, expected {len(self._outputs)}")
        out = {}
        for spec, tensor in zip(self._outputs, result):
            want = getattr(torch, spec.dtype)
            out[spec.name] = tensor if tensor.dtype == want else tensor.to(want)  # fp16 outputs back to the spec
        return out

    def run(self, inputs):
        """Host arrays in, host arrays out (synchronises)."""
        result = self.run_to_device(inputs)
        return {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in result.items()}

    def run_to_device(self, inputs):
        """Host arrays in, torch tensors on the backend's device out, queued on torch's current stream."""
        checked = validate_inputs(self._inputs, inputs, self._model)
        torch = self._torch
        args = []
        for spec in self._inputs:
            tensor = torch.from_numpy(checked[spec.name])
            if self._device.type == "cuda":
                tensor = tensor.pin_memory().to(self._device, non_blocking=True)
            args.append(tensor)
        return self._forward(args)

    def run_device(self, device_inputs, stream=None):
        """Device arrays in (torch CUDA tensors or any ``__cuda_array_interface__``), torch tensors out.

        Runs on ``stream`` (a torch stream, or an int handle) or torch's current stream; waits on
        each input's producer stream first. The outputs are ordered on that stream.
        """
        torch = self._torch
        if self._device.type != "cuda":
            raise InvalidInputError(f"{self._model}: run_device needs the torch backend on CUDA (it runs on {self._device})")
        expected = {spec.name: spec for spec in self._inputs}
        if not isinstance(device_inputs, dict) or set(device_inputs) != set(expected):
            got = sorted(device_inputs) if isinstance(device_inputs, dict) else type(device_inputs).__name__
            raise InvalidInputError(f"{self._model} expects device inputs {sorted(expected)}, got {got}")
        if stream is None:
            context = contextlib.nullcontext()
        elif isinstance(stream, torch.cuda.Stream):
            context = torch.cuda.stream(stream)
        else:
            from ..cuda_interop import stream_handle

            context = torch.cuda.stream(torch.cuda.ExternalStream(stream_handle(stream), device=self._device))
        with context:
            current = torch.cuda.current_stream(self._device).cuda_stream or 1
            args = []
            for spec in self._inputs:
                obj = device_inputs[spec.name]
                view = view_device_array(obj, name=f"{self._model} input {spec.name!r}")
                wait_for_producer(current, view.stream, self._device.index or 0)
                tensor = obj if is_torch_tensor(obj) else torch.as_tensor(obj, device=self._device)
                if str(tensor.dtype).replace("torch.", "") != spec.dtype:
                    raise InvalidInputError(f"{self._model} input {spec.name!r} must be {spec.dtype}, got {tensor.dtype}")
                args.append(tensor)
            return self._forward(args)


def _torch_device(device):
    import torch

    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"torch device must be 'cpu', 'cuda', 'cuda:N' or an index, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"torch device {device!r} requested but torch has no usable CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"torch device must be 'cpu' or CUDA, got {device!r}")
    return dev
