"""How a source is shown, and what video outputs keep of it: its display rotation and its frame times.

Each is said once per run, as one line on the ``rvm_node.convert`` logger (a
warning, so ``rvm-node convert`` shows it without any logging set up):

* a video turned upright by its display matrix, or one whose matrix is no
  quarter turn and so is kept as stored;
* a variable-frame-rate video whose video outputs keep every frame's own time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

from rvm_node.io.frame_times import VariableRate
from rvm_node.io.sources import FrameSource

__all__ = ["VideoTiming", "report_orientation", "video_timing"]

log = logging.getLogger("rvm_node.convert")


@dataclass(frozen=True)
class VideoTiming:
    """What every video output of a run is written with."""

    rate: Fraction  # the constant rate, or the nominal one when frames keep their own times
    variable: VariableRate | None  # frames keep the source's times, in its time base
    display_matrix: tuple[int, ...] | None  # recorded in the output: the source's, when kept as stored


def report_orientation(source: FrameSource, autorotate: bool) -> None:
    """Say how the source's display matrix is used, when it has one that would change the picture."""
    display = source.display
    if display is None:
        return
    if source.upright:
        log.warning(
            "%s: its display matrix shows it %s; frames are matted upright, %dx%d "
            "(--no-autorotate keeps them as stored)",
            source.path,
            display.describe(),
            source.width,
            source.height,
        )
    elif autorotate:  # a matrix that is no quarter turn
        log.warning(
            "%s: its display matrix shows it %s, which is no quarter turn; frames are matted as stored "
            "and video outputs carry the matrix",
            source.path,
            display.describe(),
        )


def video_timing(source: FrameSource, frame_rate: Fraction | None) -> VideoTiming:
    """How video outputs are timed: ``frame_rate`` when given, else the source's frame times when they
    vary (said once), else its constant rate; and the display matrix they carry."""
    variable = source.variable_rate() if frame_rate is None else None
    if variable is not None:
        log.warning("%s: %s; video outputs keep each frame's own time", source.path, variable.describe())
    display = None if source.upright or source.display is None else source.display.values
    return VideoTiming(frame_rate or source.rate or Fraction(24), variable, display)
