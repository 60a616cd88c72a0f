"""How to install an optional backend, for error messages (shared by probing and the backends)."""

__all__ = ["TENSORRT_HINT"]

TENSORRT_HINT = (
    "install it with pip install 'vbedge[tensorrt]' (x86_64/SBSA with a CUDA driver), "
    "or on Jetson use the TensorRT that JetPack installs (JetPack 6 = TensorRT 10; "
    "do not pip-install tensorrt there)"
)
