"""What the add-on asks of rvm-node: shots, output paths and frame mapping.

No bpy here: the operators read a clip or strip and hand plain numbers to
these functions, so the mapping is tested on its own.

Frame mapping follows Blender's:

* a movie clip shows, at scene frame ``f``, movie frame
  ``f - frame_start + frame_offset`` (counted from 0);
* an image-sequence clip shows file number
  ``first_file + f - frame_start + frame_offset``;
* a movie strip shows movie frame ``f - frame_start + animation_offset_start``
  and an image strip element ``f - frame_start``, inside
  ``frame_final_start <= f < frame_final_end``.

Movie frames are numbered from 1 (rvm-node's ``--start-frame 1``), image
sequences keep their file numbers, so matte frame numbers match the source.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field

__all__ = [
    "KINDS",
    "FrameMap",
    "OutputChoice",
    "PluginError",
    "ShotRequest",
    "clip_frame_map",
    "frame_path",
    "frame_pattern",
    "output_patterns",
    "resolve_output",
    "shot_name",
    "strip_frame_map",
    "unique_names",
]

KINDS = ("alpha", "foreground", "composition")
_SUFFIX = {"alpha": "matte", "foreground": "fgr", "composition": "comp"}
_EXTENSION = {"EXR": ".exr", "PNG16": ".png"}
_FRAME_FIELD = re.compile(r"(#+|%0?\d*d)")
_NUMBER = re.compile(r"(\d+)(?=\D*$)")


class PluginError(Exception):
    """A problem the add-on reports to the user in one line; nothing has been changed."""


@dataclass(frozen=True)
class FrameMap:
    """Source frames ``first..last`` (file or movie numbers), shown from scene frame ``scene_first``."""

    first: int
    last: int
    scene_first: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise PluginError(f"no frames to matte ({self.first}-{self.last})")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def scene_frame(self, number: int) -> int:
        return self.scene_first + number - self.first

    def clamp_to_scene(self, scene_start: int, scene_end: int, what: str) -> FrameMap:
        """Keep the frames shown between scene frames ``scene_start..scene_end``."""
        start = max(self.scene_first, scene_start)
        end = min(self.scene_frame(self.last), scene_end)
        if end < start:
            raise PluginError(
                f"{what}: no frames inside the scene range {scene_start}-{scene_end} "
                f"(it covers scene frames {self.scene_first}-{self.scene_frame(self.last)})"
            )
        offset = start - self.scene_first
        return FrameMap(self.first + offset, self.first + offset + end - start, start)


@dataclass(frozen=True)
class ShotRequest:
    """One shot: an input (movie file or ``####`` pattern), its frames, and the output patterns."""

    name: str
    input: str
    frames: FrameMap
    outputs: dict[str, str] = field(default_factory=dict)
    input_colorspace: str | None = None
    is_movie: bool = False


@dataclass(frozen=True)
class OutputChoice:
    """Where and how to write: the alpha ``pattern`` (may start with ``//``), the format, the outputs."""

    pattern: str
    file_format: str = "EXR"
    kinds: frozenset[str] = frozenset({"alpha"})

    def patterns(self, shot: str, blend_path: str) -> dict[str, str]:
        return output_patterns(
            resolve_output(self.pattern, shot, blend_path, self.file_format), set(self.kinds)
        )


def shot_name(name: str) -> str:
    """A name safe in file paths: letters, digits, ``.``, ``_`` and ``-``; the extension dropped."""
    stem = os.path.splitext(name)[0] if re.search(r"\.[A-Za-z0-9]{2,4}$", name) else name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return safe or "shot"


def unique_names(names: list[str]) -> list[str]:
    """``["a", "a", "b"]`` -> ``["a", "a_2", "b"]``: each shot writes its own files."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def clip_frame_map(
    *,
    is_movie: bool,
    first_file: int,
    frame_start: int,
    frame_offset: int,
    duration: int,
) -> FrameMap:
    """The frames of a movie clip as Blender shows them from ``frame_start``."""
    if duration <= 0:
        raise PluginError("no frames (is the file readable?)")
    if is_movie:
        # movie frame (from 0) = f - frame_start + frame_offset; numbered from 1
        first = frame_offset + 1
        last = duration
    else:
        # Blender counts the sequence's files from first_file + frame_offset
        first = first_file + frame_offset
        last = first + duration - 1
    if first < (1 if is_movie else 0) or last < first:
        raise PluginError(f"frame offset {frame_offset} leaves no frames of {duration}")
    return FrameMap(first, last, frame_start)


def strip_frame_map(
    *,
    frame_start: int,
    final_start: int,
    final_end: int,
    numbers: list[int] | None,
    animation_offset: int = 0,
) -> FrameMap:
    """The visible frames of a strip; ``numbers``: the file number of each image element, None for a movie."""
    if final_end <= final_start:
        raise PluginError("is empty")
    first_index = final_start - frame_start + animation_offset
    last_index = final_end - 1 - frame_start + animation_offset
    if numbers is None:
        return FrameMap(first_index + 1, last_index + 1, final_start)
    if first_index < 0 or last_index >= len(numbers):
        raise PluginError("shows frames outside its images")
    chosen = numbers[first_index : last_index + 1]
    if any(b - a != 1 for a, b in itertools.pairwise(chosen)):
        raise PluginError("its images are not numbered one after another")
    return FrameMap(chosen[0], chosen[-1], final_start)


def frame_pattern(first_path: str) -> tuple[str, int]:
    """``/p/plate.1001.exr`` -> (``/p/plate.####.exr``, 1001): the last number in the file name."""
    directory, name = os.path.split(first_path)
    match = _NUMBER.search(name)
    if match is None:
        raise PluginError(f"{first_path}: an image sequence needs a frame number in its file name")
    digits = match.group(1)
    pattern = name[: match.start()] + "#" * len(digits) + name[match.end() :]
    return os.path.join(directory, pattern), int(digits)


def resolve_output(pattern: str, shot: str, blend_path: str, file_format: str) -> str:
    """The absolute alpha pattern: ``{shot}`` filled in, ``//`` taken from the .blend's folder."""
    if file_format not in _EXTENSION:
        raise PluginError(f"output format {file_format!r}: expected one of {', '.join(_EXTENSION)}")
    text = pattern.strip().replace("{shot}", shot)
    if not text:
        raise PluginError("the output pattern is empty")
    if text.startswith("//"):
        if not blend_path:
            raise PluginError(
                f"output {pattern}: save the .blend file first, or give an absolute output pattern"
            )
        text = os.path.join(os.path.dirname(blend_path), text[2:])
    if not os.path.isabs(text):
        raise PluginError(f"output {pattern}: expected an absolute path or one starting with //")
    if _FRAME_FIELD.search(os.path.basename(text)) is None:
        raise PluginError(f"output {pattern}: needs a frame field such as ####")
    root, _ = os.path.splitext(text)
    return os.path.normpath(root + _EXTENSION[file_format])


def output_patterns(alpha: str, kinds: set[str]) -> dict[str, str]:
    """Patterns for each wanted output, beside the alpha one: ``x_matte.####.exr`` -> ``x_fgr.####.exr``."""
    unknown = kinds - set(KINDS)
    if unknown or not kinds:
        raise PluginError(f"outputs: expected some of {', '.join(KINDS)}, got {', '.join(sorted(kinds))}")
    directory, name = os.path.split(alpha)
    patterns = {}
    for kind in KINDS:
        if kind not in kinds:
            continue
        if kind == "alpha":
            patterns[kind] = alpha
        elif _SUFFIX["alpha"] in name:
            head, _, tail = name.rpartition(_SUFFIX["alpha"])
            patterns[kind] = os.path.join(directory, head + _SUFFIX[kind] + tail)
        else:
            match = _FRAME_FIELD.search(name)
            if match is None:
                raise PluginError(f"output {alpha}: needs a frame field such as ####")
            head = name[: match.start()].rstrip("._")
            patterns[kind] = os.path.join(directory, f"{head}_{_SUFFIX[kind]}.{name[match.start() :]}")
    return patterns


def frame_path(pattern: str, number: int) -> str:
    """The file for frame ``number`` of a ``####`` pattern (wider numbers are not cut)."""
    directory, name = os.path.split(pattern)
    match = _FRAME_FIELD.search(name)
    if match is None:
        raise PluginError(f"{pattern}: no frame field")
    width = len(match.group(1)) if match.group(1).startswith("#") else int(match.group(1)[1:-1] or 0)
    return os.path.join(directory, name[: match.start()] + f"{number:0{width}d}" + name[match.end() :])
