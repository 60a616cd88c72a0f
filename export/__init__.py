"""vbedge.export: turn trained checkpoints into checked ONNX graphs.

Installed as ``vbedge.export`` (setup.py maps the top-level ``export/`` folder). The modules here
need the ``export`` extra (torch, torchvision, onnx); they are imported explicitly
(``from vbedge.export import s3d``) so that importing this package costs nothing.

- :mod:`vbedge.export.s3d`: S3D feature extractor -> ``s3d.onnx``, ``s3d.fp16.onnx``, ``s3d.json``
- :mod:`vbedge.export.fp16`: FP16 conversion that keeps numerically fragile ops in FP32
- :mod:`vbedge.export.readiness`: TensorRT-readiness check of an ONNX graph, without TensorRT
- :mod:`vbedge.export.verify`: compare ONNX Runtime outputs with PyTorch, raise on failure
"""
