"""Find every external-data reference in an ONNX file without the ``onnx`` package.

An ONNX tensor can keep its bytes in another file: ``TensorProto.data_location = EXTERNAL`` and
``external_data`` entries ``location`` (a path relative to the model's folder), ``offset``,
``length``. ONNX Runtime and the TensorRT parser open that file when they load the model, so a
bundle that was verified file by file can still make a runtime read a file nobody hashed.
:func:`external_data_references` lists every such reference so :meth:`vbedge.bundle.Bundle.load`
can refuse the ones the manifest does not cover, before any runtime sees the model.

This runs before any runtime sees a file, on every load, so it does not parse the model with
the ``onnx`` package (which would read every weight); it walks the protobuf wire format
itself. It descends only into the messages that can hold a tensor (field numbers from onnx.proto,
checked against the ``onnx`` package's descriptors in tests/test_signing.py)::

    ModelProto        7 graph, 20 training_info, 25 functions
    TrainingInfoProto 1 initialization, 2 algorithm          (GraphProto)
    GraphProto        1 node, 5 initializer, 15 sparse_initializer
    NodeProto         5 attribute
    FunctionProto     7 node, 11 attribute_proto
    AttributeProto    5 t, 10 tensors, 6 g, 11 graphs, 22 sparse_tensor, 23 sparse_tensors
    SparseTensorProto 1 values, 2 indices                    (TensorProto)
    TensorProto       8 name, 13 external_data, 14 data_location
    StringStringEntryProto 1 key, 2 value

Every other field is skipped by its length without being read, so a 100 MB model costs a few
milliseconds (the weights' bytes are never touched: the file is memory-mapped). Protobuf merges
repeated occurrences of a singular message field, so the walker visits every occurrence and
reports every ``location`` it finds, whatever ``data_location`` says: a reference is reported
whenever ONNX Runtime could possibly follow it.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError

#: TensorProto.DataLocation.EXTERNAL
DATA_LOCATION_EXTERNAL = 1
#: Deepest nesting of subgraphs (If/Loop/Scan bodies) accepted; real models use a handful.
MAX_DEPTH = 64

_MODEL, _TRAINING, _GRAPH, _NODE, _FUNCTION, _ATTRIBUTE, _SPARSE, _TENSOR, _ENTRY = range(9)
# message kind -> {field number: message kind of that (length-delimited) field}
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 10: _TENSOR, 6: _GRAPH, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_KIND_NAMES = ("model", "training_info", "graph", "node", "function", "attribute", "sparse_tensor", "tensor",
               "external_data entry")


@dataclass(frozen=True)
class ExternalReference:
    """One external-data reference of a tensor.

    Attributes:
        tensor: the tensor's name ('' when it has none).
        location: the ``location`` value (None when the tensor is marked EXTERNAL without one).
        offset, length: the ``offset`` / ``length`` values as written (strings), or None.
        external: whether the tensor's ``data_location`` is EXTERNAL.
    """

    tensor: str
    location: str | None
    offset: str | None
    length: str | None
    external: bool


class _Malformed(Exception):
    pass


def _varint(buf, pos, end):
    """Decode a base-128 varint at ``pos``; return (value, new position)."""
    if pos >= end:
        raise _Malformed("truncated varint")
    byte = buf[pos]
    if byte < 0x80:  # fast path: most tags and small lengths are one byte
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    pos += 1
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint longer than 10 bytes")


def _fields(buf, start, end):
    """Yield (field number, wire type, value or (begin, end) for length-delimited) over one message."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _Malformed(f"field {number} runs past the end of its message ({length} bytes)")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:  # 3/4 are the deprecated groups, 6/7 do not exist: nothing onnx.proto writes
            raise _Malformed(f"unsupported wire type {wire} in field {number}")
        if pos > end:
            raise _Malformed(f"field {number} runs past the end of its message")


def _text(buf, span):
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a string field is not UTF-8") from None


def _walk(buf, size, out):
    """Visit every message that can hold a tensor, iteratively (an explicit stack, no recursion).

    The inner loop is the hot path (a 100 MB model has a few thousand small messages): tags and
    lengths take the one-byte varint fast path inline, and fields nobody descends into are skipped
    by their length.
    """
    stack = [(0, size, _MODEL, 0)]
    while stack:
        start, end, kind, depth = stack.pop()
        if kind == _TENSOR:
            _tensor(buf, start, end, out)
            continue
        children = _CHILDREN[kind]
        pos = start
        while pos < end:
            tag = buf[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(buf, pos, end)
            wire = tag & 7
            if wire == 2:
                if pos >= end:
                    raise _Malformed("truncated length")
                length = buf[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = _varint(buf, pos, end)
                stop = pos + length
                if stop > end:
                    raise _Malformed(f"field {tag >> 3} runs past the end of its message ({length} bytes)")
                child = children.get(tag >> 3)
                if child is not None:
                    if depth >= MAX_DEPTH:
                        raise _Malformed(f"messages nested deeper than {MAX_DEPTH} levels")
                    stack.append((pos, stop, child, depth + 1))
                pos = stop
                continue
            if tag >> 3 == 0:
                raise _Malformed("field number 0")
            if tag >> 3 in children:
                raise _Malformed(f"{_KIND_NAMES[kind]} field {tag >> 3} should be a message, has wire type {wire}")
            if wire == 0:
                _, pos = _varint(buf, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:  # 3/4 are the deprecated groups, 6/7 do not exist: nothing onnx.proto writes
                raise _Malformed(f"unsupported wire type {wire} in field {tag >> 3}")
        if pos > end:
            raise _Malformed(f"a fixed-size field runs past the end of its {_KIND_NAMES[kind]} message")


def _tensor(buf, start, end, out):
    name, entries, marked = "", [], False
    for number, wire, value in _fields(buf, start, end):
        if number == 8 and wire == 2:
            name = _text(buf, value)
        elif number == 14:
            # Protobuf keeps the last occurrence; any EXTERNAL one counts here (the safe reading).
            if wire == 0:
                marked = marked or value == DATA_LOCATION_EXTERNAL
            elif wire == 2:  # a packed enum: each value is an occurrence
                pos, stop = value
                while pos < stop:
                    item, pos = _varint(buf, pos, stop)
                    marked = marked or item == DATA_LOCATION_EXTERNAL
        elif number == 13:
            if wire != 2:
                raise _Malformed(f"tensor field 13 (external_data) has wire type {wire}")
            key, val = None, None
            for entry_number, entry_wire, entry_value in _fields(buf, value[0], value[1]):
                if entry_wire == 2 and entry_number == 1:
                    key = _text(buf, entry_value)
                elif entry_wire == 2 and entry_number == 2:
                    val = _text(buf, entry_value)
            entries.append((key, val))
    if not entries and not marked:
        return
    locations = [v for k, v in entries if k == "location"]
    offsets = [v for k, v in entries if k == "offset"]
    lengths = [v for k, v in entries if k == "length"]
    if not locations:
        out.append(ExternalReference(name, None, None, None, marked))
    for location in locations:
        # Every location is reported (a repeated key or a merged message may hide one behind another).
        out.append(ExternalReference(name, location, offsets[-1] if offsets else None,
                                     lengths[-1] if lengths else None, marked))


def external_data_references(path):
    """Every external-data reference in the ONNX file ``path``, as a list of :class:`ExternalReference`.

    Raises FormatError when the file is not a well-formed protobuf message (truncated, garbage,
    nested too deep).
    """
    path = Path(path)
    out = []
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            raise FormatError(f"{path.name} is empty, not an ONNX model")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                _walk(buf, size, out)
            except _Malformed as exc:
                raise FormatError(f"{path.name} is not a well-formed ONNX file ({exc})") from None
            finally:
                buf.release()
    return out
