"""Engine cache: keys, file names, header round trip, refusal of mismatched/corrupt engines.

No TensorRT involved: engines here are arbitrary byte strings and the builder is a fake callable.
"""

import dataclasses
import hashlib
import json
import logging
import struct

import pytest

from vbedge.engine_cache import (
    HEADER_SIZE,
    MAGIC,
    EngineCache,
    EngineKey,
    encode_engine_file,
    file_sha256,
    read_engine_file,
    read_engine_header,
    write_engine_file,
)
from vbedge.errors import FormatError, InvalidInputError

SHA_A = "a" * 64
SHA_B = "b" * 64


def make_key(**changes):
    base = dict(
        model="s3d",
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        onnx_sha256=SHA_A,
        profiles={"video": ((1, 3, 30, 224, 224), (4, 3, 30, 224, 224), (8, 3, 30, 224, 224))},
        dla_core=None,
        strongly_typed=True,
        builder_options={"workspace_bytes": 1 << 30},
    )
    base.update(changes)
    return EngineKey(**base)


# Each field and a different value for it: every one must change the key and the file name.
FIELD_CHANGES = {
    "model": "videobert",
    "tensorrt_version": "10.0.1",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "precision": "int8",
    "onnx_sha256": SHA_B,
    "profiles": {"video": ((1, 3, 30, 224, 224), (2, 3, 30, 224, 224), (8, 3, 30, 224, 224))},
    "dla_core": 0,
    "strongly_typed": False,
    "builder_options": {"workspace_bytes": 1 << 28},
}


def test_every_key_field_is_covered_by_the_test():
    assert set(FIELD_CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_each_field_changes_key_digest_and_file_name(field):
    base = make_key()
    other = make_key(**{field: FIELD_CHANGES[field]})
    assert other != base
    assert other.digest() != base.digest()
    assert other.file_name() != base.file_name()


def test_same_inputs_same_key_whatever_the_container_types():
    a = make_key(profiles={"b": ((1,), (2,), (3,)), "a": ((1, 2), (1, 2), (1, 2))})
    b = make_key(profiles=[[("a", [[1, 2], [1, 2], [1, 2]]), ("b", [[1], [2], [3]])]])
    assert a == b and a.digest() == b.digest() and a.file_name() == b.file_name()
    assert EngineKey.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_digest_is_sha256_of_canonical_json():
    key = make_key()
    expected = hashlib.sha256(json.dumps(key.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert key.digest() == expected


def test_file_name_is_readable_and_safe():
    key = make_key(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.3.0.26")
    name = key.file_name()
    assert name == f"s3d-fp16-sm90-trt10.3.0.26-{key.digest()[:12]}.engine"
    assert make_key(dla_core=1).file_name().startswith("s3d-fp16-sm87-dla1-trt10.3.0-")
    weird = make_key(model="../evil model/x", tensorrt_version="10.3+cuda12")
    assert "/" not in weird.file_name() and " " not in weird.file_name()


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"precision": "bf16"}, "precision"),
        ({"dla_core": -1}, "dla_core"),
        ({"onnx_sha256": "xyz"}, "onnx_sha256"),
    ],
)
def test_invalid_key_fields_are_refused(changes, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        make_key(**changes)


def test_header_round_trip(tmp_path):
    key = make_key()
    engine = bytes(range(256)) * 10
    path = write_engine_file(tmp_path / key.file_name(), key, engine)
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    version, meta_len = struct.unpack("<HI", raw[len(MAGIC):HEADER_SIZE])
    assert version == 1
    meta = json.loads(raw[HEADER_SIZE:HEADER_SIZE + meta_len])
    assert meta["engine_sha256"] == hashlib.sha256(engine).hexdigest()
    assert meta["engine_size"] == len(engine) and meta["vbedge_version"]
    assert raw[HEADER_SIZE + meta_len:] == engine
    metadata, loaded = read_engine_file(path, expected_key=key)
    assert loaded == engine and EngineKey.from_dict(metadata["key"]) == key
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temporary file"


def test_empty_engine_is_refused():
    with pytest.raises(InvalidInputError, match="empty"):
        encode_engine_file(make_key(), b"")


class FakeBuilder:
    """Stands in for the TensorRT builder: counts calls, returns fixed bytes."""

    def __init__(self, payload=b"ENGINE-v1" * 100):
        self.calls = 0
        self.payload = payload

    def __call__(self):
        self.calls += 1
        return self.payload


def test_get_or_build_builds_once_then_loads(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = make_key()
    build = FakeBuilder()
    engine, path, built = cache.get_or_build(key, build)
    assert built and build.calls == 1 and engine == build.payload and path == cache.path_for(key)
    engine2, _, built2 = cache.get_or_build(key, build)
    assert not built2 and build.calls == 1 and engine2 == build.payload
    cache.get_or_build(key, build, rebuild=True)
    assert build.calls == 2


def _stored(tmp_path, key=None, payload=b"ENGINE-v1" * 100):
    cache = EngineCache(tmp_path)
    key = key or make_key()
    cache.store(key, payload)
    return cache, key, cache.path_for(key)


def _tamper_engine_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])


def _truncate_in_metadata(path):
    path.write_bytes(path.read_bytes()[: HEADER_SIZE + 5])


def _bad_magic(path):
    raw = path.read_bytes()
    path.write_bytes(b"NOTVBEDGE!!" + raw[len(MAGIC):])


def _newer_header(path):
    raw = bytearray(path.read_bytes())
    raw[len(MAGIC):len(MAGIC) + 2] = struct.pack("<H", 99)
    path.write_bytes(bytes(raw))


def _huge_metadata_length(path):
    raw = bytearray(path.read_bytes())
    raw[len(MAGIC) + 2:HEADER_SIZE] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


def _extra_bytes(path):
    path.write_bytes(path.read_bytes() + b"junk")


def _broken_json(path):
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE] = ord("!")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_tamper_engine_byte, "sha256"),
        (_truncate, "truncated"),
        (_truncate_in_metadata, "truncated inside its metadata"),
        (_bad_magic, "not a vbedge engine"),
        (_newer_header, "header format 99"),
        (_huge_metadata_length, "out of range"),
        (_extra_bytes, "longer than recorded"),
        (_broken_json, "not valid JSON"),
    ],
)
def test_damaged_engine_is_refused_logged_and_rebuilt(tmp_path, caplog, damage, message):
    cache, key, path = _stored(tmp_path)
    damage(path)
    with pytest.raises(FormatError, match=message):
        read_engine_file(path, expected_key=key)
    build = FakeBuilder(payload=b"REBUILT" * 50)
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        engine, _, built = cache.get_or_build(key, build)
    assert built and build.calls == 1 and engine == build.payload
    assert any(message in rec.getMessage() and "rebuilding" in rec.getMessage() for rec in caplog.records)
    # The rebuilt engine replaced the damaged one and now loads cleanly.
    assert read_engine_file(path, expected_key=key)[1] == build.payload


@pytest.mark.parametrize(
    "field", ["tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "precision", "dla_core"]
)
def test_engine_with_mismatched_key_at_our_path_is_not_loaded(tmp_path, caplog, field):
    # Simulates a file copied/renamed from another device: the name says "ours", the header does not.
    cache = EngineCache(tmp_path)
    ours = make_key()
    foreign = make_key(**{field: FIELD_CHANGES[field]})
    write_engine_file(cache.path_for(ours), foreign, b"FOREIGN" * 10)
    with pytest.raises(FormatError, match=field):
        read_engine_file(cache.path_for(ours), expected_key=ours)
    build = FakeBuilder()
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        engine, _, built = cache.get_or_build(ours, build)
    assert built and engine == build.payload
    text = " ".join(rec.getMessage() for rec in caplog.records)
    assert "another configuration" in text and field in text


def test_miss_explains_closest_other_engine(tmp_path, caplog):
    cache, old_key, _ = _stored(tmp_path, key=make_key(tensorrt_version="10.0.1"))
    new_key = make_key(tensorrt_version="10.3.0")
    with caplog.at_level(logging.WARNING, logger="vbedge"):
        assert cache.load(new_key) is None
    text = " ".join(rec.getMessage() for rec in caplog.records)
    assert "tensorrt_version" in text and "10.0.1" in text and "10.3.0" in text
    # The other device's engine is kept, not deleted.
    assert cache.path_for(old_key).is_file()


def test_read_header_without_reading_engine(tmp_path):
    _, key, path = _stored(tmp_path)
    metadata, offset = read_engine_header(path)
    assert offset > HEADER_SIZE and metadata["key"] == key.to_dict()


def test_timing_cache_path_keyed_by_trt_and_gpu(tmp_path):
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path("10.3.0", "Orin", "8.7")
    assert a.parent == tmp_path and "10.3.0" in a.name and "Orin" in a.name
    assert a != cache.timing_cache_path("10.0.1", "Orin", "8.7")
    assert a != cache.timing_cache_path("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_file_sha256_matches_hashlib(tmp_path):
    data = b"x" * (3 << 20) + b"tail"
    (tmp_path / "m.onnx").write_bytes(data)
    assert file_sha256(tmp_path / "m.onnx") == hashlib.sha256(data).hexdigest()


def test_builder_returning_nothing_is_an_error(tmp_path):
    cache = EngineCache(tmp_path)
    with pytest.raises(FormatError, match="no engine"):
        cache.get_or_build(make_key(), lambda: None)
    assert not list(tmp_path.iterdir())
