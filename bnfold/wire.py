"""The protobuf wire format, for the two things the onnx package cannot do cheaply.

- ``skeleton``: a model's structure without its big weights. The serialized ModelProto is walked
  field by field (no parse); every main-graph initializer whose ``raw_data`` is at least
  ``min_bytes`` is rewritten as an ONNX external-data reference to where those bytes already are:
  the model file itself (``location`` = the file's name, ``offset``, ``length``). Parsing the
  result costs what the structure costs; the weights stay on disk until a fold reads one of them.
- ``field``/``varint``: the pieces the streamed writer (``bnfold.io``) uses to write a model one
  tensor at a time, copying the bytes of untouched weights straight from the source file.

Only what ONNX files use is understood (wire types 0, 1, 2 and 5); anything else raises
WireError and the caller parses the file the ordinary way.
"""

from __future__ import annotations

# Field numbers of onnx.proto (the ONNX IR; ``tests/test_quickscan.py`` checks them against the
# installed onnx's descriptors): constants, so that walking a file needs no onnx import.
GRAPH_FIELD = 7  # ModelProto.graph
INITIALIZER_FIELD = 5  # GraphProto.initializer
RAW_DATA_FIELD = 9  # TensorProto.raw_data
_EXTERNAL_DATA = 13  # TensorProto.external_data
_DATA_LOCATION = 14  # TensorProto.data_location
_KEY = 1  # StringStringEntryProto.key
_VALUE = 2  # StringStringEntryProto.value
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class WireError(ValueError):
    """The bytes are not a protobuf message this module understands."""


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def header(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field (wire type 2) whose payload is ``length`` bytes."""
    return varint(number << 3 | 2) + varint(length)


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field."""
    return header(number, len(payload)) + payload


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise WireError("malformed varint")


def fields(buf, start: int, end: int):
    """Yield ``(number, wire_type, field_start, value_start, value_end)`` for each field of ``buf[start:end]``."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value_start = pos
            _, pos = _read_varint(buf, pos, end)
        elif wire_type == 2:
            length, value_start = _read_varint(buf, pos, end)
            pos = value_start + length
        elif wire_type == 1:
            value_start, pos = pos, pos + 8
        elif wire_type == 5:
            value_start, pos = pos, pos + 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if number == 0 or pos > end:
            raise WireError("truncated or malformed message")
        yield number, wire_type, field_start, value_start, pos


def _external_reference(location: str, offset: int, length: int) -> bytes:
    entries = b"".join(
        field(_EXTERNAL_DATA, field(_KEY, key.encode()) + field(_VALUE, value.encode()))
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length)))
    )
    return entries + varint(_DATA_LOCATION << 3) + varint(_EXTERNAL)


def _tensor(buf, start: int, end: int, location: str, min_bytes: int) -> bytes | None:
    """The tensor at ``buf[start:end]`` with its raw_data replaced by a reference, or None to keep it."""
    raw = None
    for number, wire_type, field_start, value_start, value_end in fields(buf, start, end):
        if number in (_EXTERNAL_DATA, _DATA_LOCATION):
            return None  # already external (or oddly built): leave it as it is
        if number == RAW_DATA_FIELD and wire_type == 2:
            raw = (field_start, value_start, value_end)
    if raw is None or raw[2] - raw[1] < min_bytes:
        return None
    field_start, value_start, value_end = raw
    return bytes(buf[start:field_start]) + bytes(buf[value_end:end]) + _external_reference(
        location, value_start, value_end - value_start)


def _graph(buf, start: int, end: int, location: str, min_bytes: int) -> tuple[bytes, int]:
    out = bytearray()
    kept, count = start, 0  # bytes from ``kept`` up to the current field are copied unchanged
    for number, wire_type, field_start, value_start, value_end in fields(buf, start, end):
        if number != INITIALIZER_FIELD or wire_type != 2 or value_end - value_start < min_bytes:
            continue
        tensor = _tensor(buf, value_start, value_end, location, min_bytes)
        if tensor is not None:
            out += buf[kept:field_start]
            out += field(INITIALIZER_FIELD, tensor)
            kept, count = value_end, count + 1
    out += buf[kept:end]
    return bytes(out), count


def skeleton(buf, location: str, min_bytes: int) -> tuple[bytes, int]:
    """The serialized model ``buf`` with big main-graph initializers turned into external references.

    Returns ``(bytes, count)``: a serialized ModelProto in which every main-graph initializer with
    at least ``min_bytes`` of ``raw_data`` reads its data from ``location`` at the offset where the
    bytes are in ``buf``; ``count`` is how many were turned. Raises WireError on bytes it cannot walk.
    """
    out = bytearray()
    kept, count = 0, 0
    for number, wire_type, field_start, value_start, value_end in fields(buf, 0, len(buf)):
        if number != GRAPH_FIELD or wire_type != 2:
            continue
        graph, turned = _graph(buf, value_start, value_end, location, min_bytes)
        if turned:
            out += buf[kept:field_start]
            out += field(GRAPH_FIELD, graph)
            kept, count = value_end, count + turned
    out += buf[kept:len(buf)]
    return bytes(out), count
