"""Wire helpers shared by the node and its client: sample formats, frame parts, state messages.

Nothing here allocates a frame buffer before its declared size has been
checked against the stream's settings and the node's limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from rvm_node.engine.session import RecurrentState
from rvm_node.errors import InvalidInputError
from rvm_node.v1 import matting_pb2 as pb

__all__ = [
    "DTYPES",
    "FORMAT_NAMES",
    "PLANE_CHANNELS",
    "FrameAssembler",
    "decode_png",
    "decode_samples",
    "encode_png",
    "encode_samples",
    "split_parts",
    "state_from_message",
    "state_to_message",
]

DTYPES: dict[int, np.dtype] = {
    pb.SAMPLE_FORMAT_UINT8: np.dtype("<u1"),
    pb.SAMPLE_FORMAT_UINT16: np.dtype("<u2"),
    pb.SAMPLE_FORMAT_FLOAT16: np.dtype("<f2"),
    pb.SAMPLE_FORMAT_FLOAT32: np.dtype("<f4"),
}
FORMAT_NAMES = {
    "uint8": pb.SAMPLE_FORMAT_UINT8,
    "uint16": pb.SAMPLE_FORMAT_UINT16,
    "float16": pb.SAMPLE_FORMAT_FLOAT16,
    "float32": pb.SAMPLE_FORMAT_FLOAT32,
}
PLANE_CHANNELS = {pb.PLANE_ALPHA: 1, pb.PLANE_FOREGROUND: 3}


def encode_samples(values: np.ndarray, fmt: int) -> bytes:
    """Float 0..1 values to the wire format (integers are rounded and clipped)."""
    dtype = DTYPES[fmt]
    if dtype.kind == "u":
        top = np.iinfo(dtype).max
        return np.rint(np.clip(values, 0.0, 1.0) * top).astype(dtype).tobytes()
    return np.asarray(values, dtype).tobytes()


def decode_samples(data: bytes | bytearray, fmt: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, DTYPES[fmt]).reshape(shape)


def split_parts(data: bytes, limit: int) -> Iterator[tuple[int, bytes]]:
    """(offset, slice) pieces of at most ``limit`` bytes."""
    if not data:
        yield 0, b""
        return
    for offset in range(0, len(data), limit):
        yield offset, data[offset : offset + limit]


def encode_png(values: np.ndarray) -> bytes:
    """Lossless PNG of ``HxW`` or ``HxWx3`` uint8/uint16 samples (float 0..1 becomes 16-bit)."""
    import av

    if values.dtype.kind == "f":
        values = np.rint(np.clip(values, 0.0, 1.0) * 65535).astype(np.uint16)
    deep = values.dtype == np.uint16
    fmt = ("gray16be" if deep else "gray") if values.ndim == 2 else ("rgb48be" if deep else "rgb24")
    codec: Any = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = values.shape[1], values.shape[0], fmt
    codec.options["compression_level"] = "3"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(values), format=fmt)
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def decode_png(data: bytes | bytearray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Samples of a PNG that must have ``shape`` (``HxW`` or ``HxWx3``)."""
    import av

    try:
        codec: Any = av.CodecContext.create("png", "r")
        frames = [*codec.decode(av.Packet(bytes(data))), *codec.decode(None)]
    except (av.error.FFmpegError, ValueError) as exc:
        raise InvalidInputError(f"{where}: not a readable PNG ({exc})") from exc
    if not frames:
        raise InvalidInputError(f"{where}: not a readable PNG")
    frame = frames[0]
    deep = max((c.bits for c in frame.format.components), default=8) > 8
    fmt = ("gray16le" if deep else "gray") if len(shape) == 2 else ("rgb48le" if deep else "rgb24")
    values = frame.to_ndarray(format=fmt)
    if values.shape != shape:
        raise InvalidInputError(f"{where}: PNG is {list(values.shape)}, expected {list(shape)}")
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

    def add(self, number: int, offset: int, total: int, data: bytes) -> bytearray | None:
        """Add one part; return the whole frame when it is complete."""
        if (total != self.expected_bytes) if self.exact else not (0 < total <= self.expected_bytes):
            bound = "" if self.exact else "at most "
            raise InvalidInputError(
                f"frame {number}: declared {total} bytes, expected {bound}{self.expected_bytes} for the stream's size and format"
            )
        if self._buffer is None:
            if offset != 0:
                raise InvalidInputError(
                    f"frame {number}: the first part must start at offset 0, got {offset}"
                )
            self._number, self._buffer, self._filled = number, bytearray(total), 0
        elif number != self._number or offset != self._filled:
            raise InvalidInputError(
                f"frame {number}: part at offset {offset} does not continue frame {self._number} at {self._filled}"
            )
        if offset + len(data) > total:
            raise InvalidInputError(f"frame {number}: part overruns the declared {total} bytes")
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
    )


def state_from_message(message: pb.StateSnapshot) -> tuple[int, RecurrentState]:
    if len(message.tensors) != 4:
        raise InvalidInputError(f"restore: expected 4 state tensors, got {len(message.tensors)}")
    arrays = []
    for index, tensor in enumerate(message.tensors):
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) != 4 or any(d < 1 for d in shape) or int(np.prod(shape)) * 4 != len(tensor.data):
            raise InvalidInputError(
                f"restore: state tensor r{index + 1} has shape {list(shape)} and {len(tensor.data)} bytes"
            )
        arrays.append(np.frombuffer(tensor.data, "<f4").reshape(shape).astype(np.float32))
    r1, r2, r3, r4 = arrays
    state = RecurrentState(
        r1,
        r2,
        r3,
        r4,
        frame_size=(message.height, message.width),
        downsample_ratio=float(message.downsample_ratio),
        frames=int(message.frames),
    )
    return int(message.after_frame), state
