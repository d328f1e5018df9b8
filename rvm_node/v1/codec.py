"""The protobuf encoding of the messages that carry samples, read and written without copying them.

A ``chunk`` request and a ``part`` response carry megabytes of samples each.
The generated protobuf classes copy those bytes when a message is parsed,
again when the field is read, and twice more when a message is built and
serialized. Here a chunk request is read as views into the bytes gRPC
received (:class:`ChunkRequest`), and a part is written as its few header
bytes followed by its samples, in one copy (:class:`PartReply`). Every other
message, and any encoding this reader does not expect (fields repeated or
out of the usual shape, unknown fields at the top), goes through the
generated classes, so what is accepted is exactly what protobuf accepts.

The same codec serves both ends: the node parses requests and writes parts;
the client writes requests and parses parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rvm_node.v1 import matting_pb2 as pb

__all__ = [
    "ChunkRequest",
    "FramePartView",
    "PartReply",
    "PlanePartView",
    "Undecodable",
    "encode_request",
    "encode_response",
    "lenient_parser",
    "parse_request",
    "parse_response",
]

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_REQUEST_CHUNK = 2  # MatteRequest.chunk
_CHUNK_PARTS = 1  # FrameChunk.parts
_RESPONSE_PART = 2  # MatteResponse.part
_U64 = 1 << 64


class Undecodable:
    """What a message that does not parse becomes, so the service refuses it itself."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class _Irregular(Exception):
    """An encoding the fast reader leaves to the generated classes."""


@dataclass(frozen=True, slots=True)
class FramePartView:
    """A ``FramePart`` whose ``data`` is a view into the received message."""

    number: int
    offset: int
    total_bytes: int
    data: memoryview
    shm: pb.SlotRef | None = None  # where the frame lies in a shared-memory ring (TRANSPORT_SHM)


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """A ``MatteRequest`` holding a ``chunk``: its parts, in order."""

    parts: list[FramePartView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PartReply:
    """A ``MatteResponse`` holding one ``part``; ``data`` is any buffer (bytes, a contiguous array)."""

    number: int
    plane: int
    offset: int
    total_bytes: int
    data: Any


def _varint(value: int) -> bytes:
    if value < 0:
        value += _U64  # int64 on the wire: two's complement in ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & (_U64 - 1), pos
        shift += 7
    raise _Irregular


def _fields(data: memoryview, pos: int, end: int) -> Any:
    """(field number, wire type, value or (start, stop) of a length-delimited field) in order."""
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Irregular
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos, end)
            yield number, wire_type, value
        elif wire_type == _LENGTH:
            size, pos = _read_varint(data, pos, end)
            if size > end - pos:
                raise _Irregular
            yield number, wire_type, (pos, pos + size)
            pos += size
        elif wire_type in (_FIXED64, _FIXED32):
            pos += 8 if wire_type == _FIXED64 else 4
            if pos > end:
                raise _Irregular
            yield number, wire_type, None
        else:
            raise _Irregular  # groups: never ours


def _signed(value: int) -> int:
    return value - _U64 if value >= 1 << 63 else value


def _part_fields(
    data: memoryview, start: int, stop: int, varints: int, payload_tag: int
) -> tuple[list[int], memoryview]:
    """The varint fields 1..``varints`` (0 when absent; the last occurrence wins, as in protobuf) and the
    bytes field ``payload_tag`` of a part message, as a view. A slot reference (the field after the
    payload) leaves the message to protobuf: it is a few bytes."""
    values = [0] * varints
    payload = data[0:0]
    for tag, wire_type, value in _fields(data, start, stop):
        if 1 <= tag <= varints:
            if wire_type != _VARINT:
                raise _Irregular
            values[tag - 1] = value
        elif tag == payload_tag:
            if wire_type != _LENGTH:
                raise _Irregular
            payload = data[value[0] : value[1]]
        elif tag == payload_tag + 1:
            raise _Irregular
        # other fields: unknown to this version, skipped as protobuf skips them
    return values, payload


def _frame_part(data: memoryview, start: int, stop: int) -> FramePartView:
    (number, offset, total), payload = _part_fields(data, start, stop, 3, 4)
    return FramePartView(_signed(number), offset, total, payload)


def _single_field(data: memoryview, wanted: int) -> tuple[int, int]:
    """(start, stop) of the one length-delimited field ``wanted`` that is all of ``data``."""
    found = None
    for tag, wire_type, value in _fields(data, 0, len(data)):
        if tag != wanted or wire_type != _LENGTH or found is not None:
            raise _Irregular
        found = value
    if found is None:
        raise _Irregular
    return found


def _chunk_of(message: pb.MatteRequest) -> ChunkRequest:
    return ChunkRequest(
        [
            FramePartView(
                p.number, p.offset, p.total_bytes, memoryview(p.data), p.shm if p.HasField("shm") else None
            )
            for p in message.chunk.parts
        ]
    )


def parse_request(data: bytes) -> ChunkRequest | pb.MatteRequest | Undecodable:
    """A request as gRPC delivers it: a chunk as views, anything else as its message."""
    view = memoryview(data)
    try:
        start, stop = _single_field(view, _REQUEST_CHUNK)
        parts = []
        for tag, wire_type, value in _fields(view, start, stop):
            if tag != _CHUNK_PARTS or wire_type != _LENGTH:
                raise _Irregular
            parts.append(_frame_part(view, *value))
        return ChunkRequest(parts)
    except _Irregular:
        pass
    message = _parse_message(pb.MatteRequest, data)
    if isinstance(message, pb.MatteRequest) and message.WhichOneof("kind") == "chunk":
        return _chunk_of(message)
    return message


def encode_request(request: ChunkRequest | pb.MatteRequest) -> bytes:
    """The bytes of a request: a chunk's samples copied once, behind their headers."""
    if not isinstance(request, ChunkRequest):
        return request.SerializeToString()
    if any(part.shm is not None for part in request.parts):  # slot references carry no samples
        return _as_message(request).SerializeToString()
    pieces: list[Any] = []
    for part in request.parts:
        size = memoryview(part.data).nbytes
        head = b"".join(
            [
                _key(1, _VARINT) + _varint(part.number) if part.number else b"",
                _key(2, _VARINT) + _varint(part.offset) if part.offset else b"",
                _key(3, _VARINT) + _varint(part.total_bytes) if part.total_bytes else b"",
                _key(4, _LENGTH) + _varint(size) if size else b"",
            ]
        )
        pieces += [_key(_CHUNK_PARTS, _LENGTH) + _varint(len(head) + size), head, _bytes_of(part.data)]
    size = sum(memoryview(piece).nbytes for piece in pieces)
    return b"".join([_key(_REQUEST_CHUNK, _LENGTH) + _varint(size), *pieces])


def _as_message(request: ChunkRequest) -> pb.MatteRequest:
    return pb.MatteRequest(
        chunk=pb.FrameChunk(
            parts=[
                pb.FramePart(
                    number=p.number, offset=p.offset, total_bytes=p.total_bytes, data=bytes(p.data), shm=p.shm
                )
                for p in request.parts
            ]
        )
    )


def _bytes_of(data: Any) -> memoryview:
    return memoryview(data).cast("B")


def encode_response(response: PartReply | pb.MatteResponse) -> bytes:
    """The bytes of a response: a part's samples copied once, behind its header."""
    if not isinstance(response, PartReply):
        return response.SerializeToString()
    size = memoryview(response.data).nbytes
    head = b"".join(
        [
            _key(1, _VARINT) + _varint(response.number) if response.number else b"",
            _key(2, _VARINT) + _varint(response.plane) if response.plane else b"",
            _key(3, _VARINT) + _varint(response.offset) if response.offset else b"",
            _key(4, _VARINT) + _varint(response.total_bytes) if response.total_bytes else b"",
            _key(5, _LENGTH) + _varint(size) if size else b"",
        ]
    )
    outer = _key(_RESPONSE_PART, _LENGTH) + _varint(len(head) + size)
    return b"".join([outer, head, _bytes_of(response.data)])


@dataclass(frozen=True, slots=True)
class PlanePartView:
    """A ``PlanePart`` whose ``data`` is a view into the received message."""

    number: int
    plane: int
    offset: int
    total_bytes: int
    data: memoryview
    shm: pb.SlotRef | None = None  # where the node wrote the plane in a shared-memory ring


def parse_response(data: bytes) -> PlanePartView | pb.MatteResponse | Undecodable:
    """A response as gRPC delivers it: a part as a view, anything else as its message."""
    view = memoryview(data)
    try:
        start, stop = _single_field(view, _RESPONSE_PART)
        (number, plane, offset, total), payload = _part_fields(view, start, stop, 4, 5)
        return PlanePartView(_signed(number), plane, offset, total, payload)
    except _Irregular:
        pass
    message = _parse_message(pb.MatteResponse, data)
    if isinstance(message, pb.MatteResponse) and message.WhichOneof("kind") == "part":
        part = message.part
        return PlanePartView(
            part.number,
            part.plane,
            part.offset,
            part.total_bytes,
            memoryview(part.data),
            part.shm if part.HasField("shm") else None,
        )
    return message


_M = TypeVar("_M")


def _parse_message(message_type: Callable[[], _M], data: bytes) -> _M | Undecodable:
    from google.protobuf.message import DecodeError

    try:
        return message_type.FromString(data)  # type: ignore[attr-defined, no-any-return]
    except DecodeError as exc:
        return Undecodable(str(exc))


def lenient_parser(message_type: Any) -> Callable[[bytes], Any]:
    """A deserializer for gRPC that gives :class:`Undecodable` instead of raising."""

    def parse(data: bytes) -> Any:
        return _parse_message(message_type, data)

    return parse
