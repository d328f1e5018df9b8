"""Frame-numbered file sequences: ``plate.####.exr``, ``plate.%04d.png``.

Frame numbers are never changed: frame 1047 of a plate is frame 1047 of its
matte. One ``#`` stands for one digit of padding; ``%0Nd`` for N digits.
Numbers wider than the padding are written in full, as every DCC does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rvm_node.errors import InvalidInputError

__all__ = ["FramePattern", "FrameRange", "natural_key", "parse_frame_range"]

_HASHES = re.compile(r"#+")
_PRINTF = re.compile(r"%(0?)(\d*)d")


@dataclass(frozen=True)
class FramePattern:
    """A path with one frame-number field."""

    directory: Path
    prefix: str
    width: int
    suffix: str

    @staticmethod
    def detect(path: str | Path) -> FramePattern | None:
        """The pattern in ``path``'s file name, or None when it has no frame field."""
        path = Path(path)
        name = path.name
        fields = [(m.start(), m.end(), len(m.group(0))) for m in _HASHES.finditer(name)]
        fields += [(m.start(), m.end(), int(m.group(2) or 1)) for m in _PRINTF.finditer(name)]
        if not fields:
            return None
        if len(fields) > 1:
            raise InvalidInputError(
                f"{path}: expected one frame-number field (#### or %04d), found {len(fields)}"
            )
        start, end, width = fields[0]
        return FramePattern(path.parent, name[:start], width, name[end:])

    @property
    def suffix_ext(self) -> str:
        return Path(f"x{self.suffix}").suffix.lower()

    def path(self, frame: int) -> Path:
        """The file of ``frame``; a pattern of width 0 names one fixed file (a single-image output)."""
        if self.width == 0:
            return self.directory / f"{self.prefix}{self.suffix}"
        if frame < 0:
            raise InvalidInputError(f"{self}: frame numbers must not be negative, got {frame}")
        return self.directory / f"{self.prefix}{frame:0{self.width}d}{self.suffix}"

    def existing(self) -> dict[int, Path]:
        """The frames present on disk, by number."""
        if not self.directory.is_dir():
            return {}
        regex = re.compile(rf"^{re.escape(self.prefix)}(\d{{{self.width},}}){re.escape(self.suffix)}$")
        found: dict[int, Path] = {}
        for entry in self.directory.iterdir():
            match = regex.match(entry.name)
            if match is None:
                continue
            digits = match.group(1)
            if len(digits) > self.width and digits.startswith("0"):
                continue  # over-padded: not this pattern's file
            found[int(digits)] = entry
        return dict(sorted(found.items()))

    def __str__(self) -> str:
        return str(self.directory / f"{self.prefix}{'#' * self.width}{self.suffix}")


@dataclass(frozen=True)
class FrameRange:
    """An inclusive range of frame numbers."""

    first: int
    last: int

    def __contains__(self, frame: object) -> bool:
        return isinstance(frame, int) and self.first <= frame <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1


def parse_frame_range(text: str) -> FrameRange:
    """``"1001-1100"`` or ``"1047"``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise InvalidInputError(f"frames: expected FIRST-LAST such as 1001-1100, got {text!r}")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else first
    if last < first:
        raise InvalidInputError(f"frames: the last frame {last} comes before the first {first}")
    return FrameRange(first, last)


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
