"""A stand-in model for the fast test tier: the backend interface, deterministic and cheap, no weights.

It is named as what it is and never used for parity. Alpha is the frame's mean RGB in quarters, raised by a step
that depends on how many frames the recurrent state has seen, so a test can tell whether the state was
carried, reset or restored; the foreground is the frame itself. The states have the real model's shapes
(``mobilenetv3``), so snapshots, restores and their checks work as with the real model.
"""

from __future__ import annotations

import numpy as np
import pytest

from rvm_node.engine.backend import MattingBackend
from rvm_node.engine.samples import OutputSpec, convert_outputs
from rvm_node.engine.states import RecurrentState, state_shapes

__all__ = ["StandInBackend", "expected_alpha", "standin_as_backend", "standin_node_as_node"]

StandInState = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_STEP = 0.05


def expected_alpha(frames: np.ndarray, seen_before: int = 0) -> np.ndarray:
    """What the stand-in returns for ``[T, 3, H, W]`` float frames after ``seen_before`` frames: ``[T, 1, H, W]``."""
    counts = seen_before + np.arange(len(frames), dtype=np.float32)
    return np.clip(_plateaus(frames, 1) + (counts % 4)[:, None, None, None] * _STEP, 0, 1)


def _plateaus(frames: np.ndarray, axis: int) -> np.ndarray:
    """The mean RGB in quarters: flat regions with edges, like a matte (and as compressible)."""
    return np.round(frames.mean(axis=axis, keepdims=True) * 4) / 4


class StandInBackend(MattingBackend[StandInState]):
    """A stand-in for the model (see the module docstring)."""

    name = "stand-in"
    device = "cpu"
    precision = "fp32"
    variant = "mobilenetv3"

    def __init__(self) -> None:
        self.passes = 0  # forward passes run, for tests that count them

    def infer(
        self, src: np.ndarray, state: StandInState | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, StandInState]:
        batch, frames, _, height, width = src.shape
        self.passes += 1
        if state is None:
            r1, r2, r3, r4 = (
                np.zeros(shape, np.float32)
                for shape in state_shapes(self.variant, (height, width), downsample_ratio, batch)[0]
            )
            state = (r1, r2, r3, r4)
        seen = state[0][:, 0, 0, 0]  # frames seen, per stream of the batch
        counts = seen[:, None] + np.arange(frames, dtype=np.float32)[None, :]
        pha = _plateaus(src, 2) + (counts % 4)[:, :, None, None, None] * _STEP
        fgr = np.clip(src, 0, 1)
        r1 = state[0].copy()
        r1[:, 0, 0, 0] += frames
        fgr_out, pha_out = convert_outputs(fgr, np.clip(pha, 0, 1).astype(np.float32), outputs)
        return fgr_out, pha_out, (r1, state[1], state[2], state[3])

    def state_to_host(self, state: StandInState) -> StandInState:
        return state

    def state_from_host(self, state: RecurrentState) -> StandInState:
        r1, r2, r3, r4 = (np.array(a, np.float32) for a in state.arrays())
        return r1, r2, r3, r4


@pytest.fixture(scope="module", name="backend")
def standin_as_backend(standin: StandInBackend) -> StandInBackend:
    """``backend`` for modules about the protocol, not the mattes: the stand-in model."""
    return standin


@pytest.fixture(scope="module", name="node")
def standin_node_as_node(standin_node: object) -> object:
    """``node`` for the same modules: a real node on 127.0.0.1 serving the stand-in model."""
    return standin_node
