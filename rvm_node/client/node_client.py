"""A typed client for one render node.

>>> client = NodeClient("127.0.0.1:50051")
>>> with client.open_stream(width=1920, height=1080) as stream:
...     for result in stream.process(numbered_frames):   # (number, HxWx3 uint8) pairs
...         result.number, result.alpha
...     state = stream.snapshot()                         # continue elsewhere with restore=state

Status codes from the node become exceptions of the rvm-node tree here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from rvm_node.engine.session import RecurrentState
from rvm_node.errors import (
    InvalidInputError,
    NodeAuthError,
    NodeBusyError,
    NodeError,
    NodeProtocolError,
    NodeTimeoutError,
    NodeUnavailableError,
)
from rvm_node.node.protocol import (
    DTYPES,
    FORMAT_NAMES,
    PLANE_CHANNELS,
    decode_png,
    encode_png,
    split_parts,
    state_from_message,
    state_to_message,
)
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc

__all__ = ["MatteResult", "MatteStream", "NodeClient", "NodeInfo", "map_rpc_error"]

_PLANES = {"alpha": pb.PLANE_ALPHA, "foreground": pb.PLANE_FOREGROUND}
_CLOSE = object()


def map_rpc_error(error: grpc.RpcError, address: str) -> NodeError:
    """The rvm-node exception for a gRPC status."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    text = f"node {address}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return NodeUnavailableError(text)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return NodeBusyError(text)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return NodeAuthError(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeTimeoutError(text)
    return NodeProtocolError(text)


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


@dataclass(frozen=True)
class MatteResult:
    number: int
    alpha: np.ndarray  # HxW float32 0..1
    foreground: np.ndarray | None  # HxWx3 float32 0..1


class NodeClient:
    """One node at ``address`` (host:port), optionally with a bearer token and TLS."""

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
    ) -> None:
        self.address = address
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if root_certificates is not None or client_certificate is not None:
            key, chain = client_certificate or (None, None)
            credentials = grpc.ssl_channel_credentials(root_certificates, key, chain)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.MattingServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.max_message_bytes = max_message_bytes
        self.retries = retries
        self.backoff = backoff

    def close(self) -> None:
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
            limits.idle_timeout_seconds,
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
    ) -> MatteStream:
        """Open a stream; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with backoff before it starts."""
        if input_format not in FORMAT_NAMES or output_format not in FORMAT_NAMES:
            raise InvalidInputError(f"formats: expected one of {', '.join(FORMAT_NAMES)}")
        if transport not in ("raw", "png"):
            raise InvalidInputError(f"transport: expected raw or png, got {transport!r}")
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
        )
        open_message = pb.OpenStream(settings=settings)
        if restore is not None:
            open_message.restore.CopyFrom(state_to_message(restore[1], restore[0]))
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return MatteStream(self, open_message, timeout)
            except (NodeUnavailableError, NodeBusyError):
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise NodeUnavailableError(
            f"node {self.address}: not reached"
        )  # pragma: no cover - loop returns or raises


class MatteStream:
    """One open Matte stream. Not thread-safe: use it from one thread."""

    def __init__(self, client: NodeClient, open_message: pb.OpenStream, timeout: float | None) -> None:
        self._client = client
        self._settings = open_message.settings
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(pb.MatteRequest(open=open_message))
        self._call = client._stub.Matte(self._request_iter(), timeout=timeout, metadata=client._metadata)
        self._responses = iter(self._call)
        first = self._next()
        if first.WhichOneof("kind") != "accepted":
            raise NodeProtocolError(
                f"node {client.address}: expected `accepted`, got {first.WhichOneof('kind')}"
            )
        self.accepted = first.accepted
        self.downsample_ratio = first.accepted.downsample_ratio
        self._planes = list(self._settings.planes) or [pb.PLANE_ALPHA]
        self._in_dtype = DTYPES[self._settings.input_format]
        self._out_dtype = DTYPES[self._settings.output_format]
        self._png = self._settings.transport == pb.TRANSPORT_PNG
        self._lock = threading.Lock()
        self.closed = False

    def _request_iter(self) -> Iterator[pb.MatteRequest]:
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _next(self) -> pb.MatteResponse:
        try:
            return next(self._responses)
        except StopIteration:
            raise NodeProtocolError(f"node {self._client.address}: the stream ended early") from None
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, self._client.address) from exc
        except BaseException:  # Ctrl-C or SIGTERM inside gRPC's wait: the call cannot be read again
            self.cancel()
            raise

    def _send_frame(self, number: int, frame: np.ndarray) -> None:
        width, height = self._settings.width, self._settings.height
        if frame.shape != (height, width, 3):
            raise InvalidInputError(f"frame {number}: expected {width}x{height}x3, got {list(frame.shape)}")
        samples = np.ascontiguousarray(frame, self._in_dtype)
        data = encode_png(samples) if self._png else samples.tobytes()
        limit = self._client.max_message_bytes - 64 * 1024
        for offset, piece in split_parts(data, limit):
            part = pb.FramePart(number=number, offset=offset, total_bytes=len(data), data=piece)
            self._requests.put(pb.MatteRequest(chunk=pb.FrameChunk(parts=[part])))

    def _receive_frame(self) -> MatteResult:
        width, height = self._settings.width, self._settings.height
        planes: dict[int, np.ndarray] = {}
        number = None
        buffers: dict[int, bytearray] = {}
        while len(planes) < len(self._planes):
            response = self._next()
            if response.WhichOneof("kind") != "part":
                raise NodeProtocolError(
                    f"node {self._client.address}: expected a frame, got {response.WhichOneof('kind')}"
                )
            part = response.part
            number = part.number if number is None else number
            buffer = buffers.setdefault(part.plane, bytearray(part.total_bytes))
            buffer[part.offset : part.offset + len(part.data)] = part.data
            if part.offset + len(part.data) == part.total_bytes:
                channels = PLANE_CHANNELS[part.plane]
                shape = (height, width) if channels == 1 else (height, width, channels)
                if self._png:
                    values = decode_png(buffer, shape, f"node {self._client.address}: frame {part.number}")
                else:
                    values = np.frombuffer(bytes(buffer), self._out_dtype).reshape(shape)
                if values.dtype.kind == "u":
                    values = values.astype(np.float32) / np.iinfo(values.dtype).max
                planes[part.plane] = values.astype(np.float32, copy=False)
        return MatteResult(
            int(number or 0),
            planes[pb.PLANE_ALPHA] if pb.PLANE_ALPHA in planes else np.empty(0),
            planes.get(pb.PLANE_FOREGROUND),
        )

    def process(self, frames: Iterable[tuple[int, np.ndarray]], window: int = 2) -> Iterator[MatteResult]:
        """Send numbered ``HxWx3`` frames and yield their results in order, ``window`` frames in flight."""
        in_flight = 0
        for number, frame in frames:
            self._send_frame(number, frame)
            in_flight += 1
            if in_flight > window:
                yield self._receive_frame()
                in_flight -= 1
        for _ in range(in_flight):
            yield self._receive_frame()

    def snapshot(self) -> tuple[int, RecurrentState]:
        """The state after the last frame sent, with that frame's number."""
        self._requests.put(pb.MatteRequest(control=pb.Control(snapshot=True)))
        response = self._next()
        if response.WhichOneof("kind") != "snapshot":
            raise NodeProtocolError(
                f"node {self._client.address}: expected a snapshot, got {response.WhichOneof('kind')}"
            )
        return state_from_message(response.snapshot)

    def reset(self) -> None:
        self._requests.put(pb.MatteRequest(control=pb.Control(reset=True)))
        response = self._next()
        if response.WhichOneof("kind") != "reset_done":
            raise NodeProtocolError(f"node {self._client.address}: expected reset_done")

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
                raise map_rpc_error(exc, self._client.address) from exc

    def cancel(self) -> None:
        """Abandon the stream; the node frees its state."""
        self.closed = True
        self._call.cancel()
        self._requests.put(_CLOSE)

    def __enter__(self) -> MatteStream:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()
