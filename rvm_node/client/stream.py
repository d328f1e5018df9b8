"""One open Matte stream: send frame chunks, read each frame's planes back in order, checked.

The stream owns the call: a thread-fed request queue, the reply iterator
and a watchdog that cancels a call the node leaves waiting longer than the
stall timeout (a frozen node). Frames travel as bytes in requests
(:func:`frame_requests`), or, on a shared-memory stream, in the slots of the
stream's :class:`~rvm_node.client.ring.ClientRing`, which the requests only
name. Every reply is checked against the stream's settings, so a broken or
hostile node gives a :class:`NodeProtocolError` naming what it sent.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from rvm_node.client.ring import ClientRing
from rvm_node.client.status import map_rpc_error
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import InvalidInputError, NodeProtocolError, NodeTimeoutError
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.codec import ChunkRequest, FramePartView, PlanePartView, Undecodable, encode_request
from rvm_node.v1.protocol import (
    DTYPES,
    PLANE_CHANNELS,
    pack,
    packed_limit,
    split_parts,
    state_from_message,
    transport_name,
    unpack,
    wire_bytes,
)

__all__ = ["DEFAULT_WINDOW_BYTES", "ChunkReply", "MatteResult", "MatteStream", "StreamCall", "StreamChunk"]

DEFAULT_WINDOW_BYTES = 128 * 1024 * 1024
_MESSAGE_HEADROOM = 64 * 1024
_CLOSE = object()


@dataclass(frozen=True)
class MatteResult:
    """One frame's planes, in the stream's output format (uint8/uint16 0..max or float 0..1)."""

    number: int
    alpha: np.ndarray  # HxW; empty when the stream asked for the foreground only
    foreground: np.ndarray | None  # HxWx3


@dataclass(frozen=True)
class StreamChunk:
    """Frames sent as one request (one forward pass on the node); ``snapshot`` asks for the state after them."""

    frames: list[tuple[int, np.ndarray]]
    snapshot: bool = False
    tag: Any = None


@dataclass(frozen=True)
class ChunkReply:
    tag: Any
    results: list[MatteResult]
    snapshot: tuple[int, RecurrentState] | None = field(default=None)


@dataclass(frozen=True)
class StreamCall:
    """What a stream needs of its client: the node's address (for messages), the Matte method of the
    connection it takes, the call's metadata, the stall timeout, the message limit, and where a ring goes
    when the stream is done with it (kept for the next stream when ``clean``)."""

    address: str
    method: Any
    metadata: tuple[tuple[str, str], ...]
    stall_timeout: float | None
    max_message_bytes: int
    ring_done: Callable[[ClientRing, bool], None]


class _StallWatch:
    """Cancels ``call`` once the stream has waited ``timeout`` seconds for one answer."""

    def __init__(self, call: Any, timeout: float) -> None:
        self._call = call
        self._since: float | None = None
        self.stalled = False
        self._over = threading.Event()
        threading.Thread(target=self._watch, args=(timeout,), daemon=True).start()

    def waiting(self) -> None:
        self._since = time.monotonic()

    def answered(self) -> None:
        self._since = None

    def stop(self) -> None:
        self._over.set()

    def _watch(self, timeout: float) -> None:
        while not self._over.wait(min(1.0, timeout / 4)):
            since = self._since
            if since is not None and time.monotonic() - since > timeout:
                self.stalled = True
                self._call.cancel()
                return


def frame_requests(frames: Sequence[tuple[int, bytes | memoryview]], limit: int) -> Iterator[bytes]:
    """Encoded chunk requests carrying ``frames`` (number, packed bytes), as few as ``limit`` allows: a frame
    larger than the limit is split into parts, and parts share a request while they fit."""
    parts: list[FramePartView] = []
    size = 0
    for number, data in frames:
        for offset, piece in split_parts(data, limit):
            if parts and size + len(piece) > limit:
                yield encode_request(ChunkRequest(parts))
                parts, size = [], 0
            parts.append(FramePartView(number, offset, len(data), memoryview(piece)))
            size += len(piece)
    if parts:
        yield encode_request(ChunkRequest(parts))


class MatteStream:
    """One open Matte stream. Not thread-safe: use it from one thread, except its ring's :meth:`~ClientRing.lend`."""

    def __init__(
        self,
        call: StreamCall,
        open_message: pb.OpenStream,
        timeout: float | None,
        ring: ClientRing | None = None,
    ) -> None:
        self._call_info = call
        self.address = call.address
        settings = self._settings = open_message.settings
        self._planes = list(dict.fromkeys(settings.planes)) or [pb.PLANE_ALPHA]
        self._in_dtype = DTYPES[settings.input_format]
        self._out_dtype = DTYPES[settings.output_format]
        self._in_transport = settings.transport or pb.TRANSPORT_RAW
        self._out_transport = settings.return_transport or self._in_transport
        self._frame_shape = (settings.height, settings.width, 3)
        self.ring = ring  # a shared-memory stream's ring, owned by the stream once it is accepted
        if ring is not None:
            ring.start(self._frame_shape, self._in_dtype)
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(pb.MatteRequest(open=open_message))
        self._call = call.method(self._request_iter(), timeout=timeout, metadata=call.metadata)
        self._responses = iter(self._call)
        self.closed = False
        self._watch = None if call.stall_timeout is None else _StallWatch(self._call, call.stall_timeout)
        try:
            first = self._next()
            if _kind(first) != "accepted":
                raise self._protocol_error(f"expected `accepted`, got {_kind(first)}")
            resolved = first.accepted.settings
            if (resolved.width, resolved.height, resolved.output_format, list(resolved.planes)) != (
                settings.width,
                settings.height,
                settings.output_format,
                self._planes,
            ):
                raise self._protocol_error(
                    f"accepted the stream with other settings than asked "
                    f"({resolved.width}x{resolved.height}, planes {list(resolved.planes)})"
                )
        except BaseException:
            self.ring = None  # still its opener's: the node never accepted it (a retry may use it)
            self.cancel()
            raise
        self.accepted = first.accepted
        self.downsample_ratio = first.accepted.downsample_ratio

    @property
    def transport(self) -> str:
        """How the stream's frames travel: ``shm``, ``raw``, ``zstd`` or ``png``."""
        return transport_name(self._in_transport)

    def _request_iter(self) -> Iterator[pb.MatteRequest]:
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _next(self) -> Any:
        """The next response: a :class:`PlanePartView` or a ``MatteResponse``."""
        if self._watch is not None:
            self._watch.waiting()
        try:
            response = next(self._responses)
        except StopIteration:
            raise self._protocol_error("the stream ended early") from None
        except grpc.RpcError as exc:
            if self._watch is not None and self._watch.stalled:
                raise NodeTimeoutError(
                    f"node {self.address}: no answer for {self._call_info.stall_timeout:g} s while the "
                    "stream waited for one (stall timeout); the node may be frozen",
                    reason="STALLED",
                ) from exc
            raise map_rpc_error(exc, self.address) from exc
        except BaseException:  # Ctrl-C or SIGTERM inside gRPC's wait: the call cannot be read again
            self.cancel()
            raise
        finally:
            if self._watch is not None:
                self._watch.answered()
        if isinstance(response, Undecodable):
            self.cancel()
            raise self._protocol_error(f"a response that does not decode ({response.problem})")
        return response

    def _protocol_error(self, message: str) -> NodeProtocolError:
        return NodeProtocolError(f"node {self.address}: {message}")

    # -- sending -----------------------------------------------------------------------------------------

    def _check_frames(self, chunk: StreamChunk) -> None:
        for number, frame in chunk.frames:
            if frame.shape != self._frame_shape:
                height, width, _ = self._frame_shape
                raise InvalidInputError(
                    f"frame {number}: expected {width}x{height}x3, got {list(frame.shape)}"
                )

    def _send_chunk(self, chunk: StreamChunk) -> int:
        """Send a chunk's frames: in the ring, or packed in as few requests as the limit allows. The bytes
        of frames sent."""
        self._check_frames(chunk)  # all of them before anything is sent
        if self.ring is not None:
            refs = self.ring.place([frame for _, frame in chunk.frames])
            parts = [
                FramePartView(number, 0, ref.size, memoryview(b""), ref)
                for (number, _), ref in zip(chunk.frames, refs, strict=True)
            ]
            self._requests.put(encode_request(ChunkRequest(parts)))
            sent = sum(ref.size for ref in refs)
        else:
            packed = [(number, self._pack(frame)) for number, frame in chunk.frames]
            for request in frame_requests(packed, self._call_info.max_message_bytes - _MESSAGE_HEADROOM):
                self._requests.put(request)
            sent = sum(len(data) for _, data in packed)
        if chunk.snapshot:
            self._requests.put(pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot())))
        return sent

    def _pack(self, frame: np.ndarray) -> bytes | memoryview:
        """The frame's packed bytes; raw samples are a view, copied once when the request is encoded."""
        samples = np.asarray(frame, self._in_dtype)
        if self._in_transport == pb.TRANSPORT_RAW:
            return wire_bytes(samples)
        return pack(samples, self._in_transport)

    # -- receiving ---------------------------------------------------------------------------------------

    def _next_part(self, number: int, plane: int) -> PlanePartView:
        part = self._next()
        if not isinstance(part, PlanePartView):
            raise self._protocol_error(f"expected frame {number}, got {_kind(part)}")
        if part.number != number or part.plane != plane:
            raise self._protocol_error(
                f"expected plane {plane} of frame {number}, got plane {part.plane} of frame {part.number}"
            )
        return part

    def _receive_plane(self, number: int, plane: int, limit: int) -> memoryview | bytearray:
        """The packed bytes of one plane of frame ``number``, each part checked against the stream."""
        buffer: bytearray | None = None
        filled = 0
        exact = self._out_transport == pb.TRANSPORT_RAW
        while True:
            part = self._next_part(number, plane)
            total = part.total_bytes
            if (total != limit) if exact else not (0 < total <= limit):
                raise self._protocol_error(
                    f"frame {number}: plane of {total} bytes, expected {'' if exact else 'at most '}{limit}"
                )
            if buffer is not None and total != len(buffer):
                raise self._protocol_error(f"frame {number}: the plane's parts disagree on its size")
            if part.offset != filled or filled + len(part.data) > total:
                raise self._protocol_error(
                    f"frame {number}: part at offset {part.offset} does not continue the plane at {filled}"
                )
            if buffer is None and len(part.data) == total:
                return part.data  # the whole plane in one part: no copy
            if buffer is None:
                buffer = bytearray(total)
            buffer[filled : filled + len(part.data)] = part.data
            filled += len(part.data)
            if filled == total:
                return buffer

    def _receive_frame(self, number: int) -> MatteResult:
        height, width, _ = self._frame_shape
        planes: dict[int, np.ndarray] = {}
        for index, plane in enumerate(self._planes):
            channels = PLANE_CHANNELS[plane]
            shape = (height, width) if channels == 1 else (height, width, channels)
            if self.ring is not None:
                part = self._next_part(number, plane)
                if part.shm is None:
                    raise self._protocol_error(f"expected frame {number} in the ring, got its bytes")
                planes[plane] = self.ring.plane(number, index, part.shm, shape, self._out_dtype)
                continue
            raw_bytes = width * height * channels * self._out_dtype.itemsize
            data = self._receive_plane(number, plane, packed_limit(self._out_transport, raw_bytes))
            try:
                planes[plane] = unpack(data, self._out_transport, self._out_dtype, shape, f"frame {number}")
            except InvalidInputError as exc:
                raise self._protocol_error(str(exc)) from None
        if self.ring is not None:
            self.ring.answered()
        return MatteResult(
            number,
            planes[pb.PLANE_ALPHA] if pb.PLANE_ALPHA in planes else np.empty(0, self._out_dtype),
            planes.get(pb.PLANE_FOREGROUND),
        )

    def _receive_chunk(self, chunk: StreamChunk) -> ChunkReply:
        results = [self._receive_frame(number) for number, _ in chunk.frames]
        return ChunkReply(chunk.tag, results, self._receive_snapshot() if chunk.snapshot else None)

    def _receive_snapshot(self) -> tuple[int, RecurrentState]:
        response = self._next()
        if _kind(response) != "snapshot":
            raise self._protocol_error(f"expected a snapshot, got {_kind(response)}")
        try:
            return state_from_message(response.snapshot)
        except InvalidInputError as exc:
            raise self._protocol_error(str(exc)) from None

    # -- the stream's use --------------------------------------------------------------------------------

    def process_chunks(
        self, chunks: Iterable[StreamChunk], window_bytes: int = DEFAULT_WINDOW_BYTES
    ) -> Iterator[ChunkReply]:
        """Send chunks and yield their replies in order, keeping up to ``window_bytes`` of frames in flight.

        The next chunk is always sent before the previous reply is read, so
        the node infers one chunk while the client packs, sends and reads.
        """
        pending: deque[tuple[StreamChunk, int]] = deque()  # chunks sent, with their bytes
        iterator = iter(chunks)
        ring = self.ring

        def oldest() -> ChunkReply:
            return self._receive_chunk(pending.popleft()[0])

        while True:
            # A reader that decodes into lent slots needs a free block before it can hand over the
            # next chunk: the oldest replies are read first, freeing their slots.
            while pending and ring is not None and ring.reader_waits():
                yield oldest()
            chunk = next(iterator, None)
            if chunk is None:
                break
            if ring is not None:  # a shared-memory stream waits for free slots
                needed = ring.slots_needed([frame for _, frame in chunk.frames])
                while pending and needed > ring.free_slots:
                    yield oldest()
            pending.append((chunk, self._send_chunk(chunk)))
            while len(pending) > 1 and sum(size for _, size in pending) > window_bytes:
                yield oldest()
        while pending:
            yield oldest()

    def process(self, frames: Iterable[tuple[int, np.ndarray]], window: int = 2) -> Iterator[MatteResult]:
        """Send numbered ``HxWx3`` frames and yield their results in order, ``window`` frames in flight."""
        frame_bytes = int(np.prod(self._frame_shape)) * self._in_dtype.itemsize
        chunks = (StreamChunk([item]) for item in frames)
        for reply in self.process_chunks(chunks, window_bytes=max(1, window) * frame_bytes):
            yield from reply.results

    def snapshot(self) -> tuple[int, RecurrentState]:
        """The state after the last frame sent, with that frame's number."""
        self._requests.put(pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot())))
        return self._receive_snapshot()

    def reset(self) -> None:
        self._requests.put(pb.MatteRequest(control=pb.Control(reset=pb.Control.Reset())))
        response = self._next()
        if _kind(response) != "reset_done":
            raise self._protocol_error(f"expected reset_done, got {_kind(response)}")

    def close(self) -> None:
        """End the stream cleanly."""
        if self.closed:
            return
        self.closed = True
        self._requests.put(_CLOSE)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise map_rpc_error(exc, self.address) from exc
        finally:
            self._end()

    def cancel(self) -> None:
        """Abandon the stream; the node frees its state."""
        self.closed = True
        self._call.cancel()
        self._requests.put(_CLOSE)
        self._end(cancelled=True)

    def _end(self, cancelled: bool = False) -> None:
        if self._watch is not None:
            self._watch.stop()
        ring, self.ring = self.ring, None
        if ring is not None:
            clean = ring.stop() and not cancelled  # every frame answered: the node writes no more into it
            self._call_info.ring_done(ring, clean)

    def __enter__(self) -> MatteStream:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()


def _kind(response: Any) -> str | None:
    """Which response ``response`` is: ``part`` for a plane's part, else the message's kind."""
    return "part" if isinstance(response, PlanePartView) else response.WhichOneof("kind")
