"""One stream on a backend: :class:`MattingSession`.

A session owns the recurrent state (a named :class:`RecurrentState`, never a
bare list), takes chunks of T >= 1 frames, and refuses a frame size it holds
no state for unless it is reset. The backend it runs on is
:class:`rvm_node.engine.backend.MattingBackend`; several sessions share one
forward pass through :mod:`rvm_node.engine.batching`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from rvm_node.engine.chunks import (
    AdmittedChunk,
    ChunkDone,
    ChunkJob,
    FrameMemory,
    HostState,
    InferredChunk,
    MatteChunk,
)
from rvm_node.engine.ratio import auto_downsample_ratio, check_downsample_ratio
from rvm_node.engine.samples import OutputSpec
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import InvalidInputError, NonFiniteSamplesError, ResolutionChangedError

__all__ = ["MattingSession", "SessionBackend"]


class SessionBackend(Protocol):
    """What a session needs of its backend (:class:`rvm_node.engine.backend.MattingBackend` has it all):
    the backend runs chunks on its own state, and the session owns that state."""

    variant: str

    def prepare(self, frames: Any) -> np.ndarray: ...

    def frame_memory(self) -> FrameMemory | None: ...

    def infer(
        self, src: np.ndarray, state: Any, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, Any]: ...

    def infer_chunks(
        self, state: Any, chunks: Iterable[AdmittedChunk], outputs: OutputSpec, memory: FrameMemory | None
    ) -> Iterator[InferredChunk]: ...

    def state_to_host(self, state: Any) -> HostState: ...

    def state_from_host(self, state: RecurrentState) -> Any: ...

    def release(self, state: Any) -> None: ...

    def stack_states(self, states: list[Any]) -> Any: ...

    def split_state(self, state: Any, count: int) -> list[Any]: ...

    def zero_state_like(self, state: Any) -> Any: ...


class MattingSession:
    """One stream of frames through a backend, with its recurrent state.

    ``process(frames)`` takes ``[T, 3, H, W]`` (one stream) or
    ``[B, T, 3, H, W]`` (B streams side by side) RGB frames: uint8, uint16, or
    float in 0..1. It returns a :class:`MatteChunk` of the same leading shape,
    with the planes and sample format of ``outputs`` (default: both planes,
    float32).
    """

    def __init__(
        self,
        backend: SessionBackend,
        downsample_ratio: float | None = None,
        outputs: OutputSpec | None = None,
    ) -> None:
        self.backend = backend
        self.downsample_ratio = check_downsample_ratio(downsample_ratio)
        self.outputs = outputs or OutputSpec()
        self.frame_memory = backend.frame_memory()
        self._state: Any = None
        self._frame_size: tuple[int, int] | None = None
        self._batch: int | None = None
        self._ratio: float | None = None
        self.frames_processed = 0

    def ratio_for(self, height: int, width: int) -> float:
        if self.downsample_ratio is not None:
            return self.downsample_ratio
        return auto_downsample_ratio(height, width)

    def reset(self) -> None:
        """Forget the recurrent state (at a cut, or before a new frame size)."""
        if self._state is not None:
            self.backend.release(self._state)
        self._state = None
        self._frame_size = None
        self._batch = None
        self._ratio = None
        self.frames_processed = 0

    def admit(self, frames: Any) -> tuple[np.ndarray, float]:
        """Check a chunk against this session; return it as ``[B, T, 3, H, W]`` for the backend, and its ratio."""
        src = self.backend.prepare(frames)
        if src.ndim == 4:
            src = src[None]
        if src.ndim != 5:
            raise InvalidInputError(
                f"frames: expected [T, 3, H, W] or [B, T, 3, H, W], got shape {list(np.shape(frames))}"
            )
        batch, count, channels, height, width = src.shape
        if count < 1 or batch < 1:
            raise InvalidInputError(f"frames: expected at least one frame, got shape {list(src.shape)}")
        if channels != 3:
            raise InvalidInputError(f"frames: expected 3 RGB channels, got {channels}")
        if height < 1 or width < 1:
            raise InvalidInputError(f"frames: expected a non-empty frame, got {height}x{width}")
        if src.dtype.kind == "f":  # NaN would poison every later frame
            finite = np.isfinite(src).all(axis=(0, 2, 3, 4))
            if not finite.all():
                index = int(np.argmin(finite))
                raise NonFiniteSamplesError(
                    f"frames[{index}]: NaN or infinite samples; float frames must be finite "
                    "(display-referred 0..1)",
                    index=index,
                )
        if self._frame_size is not None and (self._frame_size != (height, width) or self._batch != batch):
            raise ResolutionChangedError(
                f"frames: this session holds state for {self._batch} x {self._frame_size[1]}x"
                f"{self._frame_size[0]}, got {batch} x {width}x{height}; call reset() first"
            )
        ratio = self.ratio_for(height, width)
        if min(height, width) * ratio < 1:
            raise InvalidInputError(
                f"downsample_ratio: {ratio} makes a {width}x{height} frame smaller than one pixel"
            )
        return src, ratio

    def commit(self, state: Any, src: np.ndarray, ratio: float) -> None:
        """Take the backend's state after ``src`` ran."""
        self._state = state
        self._frame_size, self._batch, self._ratio = (src.shape[3], src.shape[4]), src.shape[0], ratio
        self.frames_processed += src.shape[1]

    @property
    def state(self) -> Any:
        """The backend's state (None before the first frame)."""
        return self._state

    def process(self, frames: Any) -> MatteChunk:
        src, ratio = self.admit(frames)
        return _shaped_as(frames, self.run_admitted(src, ratio))

    def run_admitted(self, src: np.ndarray, ratio: float) -> MatteChunk:
        """Run a chunk :meth:`admit` returned and take the state after it; ``[B, T, ...]`` results."""
        fgr, pha, state = self.backend.infer(src, self._state, ratio, self.outputs)
        self.commit(state, src, ratio)
        return MatteChunk(fgr, pha)

    def run(self, jobs: Iterable[ChunkJob]) -> Iterator[ChunkDone]:
        """Results of many chunks in order; the backend may overlap them (a node keeps several in flight).

        Each chunk is admitted as the backend asks for it. A job that cannot
        be read or admitted ends the run with its error, after the chunks
        before it have landed.
        """
        failed: list[BaseException] = []

        def admitted() -> Iterator[AdmittedChunk]:
            try:
                for job in jobs:
                    src, ratio = self.admit(job.frames)
                    yield AdmittedChunk(job, src, ratio)
            except Exception as exc:  # raised after the chunks before it, not inside the backend's pipeline
                failed.append(exc)

        for done in self.backend.infer_chunks(self._state, admitted(), self.outputs, self.frame_memory):
            self.commit(done.state, done.chunk.src, done.chunk.ratio)
            snapshot = None if done.host_state is None else self._snapshot_of(done.host_state)
            out = _shaped_as(done.chunk.job.frames, MatteChunk(done.fgr, done.pha))
            yield ChunkDone(done.chunk.job, out, snapshot)
        if failed:
            raise failed[0]

    def snapshot(self) -> RecurrentState | None:
        """The current state on the host, or None before the first frame."""
        if self._state is None:
            return None
        return self._snapshot_of(self.backend.state_to_host(self._state))

    def _snapshot_of(self, arrays: HostState) -> RecurrentState | None:
        if self._frame_size is None or self._ratio is None:
            return None
        return RecurrentState.from_arrays(
            arrays, self._frame_size, self._ratio, self.frames_processed, self.backend.variant
        )

    def close(self) -> None:
        """End the stream: same as :meth:`reset`, for use at the end of a shot."""
        self.reset()

    def restore(self, state: RecurrentState, where: str = "state") -> None:
        """Continue from a snapshot (of this or another session, on any backend), once it is checked
        against this model (:func:`~rvm_node.engine.states.check_state`)."""
        from rvm_node.engine.states import check_state

        check_state(state, self.backend.variant, where)
        batch = state.r1.shape[0]
        if self._state is not None:
            self.backend.release(self._state)
        self._state = self.backend.state_from_host(state)
        self._frame_size = state.frame_size
        self._batch = batch
        self._ratio = state.downsample_ratio
        self.downsample_ratio = state.downsample_ratio
        self.frames_processed = state.frames


def _shaped_as(frames: Any, out: MatteChunk) -> MatteChunk:
    """``[B, T, ...]`` results as the frames came: ``[T, ...]`` for one stream's ``[T, 3, H, W]``."""
    if np.ndim(frames) == 4:
        return MatteChunk(None if out.fgr is None else out.fgr[0], out.pha[0])
    return out
