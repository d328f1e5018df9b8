"""A video's display matrix: how a picture stored one way is meant to be shown.

Phones store portrait video sideways and record the turn as a display matrix
(side data of the video stream; FFmpeg hands it on with every decoded frame).
Players, and ``ffmpeg`` unless told ``-noautorotate``, turn the picture
upright before showing it. :class:`DisplayMatrix` reads the matrix as FFmpeg
does and brings a frame upright with the same steps as ffmpeg's autorotate:
a quarter turn (``transpose``), a half turn or a mirror (``hflip``,
``vflip``). A matrix that is no multiple of a quarter turn is reported, not
applied (ffmpeg would resample the picture at an angle).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["DisplayMatrix", "Step"]

Step = Literal["clock", "cclock", "clock_flip", "cclock_flip", "hflip", "vflip"]

_WORDS = {
    ("clock",): "rotated 90° clockwise",
    ("cclock",): "rotated 90° counter-clockwise",
    ("clock_flip",): "rotated 90° clockwise and flipped upside down",
    ("cclock_flip",): "rotated 90° counter-clockwise and flipped upside down",
    ("hflip", "vflip"): "rotated 180°",
    ("hflip",): "mirrored left to right",
    ("vflip",): "flipped upside down",
}


def _apply(step: Step, pixels: np.ndarray) -> np.ndarray:
    if step == "clock":
        return np.rot90(pixels, -1)
    if step == "cclock":
        return np.rot90(pixels, 1)
    if step == "clock_flip":
        return np.rot90(pixels, -1)[::-1]
    if step == "cclock_flip":
        return pixels.swapaxes(0, 1)
    if step == "hflip":
        return pixels[:, ::-1]
    return pixels[::-1]


@dataclass(frozen=True)
class DisplayMatrix:
    """The nine numbers of a display matrix, as stored (16.16 fixed point; the last column 2.30)."""

    values: tuple[int, ...]

    @classmethod
    def of_frame(cls, frame: Any) -> DisplayMatrix | None:
        """The matrix a decoded PyAV frame carries; None when it carries none or one that shows the
        picture as stored."""
        data = frame.side_data.get("DISPLAYMATRIX")
        if data is None:
            return None
        matrix = cls(struct.unpack("=9i", bytes(data)[:36]))  # nine int32 in native byte order
        return None if matrix.steps == () else matrix

    @property
    def clockwise(self) -> float | None:
        """The turn in degrees clockwise in [0, 360), as ffmpeg rounds it; None for a singular matrix."""
        m = self.values
        scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
        if scale_x == 0 or scale_y == 0:
            return None
        turn = math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x))  # -av_display_rotation_get()
        theta = math.copysign(math.floor(abs(turn) + 0.5), turn)  # C's round(): halves away from 0
        return theta - 360 * math.floor(theta / 360 + 0.9 / 360)

    @property
    def steps(self) -> tuple[Step, ...] | None:
        """What brings a stored frame upright, as ffmpeg's autorotate does; None: not a quarter turn."""
        theta, m = self.clockwise, self.values
        if theta is None:
            return None
        if abs(theta - 90) < 1:
            return ("cclock_flip",) if m[3] > 0 else ("clock",)
        if abs(theta - 180) < 1:
            flips: tuple[Step, ...] = ("hflip",) if m[0] < 0 else ()
            return flips + (("vflip",) if m[4] < 0 else ())
        if abs(theta - 270) < 1:
            return ("clock_flip",) if m[3] < 0 else ("cclock",)
        if abs(theta) > 1:
            return None
        return ("vflip",) if m[4] < 0 else ()

    @property
    def turns_sideways(self) -> bool:
        """True when upright frames swap width and height."""
        return any(step in ("clock", "cclock", "clock_flip", "cclock_flip") for step in self.steps or ())

    def upright(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` (``H x W [x C]``) as displayed: contiguous, width and height swapped by a quarter turn."""
        for step in self.steps or ():
            pixels = _apply(step, pixels)
        return np.ascontiguousarray(pixels)

    def describe(self) -> str:
        """How the picture is shown, in words: ``rotated 90° clockwise``."""
        steps = self.steps
        if steps is None:
            theta = self.clockwise
            if theta is None:
                return "at an unusable angle"
            return (
                f"turned {theta:g}° clockwise"
                if theta <= 180
                else f"turned {360 - theta:g}° counter-clockwise"
            )
        return _WORDS.get(steps, "as stored")
