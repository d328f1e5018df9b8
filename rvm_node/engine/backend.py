"""The seam between rvm-node and the thing that runs the network: :class:`MattingBackend`.

A backend holds a loaded model on one device and is shared by many streams. It is stateless between
calls: each call takes the recurrent state and returns the next one, so a scheduler can batch streams
together. :func:`fastest_parity_backend` chooses one by measurement, :func:`fastest_device` a device.
"""

from __future__ import annotations

import abc
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np

from rvm_node.engine import fullres
from rvm_node.engine.chunks import AdmittedChunk, FrameMemory, InferredChunk
from rvm_node.engine.samples import SAMPLE_DTYPES, OutputSpec, to_unit_float
from rvm_node.engine.session import MattingSession
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import InvalidInputError

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "MattingBackend",
    "fastest_device",
    "fastest_parity_backend",
]


StateT = TypeVar("StateT")


BACKENDS = ("torch", "onnxruntime", "openvino")  # the names load_model takes, besides "auto"
PRECISIONS = ("fp32", "fp16", "bf16")  # what load_model takes; each backend says which it runs


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


def fused_refiner_choice(asked: bool | None, default: bool, why_not: str | None, where: str) -> bool:
    """Whether a backend splits the refiner off (``fused_refiner``; :mod:`rvm_node.engine.fullres`).

    ``asked``: the option; None takes ``default``. ``why_not``: why this model
    on this device cannot be split, or None where it can. Asking for the split
    where it cannot be made is an :class:`InvalidInputError`; the default
    falls back to running the model whole.
    """
    if asked and why_not is not None:
        raise InvalidInputError(f"{where}: fused_refiner: {why_not}")
    return why_not is None and (default if asked is None else asked)


def fastest_device() -> str:
    """What ``--device auto`` stands for: ``cuda`` where onnxruntime offers CUDA (``rvm-node[gpu]``) and a
    CUDA driver is installed, else ``cpu``. A node that starts by itself (the plugins' private node) takes
    the GPU where there is one."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "cpu"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "cpu"
    return "cuda" if cuda_driver_loads() else "cpu"


def cuda_driver_loads() -> bool:
    """Whether NVIDIA's driver library loads here (onnxruntime-gpu lists CUDA on machines without one)."""
    import ctypes

    if sys.platform == "darwin":
        return False
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


class MattingBackend(abc.ABC, Generic[StateT]):
    """A loaded RVM model on one device. Thread-compatible; holds no stream state."""

    name: str
    device: str
    precision: str
    variant: str
    # Below ratio 1, only the small-resolution part runs in the model (rvm_node.engine.fullres does the rest).
    fused_refiner: bool = False

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

    def infer_chunks(
        self,
        state: StateT | None,
        chunks: Iterable[AdmittedChunk],
        outputs: OutputSpec,
        memory: FrameMemory | None,  # noqa: ARG002 - lent by the backends that lend any
    ) -> Iterator[InferredChunk]:
        """Admitted chunks of one stream in order, from ``state`` on, each with the state after it.

        Local backends run them one by one; a remote backend keeps several in
        flight. ``memory``: what :meth:`frame_memory` lent the stream's reader.
        """
        for chunk in chunks:
            fgr, pha, state = self.infer(chunk.src, state, chunk.ratio, outputs)
            host = self.state_to_host(state) if chunk.job.snapshot else None
            yield InferredChunk(chunk, fgr, pha, state, host)

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
            "full_resolution": fullres.kernels_name() if self.fused_refiner else "in the model",
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
