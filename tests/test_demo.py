"""The README's demo: `vbedge demo` trains on a synthetic kitchen and its captions must be right.

On the tiny world (a few videos, a short S3D pretraining and VideoBERT training) the trained
bundle's zero-shot verb and noun top-1 on held-out videos must beat the text-only prior: a demo
whose captions are wrong fails here.
"""

import importlib.util
import json

import pytest

from vbedge.demo import DEMO_REQUIREMENTS, DEMO_SIZES, codebook_shape, run_demo

_missing = [dist for module, dist in DEMO_REQUIREMENTS if importlib.util.find_spec(module) is None]
if importlib.util.find_spec("vbedge.training") is None:
    _missing.append("vbedge.training (the trainer)")


def test_demo_video_is_readable(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from vbedge.demo import write_demo_video

    path = write_demo_video(tmp_path / "v.mp4", seconds=1.0, fps=20.0)
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 20


def test_codebook_shape_shrinks_with_the_corpus():
    assert codebook_shape(6 * 12 ** 4) == (4, 12)
    assert codebook_shape(400) == (2, 8)
    assert codebook_shape(100) == (2, 4)
    levels, branching = codebook_shape(20)
    assert branching ** levels <= 20


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing), reason=f"demo needs {_missing}")
def test_demo_captions_beat_the_text_only_prior(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", size="tiny", backend="onnxruntime", echo=lines.append)
    text = "\n".join(lines)
    assert "SYNTHETIC" in text and "true:" in text
    assert result["synthetic"] is True and result["steps"] >= 8
    # The goal of the tiny world: video evidence beats the prior the words alone give.
    assert result["verb_top1"] > result["prior_verb_top1"], text
    assert result["noun_top1"] > result["prior_noun_top1"], text
    saved = json.loads((tmp_path / "demo" / "zero_shot.json").read_text())
    assert saved["verb_top1"] == result["verb_top1"] and len(saved["predictions"]) == result["steps"]
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()
    # A second run reuses every stage and gives the same figures.
    again = []
    second = run_demo(tmp_path / "demo", size="tiny", backend="onnxruntime", echo=again.append)
    assert sum("cached" in line for line in again) >= 4
    assert second["verb_top1"] == result["verb_top1"] and second["noun_top1"] == result["noun_top1"]


def test_demo_refuses_an_unknown_size(tmp_path):
    from vbedge.errors import InvalidInputError

    if _missing:
        pytest.skip(f"demo needs {_missing}")
    with pytest.raises(InvalidInputError):
        run_demo(tmp_path, size="huge")
    assert "tiny" in DEMO_SIZES
