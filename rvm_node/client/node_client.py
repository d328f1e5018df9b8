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
import time
from dataclasses import dataclass
from typing import Any

import grpc

from rvm_node.client.local import Endpoint, LocalRings, NoSharedMemory
from rvm_node.client.ring import ClientRing
from rvm_node.client.status import map_rpc_error
from rvm_node.client.stream import MatteStream, StreamCall
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import (
    InvalidInputError,
    NodeBusyError,
    NodeError,
    NodeRejectedError,
    NodeUnavailableError,
)
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.codec import parse_response
from rvm_node.v1.protocol import (
    DTYPES,
    FORMAT_NAMES,
    SAMPLE_NAMES,
    TRANSPORTS,
    SlotLayout,
    check_transport,
    state_to_message,
    transport_name,
    with_default_port,
)

__all__ = ["DEFAULT_STALL_TIMEOUT", "KEEPALIVE_OPTIONS", "NodeClient", "NodeInfo"]

_PLANES = {"alpha": pb.PLANE_ALPHA, "foreground": pb.PLANE_FOREGROUND}
_MATTE_METHOD = "/rvm_node.v1.MattingService/Matte"
# Refusals after which a stream is opened again as raw: shared memory is not to be had there.
_SHM_REFUSALS = ("TRANSPORT_UNSUPPORTED", "RING_INVALID", "SHM_BUDGET_EXHAUSTED")
# Keepalive pings find a connection whose node went silent (a frozen process, a paused VM, a lost
# route): every 20 s without traffic, and the connection is dropped when one is not answered within
# 10 s. Nodes permit pings this often (rvm_node.node.server).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
DEFAULT_STALL_TIMEOUT = 60.0
log = logging.getLogger("rvm_node.client")


def _matte_method(channel: grpc.Channel) -> Any:
    """Matte with the codec that writes and reads samples without protobuf's copies (v1.wire)."""
    return channel.stream_stream(
        _MATTE_METHOD, request_serializer=_serialize_request, response_deserializer=parse_response
    )


def _serialize_request(request: bytes | pb.MatteRequest) -> bytes:
    """Chunks are encoded when queued (their frames are read then, not later on gRPC's thread)."""
    return request if isinstance(request, bytes) else request.SerializeToString()


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
    workers: int = 1
    node_id: str = ""
    local_endpoints: tuple[Endpoint, ...] = ()
    max_ring_slots: int = 0

    @classmethod
    def of(cls, reply: pb.GetNodeInfoResponse) -> NodeInfo:
        limits = reply.limits
        return cls(
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
            max(1, reply.workers),
            reply.node_id,
            tuple(Endpoint(e.address, e.ring_socket, e.pid) for e in reply.local_endpoints),
            limits.max_ring_slots,
        )


class NodeClient:
    """One node at ``address`` (host:port), optionally with a bearer token and TLS.

    ``channel``: a ``grpc.Channel`` to use instead of one the client makes
    (an intercepted channel, one with custom options or credentials, a test
    double); ``address`` then only names the node in messages, and TLS and
    message-size options are the channel's own (no shared memory: the
    client cannot reach the node's local endpoints through it).

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
        address = with_default_port(address)
        self.address = address
        self.stall_timeout = stall_timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *KEEPALIVE_OPTIONS,
        ]
        secure = root_certificates is not None or client_certificate is not None

        def make_channel(target: str, extra: list[tuple[str, Any]]) -> grpc.Channel:
            if secure:
                key, chain = client_certificate or (None, None)
                credentials = grpc.ssl_channel_credentials(root_certificates, key, chain)
                if target != address:  # a local endpoint: the certificate still names the node's host
                    extra = [*extra, ("grpc.ssl_target_name_override", _host_of(address))]
                return grpc.secure_channel(target, credentials, options=options + extra)
            return grpc.insecure_channel(target, options=options + extra)

        self._make_channel = make_channel if channel is None else None
        self._channel = channel if channel is not None else make_channel(address, [])
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
        self._node: NodeInfo | None = None  # what the node said when first asked (workers, endpoints)
        self._said_no_shm = False
        self._local = LocalRings(
            address,
            None if channel is not None else lambda target: make_channel(target, []),
            _matte_method,
            token,
        )

    def _known(self) -> NodeInfo:
        """The node's description, asked once (its workers and endpoints do not change while it runs)."""
        if self._node is None:
            self._node = self.info()
        return self._node

    def _shm_fallback(self, why: str) -> None:
        """Say once per client that shared memory is not used, and why."""
        if not self._said_no_shm:
            self._said_no_shm = True
            log.warning("%s; sending frames over gRPC instead of shared memory", why)

    def _matte_call(self) -> Any:
        """The Matte method on the connection the next raw stream takes."""
        if self._make_channel is None:
            return self._matte
        try:
            workers = self._known().workers
        except NodeError:
            return self._matte  # opening the stream reports what is wrong with the node
        if workers == 1:
            return self._matte
        if len(self._stream_calls) < 2 * workers:
            channel = self._make_channel(self.address, [("grpc.use_local_subchannel_pool", 1)])
            self._stream_channels.append(channel)  # a connection of its own
            self._stream_calls.append(_matte_method(channel))
            return self._stream_calls[-1]
        self._turn += 1
        return self._stream_calls[self._turn % len(self._stream_calls)]

    def close(self) -> None:
        self._local.close()
        for channel in self._stream_channels:
            channel.close()
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self, timeout: float = 5.0) -> NodeInfo:
        return NodeInfo.of(self._node_info(self._stub, timeout))

    def _node_info(self, stub: pb_grpc.MattingServiceStub, timeout: float) -> pb.GetNodeInfoResponse:
        try:
            return stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, self.address) from exc

    def _node_id_of(self, channel: grpc.Channel) -> str:
        """The node_id the node behind ``channel`` (a local endpoint) gives."""
        return str(self._node_info(pb_grpc.MattingServiceStub(channel), 5.0).node_id)

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
        ``ring_slots`` slots (one per frame in flight; at most the node's
        ``max_ring_slots``), handed over to a node on this host; ``auto`` is
        ``shm`` where the node is on this host and takes shared memory, and
        ``raw`` otherwise. A ``shm`` stream that cannot have shared memory is
        opened as raw, and the client says so once.
        """
        explicit = transport == "shm"
        if transport == "auto":
            transport = "shm" if return_transport in (None, "shm") else "raw"
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
            stream = self._open_shm(open_message, ring_slots, timeout, explicit)
            if stream is not None:
                return stream
            open_message.settings.transport = open_message.settings.return_transport = pb.TRANSPORT_RAW
        return self._open_with_retries(open_message, timeout, self._matte_call(), None)

    def _open_shm(
        self, open_message: pb.OpenStream, slots: int, timeout: float | None, explicit: bool
    ) -> MatteStream | None:
        """A shared-memory stream, or None (said once where it was asked for) where it cannot be had."""
        settings = open_message.settings
        planes = list(dict.fromkeys(settings.planes)) or [pb.PLANE_ALPHA]
        layout = SlotLayout.of(
            settings.width,
            settings.height,
            DTYPES[settings.input_format],
            DTYPES[settings.output_format],
            planes,
        )
        try:
            ring, method = self._ring_for(layout, slots)
        except NoSharedMemory as exc:
            if explicit or not exc.remote:
                self._shm_fallback(f"node {self.address}: {exc}")
            return None
        except NodeError:
            return None  # opening the stream reports what is wrong with the node
        settings.ring.CopyFrom(ring.message())
        try:
            return self._open_with_retries(open_message, timeout, method, ring)
        except NodeRejectedError as exc:
            ring.close()
            settings.ClearField("ring")
            if exc.reason not in _SHM_REFUSALS:
                raise
            self._shm_fallback(str(exc))
            return None
        except NodeBusyError as exc:
            ring.close()
            settings.ClearField("ring")
            if exc.reason != "SHM_BUDGET_EXHAUSTED":
                raise
            self._shm_fallback(str(exc))
            return None
        except BaseException:
            ring.close()
            raise

    def _ring_for(self, layout: SlotLayout, slots: int) -> tuple[ClientRing, Any]:
        """A ring handed over to one of the node's workers, and the Matte method of its endpoint; the node's
        description is asked again once where it may be out of date (a worker was replaced)."""

        def attempt() -> tuple[ClientRing, Any]:
            node = self._known()
            fitting = min(slots, node.max_ring_slots or slots)
            return self._local.ring_for(node.node_id, node.local_endpoints, layout, fitting, self._node_id_of)

        try:
            return attempt()
        except NoSharedMemory as exc:
            if not exc.stale:
                raise
        self._node = None  # asked again, once
        return attempt()

    def _open_with_retries(
        self, open_message: pb.OpenStream, timeout: float | None, method: Any, ring: ClientRing | None
    ) -> MatteStream:
        call = StreamCall(
            self.address, method, self._metadata, self.stall_timeout, self.max_message_bytes, self._local.done
        )
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return MatteStream(call, open_message, timeout, ring)
            except NodeBusyError as exc:
                if exc.reason == "SHM_BUDGET_EXHAUSTED" or attempt == self.retries:
                    raise
            except NodeUnavailableError:
                if attempt == self.retries:
                    raise
            time.sleep(delay)
            delay *= 2
        raise NodeUnavailableError(
            f"node {self.address}: not reached"
        )  # pragma: no cover - returns or raises


def _host_of(address: str) -> str:
    """The host part of ``host:port``, ``[v6]:port`` or ``dns:///host:port``, for TLS name checks."""
    target = address.split("///", 1)[-1]
    if target.startswith("[") and "]" in target:
        return target[1 : target.index("]")]
    return target.rsplit(":", 1)[0] if ":" in target else target
