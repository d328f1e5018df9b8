"""What the node's tests share: an in-process node on its own event loop, the clip's frames as a stream
takes them, and raw protocol requests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import numpy as np

from rvm_node.node.server import NodeServer, start_node
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from tests.helpers import wait_until

__all__ = ["RATIO", "NodeThread", "chunk_request", "frames_of", "open_request", "raw_stream"]

RATIO = 0.5


class NodeThread:
    """An in-process node running its own asyncio loop on a thread."""

    def __init__(self, backend: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.node: NodeServer = asyncio.run_coroutine_threadsafe(
            start_node(backend, **kwargs), self.loop
        ).result(60)
        self.address = f"127.0.0.1:{self.node.port}"

    @property
    def active(self) -> int:
        return self.node.servicer.active_streams

    def wait_idle(self, timeout: float = 20) -> int:
        """The streams still open once none is, or ``timeout`` seconds have passed."""
        wait_until(lambda: not self.active, timeout)
        return self.active

    def kill(self) -> None:
        """Stop serving at once, as a crashed node would: streams are cut, not drained."""
        asyncio.run_coroutine_threadsafe(self.node.server.stop(0), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.node.drain(1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def frames_of(
    clip_frames: np.ndarray, count: int, size: tuple[int, int] | None = None
) -> list[tuple[int, np.ndarray]]:
    frames = clip_frames[:count].transpose(0, 2, 3, 1)
    if size is not None:
        width, height = size
        frames = np.ascontiguousarray(frames[:, :height, :width])
    return [(1001 + i, f) for i, f in enumerate(frames)]


def raw_stream(address: str, requests: list[pb.MatteRequest], metadata: tuple = ()) -> list[pb.MatteResponse]:
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.MattingServiceStub(channel).Matte(iter(requests), metadata=metadata, timeout=30))


def open_request(width: int = 64, height: int = 48, **overrides: Any) -> pb.MatteRequest:
    settings = pb.StreamSettings(
        width=width,
        height=height,
        input_format=pb.SAMPLE_FORMAT_UINT8,
        output_format=pb.SAMPLE_FORMAT_FLOAT32,
        downsample_ratio=RATIO,
    )
    for key, value in overrides.items():
        if isinstance(value, list):  # a repeated field
            getattr(settings, key).extend(value)
        else:
            setattr(settings, key, value)
    return pb.MatteRequest(open=pb.OpenStream(settings=settings))


def chunk_request(number: int, data: bytes, total: int | None = None, offset: int = 0) -> pb.MatteRequest:
    part = pb.FramePart(
        number=number, offset=offset, total_bytes=len(data) if total is None else total, data=data
    )
    return pb.MatteRequest(chunk=pb.FrameChunk(parts=[part]))
