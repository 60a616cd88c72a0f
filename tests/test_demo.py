"""The README's demo: `vbedge demo` trains on a synthetic kitchen; its captions must be right.

One tiny demo run (a few videos, a short S3D pretraining and VideoBERT training) is shared by the
slow tests: the plumbing test checks what it writes and that a second run reuses the cache; the
goal test requires the trained bundle's zero-shot verb and noun top-1 on held-out videos to beat
the text-only prior, so a demo whose captions are wrong fails there.
"""

import importlib.util
import json

import pytest

from vbedge.demo import DEMO_REQUIREMENTS, DEMO_SIZES, codebook_shape, run_demo, videobert_precision

_missing = [dist for module, dist in DEMO_REQUIREMENTS if importlib.util.find_spec(module) is None]
if importlib.util.find_spec("vbedge.training") is None:
    _missing.append("vbedge.training (the trainer)")
needs_demo = pytest.mark.skipif(bool(_missing), reason=f"demo needs {_missing}")


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


def test_videobert_trains_in_bf16_only_where_the_cpu_multiplies_it_natively():
    avx2 = {"sse4_2", "avx", "avx2", "fma"}
    assert videobert_precision(avx2, cuda=False) == "fp32"
    assert videobert_precision(avx2 | {"avx512f", "avx512_vnni"}, cuda=False) == "fp32"
    assert videobert_precision(avx2 | {"avx512f", "avx512_bf16"}, cuda=False) == "bf16"
    assert videobert_precision(avx2 | {"amx_tile", "amx_bf16"}, cuda=False) == "bf16"
    assert videobert_precision({"fp", "asimd", "asimddp"}, cuda=False) == "fp32"  # aarch64: stays float32


def test_videobert_on_a_gpu_follows_the_gpu_not_the_host_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    for has_bf16, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, _v=has_bf16, **k: _v)
        assert videobert_precision({"avx2"}, cuda=True) == expected
        assert videobert_precision({"avx512_bf16"}, cuda=True) == expected


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "w"
    lines = []
    result = run_demo(work, size="tiny", backend="onnxruntime", echo=lines.append)
    return work, result, "\n".join(lines)


@pytest.mark.slow
@needs_demo
def test_demo_runs_end_to_end_and_reuses_its_cache(tiny_demo):
    work, result, text = tiny_demo
    assert "SYNTHETIC" in text and "true:" in text
    assert result["synthetic"] is True and result["steps"] >= 8
    saved = json.loads((work / "zero_shot.json").read_text())
    assert saved["verb_top1"] == result["verb_top1"] and len(saved["predictions"]) == result["steps"]
    assert (work / "bundle" / "manifest.json").is_file() and (work / "events.jsonl").stat().st_size > 0
    # VideoBERT trained in the precision the demo chose for this CPU, and demo.json says which.
    precision = json.loads((work / "demo.json").read_text())["videobert_precision"]
    trained = json.loads((work / "videobert" / "model" / "videobert.json").read_text())
    assert precision == videobert_precision() == trained["init"]["training"]["options"]["precision"]
    again = []
    second = run_demo(work, size="tiny", backend="onnxruntime", echo=again.append)
    assert sum("cached" in line for line in again) >= 4
    assert second["verb_top1"] == result["verb_top1"] and second["noun_top1"] == result["noun_top1"]


@pytest.mark.slow
@needs_demo
def test_demo_captions_beat_the_text_only_prior(tiny_demo):
    # The tiny world (48 training videos of 3 steps, 24 held-out steps: one step = 4.2 points)
    # carries the verb well above the prior (Intel Xeon: 58% vs 21% when this was written; AMD EPYC:
    # 46% vs 21%). Its noun top-1 sits at the prior's level on either CPU (8% and 0% vs 4%: the two
    # machines' float rounding trains different models), but its top-5 does not (AMD: 75% vs 46%).
    # So the verb's top-1 and the noun's top-1 and top-5 are judged together, with a margin a model
    # whose captions ignore the video (which scores the prior on each) cannot reach.
    _, result, text = tiny_demo
    assert result["verb_top1"] >= result["prior_verb_top1"] + 0.2, text
    gain = sum(result[k] - result[f"prior_{k}"] for k in ("verb_top1", "noun_top1", "noun_top5"))
    assert gain >= 0.35, text


def test_demo_refuses_an_unknown_size(tmp_path):
    from vbedge.errors import InvalidInputError

    if _missing:
        pytest.skip(f"demo needs {_missing}")
    with pytest.raises(InvalidInputError):
        run_demo(tmp_path, size="huge")
    assert "tiny" in DEMO_SIZES


def test_sizes_hand_their_pretraining_to_s3d_and_the_cli_offers_every_size(tmp_path, monkeypatch):
    """The default and large sizes train S3D's stem (window epochs); the tiny size keeps it random."""
    import argparse

    import vbedge.synthetic.pretrain as pretrain
    import vbedge.synthetic.world as world
    from vbedge.cli.demo import register

    if _missing:
        pytest.skip(f"demo needs {_missing}")
    seen = {}

    class Stop(Exception):
        pass

    def fake_pretrain(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(world, "render_world", lambda *a, **k: None)
    monkeypatch.setattr(pretrain, "world_clips", lambda *a, **k: {})
    monkeypatch.setattr(pretrain, "pretrain_s3d", fake_pretrain)
    for size, expected, window_copies in (("large", 4, True), ("default", 4, False), ("tiny", 0, False)):
        seen.clear()
        with pytest.raises(Stop):
            run_demo(tmp_path / size, size=size)
        assert seen["window_epochs"] == expected and seen["max_epochs"] == DEMO_SIZES[size]["pretrain_epochs"]
        assert seen["window_zoom_copies"] is window_copies and seen.get("zoom_copies", False) is False, size
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["demo", "--size", "large"]).size == "large"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--size", "huge"])
