"""The downsample ratio: its one range check and the official automatic rule.

Every place that takes a ratio (a session, a state snapshot, a static
export, a shot's settings, the plugins' settings) checks it here, so they
accept the same values and refuse the rest with the same words.
"""

from __future__ import annotations

import math

import numpy as np

from rvm_node.errors import InvalidInputError

__all__ = ["RATIO_RANGE", "auto_downsample_ratio", "check_downsample_ratio", "is_ratio"]

RATIO_RANGE = "a number in (0, 1]"


def is_ratio(value: object) -> bool:
    """Whether ``value`` is a ratio the model takes: a finite number in (0, 1] (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        return False
    return math.isfinite(value) and 0.0 < float(value) <= 1.0


def check_downsample_ratio(ratio: object, where: str = "downsample_ratio") -> float | None:
    """``ratio`` as a float, or None (auto); :class:`InvalidInputError` for anything else."""
    if ratio is None:
        return None
    if not isinstance(ratio, int | float | np.floating) or isinstance(ratio, bool):
        raise InvalidInputError(f"{where}: expected {RATIO_RANGE} or None for auto, got {ratio!r}")
    if not is_ratio(ratio):
        raise InvalidInputError(f"{where}: expected {RATIO_RANGE} or None for auto, got {float(ratio):g}")
    return float(ratio)


def auto_downsample_ratio(height: int, width: int) -> float:
    """The official automatic ratio: the longer side goes to at most 512 px.

    For extreme aspect ratios (e.g. 4097x2), where the official rule would
    shrink the short side below one pixel, the ratio is raised just enough to
    keep one pixel.
    """
    return min(max(512 / max(height, width), 1 / min(height, width)), 1.0)
