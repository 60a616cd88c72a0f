"""INT8 calibration, Q/DQ quantization and accuracy reports (installed as vbedge.calib).

Submodules import onnx/onnxruntime lazily; importing this package imports nothing heavy.
"""
