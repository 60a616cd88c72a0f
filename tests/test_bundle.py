"""Bundle manifests: writing, and every refusal of Bundle.load."""

import json
import os
import shutil

import numpy as np
import pytest

from vbedge import FormatError, HierarchicalCodebook, InvalidInputError, VideoBertVocab
from vbedge.bundle import MANIFEST_NAME, Bundle, sha256_file, write_manifest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "now", "let", "me", "show", "you", "cut", "the", "onion"]


def tiny_linear_onnx(path, in_dim, out_dim, seed=0):
    rng = np.random.default_rng(seed)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [in_dim, out_dim], rng.normal(size=(in_dim, out_dim)).ravel())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_dim])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def make_bundle(root, levels=2, branching=3, dim=4):
    root.mkdir(parents=True, exist_ok=True)
    tiny_linear_onnx(root / "s3d.onnx", 6, dim)
    tiny_linear_onnx(root / "videobert.onnx", 5, 7, seed=1)
    rng = np.random.default_rng(0)
    cb = HierarchicalCodebook(rng.normal(size=(sum(branching ** (i + 1) for i in range(levels)), dim)), levels, branching)
    cb.save(root / "codebook.npz")
    (root / "wordpiece.txt").write_text("\n".join(WORDS) + "\n")
    VideoBertVocab.from_wordpiece(root / "wordpiece.txt", levels=levels, branching=branching).save(root)
    (root / "wordpiece.txt").unlink()
    models = {
        "s3d": {"onnx": {"fp32": "s3d.onnx"}, "feature_dim": dim},
        "videobert": {"onnx": {"fp32": "videobert.onnx"}, "codebook_sha256": cb.sha256},
    }
    write_manifest(root, models, "codebook.npz", {"vocab_file": "vocab.txt", "layout_file": "vocab_layout.json"},
                   {"fps": 20, "clip_frames": 30})
    return root


@pytest.fixture
def bundle_dir(tmp_path):
    return make_bundle(tmp_path / "bundle")


def edit_manifest(root, change):
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    change(manifest)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_load_verified_bundle(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    assert bundle.models() == ["s3d", "videobert"]
    assert bundle.precisions("s3d") == ["fp32"]
    assert bundle.onnx_path("s3d").name == "s3d.onnx"
    assert bundle.onnx_sha256("s3d") == sha256_file(bundle_dir / "s3d.onnx")
    assert bundle.codebook.num_leaves == 9 and bundle.vocab.num_visual == 9
    assert bundle.preprocessing["fps"] == 20
    assert "vbedge" in bundle.manifest["created_by"]
    with pytest.raises(InvalidInputError, match=r"no fp16 s3d model; it has \['fp32'\]"):
        bundle.onnx_path("s3d", "fp16")
    with pytest.raises(InvalidInputError, match="no model 'bert'"):
        bundle.onnx_path("bert")


def test_missing_folder_manifest_and_file(tmp_path, bundle_dir):
    with pytest.raises(FileNotFoundError, match="bundle folder not found"):
        Bundle.load(tmp_path / "nope")
    os.remove(bundle_dir / "s3d.onnx")
    with pytest.raises(FileNotFoundError, match="'s3d.onnx'.*missing"):
        Bundle.load(bundle_dir)
    os.remove(bundle_dir / MANIFEST_NAME)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        Bundle.load(bundle_dir)


def test_tampered_file_is_refused(bundle_dir):
    data = bytearray((bundle_dir / "videobert.onnx").read_bytes())
    # Same size, other content, still a well-formed ONNX file (the graph's name 'tiny' -> 'tinz'):
    # a flip that breaks the protobuf structure is refused even without hashes (external-data scan).
    data[data.index(b"tiny") + 3] ^= ord("y") ^ ord("z")
    (bundle_dir / "videobert.onnx").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="'videobert.onnx' does not match its sha256"):
        Bundle.load(bundle_dir)
    Bundle.load(bundle_dir, verify_hashes=False)  # sizes still agree: loads when hashes are skipped
    data[-5] ^= 0xFF
    (bundle_dir / "videobert.onnx").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="videobert.onnx is not a well-formed ONNX file"):
        Bundle.load(bundle_dir, verify_hashes=False)


def test_truncated_file_is_refused_even_without_hashes(bundle_dir):
    data = (bundle_dir / "s3d.onnx").read_bytes()
    (bundle_dir / "s3d.onnx").write_bytes(data[:-10])
    with pytest.raises(FormatError, match="'s3d.onnx' has .* bytes"):
        Bundle.load(bundle_dir, verify_hashes=False)


def test_newer_format_and_garbage_manifest(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.update(format_version=99))
    with pytest.raises(FormatError, match="newer vbedge"):
        Bundle.load(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        Bundle.load(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(FormatError, match="must hold a JSON object"):
        Bundle.load(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_bytes(b"\xff\xfe{")
    with pytest.raises(FormatError, match="not valid JSON"):
        Bundle.load(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_text('{"format": "other"}')
    with pytest.raises(FormatError, match="not a vbedge bundle"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx"])
def test_file_names_pointing_outside_are_refused(bundle_dir, name):
    def change(m):
        m["files"][name] = {"sha256": "0" * 64, "size": 1}
        m["models"]["s3d"]["onnx"]["fp32"] = name

    edit_manifest(bundle_dir, change)
    with pytest.raises(FormatError, match="outside the bundle"):
        Bundle.load(bundle_dir)


def test_symlink_escaping_the_folder_is_refused(tmp_path, bundle_dir):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle_dir / "s3d.onnx", outside)
    os.remove(bundle_dir / "s3d.onnx")
    os.symlink(outside, bundle_dir / "s3d.onnx")
    with pytest.raises(FormatError, match="resolves outside"):
        Bundle.load(bundle_dir)


def test_unlisted_reference_is_refused(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].pop("s3d.onnx"))
    with pytest.raises(FormatError, match="does not list its hash"):
        Bundle.load(bundle_dir)


def test_codebook_must_match_vocabulary_and_model(tmp_path):
    root = make_bundle(tmp_path / "b")
    # A codebook of another tree shape, re-hashed in the manifest so only consistency can catch it.
    HierarchicalCodebook(np.zeros((4 + 16, 4), np.float32), 2, 4).save(root / "codebook.npz")

    def rehash(m):
        m["files"]["codebook.npz"] = {"sha256": sha256_file(root / "codebook.npz"), "size": (root / "codebook.npz").stat().st_size}

    edit_manifest(root, rehash)
    with pytest.raises(FormatError, match="codebook"):
        Bundle.load(root)

    root = make_bundle(tmp_path / "c")
    edit_manifest(root, lambda m: m["models"]["videobert"].update(codebook_sha256="f" * 64))
    with pytest.raises(FormatError, match="another codebook"):
        Bundle.load(root)

    root = make_bundle(tmp_path / "d")
    edit_manifest(root, lambda m: m["models"]["s3d"].update(feature_dim=1024))
    with pytest.raises(FormatError, match="1024-d features but the codebook is 4-d"):
        Bundle.load(root)
