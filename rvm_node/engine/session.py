"""The seam between rvm-node and the thing that runs the network.

A :class:`MattingBackend` holds a loaded model on one device and is shared by
many streams. It is stateless between calls: each call takes the recurrent
state and returns the next one, so a scheduler can batch streams together.

A :class:`MattingSession` is one stream: it owns the recurrent state (a named
:class:`RecurrentState`, never a bare list), takes chunks of T >= 1 frames,
and refuses a frame size it holds no state for unless it is reset.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from rvm_node.engine.samples import SAMPLE_DTYPES, OutputSpec, to_unit_float
from rvm_node.errors import InvalidInputError, NonFiniteSamplesError, ResolutionChangedError

__all__ = [
    "BACKENDS",
    "ChunkDone",
    "ChunkJob",
    "FrameMemory",
    "MatteChunk",
    "MattingBackend",
    "MattingSession",
    "OutputSpec",
    "RecurrentState",
    "auto_downsample_ratio",
    "check_downsample_ratio",
    "fastest_parity_backend",
    "process_batch",
]

StateT = TypeVar("StateT")


BACKENDS = ("torch", "onnxruntime", "openvino")  # the names load_model takes, besides "auto"


def fastest_parity_backend(device: str) -> str:
    """The fastest backend present that matches the official model (fp32; never bf16), by measurement.

    ``rvm-node bench engine`` (see the README), on a 2-core AVX-512 CPU: OpenVINO
    ran 1.28x, 1.18x and 1.09x the official ONNX at 640x360, 1280x720 and
    1920x1080, onnxruntime (our export) 0.90x, 0.90x and 0.85x. So OpenVINO on
    a CPU where the ``openvino`` extra is installed, else onnxruntime, which is
    also the choice on GPUs. The TFLite export, run with XNNPACK, was faster
    still at 1080p (1.26x); it is no backend (an export per frame size), so
    it is not a choice here.
    """
    if device == "cpu" and importlib.util.find_spec("openvino") is not None:
        return "openvino"
    return "onnxruntime"


def auto_downsample_ratio(height: int, width: int) -> float:
    """The official automatic ratio: the longer side goes to at most 512 px.

    For extreme aspect ratios (e.g. 4097x2), where the official rule would
    shrink the short side below one pixel, the ratio is raised just enough to
    keep one pixel.
    """
    return min(max(512 / max(height, width), 1 / min(height, width)), 1.0)


def check_downsample_ratio(ratio: float | None, where: str = "downsample_ratio") -> float | None:
    """Validate a ratio: None (auto) or a finite number in (0, 1]."""
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, int | float | np.floating):
        raise InvalidInputError(f"{where}: expected a number in (0, 1] or None for auto, got {ratio!r}")
    value = float(ratio)
    if not (0.0 < value <= 1.0):
        raise InvalidInputError(f"{where}: expected a number in (0, 1] or None for auto, got {value}")
    return value


@dataclass(frozen=True)
class RecurrentState:
    """The four ConvGRU states of a stream, on the host, after ``frames`` frames.

    ``r1`` .. ``r4`` are float32 arrays ``[B, C, h, w]`` at 1/2, 1/4, 1/8 and
    1/16 of the downsampled frame. ``frame_size`` is the (height, width) of the
    frames they belong to and ``downsample_ratio`` the ratio they were computed
    at; a state is only valid for that size and ratio.
    """

    r1: np.ndarray
    r2: np.ndarray
    r3: np.ndarray
    r4: np.ndarray
    frame_size: tuple[int, int]
    downsample_ratio: float
    frames: int
    variant: str = ""  # the model variant; empty when unknown (older checkpoints)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (self.r1, self.r2, self.r3, self.r4)

    @classmethod
    def from_arrays(
        cls,
        arrays: Sequence[np.ndarray],
        frame_size: tuple[int, int] = (0, 0),
        downsample_ratio: float = 0.0,
        frames: int = 0,
        variant: str = "",
    ) -> RecurrentState:
        """A state from its four tensors (r1..r4) and what it belongs to."""
        r1, r2, r3, r4 = arrays
        return cls(r1, r2, r3, r4, frame_size, downsample_ratio, frames, variant)


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


class FrameMemory(Protocol):
    """Memory a backend lends the frame reader (a node's shared-memory ring): the frames of a chunk are
    decoded straight into it, and the chunk reaches the backend with no further copy."""

    def take(self, count: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
        """Writable ``[count, *shape]`` memory for the next chunk's frames (samples cast to the memory's
        own type), waiting while none is free; None where they cannot go there."""

    def gather(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The chunk ``[T, 3, H, W]`` over a chunk's ``HxWx3`` frames: in place where they fill memory
        from :meth:`take` in order, else a copy (and that memory is given back)."""


class MattingBackend(abc.ABC, Generic[StateT]):
    """A loaded RVM model on one device. Thread-compatible; holds no stream state."""

    name: str
    device: str
    precision: str
    variant: str

    @abc.abstractmethod
    def infer(
        self, src: np.ndarray, state: StateT | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, StateT]:
        """Run ``[B, T, 3, H, W]`` frames (as :meth:`prepare` made them); return fgr, pha and the next state.

        fgr and pha come back in ``outputs.sample_format``; fgr is None unless
        ``outputs.foreground``. Backends that run on a device convert there, so
        only what is asked for crosses to the host.
        """

    @abc.abstractmethod
    def state_to_host(self, state: StateT) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four state tensors as float32 host arrays."""

    @abc.abstractmethod
    def state_from_host(self, state: RecurrentState) -> StateT:
        """A backend state from a host snapshot."""

    def prepare(self, frames: Any) -> np.ndarray:
        """Frames as this backend takes them: float32 in 0..1 unless it wants the raw samples."""
        return _as_unit_float(frames, "frames")

    def release(self, state: StateT) -> None:
        """Free what a stream's state holds beyond memory (a remote stream, say)."""

    def run_stream(self, session: MattingSession, jobs: Iterable[ChunkJob]) -> Iterator[ChunkDone]:
        """Chunks through ``session`` in order. Local backends run them one by one; a remote
        backend keeps several in flight."""
        for job in jobs:
            out = session.process(job.frames)
            yield ChunkDone(job, out, session.snapshot() if job.snapshot else None)

    def stack_states(self, states: list[StateT]) -> StateT:
        """One batch state from single-stream states of equal shape (batching across streams)."""
        host = [self.state_to_host(s) for s in states]
        return self._from_arrays(*(np.concatenate([h[i] for h in host]) for i in range(4)))

    def split_state(self, state: StateT, count: int) -> list[StateT]:
        """The ``count`` single-stream states of a batch state."""
        r1, r2, r3, r4 = self.state_to_host(state)
        return [
            self._from_arrays(r1[i : i + 1], r2[i : i + 1], r3[i : i + 1], r4[i : i + 1])
            for i in range(count)
        ]

    def zero_state_like(self, state: StateT) -> StateT:
        """A state of zeros shaped like ``state`` (a fresh stream joining a batch).

        Starting from full-shape zeros equals starting from no state.
        """
        return self._from_arrays(*(np.zeros_like(a) for a in self.state_to_host(state)))

    def _from_arrays(self, *arrays: np.ndarray) -> StateT:
        return self.state_from_host(RecurrentState.from_arrays(arrays))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "variant": self.variant,
        }

    def frame_memory(self) -> FrameMemory | None:
        """Memory for one session's decoded frames, where the backend has some to lend."""
        return None

    def new_session(
        self, downsample_ratio: float | None = None, outputs: OutputSpec | None = None
    ) -> MattingSession:
        return MattingSession(self, downsample_ratio=downsample_ratio, outputs=outputs)


def _as_unit_float(frames: Any, where: str) -> np.ndarray:
    array = np.asarray(frames)
    if array.dtype not in SAMPLE_DTYPES.values():
        raise InvalidInputError(
            f"{where}: expected uint8, uint16, float16 or float32 frames, got {array.dtype}"
        )
    return to_unit_float(array)


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
        backend: MattingBackend[Any],
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
        if src.dtype.kind == "f" and not np.isfinite(src).all():  # NaN would poison every later frame
            raise NonFiniteSamplesError(
                "frames: NaN or infinite samples; float frames must be finite (display-referred 0..1)"
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
        out = self.run_admitted(src, ratio)
        if np.ndim(frames) == 4:
            return MatteChunk(None if out.fgr is None else out.fgr[0], out.pha[0])
        return out

    def run_admitted(self, src: np.ndarray, ratio: float) -> MatteChunk:
        """Run a chunk :meth:`admit` returned and take the state after it; ``[B, T, ...]`` results."""
        fgr, pha, state = self.backend.infer(src, self._state, ratio, self.outputs)
        self.commit(state, src, ratio)
        return MatteChunk(fgr, pha)

    def run(self, jobs: Iterable[ChunkJob]) -> Iterator[ChunkDone]:
        """Results of many chunks in order; the backend may overlap them (see :meth:`MattingBackend.run_stream`)."""
        return self.backend.run_stream(self, jobs)

    def snapshot(self) -> RecurrentState | None:
        """The current state on the host, or None before the first frame."""
        if self._state is None or self._frame_size is None or self._ratio is None:
            return None
        return RecurrentState.from_arrays(
            self.backend.state_to_host(self._state),
            self._frame_size,
            self._ratio,
            self.frames_processed,
            self.backend.variant,
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


def batch_key(session: MattingSession, frames: np.ndarray) -> tuple[Any, ...]:
    """Chunks with equal keys can share one forward pass: same backend, shape, ratio, input type and outputs."""
    height, width = frames.shape[-2:]
    ratio = session.ratio_for(height, width)
    return (id(session.backend), frames.shape, frames.dtype.str, ratio, session.outputs)


def process_batch(sessions: list[MattingSession], chunks: list[Any]) -> list[MatteChunk | BaseException]:
    """One forward pass for one ``[T, 3, H, W]`` chunk of each of several single-stream sessions.

    The sessions must be distinct and their admitted chunks share a
    :func:`batch_key`. Each session's state is stacked in and split back out,
    so every stream continues exactly as if it ran alone. A chunk a session
    refuses gets its own error in the result list and leaves the batch;
    a failing forward pass raises, and no session's state changes.
    """
    results: list[Any] = [None] * len(sessions)
    admitted: list[tuple[int, MattingSession, np.ndarray, float]] = []
    for index, (session, chunk) in enumerate(zip(sessions, chunks, strict=True)):
        try:
            src, ratio = session.admit(chunk)
            if src.shape[0] != 1:
                raise InvalidInputError(f"frames: a batched chunk holds one stream, got {src.shape[0]}")
        except InvalidInputError as exc:
            results[index] = exc
            continue
        admitted.append((index, session, src, ratio))
    if not admitted:
        return results
    if len(admitted) == 1:
        index, session, src, ratio = admitted[0]
        out = session.run_admitted(src, ratio)
        results[index] = MatteChunk(None if out.fgr is None else out.fgr[0], out.pha[0])
        return results
    first = admitted[0]
    keys = {batch_key(sessions[index], np.asarray(chunks[index])) for index, *_ in admitted}
    if len(keys) != 1:
        raise InvalidInputError("batch: chunks of different shapes, ratios or outputs cannot share a pass")
    backend = first[1].backend
    started = [s.state for _, s, _, _ in admitted]
    template = next((s for s in started if s is not None), None)
    if template is None:
        state = None
    else:
        zeros = backend.zero_state_like(template) if None in started else None
        state = backend.stack_states([s if s is not None else zeros for s in started])
    src = np.concatenate([a[2] for a in admitted])
    fgr, pha, new_state = backend.infer(src, state, first[3], first[1].outputs)
    states = backend.split_state(new_state, len(admitted))
    for position, (index, session, one, ratio) in enumerate(admitted):
        session.commit(states[position], one, ratio)
        results[index] = MatteChunk(None if fgr is None else fgr[position], pha[position])
    return results
