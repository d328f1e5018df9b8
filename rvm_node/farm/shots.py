"""Shots for the farm: a TOML shot list or the command line, checked before any work starts.

```toml
[defaults]
downsample_ratio = 0.25
output_alpha = "mattes/{shot}/{shot}_matte.####.exr"

[[shot]]
input = "plates/sh010.####.exr"
name = "sh010"            # default: the input's file stem
frames = "1001-1100"
```

``{shot}`` in an output path expands to the shot's name. Outputs must be
image sequences (a frame field): that is what lets a shot move between nodes
and resume without redoing or losing a frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvm_node.errors import InvalidInputError
from rvm_node.io.sequence import FramePattern, FrameRange, parse_frame_range
from rvm_node.io.writers import WriterSettings
from rvm_node.shot_settings import OUTPUT_KEYS, SETTING_KEYS, changed_settings, check_settings
from rvm_node.tomlfile import load_toml

__all__ = [
    "DEFAULT_PREROLL",
    "SHOT_KEYS",
    "Shot",
    "load_shot_list",
    "make_shots",
    "parse_shot_settings",
    "shot_settings",
    "shots_from_entries",
    "split_shot",
]

# Frames a split segment runs before its first written frame to warm the
# recurrent state. Measured on the test clip at ratio 0.5 (README, "Splitting
# a shot"): the seam's alpha error falls from 0.79 with no pre-roll to about 0.05
# with 45 frames.
DEFAULT_PREROLL = 45

SHOT_KEYS = ("input", "name", *SETTING_KEYS)  # a shot-list entry: what it mattes, then its settings


@dataclass(frozen=True)
class Shot:
    name: str
    input: str
    outputs: dict[str, str]
    frames: FrameRange | None = None
    downsample_ratio: float | None = None
    input_colorspace: str | None = None
    background: str | None = None
    start_frame: int = 1
    allow_gaps: bool = False
    no_autorotate: bool = False
    settings: WriterSettings = field(default_factory=WriterSettings)
    # For a segment of a split shot: frames before this are pre-roll, run but not written.
    write_from: int | None = None
    # The output paths as written, ``{shot}`` not yet expanded (``output_alpha`` -> pattern), where the
    # shot came from a shot list or the command line: a farm job bundle keeps shared patterns as one.
    output_templates: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def _stem(path: str) -> str:
    name = Path(path).name
    pattern = FramePattern.detect(path)
    if pattern is not None:
        name = pattern.prefix.rstrip("._-") or name
    return Path(name).stem if pattern is None else name


def _shot(entry: dict[str, Any], defaults: dict[str, Any], where: str) -> Shot:
    merged = check_settings({**defaults, **entry}, where, extra=("input", "name"))
    source = merged.get("input")
    if not isinstance(source, str) or not source:
        raise InvalidInputError(f"{where}: every shot needs an input")
    pattern = FramePattern.detect(source)
    if (
        not (pattern.directory.is_dir() and pattern.existing())
        if pattern is not None
        else not Path(source).exists()
    ):
        raise InvalidInputError(f"{where}: input {source} does not exist")
    name = str(merged.get("name") or _stem(source))
    outputs = {}
    for key in OUTPUT_KEYS:
        if merged[key]:
            target = str(merged[key]).replace("{shot}", name)
            if FramePattern.detect(target) is None:
                raise InvalidInputError(
                    f"{where}: {key} {target} needs a frame field (####): farm outputs are image sequences"
                )
            outputs[key.removeprefix("output_")] = target
    if not outputs:
        raise InvalidInputError(f"{where}: shot {name} has no output")
    return Shot(
        name=name,
        input=source,
        outputs=outputs,
        frames=parse_frame_range(merged["frames"]) if merged["frames"] else None,
        downsample_ratio=merged["downsample_ratio"],
        input_colorspace=merged["input_colorspace"],
        background=merged["background"],
        start_frame=merged["start_frame"],
        allow_gaps=merged["allow_gaps"],
        no_autorotate=merged["no_autorotate"],
        settings=WriterSettings(
            exr_channels=merged["exr_channels"],
            bit_depth=merged["bit_depth"],
            premultiplied=merged["premultiplied"],
            group_writable=merged["group_writable"],
        ),
        output_templates={k: str(merged[k]) for k in OUTPUT_KEYS if merged[k]},
    )


def _check_unique(shots: list[Shot], where: str) -> list[Shot]:
    seen: dict[str, str] = {}
    for shot in shots:
        for target in shot.outputs.values():
            key = str(Path(target).resolve())
            if key in seen:
                raise InvalidInputError(
                    f"{where}: output {target} is used by shots {seen[key]} and {shot.name}"
                )
            seen[key] = shot.name
    return shots


def load_shot_list(path: Path) -> list[Shot]:
    """Shots from a TOML file with an optional ``[defaults]`` table and ``[[shot]]`` entries."""
    table = load_toml(path, "the shot list")
    unknown = sorted(set(table) - {"defaults", "shot"})
    if unknown:
        raise InvalidInputError(
            f"{path}: unknown tables {', '.join(unknown)}; expected [defaults] and [[shot]]"
        )
    defaults = table.get("defaults", {})
    check_settings(defaults, f"{path}: [defaults]", extra=("input", "name"))  # its own faults named as its
    entries = table.get("shot", [])
    if not entries:
        raise InvalidInputError(f"{path}: no [[shot]] entries")
    shots = [_shot(entry, defaults, f"{path}: shot {i + 1}") for i, entry in enumerate(entries)]
    return _check_unique(shots, str(path))


def shot_settings(shot: Shot) -> dict[str, Any]:
    """The shot's settings as shot-list keys (``SETTING_KEYS`` but the outputs), defaults left out:
    ``--shot-settings`` of these, with the shot's input, name and outputs, makes the same shot."""
    frames = None if shot.frames is None else f"{shot.frames.first}-{shot.frames.last}"
    writer = shot.settings
    return changed_settings(
        {
            "frames": frames,
            "downsample_ratio": shot.downsample_ratio,
            "input_colorspace": shot.input_colorspace,
            "background": shot.background,
            "start_frame": shot.start_frame,
            "allow_gaps": shot.allow_gaps,
            "no_autorotate": shot.no_autorotate,
            "exr_channels": writer.exr_channels,
            "bit_depth": writer.bit_depth,
            "premultiplied": writer.premultiplied,
            "group_writable": writer.group_writable,
        }
    )


def parse_shot_settings(text: str, where: str) -> dict[str, Any]:
    """Shot settings from a JSON object of shot-list keys (``SETTING_KEYS``)."""
    import json

    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: expected a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(settings, dict):
        raise InvalidInputError(f"{where}: expected a JSON object, got {text!r}")
    checked = check_settings(settings, where)
    return {key: checked[key] for key in settings}


def make_shots(inputs: list[str], options: dict[str, Any]) -> list[Shot]:
    """Shots from command-line inputs sharing one set of options (``{shot}`` = each input's stem)."""
    if not inputs:
        raise InvalidInputError("farm run: give a shot list file or at least one input")
    shots = [_shot({"input": source}, options, f"input {source}") for source in inputs]
    return _check_unique(shots, "farm run")


def shots_from_entries(entries: Sequence[Mapping[str, Any]], where: str) -> list[Shot]:
    """Shots from shot-list entries made in code (the plugins): checked as a shot list's are."""
    shots = [
        _shot(dict(entry), {}, f"{where}: shot {entry.get('name', i + 1)}") for i, entry in enumerate(entries)
    ]
    return _check_unique(shots, where)


def split_shot(shot: Shot, parts: int, preroll: int = DEFAULT_PREROLL) -> list[Shot]:
    """``parts`` segments of ``shot`` that can run in parallel, each after a pre-roll of ``preroll`` frames."""
    from dataclasses import replace

    from rvm_node.io.sources import open_source

    if parts < 1 or preroll < 0:
        raise InvalidInputError("--split must be >= 1 and --preroll >= 0")
    if parts == 1:
        return [shot]
    numbers = open_source(
        shot.input, frame_range=shot.frames, start_frame=shot.start_frame, allow_gaps=shot.allow_gaps
    ).frame_numbers
    if numbers is None or len(numbers) < parts:
        raise InvalidInputError(
            f"shot {shot.name}: cannot split {len(numbers or [])} frames into {parts} segments"
        )
    size = -(-len(numbers) // parts)
    segments = []
    for index in range(parts):
        chunk = numbers[index * size : (index + 1) * size]
        if not chunk:
            break
        start = numbers[max(0, index * size - preroll)]
        segments.append(
            replace(
                shot,
                name=f"{shot.name}[{index + 1}/{parts}]",
                frames=FrameRange(start, chunk[-1]),
                write_from=chunk[0] if index else None,
            )
        )
    return segments
