"""A typed client for one render node.

>>> client = NodeClient("127.0.0.1:50051")
>>> with client.open_stream(width=1920, height=1080, output_format="uint16") as stream:
...     for result in stream.process(numbered_frames):   # (number, HxWx3 uint8) pairs
...         result.number, result.alpha                   # HxW uint16
...     state = stream.snapshot()                         # continue elsewhere with restore=state

``process_chunks`` sends chunks of several frames (one forward pass each on
the node) with a window of bytes in flight, and can ask for a state snapshot
after any chunk, in order with the frames.

Status codes from the node become exceptions of the rvm-node tree here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from rvm_node.client.ring import ClientRing
from rvm_node.engine.samples import holds_samples
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import (
    InvalidInputError,
    NodeAuthError,
    NodeBusyError,
    NodeError,
    NodeProtocolError,
    NodeRejectedError,
    NodeTimeoutError,
    NodeUnavailableError,
)
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.protocol import (
    DTYPES,
    FORMAT_NAMES,
    PLANE_CHANNELS,
    SAMPLE_NAMES,
    TRANSPORTS,
    check_transport,
    pack,
    packed_limit,
    ring_slot_bytes,
    rings_supported,
    split_parts,
    state_from_message,
    state_to_message,
    transport_name,
    unpack,
    wire_bytes,
)
from rvm_node.v1.wire import (
    ChunkRequest,
    FramePartView,
    PlanePartView,
    Undecodable,
    encode_request,
    parse_response,
)

__all__ = [
    "ChunkReply",
    "MatteResult",
    "MatteStream",
    "NodeClient",
    "NodeInfo",
    "StreamChunk",
    "map_rpc_error",
]

_PLANES = {"alpha": pb.PLANE_ALPHA, "foreground": pb.PLANE_FOREGROUND}
_MATTE_METHOD = "/rvm_node.v1.MattingService/Matte"
_CLOSE = object()
_MESSAGE_HEADROOM = 64 * 1024
_LOCAL_HOSTS = ("localhost", "127.", "[::1]", "unix:")
_SHM_REFUSALS = ("TRANSPORT_UNSUPPORTED", "RING_INVALID")
# Keepalive pings find a connection whose node went silent (a frozen process, a paused VM, a lost
# route): every 20 s without traffic, and the connection is dropped when one is not answered within
# 10 s. Nodes permit pings this often (rvm_node.node.server).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
DEFAULT_STALL_TIMEOUT = 60.0
_SPARE_RINGS = 4  # enough for the streams a client runs at once, within:
_SPARE_BYTES = 512 << 20
log = logging.getLogger("rvm_node.client")
DEFAULT_WINDOW_BYTES = 128 * 1024 * 1024


def _matte_method(channel: grpc.Channel) -> Any:
    """Matte with the codec that writes and reads samples without protobuf's copies (v1.wire)."""
    return channel.stream_stream(
        _MATTE_METHOD, request_serializer=_serialize_request, response_deserializer=parse_response
    )


def _serialize_request(request: bytes | pb.MatteRequest) -> bytes:
    """Chunks are encoded when queued (their frames are read then, not later on gRPC's thread)."""
    return request if isinstance(request, bytes) else request.SerializeToString()


def _details(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata a node sent with a status (empty when none)."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ImportError, ValueError, AttributeError):
        return "", {}
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


def map_rpc_error(error: grpc.RpcError, address: str) -> NodeError:
    """The rvm-node exception for a gRPC status, with the node's reason and metadata."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    text = f"node {address}: {details}"
    reason, metadata = _details(error)
    kind: type[NodeError] = {
        grpc.StatusCode.UNAVAILABLE: NodeUnavailableError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: NodeBusyError,
        grpc.StatusCode.UNAUTHENTICATED: NodeAuthError,
        grpc.StatusCode.DEADLINE_EXCEEDED: NodeTimeoutError,
        grpc.StatusCode.INVALID_ARGUMENT: NodeRejectedError,
        grpc.StatusCode.FAILED_PRECONDITION: NodeRejectedError,
    }.get(code, NodeProtocolError)  # type: ignore[arg-type]
    return kind(text, reason=reason, metadata=metadata)


@dataclass(frozen=True)
class NodeInfo:
    version: str
    device: str
    backend: str
    precision: str
    variants: list[str]
    active_streams: int
    max_streams: int
    max_message_bytes: int
    max_frame_pixels: int
    idle_timeout: float
    max_chunks_in_flight: int = 0
    max_batch: int = 1
    batch_delay: float = 0.0
    transports: tuple[str, ...] = ()
    sample_formats: tuple[str, ...] = ()
    shm_group: str = ""
    workers: int = 1


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


class NodeClient:
    """One node at ``address`` (host:port), optionally with a bearer token and TLS.

    ``channel``: a ``grpc.Channel`` to use instead of one the client makes
    (an intercepted channel, one with custom options or credentials, a test
    double); ``address`` then only names the node in messages, and TLS and
    message-size options are the channel's own.

    ``stall_timeout``: a stream that waits this many seconds for an answer
    from the node (frames, a snapshot, `accepted`) is cancelled and fails with
    :class:`NodeTimeoutError`, so a frozen node (a hung driver, a stuck mount,
    a paused VM) is treated as dead for that shot; None waits for ever.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        client_certificate: tuple[bytes, bytes] | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        retries: int = 3,
        backoff: float = 0.5,
        channel: grpc.Channel | None = None,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        if stall_timeout is not None and stall_timeout <= 0:
            raise InvalidInputError(f"stall_timeout: expected seconds above 0, got {stall_timeout:g}")
        self.address = address
        self.stall_timeout = stall_timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *KEEPALIVE_OPTIONS,
        ]

        def make_channel(extra: list[tuple[str, Any]]) -> grpc.Channel:
            if root_certificates is not None or client_certificate is not None:
                key, chain = client_certificate or (None, None)
                credentials = grpc.ssl_channel_credentials(root_certificates, key, chain)
                return grpc.secure_channel(address, credentials, options=options + extra)
            return grpc.insecure_channel(address, options=options + extra)

        self._make_channel = make_channel if channel is None else None
        self._channel = channel if channel is not None else make_channel([])
        self._stub = pb_grpc.MattingServiceStub(self._channel)
        self._matte = _matte_method(self._channel)
        # A node of several worker processes gets a connection per stream (up to two per worker),
        # as the kernel gives each connection to one worker.
        self._stream_channels: list[grpc.Channel] = []
        self._stream_calls: list[Any] = []
        self._turn = 0
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.max_message_bytes = max_message_bytes
        self.retries = retries
        self.backoff = backoff
        self._node: NodeInfo | None = None  # what the node said when first asked (workers, shm group)
        self._said_no_shm = False
        self._spare_rings: list[ClientRing] = []  # rings of streams that ended cleanly, for the next ones

    def _known(self) -> NodeInfo:
        """The node's description, asked once (its workers and shm group do not change while it runs)."""
        if self._node is None:
            self._node = self.info()
        return self._node

    @property
    def is_local(self) -> bool:
        """True when the node is on this host (a Unix socket or a loopback address)."""
        return self.address.startswith(_LOCAL_HOSTS)

    def _shm_fallback(self, why: str) -> None:
        """Say once per client that shared memory is not used, and why."""
        if not self._said_no_shm:
            self._said_no_shm = True
            log.warning("%s; sending frames over gRPC instead of shared memory", why)

    def _matte_call(self) -> Any:
        """The Matte method on the connection the next stream takes."""
        if self._make_channel is None:
            return self._matte
        try:
            workers = self._known().workers
        except NodeError:
            return self._matte  # opening the stream reports what is wrong with the node
        if workers == 1:
            return self._matte
        if len(self._stream_calls) < 2 * workers:
            channel = self._make_channel([("grpc.use_local_subchannel_pool", 1)])  # a connection of its own
            self._stream_channels.append(channel)
            self._stream_calls.append(_matte_method(channel))
            return self._stream_calls[-1]
        self._turn += 1
        return self._stream_calls[self._turn % len(self._stream_calls)]

    def close(self) -> None:
        for ring in self._spare_rings:
            ring.close()
        self._spare_rings.clear()
        for channel in self._stream_channels:
            channel.close()
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self, timeout: float = 5.0) -> NodeInfo:
        try:
            reply = self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, self.address) from exc
        limits = reply.limits
        return NodeInfo(
            reply.version,
            reply.device,
            reply.backend,
            reply.precision,
            list(reply.variants),
            reply.active_streams,
            limits.max_streams,
            limits.max_message_bytes,
            limits.max_frame_pixels,
            limits.idle_timeout.ToNanoseconds() / 1e9,
            limits.max_chunks_in_flight,
            limits.max_batch,
            limits.batch_delay.ToNanoseconds() / 1e9,
            tuple(transport_name(t) for t in reply.transports),
            tuple(SAMPLE_NAMES.get(f, str(f)) for f in reply.sample_formats),
            reply.shm_group,
            max(1, reply.workers),
        )

    def open_stream(
        self,
        *,
        width: int,
        height: int,
        input_format: str = "uint8",
        output_format: str = "float32",
        planes: tuple[str, ...] = ("alpha",),
        downsample_ratio: float | None = None,
        restore: tuple[int, RecurrentState] | None = None,
        label: str = "",
        timeout: float | None = None,
        transport: str = "raw",
        return_transport: str | None = None,
        ring_slots: int = 4,
    ) -> MatteStream:
        """Open a stream; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with backoff before it starts.

        ``transport`` packs the frames sent and ``return_transport`` (default:
        the same) the planes returned: ``raw``, ``zstd`` or ``png`` (integer
        formats only). ``output_format`` is the sample format of the planes
        returned; ask for what the writer stores (``uint16`` for 16-bit PNG,
        ``float16`` for half EXR) to move the fewest bytes.

        ``shm`` moves frames and planes through a shared-memory ring of
        ``ring_slots`` slots (one per frame in flight) on a node on this host;
        ``auto`` is ``shm`` for a node on this host where the host has rings
        (not Windows) and ``raw`` otherwise. A
        node that refuses shared memory gets the stream as raw, and the client
        says so once.
        """
        if transport == "auto":
            local = self.is_local and rings_supported()
            transport = "shm" if local and return_transport in (None, "shm") else "raw"
        if transport == "shm" and return_transport not in (None, "shm"):
            raise InvalidInputError(
                f"return_transport: a shared-memory stream returns its planes through the ring, "
                f"got {return_transport!r}"
            )
        if ring_slots < 1:
            raise InvalidInputError(f"ring_slots: expected 1 or more, got {ring_slots}")
        if input_format not in FORMAT_NAMES or output_format not in FORMAT_NAMES:
            raise InvalidInputError(f"formats: expected one of {', '.join(FORMAT_NAMES)}")
        for where, name in (("transport", transport), ("return_transport", return_transport or transport)):
            if name not in TRANSPORTS:
                raise InvalidInputError(f"{where}: expected one of {', '.join(TRANSPORTS)}, got {name!r}")
        check_transport(TRANSPORTS[transport], FORMAT_NAMES[input_format], "transport")
        check_transport(
            TRANSPORTS[return_transport or transport], FORMAT_NAMES[output_format], "return_transport"
        )
        unknown = [p for p in planes if p not in _PLANES]
        if unknown:
            raise InvalidInputError(f"planes: expected alpha and/or foreground, got {unknown}")
        settings = pb.StreamSettings(
            downsample_ratio=0.0 if downsample_ratio is None else float(downsample_ratio),
            planes=[_PLANES[p] for p in planes],
            input_format=FORMAT_NAMES[input_format],
            output_format=FORMAT_NAMES[output_format],
            width=width,
            height=height,
            label=label,
            transport=TRANSPORTS[transport],
            return_transport=TRANSPORTS[return_transport or transport],
        )
        open_message = pb.OpenStream(settings=settings)
        if restore is not None:
            open_message.restore.CopyFrom(state_to_message(restore[1], restore[0]))
        if transport == "shm":
            stream = self._open_shm(open_message, ring_slots, timeout)
            if stream is not None:
                return stream
            settings = open_message.settings
            settings.transport = settings.return_transport = pb.TRANSPORT_RAW
        return self._open_with_retries(open_message, timeout, None)

    def _open_shm(self, open_message: pb.OpenStream, slots: int, timeout: float | None) -> MatteStream | None:
        """A shared-memory stream, or None (said once) where this host or the node cannot have one."""
        settings = open_message.settings
        planes = list(dict.fromkeys(settings.planes)) or [pb.PLANE_ALPHA]
        slot_bytes = ring_slot_bytes(
            settings.width,
            settings.height,
            DTYPES[settings.input_format],
            DTYPES[settings.output_format],
            planes,
        )
        group = self._known().shm_group
        try:
            ring = self._spare_ring(slots, slot_bytes, group) or ClientRing(slots, slot_bytes, group)
        except (OSError, InvalidInputError) as exc:
            self._shm_fallback(f"node {self.address}: no shared-memory ring on this host ({exc})")
            return None
        settings.ring.CopyFrom(ring.message())
        try:
            return self._open_with_retries(open_message, timeout, ring)
        except NodeRejectedError as exc:
            ring.close()
            settings.ClearField("ring")
            if exc.reason not in _SHM_REFUSALS:
                raise
            self._shm_fallback(str(exc))
            return None
        except BaseException:
            ring.close()
            raise

    def _spare_ring(self, slots: int, slot_bytes: int, group: str) -> ClientRing | None:
        """A ring a finished stream left, of this size: its pages are already there, on both sides."""
        for ring in self._spare_rings:
            if ring.fits(slots, slot_bytes, group):
                self._spare_rings.remove(ring)
                return ring
        return None

    def _keep_ring(self, ring: ClientRing) -> None:
        """Keep the ring of a stream whose every reply arrived (the node writes no more into it)."""
        if not ring.reusable:
            ring.close()
            return
        self._spare_rings.append(ring)
        while len(self._spare_rings) > _SPARE_RINGS or sum(r.size for r in self._spare_rings) > _SPARE_BYTES:
            self._spare_rings.pop(0).close()  # the oldest goes: shots of a new size replace it

    def _open_with_retries(
        self, open_message: pb.OpenStream, timeout: float | None, ring: ClientRing | None
    ) -> MatteStream:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return MatteStream(self, open_message, timeout, ring)
            except (NodeUnavailableError, NodeBusyError):
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise NodeUnavailableError(
            f"node {self.address}: not reached"
        )  # pragma: no cover - loop returns or raises


class MatteStream:
    """One open Matte stream. Not thread-safe: use it from one thread, except :meth:`lease_frames`."""

    def __init__(
        self,
        client: NodeClient,
        open_message: pb.OpenStream,
        timeout: float | None,
        ring: ClientRing | None = None,
    ) -> None:
        self._client = client
        self._settings = open_message.settings
        self._ring = ring  # a shared-memory stream's ring, owned by the stream once it is accepted
        self._free_slots: deque[int] = deque(range(ring.slots) if ring is not None else ())
        self._slots_in_flight: deque[int] = deque()  # the slot of each frame sent and not yet answered
        self._slot_change = threading.Condition()  # guards the free slots against a leasing thread
        self._leased: set[int] = set()  # the block of slots lent to a frame reader, not yet sent
        self._lease_block = 0  # the most slots a block may have (0: no leases)
        self.frames_in_place = 0  # frames sent from the slot a reader decoded them into
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(pb.MatteRequest(open=open_message))
        self._call = client._matte_call()(self._request_iter(), timeout=timeout, metadata=client._metadata)
        self._responses = iter(self._call)
        self.closed = False
        self._waiting_since: float | None = None  # while the stream waits for the node's next answer
        self._stalled = False
        if client.stall_timeout is not None:
            threading.Thread(target=self._watch, args=(client.stall_timeout,), daemon=True).start()
        first = self._next()
        if _kind(first) != "accepted":
            raise NodeProtocolError(f"node {client.address}: expected `accepted`, got {_kind(first)}")
        self.accepted = first.accepted
        if ring is not None:
            ring.unlink()  # the node holds it open now
        self.downsample_ratio = first.accepted.downsample_ratio
        self._planes = list(dict.fromkeys(self._settings.planes)) or [pb.PLANE_ALPHA]
        self._in_dtype = DTYPES[self._settings.input_format]
        self._out_dtype = DTYPES[self._settings.output_format]
        self._in_transport = self._settings.transport or pb.TRANSPORT_RAW
        self._out_transport = self._settings.return_transport or self._in_transport
        resolved = first.accepted.settings
        if (resolved.width, resolved.height, resolved.output_format, list(resolved.planes)) != (
            self._settings.width,
            self._settings.height,
            self._settings.output_format,
            self._planes,
        ):
            self.cancel()
            raise NodeProtocolError(
                f"node {client.address}: accepted the stream with other settings than asked "
                f"({resolved.width}x{resolved.height}, planes {list(resolved.planes)})"
            )

    def _request_iter(self) -> Iterator[pb.MatteRequest]:
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _watch(self, stall_timeout: float) -> None:
        """Cancel the call when the node leaves the stream waiting for ``stall_timeout`` seconds."""
        while not self.closed:
            time.sleep(min(1.0, stall_timeout / 4))
            since = self._waiting_since
            if since is not None and time.monotonic() - since > stall_timeout:
                self._stalled = True
                self._call.cancel()
                return

    def _next(self) -> Any:
        """The next response: a :class:`PlanePartView` or a ``MatteResponse``."""
        self._waiting_since = time.monotonic()
        try:
            response = next(self._responses)
        except StopIteration:
            raise NodeProtocolError(f"node {self._client.address}: the stream ended early") from None
        except grpc.RpcError as exc:
            if self._stalled:
                raise NodeTimeoutError(
                    f"node {self._client.address}: no answer for {self._client.stall_timeout:g} s while the "
                    "stream waited for one (stall timeout); the node may be frozen",
                    reason="STALLED",
                ) from exc
            raise map_rpc_error(exc, self._client.address) from exc
        except BaseException:  # Ctrl-C or SIGTERM inside gRPC's wait: the call cannot be read again
            self.cancel()
            raise
        finally:
            self._waiting_since = None
        if isinstance(response, Undecodable):
            self.cancel()
            raise self._protocol_error(f"a response that does not decode ({response.problem})")
        return response

    def _check_frame(self, number: int, frame: np.ndarray) -> None:
        width, height = self._settings.width, self._settings.height
        if frame.shape != (height, width, 3):
            raise InvalidInputError(f"frame {number}: expected {width}x{height}x3, got {list(frame.shape)}")

    def _pack_frame(self, number: int, frame: np.ndarray) -> bytes | memoryview:
        """The frame's packed bytes; raw samples are a view, copied once when the request is encoded."""
        self._check_frame(number, frame)
        samples = np.asarray(frame, self._in_dtype)
        if self._in_transport == pb.TRANSPORT_RAW:
            return wire_bytes(samples)
        return pack(samples, self._in_transport)

    @property
    def transport(self) -> str:
        """How the stream's frames travel: ``shm``, ``raw``, ``zstd`` or ``png``."""
        return transport_name(self._in_transport)

    def allow_leases(self, block: int) -> None:
        """Let :meth:`lease_frames` lend blocks of up to ``block`` adjacent slots, one at a time; at most
        half the ring, so the frames sent before a lent block always find slots."""
        if self._ring is not None:
            self._lease_block = max(0, min(block, self._ring.slots // 2))

    def lease_frames(self, count: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
        """``count`` adjacent free ring slots as one ``[count, H, W, 3]`` array of the stream's samples,
        for a reader thread to decode the frames of one chunk into; :meth:`lent_chunk` then sends them
        from there without a copy. Waits while the last block lent is not yet sent or no such slots are
        free. None for a stream with no ring or leases, frames of another shape or kind of sample, or
        once the stream is over. Safe from one thread besides the stream's own."""
        ring = self._ring
        width, height = self._settings.width, self._settings.height
        if ring is None or tuple(shape) != (height, width, 3) or not 0 < count <= self._lease_block:
            return None
        if not holds_samples(self._in_dtype, dtype):
            return None
        with self._slot_change:
            while self._ring is ring and (self._leased or self._free_block(count) is None):
                self._slot_change.wait(0.5)
            first = self._free_block(count)
            if self._ring is not ring or first is None:
                return None
            for slot in range(first, first + count):
                self._free_slots.remove(slot)
                self._leased.add(slot)
        return ring.frames(first, count, self._in_dtype, (height, width, 3))

    def _reader_waits(self) -> bool:
        """True while a reader of lent blocks has none and none is free for it."""
        with self._slot_change:
            block = self._lease_block
            return bool(block) and not self._leased and self._free_block(block) is None

    def _free_block(self, count: int) -> int | None:
        """The first slot of ``count`` free adjacent slots starting at a multiple of ``count``, if any."""
        ring = self._ring
        if ring is None or count < 1:
            return None
        free = set(self._free_slots)
        for first in range(0, ring.slots - count + 1, count):
            if free.issuperset(range(first, first + count)):
                return first
        return None

    def lent_chunk(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The chunk ``[T, 3, H, W]`` over ``frames``: in place where they are the lent block's slots in
        order; otherwise a copy. A block some of the frames were decoded into is then given back (the
        reader is done with it); a block lent for a later chunk stays with the reader."""
        ring = self._ring
        slots = [None if ring is None else self._lent_slot(ring, f) for f in frames]
        first = slots[0] if slots else None
        if ring is not None and first is not None and slots == list(range(first, first + len(frames))):
            return ring.frames(first, len(frames), self._in_dtype, frames[0].shape).transpose(0, 3, 1, 2)
        chunk = np.stack(frames).transpose(0, 3, 1, 2)
        if any(s is not None for s in slots):
            with self._slot_change:
                self._return_lent()
        return chunk

    def _lent_slot(self, ring: ClientRing, frame: np.ndarray) -> int | None:
        """The lent slot ``frame`` was decoded into, as :meth:`lease_frames` gave it; else None."""
        slot = ring.slot_of(frame)
        return slot if slot in self._leased and frame.dtype == self._in_dtype else None

    def _return_lent(self) -> None:
        """The lent block's slots not sent go back to the free ones (the caller holds the slot lock)."""
        self._free_slots.extend(sorted(self._leased))
        self._leased.clear()
        self._slot_change.notify_all()

    def _take_slots(self, count: int) -> list[int]:
        """``count`` free slots for frames copied in: a block where one is free, so blocks stay whole."""
        first = self._free_block(count) if count > 1 else None
        if first is None:
            return [self._free_slots.popleft() for _ in range(count)]
        for slot in range(first, first + count):
            self._free_slots.remove(slot)
        return list(range(first, first + count))

    def _send_to_ring(self, ring: ClientRing, chunk: StreamChunk) -> int:
        """Send a chunk's frames as slot references: frames in the lent block from their slots, the
        others copied into free slots."""
        width, height = self._settings.width, self._settings.height
        for number, frame in chunk.frames:  # all of them before any slot is taken
            self._check_frame(number, frame)
        frame_bytes = width * height * 3 * self._in_dtype.itemsize
        with self._slot_change:
            lent: list[int | None] = []
            for _, frame in chunk.frames:
                slot = self._lent_slot(ring, frame)
                lent.append(None if slot in lent else slot)  # a frame sent twice is copied the second time
            if lent.count(None) > len(self._free_slots):
                raise InvalidInputError(
                    f"a chunk of {len(chunk.frames)} frames needs as many ring slots; the ring has "
                    f"{ring.slots} (ring_slots)"
                )
            copied = iter(self._take_slots(lent.count(None)))
            slots = [next(copied) if s is None else s for s in lent]
            if any(s is not None for s in lent):
                self._leased.difference_update(slots)
                self._return_lent()  # rows no frame used (a short last chunk)
        parts = []
        for (number, frame), slot, in_place in zip(chunk.frames, slots, lent, strict=True):
            offset = slot * ring.slot_bytes
            if in_place is None:
                np.copyto(ring.view(offset, self._in_dtype, (height, width, 3)), frame, casting="unsafe")
            else:
                self.frames_in_place += 1
            self._slots_in_flight.append(slot)
            ref = pb.SlotRef(slot=slot, offset=offset, size=frame_bytes)
            parts.append(FramePartView(number, 0, frame_bytes, memoryview(b""), ref))
        self._requests.put(encode_request(ChunkRequest(parts)))
        if chunk.snapshot:
            self._requests.put(pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot())))
        return frame_bytes * len(chunk.frames)

    def _send_chunk(self, chunk: StreamChunk) -> int:
        """Send a chunk's frames, as few messages as the limit allows; returns the bytes sent."""
        if self._ring is not None:
            return self._send_to_ring(self._ring, chunk)
        limit = self._client.max_message_bytes - _MESSAGE_HEADROOM
        parts: list[FramePartView] = []
        size = sent = 0
        for number, frame in chunk.frames:
            data = self._pack_frame(number, frame)
            sent += len(data)
            for offset, piece in split_parts(data, limit):
                if parts and size + len(piece) > limit:
                    self._requests.put(encode_request(ChunkRequest(parts)))
                    parts, size = [], 0
                parts.append(FramePartView(number, offset, len(data), memoryview(piece)))
                size += len(piece)
        if parts:
            self._requests.put(encode_request(ChunkRequest(parts)))
        if chunk.snapshot:
            self._requests.put(pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot())))
        return sent

    def _protocol_error(self, message: str) -> NodeProtocolError:
        return NodeProtocolError(f"node {self._client.address}: {message}")

    def _receive_plane(self, number: int, plane: int, limit: int) -> memoryview | bytearray:
        """The packed bytes of one plane of frame ``number``, each part checked against the stream."""
        buffer: bytearray | None = None
        filled = 0
        exact = self._out_transport == pb.TRANSPORT_RAW
        while True:
            part = self._next()
            if not isinstance(part, PlanePartView):
                raise self._protocol_error(f"expected frame {number}, got {_kind(part)}")
            if part.number != number or part.plane != plane:
                raise self._protocol_error(
                    f"expected plane {plane} of frame {number}, got plane {part.plane} of frame {part.number}"
                )
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

    def _receive_from_ring(
        self, ring: ClientRing, number: int, plane: int, shape: tuple[int, ...]
    ) -> np.ndarray:
        """A copy of the plane the node wrote into the frame's slot, after checking where it says it is."""
        part = self._next()
        if not isinstance(part, PlanePartView) or part.shm is None:
            raise self._protocol_error(f"expected frame {number} in the ring, got {_kind(part)}")
        if part.number != number or part.plane != plane:
            raise self._protocol_error(
                f"expected plane {plane} of frame {number}, got plane {part.plane} of frame {part.number}"
            )
        slot, ref = self._slots_in_flight[0], part.shm
        size = int(np.prod(shape)) * self._out_dtype.itemsize
        start = slot * ring.slot_bytes
        if ref.slot != slot or ref.size != size or not start <= ref.offset <= start + ring.slot_bytes - size:
            raise self._protocol_error(
                f"frame {number}: plane at slot {ref.slot}, offset {ref.offset}, {ref.size} bytes is not "
                f"in the frame's slot {slot}"
            )
        return ring.view(ref.offset, self._out_dtype, shape).copy()

    def _receive_frame(self, number: int) -> MatteResult:
        width, height = self._settings.width, self._settings.height
        planes: dict[int, np.ndarray] = {}
        for plane in self._planes:
            channels = PLANE_CHANNELS[plane]
            shape = (height, width) if channels == 1 else (height, width, channels)
            if self._ring is not None:
                planes[plane] = self._receive_from_ring(self._ring, number, plane, shape)
                continue
            raw_bytes = width * height * channels * self._out_dtype.itemsize
            data = self._receive_plane(number, plane, packed_limit(self._out_transport, raw_bytes))
            try:
                planes[plane] = unpack(data, self._out_transport, self._out_dtype, shape, f"frame {number}")
            except InvalidInputError as exc:
                raise self._protocol_error(str(exc)) from None
        if self._ring is not None:
            with self._slot_change:
                self._free_slots.append(self._slots_in_flight.popleft())
                self._slot_change.notify_all()
        return MatteResult(
            number,
            planes[pb.PLANE_ALPHA] if pb.PLANE_ALPHA in planes else np.empty(0, self._out_dtype),
            planes.get(pb.PLANE_FOREGROUND),
        )

    def _receive_chunk(self, chunk: StreamChunk) -> ChunkReply:
        results = [self._receive_frame(number) for number, _ in chunk.frames]
        return ChunkReply(chunk.tag, results, self._receive_snapshot() if chunk.snapshot else None)

    def process_chunks(
        self, chunks: Iterable[StreamChunk], window_bytes: int = DEFAULT_WINDOW_BYTES
    ) -> Iterator[ChunkReply]:
        """Send chunks and yield their replies in order, keeping up to ``window_bytes`` of frames in flight.

        The next chunk is always sent before the previous reply is read, so
        the node infers one chunk while the client packs, sends and reads.
        """
        pending: deque[tuple[StreamChunk, int]] = deque()  # chunks sent, with their bytes
        iterator = iter(chunks)

        def oldest() -> ChunkReply:
            return self._receive_chunk(pending.popleft()[0])

        while True:
            # A reader that decodes into lent slots needs a free block before it can hand over the
            # next chunk: the oldest replies are read first, freeing their slots.
            while pending and self._reader_waits():
                yield oldest()
            chunk = next(iterator, None)
            if chunk is None:
                break
            ring = self._ring
            needed = 0 if ring is None else sum(self._lent_slot(ring, f) is None for _, f in chunk.frames)
            while pending and needed > len(self._free_slots):  # a shared-memory stream waits for free slots
                yield oldest()
            pending.append((chunk, self._send_chunk(chunk)))
            while len(pending) > 1 and sum(size for _, size in pending) > window_bytes:
                yield oldest()
        while pending:
            yield oldest()

    def process(self, frames: Iterable[tuple[int, np.ndarray]], window: int = 2) -> Iterator[MatteResult]:
        """Send numbered ``HxWx3`` frames and yield their results in order, ``window`` frames in flight."""
        frame_bytes = self._settings.width * self._settings.height * 3 * self._in_dtype.itemsize
        chunks = (StreamChunk([item]) for item in frames)
        for reply in self.process_chunks(chunks, window_bytes=max(1, window) * frame_bytes):
            yield from reply.results

    def _receive_snapshot(self) -> tuple[int, RecurrentState]:
        response = self._next()
        if _kind(response) != "snapshot":
            raise self._protocol_error(f"expected a snapshot, got {_kind(response)}")
        try:
            return state_from_message(response.snapshot)
        except InvalidInputError as exc:
            raise self._protocol_error(str(exc)) from None

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
        clean = False
        try:
            for _ in self._responses:
                pass
            clean = not self._slots_in_flight  # every frame answered: the node is done with the ring
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise map_rpc_error(exc, self._client.address) from exc
        finally:
            self._release_ring(keep=clean)

    def _release_ring(self, keep: bool = False) -> None:
        if self._ring is not None:
            with self._slot_change:
                ring, self._ring = self._ring, None
                self._slot_change.notify_all()  # a reader waiting for a slot gets none
            if keep:
                self._client._keep_ring(ring)
            else:
                ring.close()

    def cancel(self) -> None:
        """Abandon the stream; the node frees its state."""
        self.closed = True
        self._call.cancel()
        self._requests.put(_CLOSE)
        self._release_ring()

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
