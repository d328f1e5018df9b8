"""The shapes a recurrent state must have, and the check of a state that comes from outside.

A state is valid only for the model variant, frame size and downsample ratio
it was computed with. States from snapshots, checkpoints or the network are
checked here before a backend sees them, so a wrong one is refused with a
clear message instead of failing inside the network (or running at a size
nobody asked for).

The downsampled frame is ``floor(H * ratio)`` by ``floor(W * ratio)`` (the
network's bilinear resize by a factor); each state then sits at 1/2, 1/4,
1/8 and 1/16 of it, every halving rounded up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rvm_node.engine.ratio import RATIO_RANGE, is_ratio
from rvm_node.errors import StateMismatchError

__all__ = [
    "STATE_CHANNELS",
    "VARIANTS",
    "RecurrentState",
    "check_state",
    "check_state_shapes",
    "small_state_shapes",
    "state_shapes",
]


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


# Channels of r1..r4 per variant: half of each decoder stage's channels.
STATE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "mobilenetv3": (16, 20, 40, 64),
    "resnet50": (16, 32, 64, 128),
}
VARIANTS = tuple(STATE_CHANNELS)  # the RVM backbones


def _downsampled(size: int, ratio: float) -> set[int]:
    """The downsampled length: double and single precision can round an exact product differently."""
    return {math.floor(size * ratio), int(np.floor(np.float32(size) * np.float32(ratio)))}


def state_shapes(
    variant: str, frame_size: tuple[int, int], ratio: float, batch: int = 1
) -> list[list[tuple[int, int, int, int]]]:
    """The shapes (r1..r4) a state of ``variant`` has for ``frame_size`` (H, W) at ``ratio``.

    One list per way the downsampled size may be rounded (usually just one).
    """
    height, width = frame_size
    return [
        small_state_shapes(variant, (small_h, small_w), batch)
        for small_h in sorted(_downsampled(height, ratio))
        for small_w in sorted(_downsampled(width, ratio))
    ]


def small_state_shapes(
    variant: str, small_size: tuple[int, int], batch: int = 1
) -> list[tuple[int, int, int, int]]:
    """The shapes (r1..r4) of ``variant``'s state when the network runs at ``small_size`` (h, w): each half
    the one before, rounded up."""
    shapes = []
    h, w = small_size
    for c in STATE_CHANNELS[variant]:
        h, w = -(-h // 2), -(-w // 2)
        shapes.append((batch, c, h, w))
    return shapes


def check_state_shapes(
    variant: str,
    frame_size: tuple[int, int],
    ratio: float,
    shapes: list[tuple[int, ...]],
    batch: int | None = None,
    where: str = "state",
) -> None:
    """Raise :class:`StateMismatchError` unless ``shapes`` (r1..r4) fit ``variant`` at ``frame_size``
    (H, W) and ``ratio``, with ``batch`` streams (any batch when None). Nothing is allocated."""
    height, width = frame_size
    if not is_ratio(ratio):
        raise StateMismatchError(f"{where}: downsample_ratio must be {RATIO_RANGE}, got {ratio}")
    if height < 1 or width < 1:
        raise StateMismatchError(f"{where}: frame size must be positive, got {width}x{height}")
    if min(height, width) * ratio < 1:
        raise StateMismatchError(
            f"{where}: downsample_ratio {ratio} makes a {width}x{height} frame smaller than one pixel"
        )
    if variant not in STATE_CHANNELS:
        raise StateMismatchError(f"{where}: unknown model variant {variant!r}")
    got = [tuple(int(d) for d in shape) for shape in shapes]
    found = got[0][0] if len(got) == 4 and len(got[0]) == 4 else 0
    candidates = state_shapes(variant, frame_size, ratio, batch or max(1, found))
    if (batch is None and found < 1) or got not in [list(c) for c in candidates]:
        expected = ", ".join(str(list(s)) for s in candidates[0])
        raise StateMismatchError(
            f"{where}: tensors {', '.join(str(list(s)) for s in got) or '(none)'} do not fit {variant} at "
            f"{width}x{height} ratio {ratio:g}; expected {expected}"
        )


def check_state(state: RecurrentState, variant: str, where: str = "state", batch: int | None = None) -> None:
    """Raise :class:`StateMismatchError` unless ``state`` fits ``variant`` at its own size and ratio
    and holds only finite values."""
    if state.frames < 0:
        raise StateMismatchError(f"{where}: frames must be 0 or more, got {state.frames}")
    if state.variant and state.variant != variant:
        raise StateMismatchError(f"{where}: the state is for {state.variant}, this model is {variant}")
    arrays = state.arrays()
    check_state_shapes(
        variant, state.frame_size, state.downsample_ratio, [a.shape for a in arrays], batch, where
    )
    for index, array in enumerate(arrays):
        if not np.isfinite(array).all():
            raise StateMismatchError(f"{where}: tensor r{index + 1} holds NaN or infinite values")
