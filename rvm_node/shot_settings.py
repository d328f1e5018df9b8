"""A shot's settings, defined once: what ``convert``, ``matte`` and ``farm`` take as flags, what a shot
list and ``--shot-settings`` take as keys, what a farm job bundle passes on, and what the plugins write.

Each setting has a key (``downsample_ratio``), a flag made from it
(``--downsample-ratio``), a kind that says which values it takes, a default
and a one-line description. :func:`check_settings` turns values from any
source (TOML, JSON, a plugin) into checked values, and :func:`setting_flags`
turns them back into the command line, so a shot survives every hop unchanged.

This module imports nothing heavy: the plugins read it when they register.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rvm_node.engine.ratio import RATIO_RANGE, is_ratio
from rvm_node.errors import InvalidInputError

__all__ = [
    "OUTPUT_KEYS",
    "SETTING_KEYS",
    "SHOT_SETTINGS",
    "ShotSetting",
    "changed_settings",
    "check_settings",
    "setting_entries",
    "setting_flags",
]

Kind = Literal["text", "frames", "ratio", "int", "bool"]
_FRAMES = re.compile(r"^\s*-?\d+\s*-\s*-?\d+\s*$|^\s*-?\d+\s*$")


@dataclass(frozen=True)
class ShotSetting:
    key: str
    kind: Kind
    help: str
    default: Any = None
    choices: tuple[Any, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, value: Any, where: str) -> Any:
        """``value`` from a shot list, JSON or a plugin, checked; ``auto`` ratios become None."""
        if self.kind == "ratio":
            if value is None or value == "auto":
                return None
            if not is_ratio(value):
                self._refuse(value, where, f"{RATIO_RANGE} or auto")
            return float(value)
        if value is None and self.default is None:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                self._refuse(value, where, "true or false")
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                self._refuse(value, where, "an integer")
        elif not isinstance(value, str) or not value:
            self._refuse(value, where, "a range FIRST-LAST" if self.kind == "frames" else "a string")
        elif self.kind == "frames" and not _FRAMES.match(value):
            self._refuse(value, where, "a range FIRST-LAST")
        if self.choices and value not in self.choices:
            self._refuse(value, where, "one of " + ", ".join(map(str, self.choices)))
        return value

    def flags(self, value: Any) -> list[str]:
        """The command line that gives ``value`` (a checked value)."""
        if self.kind == "bool":
            return [self.flag] if value else []
        if self.kind == "ratio":
            return [self.flag, "auto" if value is None else f"{value:g}"]
        return [] if value is None else [self.flag, str(value)]

    def entry(self, value: Any) -> Any:
        """``value`` (a checked value) as a shot list or ``--shot-settings`` writes it; None: leave it out."""
        return "auto" if self.kind == "ratio" and value is None else value

    def _refuse(self, value: Any, where: str, expected: str) -> None:
        raise InvalidInputError(f"{where}: {self.key}: expected {expected}, got {value!r}", field=self.key)


OUTPUT_KEYS = ("output_alpha", "output_foreground", "output_composition")

SHOT_SETTINGS: dict[str, ShotSetting] = {
    s.key: s
    for s in (
        ShotSetting(
            "output_alpha",
            "text",
            "where the alpha goes: a video (.mp4, .mov) or a frame pattern such as mattes/m.####.exr "
            "(EXR, PNG, TIFF; {shot} is the shot's name in farm commands)",
        ),
        ShotSetting("output_foreground", "text", "where the foreground goes: a video or a frame pattern"),
        ShotSetting(
            "output_composition", "text", "the foreground over --background: a video or a frame pattern"
        ),
        ShotSetting(
            "downsample_ratio",
            "ratio",
            "the model's internal scale in (0, 1], or auto: the longer side at most 512 px (default: auto)",
        ),
        ShotSetting("frames", "frames", "frame range FIRST-LAST, e.g. 1001-1100 (default: every frame)"),
        ShotSetting("start_frame", "int", "the number of a video's first frame", default=1),
        ShotSetting(
            "input_colorspace",
            "text",
            "OCIO colourspace of the input (default: sRGB; EXR plates: Linear Rec.709 (sRGB))",
        ),
        ShotSetting(
            "exr_channels",
            "text",
            "channels of an alpha EXR: RGBA (R=G=B=A, for any viewer) or A (Nuke-style)",
            default="RGBA",
            choices=("RGBA", "A"),
        ),
        ShotSetting("bit_depth", "int", "bit depth of PNG and TIFF outputs", default=16, choices=(8, 16)),
        ShotSetting("premultiplied", "bool", "premultiply the foreground by its alpha", default=False),
        ShotSetting(
            "group_writable",
            "bool",
            "give outputs, checkpoints and the folders made for them group read and write "
            "(default: what the umask gives)",
            default=False,
        ),
        ShotSetting(
            "background",
            "text",
            "the composition's background: R,G,B (0..255), an image or a video (default: green, 120,255,155)",
        ),
        ShotSetting("allow_gaps", "bool", "skip frames missing from the middle of a sequence", default=False),
        ShotSetting(
            "no_autorotate",
            "bool",
            "keep a video's frames as stored: no turning upright by its display matrix (phone footage); "
            "video outputs then carry the matrix",
            default=False,
        ),
    )
}
SETTING_KEYS = tuple(SHOT_SETTINGS)


def check_settings(values: Mapping[str, Any], where: str, *, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` checked, every setting present (its default where not given); keys in ``extra`` pass
    through unchecked. An unknown key is refused naming ``where``."""
    unknown = sorted(set(values) - set(SHOT_SETTINGS) - set(extra))
    if unknown:
        known = ", ".join((*extra, *SETTING_KEYS))
        raise InvalidInputError(f"{where}: unknown keys {', '.join(unknown)}; expected some of {known}")
    checked = {k: v for k, v in values.items() if k in extra}
    for key, setting in SHOT_SETTINGS.items():
        checked[key] = setting.check(values[key], where) if key in values else setting.default
    return checked


def changed_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The checked ``values`` that differ from their defaults."""
    return {k: v for k, v in values.items() if k in SHOT_SETTINGS and v != SHOT_SETTINGS[k].default}


def setting_entries(values: Mapping[str, Any]) -> dict[str, Any]:
    """Checked ``values`` as shot-list keys: what a shot list or ``--shot-settings`` holds."""
    entries = {key: SHOT_SETTINGS[key].entry(value) for key, value in values.items()}
    return {key: value for key, value in entries.items() if value is not None}


def setting_flags(values: Mapping[str, Any]) -> list[str]:
    """The command line for checked ``values``: ``convert``, ``matte`` and ``farm run`` take it alike."""
    return [flag for key, value in values.items() for flag in SHOT_SETTINGS[key].flags(value)]
