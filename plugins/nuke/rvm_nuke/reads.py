"""What a Read node holds: its file sequence, frame range and colourspace, as a farm shot."""

from __future__ import annotations

import os
from typing import Any

from rvm_nuke.settings import Settings, SettingsError

# Nuke colourspace names that are display-referred sRGB/Rec.709 video: sent as they are.
_DISPLAY = {
    "srgb",
    "rec709",
    "gamma2.2",
    "output - srgb",
    "output - rec.709",
    "srgb - texture",
    "utility - srgb - texture",
    "srgb encoded rec.709 (srgb)",
    "rec.1886 rec.709 - display",
    "srgb - display",
    "gamma 2.4 encoded rec.709",
}
_LINEAR = {
    "linear",
    "scene_linear",
    "lin_srgb",
    "lin_rec709",
    "utility - linear - srgb",
    "linear rec.709 (srgb)",
    "scene linear",
}


def input_colourspace(value: str) -> str | None:
    """The converter's input colourspace for a Read's colorspace knob: None means 'as it is'."""
    name = value.strip()
    if name.startswith("default (") and name.endswith(")"):  # "default (sRGB)" names the default it uses
        name = name[len("default (") : -1]
    lowered = name.lower()
    if lowered in _DISPLAY or not lowered:
        return None
    if lowered in _LINEAR:
        return "Linear Rec.709 (sRGB)"
    return name  # an OCIO colourspace name such as ACEScg


def _value(node: Any, knob: str, default: Any = None) -> Any:
    k = node.knob(knob)
    return default if k is None else k.value()


def script_dir(root: Any) -> str:
    script = str(_value(root, "name", "") or "")
    if not script:
        raise SettingsError("RVM: save the Nuke script first; the mattes are written beside it")
    return os.path.dirname(os.path.abspath(script))


def shot_for_read(read: Any, settings: Settings, root: Any) -> Any:
    """A farm Shot mattes the Read's file frames and keeps their numbers; its settings are checked by
    rvm-node's one definition of them (``rvm_node.shot_settings``), as a shot list's are."""
    from rvm_node.errors import RvmNodeError
    from rvm_node.farm import shots_from_entries

    if read.Class() != "Read":
        raise SettingsError(f"RVM: {read.name()} is a {read.Class()}; select Read nodes")
    source = str(_value(read, "file", "") or "")
    if not source:
        raise SettingsError(f"RVM: {read.name()} has no file")
    first = int(_value(read, "origfirst", _value(read, "first", 1)))
    last = int(_value(read, "origlast", _value(read, "last", first)))
    output = settings.output.replace("{read}", read.name())
    if "[script dir]" in output:
        output = output.replace("[script dir]", script_dir(root))
    stem, ext = os.path.splitext(output)
    wanted = ".png" if settings.format == "PNG 16-bit" else ".exr"
    output = stem + wanted if ext.lower() != wanted else output
    entry = {
        "name": read.name(),
        "input": source,
        "output_alpha": output,
        "frames": f"{first}-{last}",
        "downsample_ratio": settings.ratio,
        "input_colorspace": input_colourspace(str(_value(read, "colorspace", "") or "")),
        "exr_channels": "A" if settings.format == "EXR A" else "RGBA",
        "bit_depth": 16,
    }
    try:
        (shot,) = shots_from_entries([entry], "Nuke")
    except RvmNodeError as exc:
        raise SettingsError(f"RVM: {exc}") from None
    return shot
