"""The streams ``bench node`` times: a bare gRPC echo and a node stream, driven alike; the stand-in servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rvm_node.node.launch import spawn_server

__all__ = [
    "MB",
    "MIN_STREAM_FRAMES",
    "SIMULATED_BATCH",
    "WINDOW",
    "Wire",
    "echo_stream",
    "node_stream",
    "spawn_standin",
    "wire_frames",
]


def spawn_standin(*options: str) -> tuple[Any, str]:
    """A benchmark stand-in server (``python -m rvm_node.bench.standins``) and its address."""
    return spawn_server(
        [sys.executable, "-m", "rvm_node.bench.standins", "--port", "0", *options], "a stand-in"
    )


WINDOW = 3  # packed frames a stream keeps in flight (the window in bytes MatteStream.process_chunks takes)


SIMULATED_BATCH = ("--max-batch", "4", "--batch-delay-ms", "2")
MIN_STREAM_FRAMES = 30  # a stream's opening is a small part of it, as in a shot


MB = 1e6


@dataclass(frozen=True)
class Wire:
    """Frames of one size, packed with one transport in both directions; a window of ``window`` bytes."""

    width: int
    height: int
    transport: str
    window: int


def wire_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` frames of the example clip scaled to ``width`` x ``height``: ``HxWx3`` uint8 pictures."""
    import av

    from rvm_node.example import example_clip, read_video_frames

    frames, _ = read_video_frames(example_clip(), limit=count)
    return [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.transpose(1, 2, 0)), format="rgb24")
        .reformat(width=width, height=height)
        .to_ndarray()
        for frame in frames
    ]


def echo_stream(channel: Any, wire: Wire, frames: list[np.ndarray]) -> None:
    """One echo stream, driven as MatteStream.process_chunks drives a node stream: a queue, a window of bytes."""
    import queue
    from collections import deque

    from rvm_node.bench.standins import ECHO_METHOD
    from rvm_node.v1.protocol import TRANSPORTS, pack, unpack

    transport = TRANSPORTS[wire.transport]
    requests: queue.Queue[bytes | None] = queue.Queue()

    def outgoing() -> Iterator[bytes]:
        while (item := requests.get()) is not None:
            yield item

    settings = (("width", str(wire.width)), ("height", str(wire.height)), ("transport", wire.transport))
    replies = iter(channel.stream_stream(ECHO_METHOD)(outgoing(), metadata=settings))
    pending: deque[int] = deque()
    in_flight = 0

    def receive() -> None:
        nonlocal in_flight
        unpack(next(replies), transport, np.dtype("<u2"), (wire.height, wire.width), "echo reply")
        in_flight -= pending.popleft()

    for frame in frames:
        data = pack(frame, transport)
        requests.put(data)
        pending.append(len(data))
        in_flight += len(data)
        while len(pending) > 1 and in_flight > wire.window:
            receive()
    while pending:
        receive()
    requests.put(None)
    for _ in replies:
        pass


def node_stream(client: Any, wire: Wire, frames: list[np.ndarray], ratio: float = 0.25) -> None:
    """One stream through a node: uint8 RGB in, uint16 alpha back, one frame per chunk."""
    from rvm_node.client import StreamChunk

    with client.open_stream(
        width=wire.width,
        height=wire.height,
        input_format="uint8",
        output_format="uint16",
        planes=("alpha",),
        downsample_ratio=ratio,
        transport=wire.transport,
        return_transport=wire.transport,
        ring_slots=WINDOW,
    ) as stream:
        chunks = (StreamChunk([(number, frame)]) for number, frame in enumerate(frames))
        for _ in stream.process_chunks(chunks, window_bytes=wire.window):
            pass
