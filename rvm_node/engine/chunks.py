"""The values that cross the engine's seam: chunks asked for, chunks admitted, chunks done.

A session (:mod:`rvm_node.engine.session`) owns a stream's state and checks
each chunk; a backend (:mod:`rvm_node.engine.backend`) runs admitted chunks
on its own state only. These types are all the two share, so the seam runs
one way: backends know sessions only through what they are handed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rvm_node.engine.states import RecurrentState

__all__ = [
    "AdmittedChunk",
    "ChunkDone",
    "ChunkJob",
    "FrameMemory",
    "HostState",
    "InferredChunk",
    "MatteChunk",
]

HostState = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class MatteChunk:
    """One chunk's result: foreground ``[..., 3, H, W]`` and alpha ``[..., 1, H, W]``.

    Samples are in the session's :class:`OutputSpec` format (float32 0..1 by
    default); ``fgr`` is None when the spec leaves the foreground out.
    """

    fgr: np.ndarray | None
    pha: np.ndarray


@dataclass(frozen=True)
class ChunkJob:
    """A chunk ``[T, 3, H, W]`` for :meth:`MattingSession.run`; ``snapshot`` asks for the state after it."""

    frames: Any
    snapshot: bool = False
    tag: Any = None


@dataclass(frozen=True)
class ChunkDone:
    """The result of one :class:`ChunkJob`, with the state after it when asked."""

    job: ChunkJob
    out: MatteChunk
    state: RecurrentState | None


@dataclass(frozen=True)
class AdmittedChunk:
    """A job its session checked: ``src`` ``[B, T, 3, H, W]`` as the backend takes it, at ``ratio``."""

    job: ChunkJob
    src: np.ndarray
    ratio: float


@dataclass(frozen=True)
class InferredChunk:
    """What a backend made of an :class:`AdmittedChunk`: the planes, its state after the chunk, and that
    state on the host where the job asked for a snapshot."""

    chunk: AdmittedChunk
    fgr: np.ndarray | None
    pha: np.ndarray
    state: Any
    host_state: HostState | None


class FrameMemory(Protocol):
    """Memory a backend lends the frame reader (a node's shared-memory ring): the frames of a chunk are
    decoded straight into it, and the chunk reaches the backend with no further copy."""

    def lend(self, count: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
        """Writable ``[count, *shape]`` memory lent for the next chunk's frames (samples cast to the
        memory's own type), waiting while none is free; None where they cannot go there."""

    def chunk_of(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The chunk ``[T, 3, H, W]`` over a chunk's ``HxWx3`` frames: in place where they fill memory
        from :meth:`lend` in order, else a copy (and the lent memory is given back)."""
