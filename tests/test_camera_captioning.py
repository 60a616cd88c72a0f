"""Per-source captioning in one pipeline (``Pipeline.load(captioning={source: {...}})``).

Two synthetic videos go through one pipeline (S3D and VideoBERT batches mixing both sources),
each source with its own template / word list; the reference for each is the same video alone in
a pipeline whose global options are that template / word list. Small real bundle on ONNX Runtime.
"""

import pytest

cv2 = pytest.importorskip("cv2")

import vbedge.captioner  # noqa: E402
from vbedge.errors import InvalidInputError  # noqa: E402
from vbedge.pipeline import Pipeline  # noqa: E402

from test_pipeline import no_thread_left, varied_codebook, videos  # noqa: E402,F401  (fixtures reused)


def captions_alone(bundle, codebook, video, **options):
    with Pipeline.load(bundle, backend="onnxruntime", **options) as pipe:
        pipe.codebook = codebook
        events = list(pipe.stream({"only": video}))
    return [(e.clip_index, e.clip_caption, e.caption) for e in events], events


def test_two_sources_get_their_own_template_and_words(small_bundle, videos, varied_codebook,  # noqa: F811
                                                      monkeypatch):
    # Pick a verb list for "b" that changes its captions: the unrestricted model's second choice.
    _, free = captions_alone(small_bundle, varied_codebook, videos["b"], template="caption")
    second = [w for e in free for w, _ in e.verbs[1:]]
    assert second, "the check needs a second verb candidate"
    verbs = [second[0]]
    own_b = {"template": "caption", "verbs": verbs, "stable_clips": 1}
    expected_a, _ = captions_alone(small_bundle, varied_codebook, videos["a"])
    expected_b, _ = captions_alone(small_bundle, varied_codebook, videos["b"], template="caption",
                                   verbs=verbs, stable_clips=1)
    assert [c for _, c, _ in expected_b] != [e.clip_caption for e in free], "the verb list must matter"

    mixed_calls = []
    original = vbedge.captioner.predict_mixed

    def spy(backend, pairs):
        pairs = list(pairs)
        mixed_calls.append(len({id(c) for c, _ in pairs}))
        return original(backend, pairs)

    monkeypatch.setattr(vbedge.captioner, "predict_mixed", spy)
    # max_batch 4: the two sources' clips share S3D and VideoBERT runs (a CPU backend's "auto"
    # would run one clip at a time).
    with Pipeline.load(small_bundle, backend="onnxruntime", batch_timeout=5.0, max_batch=4,
                       captioning={"b": own_b}) as pipe:
        pipe.codebook = varied_codebook
        events = list(pipe.stream({"a": videos["a"], "b": videos["b"]}))
    assert max(mixed_calls) == 2, "no VideoBERT run mixed the two templates"
    got = {k: [(e.clip_index, e.clip_caption, e.caption) for e in events if e.source_id == k] for k in "ab"}
    assert got["a"] == expected_a
    assert got["b"] == expected_b
    assert all(c.startswith("now let me show you how to ") for _, c, _ in got["a"])
    assert all(c.startswith("now let's ") for _, c, _ in got["b"])
    assert all(w in verbs for e in events if e.source_id == "b" for w, _ in e.verbs)


def test_bad_per_source_options_fail_at_load_naming_the_source(small_bundle):
    with pytest.raises(InvalidInputError, match=r"source 'cam1'.*template 'no slots here' has no slot"):
        Pipeline.load(small_bundle, backend="onnxruntime", captioning={"cam1": {"template": "no slots here"}})
    with pytest.raises(InvalidInputError, match=r"captioning\['cam1'\]: unknown option\(s\) \['templat'\]"):
        Pipeline.load(small_bundle, backend="onnxruntime", captioning={"cam1": {"templat": "howto"}})
    with pytest.raises(InvalidInputError, match=r"source 'cam1'.*none of the verbs \['zzqxv'\]"):
        Pipeline.load(small_bundle, backend="onnxruntime", captioning={"cam1": {"verbs": ["zzqxv"]}})
    with pytest.raises(InvalidInputError, match=r"source 'cam1'.*stable_clips"):
        Pipeline.load(small_bundle, backend="onnxruntime", captioning={"cam1": {"stable_clips": 0}})


def test_captioning_for_a_source_the_stream_lacks_is_an_error(small_bundle, videos):  # noqa: F811
    with Pipeline.load(small_bundle, backend="onnxruntime", captioning={"cam9": {"template": "caption"}}) as pipe:
        with pytest.raises(InvalidInputError, match=r"\['cam9'\].*\['a'\]"):
            list(pipe.stream({"a": videos["a"]}))
        # offline tokenization has no captions: the per-source options do not apply there
        assert len(pipe.tokenize_video(videos["a"])) == 5


def test_tensorrt_limits_cover_every_captioner(small_bundle):
    from vbedge.backends.trt_policy import pipeline_limits
    from vbedge.captioner import Captioner

    short = Captioner(small_bundle.vocab, template="howto", context_clips=0, forecast_step=0)
    long = Captioner(small_bundle.vocab, template="caption", context_clips=3, forecast_step=1)
    both = pipeline_limits(4, 2, [short, long])["videobert"]
    assert both == {"batch": 4, "sequence": long.max_sequence_length, "positions": 5}
    assert pipeline_limits(4, 2, short)["videobert"] == {"batch": 2, "sequence": short.max_sequence_length,
                                                         "positions": 2}


def test_engines_built_ahead_cover_per_source_captioning(small_bundle, tmp_path, monkeypatch):
    """vbedge.engines over the FAKE TensorRT (tests/fake_tensorrt.py; no TensorRT here): engines built with a
    camera's longer template and context are the ones the pipeline with that camera loads, without a rebuild."""
    pytest.importorskip("onnx")
    import fake_tensorrt

    from vbedge.engines import build_engines

    fake = fake_tensorrt.install(monkeypatch)
    cache = tmp_path / "cache"
    captioning = {"cam": {"template": "caption", "context_clips": 4}}
    build_engines(small_bundle, cache_dir=cache, captioning=captioning)

    def videobert_built(**options):
        with Pipeline.load(small_bundle, backend="tensorrt", backend_options={"cache_dir": cache}, **options) as pipe:
            fake.calls.clear()
            pipe._videobert_backend()
            return "build_serialized_network" in fake.names()

    assert not videobert_built(captioning=captioning)
    # without the camera's options the VideoBERT profile is shorter: another engine (the check can fail)
    assert videobert_built()


def test_cli_engines_build_with_a_camera_config(small_bundle, tmp_path, monkeypatch):
    """``vbedge engines build --config`` over the FAKE TensorRT: the cameras' captioning bounds VideoBERT."""
    pytest.importorskip("onnx")
    import fake_tensorrt

    from vbedge.camera_config import load_camera_config
    from vbedge.cli import main

    fake = fake_tensorrt.install(monkeypatch)
    cache = tmp_path / "cache"
    config = tmp_path / "cameras.yaml"
    config.write_text("cameras:\n  cam: {input: 0, template: caption, context: 4}\n")
    assert main(["engines", "build", "--bundle", str(small_bundle.root), "--engine-cache", str(cache),
                 "--config", str(config), "--models", "videobert"]) == 0
    with Pipeline.load(small_bundle, backend="tensorrt", backend_options={"cache_dir": cache},
                       captioning=load_camera_config(config).captioning) as pipe:
        fake.calls.clear()
        pipe._videobert_backend()
        assert "build_serialized_network" not in fake.names()
