"""Sample formats: how mattes and frames are stored, and the one rule for converting them.

The network's outputs are float 0..1. A writer needs them in one of four
sample formats: ``uint8`` (8-bit images and h264 video), ``uint16`` (16-bit
PNG and TIFF, ProRes), ``float16`` (half EXR) or ``float32`` (anything that
still computes with them, such as a composition). :func:`to_samples` is the
single conversion rule (clip to 0..1, scale, round half to even), used by the
writers, the node and the backends alike, so a matte quantised on a node, on
a GPU or in the writer is the same to the bit.

:class:`OutputSpec` says which planes a stream needs and in which format; a
backend returns exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from rvm_node.errors import InvalidInputError

__all__ = [
    "SAMPLE_DTYPES",
    "OutputSpec",
    "SampleFormat",
    "convert_outputs",
    "finest_format",
    "sample_format_of",
    "to_samples",
    "to_unit_float",
]

SampleFormat = Literal["uint8", "uint16", "float16", "float32"]
SAMPLE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
}


@dataclass(frozen=True)
class OutputSpec:
    """What a stream needs back: alpha always, the foreground if asked, in one sample format."""

    foreground: bool = True
    sample_format: SampleFormat = "float32"

    def __post_init__(self) -> None:
        if self.sample_format not in SAMPLE_DTYPES:
            raise InvalidInputError(
                f"sample_format: expected one of {', '.join(SAMPLE_DTYPES)}, got {self.sample_format!r}"
            )

    @property
    def dtype(self) -> np.dtype:
        return SAMPLE_DTYPES[self.sample_format]


def sample_format_of(dtype: np.dtype) -> SampleFormat:
    """The name of a sample dtype (``InvalidInputError`` for any other)."""
    for name, known in SAMPLE_DTYPES.items():
        if np.dtype(dtype) == known:
            return name  # type: ignore[return-value]
    raise InvalidInputError(f"samples: expected uint8, uint16, float16 or float32, got {dtype}")


def finest_format(formats: list[SampleFormat]) -> SampleFormat:
    """One format that reproduces every format in ``formats`` exactly.

    Quantising is not nested (an 8-bit value made from a 16-bit one can differ
    from one made from the float), so two different formats need float32.
    """
    distinct = set(formats)
    if len(distinct) == 1:
        return formats[0]
    return "float32"


def holds_samples(memory: np.dtype, samples: np.dtype) -> bool:
    """Whether memory of type ``memory`` keeps frames of ``samples`` as they are sent: the same integer
    type, or float in float (float frames travel as the stream's float type)."""
    return np.dtype(memory) == np.dtype(samples) or np.dtype(memory).kind == np.dtype(samples).kind == "f"


def to_samples(values: np.ndarray, fmt: SampleFormat) -> np.ndarray:
    """Float 0..1 ``values`` in ``fmt``: integers are clipped, scaled and rounded half to even.

    Values already of that dtype are returned as they are.
    """
    dtype = SAMPLE_DTYPES[fmt]
    if values.dtype == dtype:
        return values
    if values.dtype.kind == "u":
        raise InvalidInputError(f"samples: cannot convert {values.dtype} samples to {fmt}")
    if dtype.kind == "u":
        scaled = np.clip(values, 0.0, 1.0, dtype=np.float32)
        scaled *= np.float32(np.iinfo(dtype).max)
        return np.rint(scaled, out=scaled).astype(dtype)
    return values.astype(dtype)


def to_unit_float(values: np.ndarray) -> np.ndarray:
    """Samples as C-contiguous float32 0..1: integers times ``float32(1 / max)``, the rule frames enter the model by."""
    if values.dtype.kind == "u":
        unit = values.astype(np.float32, order="C")  # one copy, scaled in place
        unit *= np.float32(1 / np.iinfo(values.dtype).max)
        return unit
    return np.ascontiguousarray(values, dtype=np.float32)


def convert_outputs(
    fgr: np.ndarray, pha: np.ndarray, outputs: OutputSpec
) -> tuple[np.ndarray | None, np.ndarray]:
    """Float results as ``outputs`` asks for them, converted on the host."""
    fmt = outputs.sample_format
    return (to_samples(fgr, fmt) if outputs.foreground else None), to_samples(pha, fmt)
