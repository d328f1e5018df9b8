"""A render node as an engine backend, so the converter (and anything else that
takes a backend) can matte on a node: same readers, writers, frame numbers,
atomic writes and resume.

Each session opens one Matte stream on its first frames, asking for the
session's :class:`OutputSpec`: only the planes it needs, in the sample format
its writers store. Frames travel as decoded (uint8/uint16; float frames, such
as EXR plates after colour conversion, as float16 unless ``float_input`` is
float32). :meth:`RemoteBackend.infer_chunks` keeps a window of bytes in flight,
so decoding, the network, the node and writing overlap; snapshots and
restores go through the node's state controls, in order with the frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rvm_node.client.node_client import NodeClient
from rvm_node.client.ring import ClientRing
from rvm_node.client.stream import DEFAULT_WINDOW_BYTES, MatteResult, MatteStream, StreamChunk
from rvm_node.engine.backend import MattingBackend
from rvm_node.engine.chunks import AdmittedChunk, FrameMemory, InferredChunk, MatteChunk
from rvm_node.engine.samples import OutputSpec, sample_format_of
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import InvalidInputError

__all__ = ["RemoteBackend"]


class _StreamRing:
    """The open stream's ring, which lends the converter's reader its slots (see :class:`FrameMemory`); the
    session holds this before the stream, and its ring, exist."""

    def __init__(self) -> None:
        self.ring: ClientRing | None = None

    def lend(self, count: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
        ring = self.ring
        return None if ring is None else ring.lend(count, shape, dtype)

    def chunk_of(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        ring = self.ring
        return np.stack(frames).transpose(0, 3, 1, 2) if ring is None else ring.chunk_of(frames)


@dataclass
class _RemoteState:
    stream: MatteStream | None
    next_number: int
    restore: RecurrentState | None = None


class RemoteBackend(MattingBackend[_RemoteState]):
    name = "node"

    def __init__(
        self,
        client: NodeClient,
        *,
        label: str = "",
        transport: str = "auto",
        return_transport: str | None = None,
        float_input: Literal["float16", "float32"] = "float16",
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        decode_into_ring: bool = True,
    ) -> None:
        """``transport`` / ``return_transport``: raw, zstd or png for frames sent / mattes returned;
        ``shm`` or ``auto`` (shm for a node on this host, else raw) for both ways.
        ``decode_into_ring``: on a shared-memory stream the converter's reader decodes frames straight
        into the ring's slots (False copies each frame in, as ``bench node`` compares)."""
        if float_input not in ("float16", "float32"):
            raise InvalidInputError(f"float_input: expected float16 or float32, got {float_input!r}")
        if window_bytes < 1:
            raise InvalidInputError(f"window_bytes: expected 1 or more, got {window_bytes}")
        self.client = client
        info = client.info()
        self.device = f"{client.address} ({info.device})"
        self.precision = info.precision
        self.variant = info.variants[0] if info.variants else "mobilenetv3"
        self.node_backend = info.backend
        self.label = label
        self.transport = transport
        self.return_transport = return_transport
        self.float_input = float_input
        self.window_bytes = window_bytes
        self.decode_into_ring = decode_into_ring

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["node_backend"] = self.node_backend
        info["full_resolution"] = "on the node"
        return info

    def frame_memory(self) -> FrameMemory | None:
        return _StreamRing() if self.decode_into_ring else None

    def prepare(self, frames: Any) -> np.ndarray:
        array = np.asarray(frames)
        if array.dtype.kind == "f" and array.dtype != np.dtype(self.float_input):
            return array.astype(self.float_input)
        sample_format_of(array.dtype)  # raises for any other type
        return array  # sent as they are: uint8 frames cost a quarter of float32 on the wire

    def _open(
        self, src: np.ndarray, state: _RemoteState | None, ratio: float, outputs: OutputSpec
    ) -> _RemoteState:
        height, width = src.shape[-2:]
        restore = None
        if state is not None and state.restore is not None:
            restore = (state.next_number - 1, state.restore)
        stream = self.client.open_stream(
            width=width,
            height=height,
            input_format=sample_format_of(src.dtype),
            output_format=outputs.sample_format,
            planes=("alpha", "foreground") if outputs.foreground else ("alpha",),
            downsample_ratio=ratio,
            restore=restore,
            label=self.label,
            transport=self.transport,
            return_transport=self.return_transport,
            ring_slots=2 * src.shape[1],  # a chunk on the node while the next one is written
        )
        return _RemoteState(stream, state.next_number if state is not None else 0)

    def _stream_for(
        self, src: np.ndarray, state: _RemoteState | None, ratio: float, outputs: OutputSpec
    ) -> tuple[_RemoteState, MatteStream]:
        if src.shape[0] != 1:
            raise InvalidInputError(
                f"frames: a node stream takes one clip at a time, got a batch of {src.shape[0]}"
            )
        if state is None or state.stream is None:
            state = self._open(src, state, ratio, outputs)
        if state.stream is None:  # _open always sets it; kept explicit for the type checker
            raise InvalidInputError("internal: no stream open")
        return state, state.stream

    @staticmethod
    def _numbered(src: np.ndarray, first: int) -> list[tuple[int, np.ndarray]]:
        return [(first + t, src[0, t].transpose(1, 2, 0)) for t in range(src.shape[1])]

    @staticmethod
    def _chunk(results: list[MatteResult], outputs: OutputSpec) -> MatteChunk:
        pha = np.stack([r.alpha for r in results])[:, None]
        fgr = None
        if outputs.foreground:
            fgr = np.stack([r.foreground for r in results if r.foreground is not None]).transpose(0, 3, 1, 2)
        return MatteChunk(fgr, pha)

    def infer(
        self, src: np.ndarray, state: _RemoteState | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, _RemoteState]:
        state, stream = self._stream_for(src, state, downsample_ratio, outputs)
        frames = self._numbered(src, state.next_number)
        (reply,) = stream.process_chunks([StreamChunk(frames)], window_bytes=self.window_bytes)
        state.next_number += len(frames)
        out = self._chunk(reply.results, outputs)
        return (None if out.fgr is None else out.fgr[None]), out.pha[None], state

    def infer_chunks(
        self,
        state: _RemoteState | None,
        chunks: Iterable[AdmittedChunk],
        outputs: OutputSpec,
        memory: FrameMemory | None,
    ) -> Iterator[InferredChunk]:
        """Chunks through the stream with a window of bytes in flight; snapshots in order with the frames."""
        iterator = iter(chunks)
        first = next(iterator, None)
        if first is None:
            return
        state, stream = self._stream_for(first.src, state, first.ratio, outputs)  # the first chunk opens it
        if isinstance(memory, _StreamRing) and stream.ring is not None:  # the reader decodes into the ring
            stream.ring.allow_lending(first.src.shape[1])
            memory.ring = stream.ring

        def sent() -> Iterator[StreamChunk]:
            chunk: AdmittedChunk | None = first
            while chunk is not None:
                frames = self._numbered(chunk.src, state.next_number)
                state.next_number += len(frames)
                yield StreamChunk(frames, snapshot=chunk.job.snapshot, tag=chunk)
                chunk = next(iterator, None)

        try:
            for reply in stream.process_chunks(sent(), window_bytes=self.window_bytes):
                out = self._chunk(reply.results, outputs)
                host = reply.snapshot[1].arrays() if reply.snapshot is not None else None
                fgr = None if out.fgr is None else out.fgr[None]
                yield InferredChunk(reply.tag, fgr, out.pha[None], state, host)
        finally:
            if isinstance(memory, _StreamRing):
                memory.ring = None

    def state_to_host(self, state: _RemoteState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if state.stream is None:
            if state.restore is None:
                raise InvalidInputError("state: nothing to snapshot")
            return state.restore.arrays()
        _, snapshot = state.stream.snapshot()
        return snapshot.arrays()

    def state_from_host(self, state: RecurrentState) -> _RemoteState:
        # The stream opens on the next frames, carrying this state; frame numbers on the wire restart at 1.
        return _RemoteState(stream=None, next_number=1, restore=state)

    def release(self, state: _RemoteState) -> None:
        if state.stream is not None:
            state.stream.close()
            state.stream = None
