"""Inference backends: one small interface, several engines.

- :class:`vbedge.backends.onnxruntime.OnnxRuntimeBackend`: ONNX Runtime (CPU everywhere; CUDA or
  TensorRT execution providers when that build of onnxruntime is installed).
- :class:`vbedge.backends.tensorrt.TensorRTBackend`: native TensorRT engines built from the
  bundle's ONNX on the target and cached beside it.
- :class:`vbedge.backends.torch_eager.TorchBackend`: the PyTorch reference.

Each is imported only when used, so this package costs nothing to import.
"""

from .base import Backend, BackendUnavailableError, TensorSpec

__all__ = ["Backend", "BackendUnavailableError", "TensorSpec"]
