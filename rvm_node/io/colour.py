"""Colour: bring plates into the display-referred sRGB-encoded range RVM was trained on.

Video and 8/16-bit images go to the model as they are. EXR plates are taken
as scene-linear Linear Rec.709 (sRGB primaries) unless the user names another
input colourspace, and are converted with OpenColorIO: the config in ``$OCIO``
when set, else OCIO's built-in ``ocio://default``. The result is clamped to
0..1. Mattes are data and never pass through here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rvm_node.errors import InvalidInputError

__all__ = ["DEFAULT_LINEAR", "ColourTransform", "load_config"]

DEFAULT_LINEAR = "Linear Rec.709 (sRGB)"
# Names of the sRGB-encoded (display-referred) space in common configs, in preference order.
_SRGB_NAMES = ("sRGB Encoded Rec.709 (sRGB)", "sRGB - Texture", "Utility - sRGB - Texture", "srgb_tx", "sRGB")
_LINEAR_NAMES = (DEFAULT_LINEAR, "Utility - Linear - sRGB", "lin_srgb", "lin_rec709", "linear")


def load_config(path: str | None = None) -> Any:
    """The OCIO config: ``path``, else ``$OCIO``, else the built-in default."""
    import PyOpenColorIO as ocio

    source = path or os.environ.get("OCIO") or "ocio://default"
    try:
        return ocio.Config.CreateFromFile(source)
    except Exception as exc:  # OCIO raises its own Exception type
        raise InvalidInputError(f"OCIO config {source}: cannot be loaded ({exc})") from exc


def _resolve(config: Any, wanted: str | tuple[str, ...], what: str) -> str:
    names = (wanted,) if isinstance(wanted, str) else wanted
    for name in names:
        space = config.getColorSpace(name)
        if space is not None:
            return str(space.getName())
    listed = ", ".join(sorted(config.getColorSpaceNames()))[:300]
    raise InvalidInputError(f"{what}: no colourspace {names[0]!r} in the OCIO config; it has: {listed}")


class ColourTransform:
    """Converts ``HxWx3`` float RGB from ``source`` to clamped sRGB-encoded 0..1."""

    def __init__(self, source: str | None = None, config: Any = None) -> None:
        self.config = config if config is not None else load_config()
        self.source = _resolve(self.config, source or _LINEAR_NAMES, "--input-colorspace")
        self.target = _resolve(self.config, _SRGB_NAMES, "sRGB output colourspace")
        self._cpu = None
        if self.source != self.target:
            self._cpu = self.config.getProcessor(self.source, self.target).getDefaultCPUProcessor()

    @property
    def is_identity(self) -> bool:
        return self._cpu is None

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        out = np.array(rgb, dtype=np.float32, order="C", copy=True)  # OCIO works in place
        if self._cpu is not None:
            self._cpu.applyRGB(out)
        return np.clip(out, 0.0, 1.0, out=out)
