"""Torch modules of vbedge: the S3D feature extractor and VideoBERT.

Imported only by export and training code (they need the ``export`` extra: torch, torchvision,
transformers). Nothing here is imported by ``import vbedge``; import the submodules explicitly::

    from vbedge.models.s3d import build_s3d_feature_extractor
"""
