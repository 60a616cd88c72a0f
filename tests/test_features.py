"""vbedge.features: S3D features per clip of videos, against an independent computation.

The videos are synthetic (written here with OpenCV: moving shapes, mp4v and MJPG), plus a file of
garbage bytes and a truncated AVI. The reference decodes each video with cv2.VideoCapture, picks
the 20 fps frames by hand (a 10 fps source repeats each frame twice), cuts 16-frame clips (the
last one padded with its last frame), preprocesses them with vbedge.preprocess.make_clip (checked
against torchvision in test_preprocess.py / test_resize_rule.py) and runs the bundle's s3d.onnx
with its own onnxruntime.InferenceSession, one clip at a time.
"""

import json
import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")

from vbedge.errors import FormatError, InvalidInputError  # noqa: E402
from vbedge.features import (  # noqa: E402
    FEATURES_FILE,
    INDEX_FILE,
    METADATA_FILE,
    FeatureModel,
    extract_features,
    load_feature_matrix,
    open_feature_model,
    read_features,
)
from vbedge.preprocess import make_clip  # noqa: E402
from video_files import decode_frames  # noqa: E402


def _frame(i, size, seed):
    width, height = size
    rng = np.random.default_rng(seed)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3)]
    image = np.empty((height, width, 3), np.uint8)
    image[:] = colours[0]
    x = (i * 6 + 13 * seed) % width
    cv2.circle(image, (x, height // 2 + int(height / 4 * math.sin(i / 5))), height // 6,
               colours[1], -1)
    cv2.rectangle(image, (width - x - 20, 5), (width - x, 30), colours[2], -1)
    return image


def _write(path, frames, fps, size, seed, fourcc="mp4v"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for i in range(frames):
        writer.write(_frame(i, size, seed))
    writer.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("feature_videos")
    good_a = _write(folder / "a.mp4", 50, 20.0, (160, 120), seed=1)   # 2.5 s at 20 fps
    good_b = _write(folder / "b.mp4", 20, 10.0, (192, 108), seed=2)   # 2.0 s at 10 fps, 16:9
    garbage = folder / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    whole = _write(folder / "whole.avi", 60, 20.0, (160, 120), seed=3, fourcc="MJPG")
    data = whole.read_bytes()
    cut = folder / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    return {"a": good_a, "b": good_b, "garbage": garbage, "cut": cut}


def _expected_clips(path, fps_source, clip_frames=16, fps=20.0):
    """(start, end, frames) of each clip, from the decoded frames and hand-picked 20 fps frames."""
    decoded = decode_frames(path)
    duration = (len(decoded) - 1) / fps_source
    targets = int(math.floor(duration * fps + 1e-9)) + 1
    step = round(fps / fps_source)          # 1 (20 fps source) or 2 (10 fps: each frame twice)
    picked = [decoded[k // step] for k in range(targets)]
    clips = []
    for first in range(0, targets, clip_frames):
        frames = picked[first:first + clip_frames]
        frames += [frames[-1]] * (clip_frames - len(frames))
        clips.append((first / fps, (first + clip_frames) / fps, frames))
    return clips


def _times(clips):
    """Flat [start, end, start, end...] of index lines or expected clips."""
    return [t for c in clips for t in ((c["start"], c["end"]) if isinstance(c, dict) else c[:2])]


def _reference_features(small_bundle, clips):
    session = ort.InferenceSession(str(small_bundle.onnx_path("s3d")),
                                   providers=["CPUExecutionProvider"])
    spec = small_bundle.preprocess_spec
    return np.concatenate([session.run(["feature"], {"clip": make_clip(frames, spec)[None]})[0]
                           for _, _, frames in clips])


def _assert_close(got, ref):
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, atol=1e-4 * scale, rtol=0)


@pytest.fixture(scope="module")
def extracted(small_bundle, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "feats"
    seen = []
    order = [videos["a"], videos["garbage"], videos["b"], videos["cut"]]
    report = extract_features(order, out, bundle=small_bundle.root, backend="onnxruntime",
                              batch_size=3, progress=False, on_video=seen.append)
    return report, out, seen


def test_good_videos_all_clips_written_with_times(extracted, videos, small_bundle):
    report, out, seen = extracted
    features, index = read_features(out)
    assert features.shape == (report.rows, 1024) and features.dtype == np.float32
    rows = {}
    for item in index:
        rows.setdefault(item["video"], []).append(item)
    for key, fps_source in (("a", 20.0), ("b", 10.0)):
        clips = _expected_clips(videos[key], fps_source)
        got = rows[str(videos[key])]
        assert _times(got) == pytest.approx(_times(clips))
        ref = _reference_features(small_bundle, clips)
        _assert_close(features[[g["row"] for g in got]], ref)
    assert len(rows[str(videos["a"])]) == 4 and len(rows[str(videos["b"])]) == 3
    assert rows[str(videos["a"])][-1]["padded"] == 14   # 50 frames = 3 x 16 + 2


def test_damaged_videos_named_counted_and_clips_before_damage_kept(extracted, videos, small_bundle):
    report, out, seen = extracted
    failed = {v.video: v for v in report.failed}
    assert set(failed) == {str(videos["garbage"]), str(videos["cut"])}
    assert failed[str(videos["garbage"])].clips == 0
    assert "cannot decode" in failed[str(videos["garbage"])].error
    assert "truncated or damaged" in failed[str(videos["cut"])].error
    # The truncated AVI's frames before the cut are all there, as vbedge tokenize keeps them.
    cut_clips = _expected_clips(videos["cut"], 20.0)
    assert failed[str(videos["cut"])].clips == len(cut_clips) >= 1
    _, index = read_features(out)
    got = [item for item in index if item["video"] == str(videos["cut"])]
    assert _times(got) == pytest.approx(_times(cut_clips))
    # Reported per video, in order, as each finished.
    assert [v.video for v in seen] == [str(videos[k]) for k in ("a", "garbage", "b", "cut")]
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["failed"] == 2 and meta["rows"] == report.rows == len(index)
    assert [v["error"] is None for v in meta["videos"]] == [True, False, True, False]
    assert meta["preprocessing"] == small_bundle.preprocess_spec.to_dict()
    assert not list(out.glob("*.partial"))


def test_other_model_sources_give_the_same_features(extracted, videos, small_bundle, tmp_path):
    report, out, _ = extracted
    features, index = read_features(out)
    want = features[[i["row"] for i in index if i["video"] == str(videos["b"])]]
    # The bare ONNX file: its spec comes from the s3d.json beside it.
    onnx_out = extract_features([videos["b"]], tmp_path / "onnx",
                                s3d_onnx=small_bundle.onnx_path("s3d"), backend="onnxruntime",
                                batch_size=2, progress=False)
    assert onnx_out.spec == small_bundle.preprocess_spec and "s3d.json" in onnx_out.spec_source
    _assert_close(load_feature_matrix(tmp_path / "onnx"), want)
    # The PyTorch weights on the torch backend (the bundle's reference copy), with the spec given.
    torch_out = extract_features([videos["b"]], tmp_path / "torch",
                                 s3d_weights=small_bundle.root / "reference" / "s3d.pth",
                                 backend="torch", spec=small_bundle.preprocess_spec,
                                 progress=False)
    assert torch_out.model.endswith("on torch")
    _assert_close(load_feature_matrix(tmp_path / "torch"), want)


def test_codebook_fit_reads_the_features_folder(extracted, tmp_path):
    from vbedge import HierarchicalCodebook
    from vbedge.cli import main

    _, out, _ = extracted
    features = np.load(out / FEATURES_FILE, allow_pickle=False)
    np.testing.assert_array_equal(load_feature_matrix(out), features)
    for source in (out, out / FEATURES_FILE):
        path = tmp_path / f"cb_{source.name}.npz"
        assert main(["codebook", "fit", str(source), "-o", str(path), "--levels", "1",
                     "--branching", "2"]) == 0
        direct = HierarchicalCodebook.fit(features, 1, 2, seed=0, progress=False)
        assert HierarchicalCodebook.load(path).sha256 == direct.sha256


def test_feature_files_are_refused_when_inconsistent(extracted, tmp_path):
    _, out, _ = extracted
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / FEATURES_FILE).write_bytes((out / FEATURES_FILE).read_bytes())
    lines = (out / INDEX_FILE).read_text().splitlines()
    (copy / INDEX_FILE).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FormatError, match="lines but"):
        read_features(copy)
    (copy / INDEX_FILE).write_text(lines[1] + "\n")
    with pytest.raises(FormatError, match=r"index.jsonl:1: row 1, expected 0"):
        read_features(copy)
    (copy / INDEX_FILE).write_text("{nope\n")
    with pytest.raises(FormatError, match=r"index.jsonl:1: not JSON"):
        read_features(copy)
    with pytest.raises(FileNotFoundError, match="without features.npy"):
        load_feature_matrix(tmp_path)
    np.save(tmp_path / "three.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(FormatError, match=r"expected \(N, D\)"):
        load_feature_matrix(tmp_path / "three.npy")


def test_option_errors(small_bundle, videos, tmp_path):
    with pytest.raises(InvalidInputError, match="exactly one S3D model"):
        open_feature_model()
    with pytest.raises(InvalidInputError, match="exactly one S3D model"):
        open_feature_model(bundle=small_bundle.root, s3d_onnx=small_bundle.onnx_path("s3d"))
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(small_bundle.onnx_path("s3d").read_bytes())
    with pytest.raises(InvalidInputError, match="no s3d.json"):
        open_feature_model(s3d_onnx=lonely)
    from vbedge.preprocess import PreprocessSpec

    with pytest.raises(InvalidInputError, match="differs"):
        open_feature_model(bundle=small_bundle.root, spec=PreprocessSpec())
    out = tmp_path / "out"
    extract_features([videos["garbage"]], out, bundle=small_bundle.root, progress=False)
    assert load_feature_matrix(out).shape == (0, 1024)   # every video failed: an empty array
    with pytest.raises(InvalidInputError, match="already holds"):
        extract_features([videos["a"]], out, bundle=small_bundle.root, progress=False)
    with pytest.raises(InvalidInputError, match="batch_size"):
        extract_features([videos["a"]], out, bundle=small_bundle.root, batch_size=0,
                         overwrite=True)


def test_a_failing_model_is_an_error_not_a_damaged_video(small_bundle, videos, tmp_path):
    """A backend that raises (a stand-in for a broken model) stops the run; nothing is left."""
    from vbedge.backends.base import Backend, TensorSpec

    class Broken(Backend):
        name = "broken"
        _outputs = [TensorSpec("feature", "float32", ("batch", 1024))]

        def run(self, inputs):
            raise InvalidInputError("the model blew up")

    model = FeatureModel(Broken(), small_bundle.preprocess_spec, "broken", "test")
    with pytest.raises(InvalidInputError, match="blew up"):
        extract_features([videos["a"]], tmp_path / "x", model=model, progress=False)
    assert not any((tmp_path / "x").iterdir())


def test_times_line_up_with_vbedge_tokenize(extracted, videos, small_bundle):
    """Features and tokens of the same video have the same clips (the corpus join relies on it)."""
    from vbedge.pipeline import Pipeline

    _, out, _ = extracted
    _, index = read_features(out)
    with Pipeline.load(small_bundle, backend="onnxruntime", captions=False) as pipe:
        tokens = pipe.tokenize_video(videos["b"])
    rows = [i for i in index if i["video"] == str(videos["b"])]
    assert _times(rows) == pytest.approx([t for start, end, _ in tokens for t in (start, end)])


def test_cli_goes_past_damaged_video_and_exits_1(small_bundle, videos, tmp_path, capsys):
    from vbedge.cli import main

    out = tmp_path / "feats"
    code = main(["features", str(videos["a"]), str(videos["garbage"]), str(videos["b"]),
                 "--bundle", str(small_bundle.root), "--backend", "onnxruntime",
                 "--batch-size", "4", "-q", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"vbedge: {videos['garbage']}: cannot decode" in captured.err
    assert f"1 of 3 video(s) failed: {videos['garbage']}" in captured.err
    assert "preprocessing: resize the short side to 128" in captured.err
    assert "wrote 7 feature(s) of 1024 from 2 video(s)" in captured.out
    features, index = read_features(out)
    assert [i["video"] for i in index] == [str(videos["a"])] * 4 + [str(videos["b"])] * 3
    # Good videos only: exit 0; the existing folder needs --overwrite.
    args = ["features", str(videos["b"]), "--bundle", str(small_bundle.root), "-q", "-o",
            str(out)]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(args + ["--overwrite", "--frames", "8"]) == 2
    assert "a bundle's is fixed" in capsys.readouterr().err


@pytest.mark.slow
def test_s3d_weights_exported_to_temporary_onnx(extracted, videos, small_bundle, tmp_path):
    """--s3d W.pth on the default backend: a temporary ONNX export (slow: runs the exporter)."""
    import glob
    import tempfile

    report, out, _ = extracted
    features, index = read_features(out)
    want = features[[i["row"] for i in index if i["video"] == str(videos["b"])]]
    before = set(glob.glob(f"{tempfile.gettempdir()}/vbedge-features-s3d-*"))
    got = extract_features([videos["b"]], tmp_path / "w",
                           s3d_weights=small_bundle.root / "reference" / "s3d.pth",
                           spec=small_bundle.preprocess_spec, backend="onnxruntime",
                           progress=False)
    assert "temporary FP32 ONNX" in got.model and got.model.endswith("on onnxruntime")
    _assert_close(load_feature_matrix(tmp_path / "w"), want)
    assert set(glob.glob(f"{tempfile.gettempdir()}/vbedge-features-s3d-*")) == before


def test_npy_writer_header_is_rewritten_with_the_row_count(tmp_path):
    """The streamed .npy: numpy reads it back; the fixed-size header holds huge row counts."""
    import io

    from vbedge.features import _npy_header, _RowWriter

    rows = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    writer = _RowWriter(tmp_path / "f.npy", 7)
    writer.write(rows[:2])
    writer.write(rows[2:])
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy", allow_pickle=False), rows)
    for count in (0, 10 ** 12):
        header = io.BytesIO(_npy_header(count, 1024))
        assert np.lib.format.read_magic(header) == (1, 0)
        assert np.lib.format.read_array_header_1_0(header) == ((count, 1024), False,
                                                                np.dtype("<f4"))
        assert header.tell() == 128
    narrow = _RowWriter(tmp_path / "g.npy", 7)
    with pytest.raises(FormatError, match=r"expected \(batch, 7\)"):
        narrow.write(rows[:, :3])
    narrow.close()
