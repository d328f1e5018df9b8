"""Frame times of a video: is its frame rate constant, or does each frame keep its own time?

Phones write variable-frame-rate video: frames come when the sensor delivers
them, and a container's average rate puts some of them tens of milliseconds
away from where they were shown. :func:`scan_frame_times` reads every frame's
presentation time from the container's packets (demuxing only, no
decoding), and :func:`variable_rate` says whether a constant rate would
move any frame by more than the timestamps' own precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

from rvm_node.errors import InvalidInputError

__all__ = ["VariableRate", "scan_frame_times", "variable_rate"]

# Times closer than this to a constant rate count as constant (a container rounding to milliseconds).
PRECISION = Fraction(1, 1000)


@dataclass(frozen=True)
class VariableRate:
    """A video whose frames keep their own times."""

    time_base: Fraction  # the unit of the source's timestamps; video outputs count in it too
    shortest: Fraction  # the shortest and longest gaps between two frames, in seconds
    longest: Fraction
    drift: Fraction  # how far the farthest frame lies from where a constant rate puts it, in seconds

    def describe(self) -> str:
        shortest, longest = (float(t) * 1000 for t in (self.shortest, self.longest))
        return (
            f"variable frame rate (frames {shortest:.1f} to {longest:.1f} ms apart, up to "
            f"{float(self.drift) * 1000:.1f} ms from a constant rate)"
        )


def scan_frame_times(path: Path) -> tuple[list[int | None], Fraction | None]:
    """The presentation timestamps of the first video stream's packets, in file order, and their time base.

    A packet without a timestamp gives None; packets the container marks to discard (before an edit
    list's start) are left out, as the decoder drops them.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            time_base = Fraction(stream.time_base) if stream.time_base else None
            stamps = [
                packet.pts
                for packet in container.demux(stream)
                if packet.size and not getattr(packet, "is_discard", False)
            ]
    except av.error.FFmpegError as exc:
        raise InvalidInputError(f"{path}: cannot read its frame times ({exc})") from exc
    return stamps, time_base


def variable_rate(stamps: Sequence[int | None], time_base: Fraction | None) -> VariableRate | None:
    """A :class:`VariableRate` when the frames' times stray from every constant rate; None when they keep
    one (within the timestamps' precision), or when they cannot tell: fewer than three frames, a frame
    without a timestamp, or no time base."""
    if time_base is None or len(stamps) < 3 or any(s is None for s in stamps):
        return None
    times = sorted(int(s) * time_base for s in stamps if s is not None)
    span = times[-1] - times[0]
    if span <= 0:
        return None
    step = span / (len(times) - 1)
    drift = max(abs(t - (times[0] + i * step)) for i, t in enumerate(times))
    if drift <= max(time_base, PRECISION):
        return None
    gaps = [b - a for a, b in pairwise(times)]
    return VariableRate(time_base=time_base, shortest=min(gaps), longest=max(gaps), drift=drift)
