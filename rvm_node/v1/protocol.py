"""The protocol's rules, shared by the node and its client: sample formats and transports, frame parts,
state messages, shared-memory slot layouts (the bytes of the messages that carry samples: ``codec``).

Nothing here allocates a frame buffer before its declared size has been
checked against the stream's settings and the node's limits.
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rvm_node.engine.samples import SAMPLE_DTYPES, SampleFormat, to_samples
from rvm_node.engine.states import RecurrentState, check_state, check_state_shapes
from rvm_node.errors import InvalidInputError, StateMismatchError
from rvm_node.v1 import DEFAULT_PORT
from rvm_node.v1 import matting_pb2 as pb

__all__ = [
    "DTYPES",
    "FORMAT_NAMES",
    "PLANE_CHANNELS",
    "SAMPLE_NAMES",
    "TRANSPORTS",
    "FrameAssembler",
    "SlotLayout",
    "check_transport",
    "decode_png",
    "encode_png",
    "pack",
    "packed_limit",
    "png_size",
    "rings_supported",
    "split_parts",
    "state_from_message",
    "state_to_message",
    "transport_name",
    "unpack",
    "wire_bytes",
    "wire_samples",
    "with_default_port",
]

SAMPLE_NAMES: dict[pb.SampleFormat, SampleFormat] = {
    pb.SAMPLE_FORMAT_UINT8: "uint8",
    pb.SAMPLE_FORMAT_UINT16: "uint16",
    pb.SAMPLE_FORMAT_FLOAT16: "float16",
    pb.SAMPLE_FORMAT_FLOAT32: "float32",
}
FORMAT_NAMES: dict[str, pb.SampleFormat] = {name: fmt for fmt, name in SAMPLE_NAMES.items()}
# Samples on the wire are little endian.
DTYPES: dict[pb.SampleFormat, np.dtype] = {
    fmt: SAMPLE_DTYPES[name].newbyteorder("<") for fmt, name in SAMPLE_NAMES.items()
}
TRANSPORTS: dict[str, pb.Transport] = {
    "raw": pb.TRANSPORT_RAW,
    "zstd": pb.TRANSPORT_ZSTD,
    "png": pb.TRANSPORT_PNG,
    "shm": pb.TRANSPORT_SHM,
}
PLANE_CHANNELS = {pb.PLANE_ALPHA: 1, pb.PLANE_FOREGROUND: 3}
_ZSTD_LEVEL = 1  # the fastest level: mattes shrink 20-100x even so


def rings_supported() -> bool:
    """Whether this host has shared-memory rings: sealed memfds handed over on Unix sockets in the abstract
    namespace, which Linux alone has (macOS and Windows use gRPC)."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


def transport_name(transport: int) -> str:
    for name, value in TRANSPORTS.items():
        if value == transport:
            return name
    return "raw" if transport == pb.TRANSPORT_UNSPECIFIED else f"#{transport}"


def check_transport(transport: pb.Transport, fmt: pb.SampleFormat, where: str) -> pb.Transport:
    """The transport to use (unspecified is raw); InvalidInputError for one that cannot carry ``fmt``."""
    if transport == pb.TRANSPORT_UNSPECIFIED:
        return pb.TRANSPORT_RAW
    if transport not in TRANSPORTS.values():
        raise InvalidInputError(
            f"{where}: unknown transport {transport}; expected raw, zstd, png or shm",
            reason="TRANSPORT_UNSUPPORTED",
            field=where,
        )
    if transport == pb.TRANSPORT_PNG and DTYPES[fmt].kind != "u":
        raise InvalidInputError(
            f"{where}: PNG transport carries uint8 or uint16 samples only",
            reason="TRANSPORT_UNSUPPORTED",
            field=where,
        )
    return transport


@dataclass(frozen=True)
class SlotLayout:
    """Where a frame and its planes lie in the slots of a shared-memory ring, for both ends of a stream.

    A slot holds the frame sent from its start, then each plane returned, in
    the stream's plane order, back to back; slots follow one another every
    ``slot_bytes`` (at least :attr:`needed_bytes`).
    """

    frame_bytes: int
    plane_bytes: tuple[int, ...]
    slot_bytes: int

    @classmethod
    def of(
        cls, width: int, height: int, in_dtype: np.dtype, out_dtype: np.dtype, planes: Iterable[pb.Plane]
    ) -> SlotLayout:
        """The layout of a stream's slots, each exactly as large as it needs to be."""
        pixels = width * height
        plane_bytes = tuple(pixels * PLANE_CHANNELS[p] * out_dtype.itemsize for p in planes)
        frame_bytes = pixels * 3 * in_dtype.itemsize
        return cls(frame_bytes, plane_bytes, frame_bytes + sum(plane_bytes))

    @property
    def needed_bytes(self) -> int:
        """What one slot must hold: a frame and its planes."""
        return self.frame_bytes + sum(self.plane_bytes)

    def frame_at(self, slot: int) -> int:
        """The offset of the frame in ``slot``."""
        return slot * self.slot_bytes

    def plane_at(self, slot: int, index: int) -> int:
        """The offset of the ``index``-th plane of the stream in ``slot``."""
        return slot * self.slot_bytes + self.frame_bytes + sum(self.plane_bytes[:index])


def packed_limit(transport: int, raw_bytes: int) -> int:
    """The most bytes a packed frame of ``raw_bytes`` may declare (compressed data can grow a little)."""
    if transport == pb.TRANSPORT_RAW:
        return raw_bytes
    return raw_bytes + raw_bytes // 50 + 65536


def wire_samples(values: np.ndarray) -> np.ndarray:
    """``values`` in wire order (C order, little endian): the array itself where it already is."""
    samples = np.ascontiguousarray(values)
    if samples.dtype.byteorder == ">":
        samples = samples.astype(samples.dtype.newbyteorder("<"))
    return samples


def wire_bytes(values: np.ndarray) -> memoryview:
    """The bytes of ``values`` in wire order, as a view (a copy only where they are out of order)."""
    return wire_samples(values).data.cast("B")


def pack(values: np.ndarray, transport: int) -> bytes:
    """The bytes of ``values`` (samples already in the wire format) for ``transport``."""
    samples = wire_samples(values)
    if transport == pb.TRANSPORT_ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(samples.data.cast("B"))
    if transport == pb.TRANSPORT_PNG:
        return encode_png(samples)
    return samples.tobytes()


def unpack(
    data: bytes | bytearray | memoryview, transport: int, dtype: np.dtype, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """Samples of ``shape`` from packed bytes; a compressed part may never inflate beyond the frame's size."""
    expected = int(np.prod(shape)) * dtype.itemsize
    if transport == pb.TRANSPORT_PNG:
        return decode_png(data, shape, where).astype(dtype, copy=False)
    if transport == pb.TRANSPORT_ZSTD:
        return _inflate_zstd(data, dtype, shape, expected, where)
    if len(data) != expected:
        raise InvalidInputError(
            f"{where}: {len(data)} bytes, expected {expected}", reason="FRAME_SIZE_MISMATCH"
        )
    return np.frombuffer(data, dtype).reshape(shape)


def _inflate_zstd(
    data: bytes | bytearray | memoryview, dtype: np.dtype, shape: tuple[int, ...], expected: int, where: str
) -> np.ndarray:
    import zstandard

    out = np.empty(shape, dtype)
    view = out.data.cast("B")
    filled = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
            while filled < expected:
                got = reader.readinto(view[filled:])
                if got == 0:
                    break
                filled += got
            extra = reader.read(1)  # one byte more than the frame holds: it inflates too far
    except zstandard.ZstdError as exc:
        raise InvalidInputError(
            f"{where}: not a readable zstd frame ({exc})", reason="FRAME_UNDECODABLE"
        ) from exc
    if filled != expected or extra:
        raise InvalidInputError(
            f"{where}: zstd data inflates to {'more than ' if extra else ''}{filled} bytes, expected {expected}",
            reason="FRAME_SIZE_MISMATCH" if filled < expected and not extra else "FRAME_UNDECODABLE",
        )
    return out


def split_parts(data: bytes | bytearray | memoryview, limit: int) -> Iterator[tuple[int, memoryview]]:
    """(offset, view) pieces of at most ``limit`` bytes, never copies."""
    view = memoryview(data)
    for offset in range(0, max(1, len(view)), limit):
        yield offset, view[offset : offset + limit]


def encode_png(values: np.ndarray) -> bytes:
    """Lossless PNG of ``HxW`` or ``HxWx3`` uint8/uint16 samples (float 0..1 becomes 16-bit)."""
    import av

    if values.dtype.kind == "f":
        values = to_samples(values, "uint16")
    deep = values.dtype == np.uint16
    fmt = ("gray16be" if deep else "gray") if values.ndim == 2 else ("rgb48be" if deep else "rgb24")
    codec: Any = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = values.shape[1], values.shape[0], fmt
    codec.options["compression_level"] = "3"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(values), format=fmt)
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def png_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, read before anything is decoded; None if it is not a PNG."""
    head = bytes(data[:24])
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def decode_png(data: bytes | bytearray | memoryview, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Samples of a PNG that must have ``shape`` (``HxW`` or ``HxWx3``); its size is checked before decoding."""
    import av

    size = png_size(data)
    if size is None:
        raise InvalidInputError(f"{where}: not a readable PNG (no PNG header)", reason="FRAME_UNDECODABLE")
    if size != (shape[1], shape[0]):
        raise InvalidInputError(
            f"{where}: PNG is {size[0]}x{size[1]}, expected {shape[1]}x{shape[0]}",
            reason="FRAME_SIZE_MISMATCH",
        )
    try:
        codec: Any = av.CodecContext.create("png", "r")
        frames = [*codec.decode(av.Packet(bytes(data))), *codec.decode(None)]
    except (av.error.FFmpegError, ValueError) as exc:
        raise InvalidInputError(f"{where}: not a readable PNG ({exc})", reason="FRAME_UNDECODABLE") from exc
    if not frames:
        raise InvalidInputError(f"{where}: not a readable PNG", reason="FRAME_UNDECODABLE")
    frame = frames[0]
    deep = max((c.bits for c in frame.format.components), default=8) > 8
    fmt = ("gray16le" if deep else "gray") if len(shape) == 2 else ("rgb48le" if deep else "rgb24")
    values = frame.to_ndarray(format=fmt)
    if values.shape != shape:
        raise InvalidInputError(
            f"{where}: PNG is {list(values.shape)}, expected {list(shape)}", reason="FRAME_SIZE_MISMATCH"
        )
    return values


class FrameAssembler:
    """Reassembles frames sent in parts, in order, after checking their declared size.

    ``exact`` (raw samples): the declared size must be ``expected_bytes``.
    Otherwise (compressed): it may be anything up to ``expected_bytes``.
    """

    def __init__(self, expected_bytes: int, exact: bool = True) -> None:
        self.expected_bytes = expected_bytes
        self.exact = exact
        self._number: int | None = None
        self._buffer: bytearray | None = None
        self._filled = 0

    def add(
        self, number: int, offset: int, total: int, data: bytes | memoryview
    ) -> bytes | memoryview | bytearray | None:
        """Add one part; return the whole frame when it is complete (a frame in one part is not copied)."""
        if (total != self.expected_bytes) if self.exact else not (0 < total <= self.expected_bytes):
            bound = "" if self.exact else "at most "
            raise InvalidInputError(
                f"frame {number}: declared {total} bytes, expected {bound}{self.expected_bytes} for the stream's size and format",
                reason="FRAME_SIZE_MISMATCH",
                frame=number,
            )
        if self._buffer is None:
            if offset != 0:
                raise InvalidInputError(
                    f"frame {number}: the first part must start at offset 0, got {offset}",
                    reason="FRAME_PARTS_INVALID",
                    frame=number,
                )
            if len(data) == total:
                return data
            self._number, self._buffer, self._filled = number, bytearray(total), 0
        elif number != self._number or offset != self._filled:
            raise InvalidInputError(
                f"frame {number}: part at offset {offset} does not continue frame {self._number} at {self._filled}",
                reason="FRAME_PARTS_INVALID",
                frame=number,
            )
        if offset + len(data) > total:
            raise InvalidInputError(
                f"frame {number}: part overruns the declared {total} bytes",
                reason="FRAME_PARTS_INVALID",
                frame=number,
            )
        self._buffer[offset : offset + len(data)] = data
        self._filled += len(data)
        if self._filled < total:
            return None
        frame, self._buffer, self._number = self._buffer, None, None
        return frame

    @property
    def pending(self) -> bool:
        return self._buffer is not None


def state_to_message(state: RecurrentState, after_frame: int) -> pb.StateSnapshot:
    height, width = state.frame_size
    return pb.StateSnapshot(
        after_frame=after_frame,
        width=width,
        height=height,
        downsample_ratio=state.downsample_ratio,
        frames=state.frames,
        tensors=[
            pb.Tensor(shape=list(t.shape), data=np.ascontiguousarray(t, "<f4").tobytes())
            for t in state.arrays()
        ],
        variant=state.variant,
    )


def state_from_message(message: pb.StateSnapshot, variant: str | None = None) -> tuple[int, RecurrentState]:
    """The snapshot's (after_frame, state), checked in full against ``variant`` (default: the one it
    names) before any tensor is copied."""
    variant = message.variant if variant is None else variant
    if message.variant != variant or not variant:
        raise StateMismatchError(
            f"restore: the state is for {message.variant or 'an unnamed variant'}, this model is {variant}",
            field="open.restore.variant",
        )
    if len(message.tensors) != 4:
        raise StateMismatchError(
            f"restore: expected 4 state tensors, got {len(message.tensors)}", field="open.restore.tensors"
        )
    ratio = float(message.downsample_ratio)
    frame_size = (message.height, message.width)
    shapes = [tuple(int(d) for d in tensor.shape) for tensor in message.tensors]
    check_state_shapes(variant, frame_size, ratio, shapes, batch=1, where="restore")  # before any copy
    arrays = []
    for index, (tensor, shape) in enumerate(zip(message.tensors, shapes, strict=True)):
        if math.prod(shape) * 4 != len(tensor.data):
            raise StateMismatchError(
                f"restore: state tensor r{index + 1} of shape {list(shape)} needs {math.prod(shape) * 4} bytes, "
                f"got {len(tensor.data)}",
                field=f"open.restore.tensors[{index}].data",
            )
        arrays.append(np.frombuffer(tensor.data, "<f4").reshape(shape).astype(np.float32))
    state = RecurrentState.from_arrays(arrays, frame_size, ratio, int(message.frames), variant)
    check_state(state, variant, "restore", batch=1)
    return int(message.after_frame), state


def with_default_port(address: str) -> str:
    """``address`` with the node's default port where it names a host and no port (``gpu01``,
    ``[::1]``); anything else (``host:port``, ``unix:///path``, ``dns:///host:port``) as it is."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", address) or re.fullmatch(r"\[[0-9A-Fa-f:.]+\]", address):
        return f"{address}:{DEFAULT_PORT}"
    return address
