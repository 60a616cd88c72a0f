"""PyTorch eager reference backend: runs a bundle's models from their PyTorch weights.

It exists to check the other backends (ONNX Runtime, TensorRT) against the model they were
exported from, on the same bundle. It needs torch (vbedge[export]) and a bundle built with
``--reference-weights``; it is not meant for deployment.
"""

import numpy as np

from ..errors import FormatError
from .base import Backend, BackendUnavailableError, TensorSpec, validate_inputs


class TorchBackend(Backend):
    """Runs a torch module whose forward takes the model's inputs in spec order."""

    name = "torch"

    def __init__(self, module, inputs, outputs, model="model", threads=None):
        self._module = module.eval()
        self._inputs = [spec if isinstance(spec, TensorSpec) else TensorSpec.from_dict(spec) for spec in inputs]
        self._outputs = [spec if isinstance(spec, TensorSpec) else TensorSpec.from_dict(spec) for spec in outputs]
        self._model = model
        self._threads = threads

    @classmethod
    def from_bundle(cls, bundle, model, threads=None):
        """The reference backend of ``model`` ('s3d' or 'videobert') in ``bundle``."""
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
        return cls(module, spec["inputs"], spec["outputs"], model=model, threads=threads)

    def run(self, inputs):
        import torch

        checked = validate_inputs(self._inputs, inputs, self._model)
        args = [torch.from_numpy(checked[spec.name]) for spec in self._inputs]
        if self._threads:
            torch.set_num_threads(int(self._threads))
        with torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self._outputs):
            raise FormatError(f"{self._model} reference returned {len(result)} outputs, expected {len(self._outputs)}")
        return {spec.name: np.ascontiguousarray(t.detach().cpu().numpy()) for spec, t in zip(self._outputs, result)}
