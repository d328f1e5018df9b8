"""The copy-free codec of chunk requests and part responses (``rvm_node.v1.codec``) against protobuf's own.

Whatever bytes arrive, the fast reader must read what the generated classes read, or hand the bytes to
them; what it writes must parse back, field for field, with the generated classes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.codec import (
    ChunkRequest,
    FramePartView,
    PartReply,
    PlanePartView,
    Undecodable,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
)

_INT64 = st.integers(-(2**63), 2**63 - 1)
_UINT64 = st.integers(0, 2**64 - 1)


def _frame_parts() -> st.SearchStrategy[list[pb.FramePart]]:
    part = st.builds(
        pb.FramePart, number=_INT64, offset=_UINT64, total_bytes=_UINT64, data=st.binary(max_size=64)
    )
    return st.lists(part, max_size=4)


def _as_pb(request: ChunkRequest) -> pb.MatteRequest:
    parts = [
        pb.FramePart(number=p.number, offset=p.offset, total_bytes=p.total_bytes, data=bytes(p.data))
        for p in request.parts
    ]
    return pb.MatteRequest(chunk=pb.FrameChunk(parts=parts))


@settings(max_examples=300, deadline=None)
@given(parts=_frame_parts())
def test_chunks_written_by_either_codec_read_the_same(parts: list[pb.FramePart]) -> None:
    message = pb.MatteRequest(chunk=pb.FrameChunk(parts=parts))
    parsed = parse_request(message.SerializeToString())
    assert isinstance(parsed, ChunkRequest)
    assert _as_pb(parsed) == message
    views = ChunkRequest(
        [FramePartView(p.number, p.offset, p.total_bytes, memoryview(p.data)) for p in parts]
    )
    assert pb.MatteRequest.FromString(encode_request(views)) == message


@settings(max_examples=300, deadline=None)
@given(
    number=_INT64,
    plane=st.sampled_from([0, 1, 2, 7]),
    offset=_UINT64,
    total=_UINT64,
    data=st.binary(max_size=64),
)
def test_parts_written_by_either_codec_read_the_same(
    number: int, plane: int, offset: int, total: int, data: bytes
) -> None:
    message = pb.MatteResponse(
        part=pb.PlanePart(number=number, plane=plane, offset=offset, total_bytes=total, data=data)
    )
    assert (
        pb.MatteResponse.FromString(encode_response(PartReply(number, plane, offset, total, data))) == message
    )
    parsed = parse_response(message.SerializeToString())
    assert isinstance(parsed, PlanePartView)
    assert (parsed.number, parsed.plane, parsed.offset, parsed.total_bytes, bytes(parsed.data)) == (
        number,
        plane,
        offset,
        total,
        data,
    )


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=96))
def test_any_bytes_read_as_protobuf_reads_them(data: bytes) -> None:
    """Random bytes: the same message protobuf makes of them, or Undecodable where protobuf refuses them."""
    for parse, message_type in ((parse_request, pb.MatteRequest), (parse_response, pb.MatteResponse)):
        try:
            expected = message_type.FromString(data)
        except Exception:
            expected = None
        parsed = parse(data)
        if expected is None:
            assert isinstance(parsed, Undecodable)
        elif isinstance(parsed, ChunkRequest):
            assert expected.WhichOneof("kind") == "chunk"
            assert _as_pb(parsed).chunk == expected.chunk
        elif isinstance(parsed, PlanePartView):
            assert expected.WhichOneof("kind") == "part"
            part = expected.part
            assert (parsed.number, parsed.plane, parsed.offset, parsed.total_bytes, bytes(parsed.data)) == (
                part.number,
                part.plane,
                part.offset,
                part.total_bytes,
                part.data,
            )
        else:
            assert parsed == expected


def test_irregular_encodings_go_to_protobuf() -> None:
    """A chunk sent twice in one request merges (protobuf's rule), and other kinds keep their message."""
    one = pb.MatteRequest(chunk=pb.FrameChunk(parts=[pb.FramePart(number=1, data=b"a")])).SerializeToString()
    two = pb.MatteRequest(chunk=pb.FrameChunk(parts=[pb.FramePart(number=2, data=b"b")])).SerializeToString()
    merged = parse_request(one + two)
    assert isinstance(merged, ChunkRequest)
    assert [(p.number, bytes(p.data)) for p in merged.parts] == [(1, b"a"), (2, b"b")]
    control = pb.MatteRequest(control=pb.Control(reset=pb.Control.Reset()))
    assert parse_request(control.SerializeToString()) == control
    accepted = pb.MatteResponse(reset_done=pb.ResetDone())
    assert parse_response(accepted.SerializeToString()) == accepted
    assert isinstance(parse_request(b"\x12\x05ab"), Undecodable)  # a chunk cut short


def test_a_large_part_is_read_without_a_copy() -> None:
    samples = bytes(range(256)) * 4096
    encoded = encode_request(ChunkRequest([FramePartView(7, 0, len(samples), memoryview(samples))]))
    parsed = parse_request(encoded)
    assert isinstance(parsed, ChunkRequest)
    assert parsed.parts[0].data.obj is encoded  # a view into the received bytes
    assert bytes(parsed.parts[0].data) == samples


def test_slot_references_travel_through_protobuf_both_ways() -> None:
    ref = pb.SlotRef(slot=3, offset=3 * 1000, size=900)
    request = ChunkRequest([FramePartView(12, 0, 900, memoryview(b""), ref)])
    parsed = parse_request(encode_request(request))
    assert isinstance(parsed, ChunkRequest) and parsed.parts[0].shm == ref and parsed.parts[0].number == 12
    part = pb.MatteResponse(part=pb.PlanePart(number=12, plane=1, total_bytes=600, shm=ref))
    reply = parse_response(part.SerializeToString())
    assert isinstance(reply, PlanePartView) and reply.shm == ref and reply.total_bytes == 600
