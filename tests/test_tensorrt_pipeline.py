"""Pipeline over the TensorRT backend with FAKE ``tensorrt`` and ``pycuda`` modules (tests/fake_tensorrt.py).

LABELLED AS A FAKE: no TensorRT and no GPU exist here. The fake TensorRT "engine" runs its ONNX
file with ONNX Runtime on the bytes at the bound addresses, and the fake pycuda keeps a
per-thread context stack and refuses device calls on a thread without a current context. So
these tests exercise vbedge's plain-Python wiring around TensorRT, which the review found broken,
and nothing of TensorRT itself:

- two models built with profiles derived from the bundle manifest and the pipeline's options;
- per-model options (``s3d_options`` / ``videobert_options``) reaching only their model, and
  ONNX Runtime options left out for TensorRT under 'auto';
- calls from the pipeline's stage threads (the primary context pushed and popped on each);
- 'auto' falling back to ONNX Runtime with the reason, and '--backend tensorrt' failing loudly;
- the engine cache folder from $VBEDGE_ENGINE_CACHE.

The reference is the same pipeline on ONNX Runtime: the fake's arithmetic is ONNX Runtime's, so
equal tokens and captions show that shapes, dtypes, bindings and batching went through intact.
"""

import logging

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnx")

import fake_tensorrt  # noqa: E402

from vbedge.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from vbedge.backends.tensorrt import TensorRTBackend, TensorRTError  # noqa: E402
from vbedge.errors import InvalidInputError  # noqa: E402
from vbedge.pipeline import Pipeline  # noqa: E402

FPS, SIZE = 20, (160, 120)


def write_video(path, frames, seed):
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened()
    base = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    for i in range(frames):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt_pipeline_videos")
    return [write_video(folder / "a.avi", 40, 1), write_video(folder / "b.avi", 36, 2)]


@pytest.fixture()
def engine_cache(tmp_path, monkeypatch):
    """Engines go to a temporary folder (the shared test bundle stays untouched)."""
    folder = tmp_path / "engine-cache"
    monkeypatch.setenv("VBEDGE_ENGINE_CACHE", str(folder))
    return folder


def _events(pipe, videos):
    return sorted(((e.source_id, e.clip_index, e.leaf, e.caption) for e in pipe.stream(list(map(str, videos)))))


def test_pipeline_over_fake_tensorrt_matches_onnxruntime(small_bundle, videos, engine_cache, monkeypatch):
    fake = fake_tensorrt.install(monkeypatch, version="10.3.0")
    options = dict(max_batch=2, queue_size=2, context_clips=1,
                   backend_options={"intra_op_threads": 1},  # an ONNX Runtime option: left out for TensorRT
                   s3d_options={"workspace_bytes": 1 << 27}, videobert_options={"workspace_bytes": 1 << 26})
    with Pipeline.load(small_bundle, backend="auto", **options) as pipe:
        got = _events(pipe, videos)
        assert isinstance(pipe._s3d, TensorRTBackend) and isinstance(pipe._videobert, TensorRTBackend)
        captioner = pipe.captioner
    with Pipeline.load(small_bundle, backend="onnxruntime", **{k: v for k, v in options.items()
                                                                if k not in ("s3d_options", "videobert_options")}) as ref:
        want = _events(ref, videos)
    assert got == want and len(got) >= 4

    # Profiles derived from the manifest and the options: S3D batch up to max_batch; VideoBERT
    # batch = queue_size contexts x (caption + forecast row), sequence = the captioner's longest row.
    profiles = [c[1] for c in fake.calls if c[0] == "add_optimization_profile"]
    clip = tuple(small_bundle.manifest["models"]["s3d"]["inputs"][0]["shape"][1:])
    assert profiles[0] == {"clip": ((1,) + clip, (2,) + clip, (2,) + clip)}
    seq, positions = captioner.max_sequence_length, len(captioner.template.roles)
    assert profiles[1]["input_ids"] == ((1, 1), (4, seq), (4, seq))
    assert profiles[1]["predict_positions"] == ((1, 1), (4, positions), (4, positions))
    # Per-model options reached only their own model.
    pools = [c[2] for c in fake.calls if c[0] == "set_memory_pool_limit"]
    assert pools == [1 << 27, 1 << 26]
    # Each model's context was driven from its pipeline stage thread, with the context pushed there.
    s3d_context, videobert_context = fake.contexts
    assert "vbedge-s3d" in s3d_context.threads and "vbedge-videobert" in videobert_context.threads
    pushed_on = {name for name, kind in fake.state.pushes if kind == "push"}
    assert {"vbedge-s3d", "vbedge-videobert"} <= pushed_on
    assert fake.state.primary_retained == 0  # every retain released at close
    assert sorted(p.name for p in engine_cache.rglob("*.engine"))  # cached under $VBEDGE_ENGINE_CACHE
    assert not small_bundle.engine_dir.exists() or not list(small_bundle.engine_dir.glob("*.engine"))


@pytest.mark.slow
def test_trt8_pipeline_feeds_int32_bindings(small_bundle, videos, engine_cache, monkeypatch):
    """TensorRT 8.6 (JetPack 6.0) binds VideoBERT's int64 ids as INT32: the pipeline must still run."""
    fake_tensorrt.install(monkeypatch, version="8.6.1")
    with Pipeline.load(small_bundle, backend="tensorrt", max_batch=2) as pipe:
        got = _events(pipe, videos[:1])
        assert pipe._videobert._dtypes["input_ids"] == np.int32 and pipe._videobert.inputs[0].dtype == "int64"
    with Pipeline.load(small_bundle, backend="onnxruntime", max_batch=2) as ref:
        assert got == _events(ref, videos[:1])


def test_auto_falls_back_to_onnxruntime_with_the_reason(small_bundle, engine_cache, monkeypatch, caplog):
    fake_tensorrt.install(monkeypatch, build_ok=False)
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        with Pipeline.load(small_bundle, backend="auto", backend_options={"intra_op_threads": 1}) as pipe:
            s3d = pipe._s3d_backend()
            assert isinstance(s3d, OnnxRuntimeBackend)
            assert "auto fell back to onnxruntime" in s3d.selection and "out of workspace" in s3d.selection
    assert "falling back to ONNX Runtime" in caplog.text and "could not build a fp32 engine" in caplog.text


def test_explicit_tensorrt_fails_loudly(small_bundle, engine_cache, monkeypatch):
    fake_tensorrt.install(monkeypatch, build_ok=False)
    with pytest.raises(TensorRTError, match="could not build"):
        Pipeline.load(small_bundle, backend="tensorrt")
    fake_tensorrt.install(monkeypatch)
    with pytest.raises(InvalidInputError, match="does not take option\\(s\\) \\['intra_op_threads'\\]"):
        Pipeline.load(small_bundle, backend="tensorrt", backend_options={"intra_op_threads": 2})


def test_user_profiles_override_and_their_mistakes_are_errors_not_fallbacks(small_bundle, engine_cache, monkeypatch):
    fake = fake_tensorrt.install(monkeypatch)
    clip = tuple(small_bundle.manifest["models"]["s3d"]["inputs"][0]["shape"][1:])
    mine = {"clip": ((1,) + clip, (1,) + clip, (3,) + clip)}
    with Pipeline.load(small_bundle, backend="auto", s3d_options={"profiles": mine}, captions=False):
        pass
    assert [c[1] for c in fake.calls if c[0] == "add_optimization_profile"] == [mine]
    with pytest.raises(InvalidInputError, match="static dimension"):
        Pipeline.load(small_bundle, backend="auto", s3d_options={"profiles": {"clip": ((1, 3, 1, 1, 1),) * 3}})


def test_per_model_options_must_be_dicts(small_bundle):
    with pytest.raises(InvalidInputError, match="s3d_options must be a dict"):
        Pipeline.load(small_bundle, backend="onnxruntime", s3d_options=[1])


def test_engines_build_list_verify(small_bundle, tmp_path, monkeypatch):
    """vbedge.engines over the FAKE TensorRT: pre-build what a pipeline needs, then list and verify the cache."""
    from vbedge.engines import build_engines, list_engines, verify_engines

    fake = fake_tensorrt.install(monkeypatch, layer_precisions={"Half": 4, "Float": 1})
    cache = tmp_path / "cache"
    steps = []
    built = build_engines(small_bundle, precision="fp16", cache_dir=cache, max_batch=3,
                          progress=lambda *a: steps.append(a))
    assert [b["model"] for b in built] == ["s3d", "videobert"]
    assert all(b["layers"] == {"FP16": 4, "FP32": 1, "other": 1} for b in built)
    assert ("s3d", "Building", 2, 2) in steps and ("videobert", "Building", 2, 2) in steps
    # The pipeline with the same options finds them in the cache: no new build.
    fake.calls.clear()
    with Pipeline.load(small_bundle, backend="tensorrt", precision="fp16", max_batch=3,
                       backend_options={"cache_dir": cache}):
        pass
    assert "build_serialized_network" not in fake.names()
    entries = list_engines(small_bundle, cache_dir=cache)
    assert [e.key.model for e in entries] == ["s3d.fp16", "videobert.fp16"]
    assert all(e.problem is None and e.current for e in entries)
    assert "FP16 4, FP32 1, other 1; ok" in entries[0].describe()
    raw = bytearray(entries[0].path.read_bytes())
    raw[-1] ^= 1
    entries[0].path.write_bytes(bytes(raw))
    _, bad = verify_engines(small_bundle, cache_dir=cache)
    assert [e.path for e in bad] == [entries[0].path] and "sha256" in bad[0].problem


def test_cli_engines_build_list_verify(small_bundle, tmp_path, monkeypatch, capsys):
    """``vbedge engines`` over the FAKE TensorRT: exit codes and what it prints."""
    from vbedge.cli import main

    fake_tensorrt.install(monkeypatch, layer_precisions={"Float": 2})
    cache = tmp_path / "cli-cache"
    bundle = str(small_bundle.root)
    assert main(["engines", "build", "--bundle", bundle, "--engine-cache", str(cache), "--max-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "s3d: " in out and "videobert: " in out and "layers: FP32 2, other 1" in out
    assert main(["engines", "list", "--bundle", bundle, "--engine-cache", str(cache)]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 2 and all("; ok" in line for line in listed)
    engine = next(cache.glob("s3d*.engine"))
    engine.write_bytes(engine.read_bytes()[:-1])
    assert main(["engines", "verify", "--bundle", bundle, "--engine-cache", str(cache)]) == 1
    assert "1 damaged or stale" in capsys.readouterr().out


def test_unwritable_engine_cache_is_a_clear_error_and_auto_falls_back(small_bundle, tmp_path, monkeypatch):
    import os

    fake_tensorrt.install(monkeypatch)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    if os.name != "posix":
        pytest.skip("posix paths")
    with pytest.raises(TensorRTError, match="cannot use the engine cache.*VBEDGE_ENGINE_CACHE"):
        Pipeline.load(small_bundle, backend="tensorrt", backend_options={"cache_dir": blocked / "engines"})
    with Pipeline.load(small_bundle, backend="auto", captions=False,
                       backend_options={"cache_dir": blocked / "engines"}) as pipe:
        assert isinstance(pipe._s3d, OnnxRuntimeBackend) and "cannot use the engine cache" in pipe._s3d.selection
