"""A render node as an engine backend, so the converter (and anything else that
takes a backend) can matte on a node: same readers, writers, frame numbers,
atomic writes and resume.

Each session opens one Matte stream on its first frames; snapshots and
restores go through the node's state controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rvm_node.client.node_client import MatteStream, NodeClient
from rvm_node.engine.session import MattingBackend, RecurrentState
from rvm_node.errors import InvalidInputError

__all__ = ["RemoteBackend"]

_WIRE = {
    np.dtype(np.uint8): "uint8",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.float16): "float16",
    np.dtype(np.float32): "float32",
}


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
        output_format: str = "float32",
        label: str = "",
        foreground: bool = True,
    ) -> None:
        """``foreground=False`` asks the node for alpha only; the foreground returned is then zeros."""
        self.client = client
        self.foreground = foreground
        info = client.info()
        self.device = f"{client.address} ({info.device})"
        self.precision = info.precision
        self.variant = info.variants[0] if info.variants else "mobilenetv3"
        self.node_backend = info.backend
        self.output_format = output_format
        self.label = label

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["node_backend"] = self.node_backend
        return info

    def prepare(self, frames: Any) -> np.ndarray:
        array = np.asarray(frames)
        if array.dtype not in _WIRE:
            raise InvalidInputError(
                f"frames: expected uint8, uint16, float16 or float32 frames, got {array.dtype}"
            )
        return array  # sent as they are: uint8 frames cost a quarter of float32 on the wire

    def _open(self, src: np.ndarray, state: _RemoteState | None, ratio: float) -> _RemoteState:
        height, width = src.shape[-2:]
        restore = None
        if state is not None and state.restore is not None:
            restore = (state.next_number - 1, state.restore)
        stream = self.client.open_stream(
            width=width,
            height=height,
            input_format=_WIRE[src.dtype],
            output_format=self.output_format,
            planes=("alpha", "foreground"),
            downsample_ratio=ratio,
            restore=restore,
            label=self.label,
        )
        return _RemoteState(stream, state.next_number if state is not None else 0)

    def infer(
        self, src: np.ndarray, state: _RemoteState | None, downsample_ratio: float
    ) -> tuple[np.ndarray, np.ndarray, _RemoteState]:
        if src.shape[0] != 1:
            raise InvalidInputError(
                f"frames: a node stream takes one clip at a time, got a batch of {src.shape[0]}"
            )
        if state is None or state.stream is None:
            state = self._open(src, state, downsample_ratio)
        stream = state.stream
        if stream is None:  # _open always sets it; kept explicit for the type checker
            raise InvalidInputError("internal: no stream open")
        frames = [(state.next_number + t, src[0, t].transpose(1, 2, 0)) for t in range(src.shape[1])]
        results = list(stream.process(frames, window=len(frames)))
        state.next_number += len(frames)
        pha = np.stack([r.alpha for r in results])[None, :, None]
        fgr = np.stack([r.foreground for r in results if r.foreground is not None]).transpose(0, 3, 1, 2)[
            None
        ]
        return fgr, pha, state

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
