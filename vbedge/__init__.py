"""vbedge: edge inference SDK for VideoBERT.

``import vbedge`` is light: it imports numpy only. Heavy dependencies (torch, onnx, TensorRT,
pycuda, cupy) are imported lazily by the functions that need them.
"""

from .errors import FormatError, InvalidInputError, MissingDependencyError, SignatureError, VbedgeError

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "HierarchicalCodebook",
    "Pipeline",
    "VideoBertVocab",
    "VbedgeError",
    "InvalidInputError",
    "FormatError",
    "MissingDependencyError",
    "SignatureError",
    "__version__",
]


def __getattr__(name):
    # Lazy so that `import vbedge` stays cheap and optional parts load only when used.
    if name == "Bundle":
        from .bundle import Bundle

        return Bundle
    if name == "HierarchicalCodebook":
        from .codebook import HierarchicalCodebook

        return HierarchicalCodebook
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name == "VideoBertVocab":
        from .vocab import VideoBertVocab

        return VideoBertVocab
    raise AttributeError(f"module 'vbedge' has no attribute {name!r}")
