"""What travels on the wire: planes, sample formats and transports, on a real node on 127.0.0.1."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rvm_node.client import NodeClient
from rvm_node.engine.samples import OutputSpec
from rvm_node.errors import InvalidInputError
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import pack
from tests.helpers import error_info
from tests.node_support import RATIO, NodeThread, chunk_request, frames_of, open_request, raw_stream
from tests.standin import standin_as_backend, standin_node_as_node

__all__ = ["standin_as_backend", "standin_node_as_node"]  # the fixtures `backend` and `node`: the stand-in


WIDTH, HEIGHT = 176, 144


def local(
    backend, frames: list[tuple[int, np.ndarray]], spec: OutputSpec
) -> tuple[np.ndarray, np.ndarray | None]:
    session = backend.new_session(RATIO, spec)
    out = session.process(np.stack([f for _, f in frames]).transpose(0, 3, 1, 2))
    return out.pha[:, 0], None if out.fgr is None else out.fgr.transpose(0, 2, 3, 1)


# PNG carries integer samples only; the float formats with PNG are refused (see test_transport_errors).
COMBINATIONS = [
    (fmt, transport, back)
    for fmt in ("uint8", "uint16", "float16", "float32")
    for transport, back in (("raw", None), ("zstd", None), ("png", "zstd"), ("raw", "png"))
    if not (back == "png" and fmt.startswith("float"))
]


@pytest.mark.parametrize(("fmt", "transport", "back"), COMBINATIONS)
def test_transports_and_formats_are_sent_and_lossless(
    node: NodeThread, backend, clip_frames: np.ndarray, fmt: str, transport: str, back: str | None
) -> None:
    frames = frames_of(clip_frames, 4)
    with (
        NodeClient(node.address) as client,
        client.open_stream(
            width=WIDTH,
            height=HEIGHT,
            downsample_ratio=RATIO,
            planes=("alpha", "foreground"),
            output_format=fmt,
            transport=transport,
            return_transport=back,
        ) as stream,
    ):
        # The node echoes the settings it received: proof that the client sent them.
        assert stream.accepted.settings.transport == {"raw": 1, "png": 2, "zstd": 3}[transport]
        assert stream.accepted.settings.return_transport == {"raw": 1, "png": 2, "zstd": 3}[back or transport]
        assert (
            stream.accepted.settings.output_format
            == {"uint8": 1, "uint16": 2, "float16": 3, "float32": 4}[fmt]
        )
        results = list(stream.process(frames))
    alpha, fgr = local(backend, frames, OutputSpec(foreground=True, sample_format=fmt))  # type: ignore[arg-type]
    assert np.stack([r.alpha for r in results]).dtype == np.dtype(fmt)
    assert np.array_equal(np.stack([r.alpha for r in results]), alpha)
    assert np.array_equal(np.stack([r.foreground for r in results]), fgr)


def test_alpha_only_streams_return_no_foreground(node: NodeThread, clip_frames: np.ndarray) -> None:
    requests = [
        open_request(WIDTH, HEIGHT, output_format=pb.SAMPLE_FORMAT_UINT16),
        chunk_request(1, clip_frames[0].transpose(1, 2, 0).tobytes()),
    ]
    responses = raw_stream(node.address, requests)
    parts = [r.part for r in responses if r.WhichOneof("kind") == "part"]
    assert {p.plane for p in parts} == {pb.PLANE_ALPHA}
    assert sum(len(p.data) for p in parts) == WIDTH * HEIGHT * 2  # 16-bit alpha, nothing else


def test_compressed_mattes_are_smaller(node: NodeThread, clip_frames: np.ndarray) -> None:
    frame = clip_frames[0].transpose(1, 2, 0).tobytes()
    sizes = {}
    for transport in (pb.TRANSPORT_RAW, pb.TRANSPORT_ZSTD, pb.TRANSPORT_PNG):
        requests = [
            open_request(WIDTH, HEIGHT, output_format=pb.SAMPLE_FORMAT_UINT16, return_transport=transport),
            chunk_request(1, frame),
        ]
        sizes[transport] = sum(len(r.part.data) for r in raw_stream(node.address, requests) if r.part.data)
    print(f"\n16-bit alpha bytes: raw {sizes[1]}, zstd {sizes[3]}, png {sizes[2]}")
    assert sizes[pb.TRANSPORT_RAW] == WIDTH * HEIGHT * 2
    assert sizes[pb.TRANSPORT_ZSTD] < sizes[pb.TRANSPORT_RAW] / 2
    assert sizes[pb.TRANSPORT_PNG] < sizes[pb.TRANSPORT_RAW] / 2


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _png(width: int, height: int) -> bytes:
    return pack(np.zeros((height, width, 3), np.uint8), pb.TRANSPORT_PNG)


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG declaring ``width`` x ``height``: a 31-byte decompression bomb's header."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + b"IHDR" + ihdr + b"\0\0\0\0"


@pytest.mark.parametrize(
    ("requests", "reason", "message"),
    [
        ([open_request(transport=7)], "TRANSPORT_UNSUPPORTED", "unknown transport 7"),
        ([open_request(return_transport=9)], "TRANSPORT_UNSUPPORTED", "unknown transport 9"),
        (
            [open_request(transport=pb.TRANSPORT_PNG, input_format=pb.SAMPLE_FORMAT_FLOAT32)],
            "TRANSPORT_UNSUPPORTED",
            "PNG transport carries uint8 or uint16",
        ),
        (
            [open_request(return_transport=pb.TRANSPORT_PNG)],
            "TRANSPORT_UNSUPPORTED",
            "PNG transport carries uint8 or uint16",
        ),
        (
            [open_request(transport=pb.TRANSPORT_PNG, return_transport=1), chunk_request(1, b"not a png")],
            "FRAME_UNDECODABLE",
            "not a readable PNG",
        ),
        (
            [open_request(transport=pb.TRANSPORT_PNG, return_transport=1), chunk_request(1, _png(32, 24))],
            "FRAME_SIZE_MISMATCH",
            "PNG is 32x24, expected 64x48",
        ),
        (
            [
                open_request(transport=pb.TRANSPORT_PNG, return_transport=1),
                chunk_request(1, _png_header(16000, 16000)),
            ],
            "FRAME_SIZE_MISMATCH",
            "PNG is 16000x16000, expected 64x48",  # read from the header: nothing is decoded
        ),
        (
            [open_request(transport=pb.TRANSPORT_ZSTD), chunk_request(1, b"\0" * 64)],
            "FRAME_UNDECODABLE",
            "not a readable zstd frame",
        ),
        (
            [open_request(transport=pb.TRANSPORT_ZSTD), chunk_request(1, _zstd(b"\0" * 100))],
            "FRAME_SIZE_MISMATCH",
            "inflates to 100 bytes, expected 9216",
        ),
        (
            [open_request(transport=pb.TRANSPORT_ZSTD), chunk_request(1, _zstd(b"\0" * 50_000_000))],
            "FRAME_UNDECODABLE",
            "inflates to more than 9216 bytes",
        ),
        (
            [open_request(transport=pb.TRANSPORT_ZSTD), chunk_request(1, b"\0" * 100, total=10**9)],
            "FRAME_SIZE_MISMATCH",
            "declared 1000000000 bytes, expected at most",
        ),
    ],
)
def test_transport_errors(
    node: NodeThread, requests: list[pb.MatteRequest], reason: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        responses = raw_stream(node.address, requests)
        assert not responses
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert error_info(info.value)[0] == reason
    assert node.wait_idle() == 0


def test_settings_errors_come_before_accepted(node: NodeThread) -> None:
    with grpc.insecure_channel(node.address) as channel:
        from rvm_node.v1 import matting_pb2_grpc as pb_grpc

        call = pb_grpc.MattingServiceStub(channel).Matte(iter([open_request(transport=7)]), timeout=10)
        with pytest.raises(grpc.RpcError):
            next(call)  # no `accepted` first: the refusal is the first thing the client reads


def test_client_refuses_what_the_node_would(node: NodeThread) -> None:
    with NodeClient(node.address) as client:
        with pytest.raises(InvalidInputError, match="transport: expected one of raw, zstd, png"):
            client.open_stream(width=WIDTH, height=HEIGHT, transport="gzip")
        with pytest.raises(InvalidInputError, match="PNG transport carries uint8 or uint16"):
            client.open_stream(width=WIDTH, height=HEIGHT, output_format="float16", return_transport="png")


def test_node_advertises_transports_formats_and_limits(node: NodeThread) -> None:
    with NodeClient(node.address) as client:
        info = client.info()
    assert set(info.transports) == {"raw", "zstd", "png", "shm"}
    assert set(info.sample_formats) == {"uint8", "uint16", "float16", "float32"}
    assert info.max_chunks_in_flight == 4
    assert info.max_batch == 1  # a CPU node does not batch by default
