"""The work at the frame's own resolution, done once, in one pass, for the planes a stream asks for.

RVM runs its network on a copy of the frame made smaller by the downsample
ratio, and lifts the result to full resolution with a guided filter: the
network gives per-pixel coefficients ``a`` and ``b`` (four channels each,
for R, G, B and gray) at the small size, and the matte is
``clamp(up(a) * guide + up(b))`` at full size, where ``up`` is a bilinear
resize (``align_corners=False``) and the guide is the frame's RGB and its
gray (the mean of R, G and B). The foreground adds the frame itself:
``clamp(up(a_rgb) * rgb + up(b_rgb) + rgb)``.

The official graph does this as a chain of full-resolution tensors (the
frame as float, the guide, eight resized channels, the products, the sums,
the split), on the order of a hundred bytes of memory traffic a pixel. Here
it is one pass over each row of the frame as it arrived (uint8, uint16 or
float): the coefficients are first resized along the rows at the small
height (a few hundred KB), then each output row blends two of those rows,
reads the frame's pixels once and writes the samples the stream asked for
(:func:`finish`), quantised by the one rule of
:func:`~rvm_node.engine.samples.to_samples`. Alpha alone needs only the gray
and channel 3 of ``a`` and ``b``. The resize down of the frame
(:func:`downsample`) reads the four pixels around each small pixel, from
the frame as it arrived.

Two implementations give the same numbers to the bit: compiled loops
(numba, where it is installed; ``rvm-node[cpu]`` brings it), and numpy on
tiles of rows, which is slower. Every operation is float32 in the same
order in both.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rvm_node.engine.host_heap import retain_freed_memory
from rvm_node.engine.samples import SAMPLE_DTYPES, OutputSpec

__all__ = [
    "Axis",
    "compiled_kernels",
    "downsample",
    "downsample_axis",
    "finish",
    "floor_bytes",
    "kernels_name",
    "run_refined",
    "small_size",
    "upsample_axis",
]

KERNELS_ENV = "RVM_NODE_FULLRES"  # "numpy": never the compiled loops (for comparing the two)
# One compiled pass at a time: each takes every core already, and numba's simplest threading layer
# (where neither TBB nor OpenMP is installed) aborts when two threads enter it at once.
_ONE_AT_A_TIME = threading.Lock()
_TILE_ROWS = 16  # rows of a numpy tile: a few hundred KB of temporaries, in cache


@dataclass(frozen=True)
class Axis:
    """Bilinear sampling along one axis, as the official ONNX file's ``Resize`` (linear,
    ``pytorch_half_pixel``): each output index blends input ``first`` and ``second`` by ``weight``
    (``first + weight * (second - first)``)."""

    first: np.ndarray  # int32
    second: np.ndarray  # int32
    weight: np.ndarray  # float32

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.first, self.second, self.weight


def _axis(coordinates: np.ndarray, in_n: int) -> Axis:
    if len(coordinates) == 1:  # one sample out: the first one in, as ONNX's pytorch_half_pixel rule has it
        coordinates = np.zeros(1, np.float32)
    coordinates = np.clip(coordinates, 0.0, in_n - 1)
    first = np.floor(coordinates).astype(np.int32)
    second = np.minimum(first + 1, in_n - 1).astype(np.int32)
    return Axis(first, second, (coordinates - first).astype(np.float32))


@functools.lru_cache(maxsize=64)
def upsample_axis(out_n: int, in_n: int) -> Axis:
    """A resize from ``in_n`` to ``out_n`` samples (sizes given), pixel centres aligned (half-pixel)."""
    scale = np.float32(in_n) / np.float32(out_n)
    return _axis((np.arange(out_n, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), in_n)


@functools.lru_cache(maxsize=64)
def downsample_axis(out_n: int, in_n: int, ratio: float) -> Axis:
    """A resize of ``in_n`` samples by ``ratio`` (the ratio itself in the sampling grid, as the model's)."""
    scale = np.float32(ratio)
    return _axis((np.arange(out_n, dtype=np.float32) + np.float32(0.5)) / scale - np.float32(0.5), in_n)


def small_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """The size the network runs at: each side times the ratio, rounded down in single precision."""
    r = np.float32(ratio)
    return int(np.floor(np.float32(height) * r)), int(np.floor(np.float32(width) * r))


def compiled_kernels() -> Any:
    """The compiled loops (:mod:`rvm_node.engine.fullres_kernels`), or None where numba is not installed
    or ``RVM_NODE_FULLRES=numpy``."""
    if os.environ.get(KERNELS_ENV) == "numpy" or importlib.util.find_spec("numba") is None:
        return None
    from rvm_node.engine import fullres_kernels

    return fullres_kernels


def kernels_name() -> str:
    """``"numba"`` where the compiled loops run, else ``"numpy"``."""
    return "numpy" if compiled_kernels() is None else "numba"


def _interleaved(frame: np.ndarray) -> np.ndarray:
    """A ``[3, H, W]`` frame as ``H x 3W`` rows of interleaved samples: a view where it already lies so
    (frames decoded as ``H x W x 3``), else one copy. Float frames become float32."""
    pixels = frame.transpose(1, 2, 0)
    if pixels.dtype.kind == "f" and pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    pixels = np.ascontiguousarray(pixels)
    return pixels.reshape(pixels.shape[0], -1)


def _unit(dtype: np.dtype) -> np.float32:
    """What a sample is multiplied by to be in 0..1."""
    return np.float32(1.0 / np.iinfo(dtype).max) if dtype.kind == "u" else np.float32(1.0)


def downsample(frame: np.ndarray, ratio: float) -> np.ndarray:
    """The ``[3, h, w]`` float32 frame the network runs on: ``frame`` (``[3, H, W]``, any sample type)
    resized by ``ratio``, bilinear, from its own samples."""
    _, height, width = frame.shape
    h, w = small_size(height, width, ratio)
    rows, cols = downsample_axis(h, height, ratio), downsample_axis(w, width, ratio)
    pixels = _interleaved(frame)
    out = np.empty((3, h, w), np.float32)
    kernels = compiled_kernels()
    if kernels is not None:
        with _ONE_AT_A_TIME:
            kernels.downsample(pixels, rows.arrays, cols.arrays, _unit(pixels.dtype), out)
        return out
    rows_blended = _lerp(pixels[rows.first], pixels[rows.second], rows.weight[:, None])  # whole rows first
    c0 = (cols.first[:, None] * 3 + np.arange(3)).ravel()
    c1 = (cols.second[:, None] * 3 + np.arange(3)).ravel()
    small = _lerp(rows_blended[:, c0], rows_blended[:, c1], np.repeat(cols.weight, 3)) * _unit(pixels.dtype)
    out[:] = small.reshape(h, w, 3).transpose(2, 0, 1)
    return out


def _lerp(first: np.ndarray, second: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``first + weight * (second - first)`` in float32, as the compiled loops compute it."""
    first = first.astype(np.float32, copy=False)
    return first + weight * (second.astype(np.float32, copy=False) - first)


def finish(
    frame: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    outputs: OutputSpec,
    into: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """The full-resolution planes ``outputs`` asks for: ``fgr`` as ``[3, H, W]`` (a view of interleaved
    ``H x W x 3`` samples) or None, and ``pha`` as ``[1, H, W]``, in ``outputs.sample_format``.

    ``frame`` is ``[3, H, W]`` as it arrived; ``a`` and ``b`` are the network's ``[4, h, w]`` coefficients.
    ``into``: where to write them, ``(H x W, H x W x 3 or None)`` arrays of the sample type (new ones
    otherwise).
    """
    _, height, width = frame.shape
    _, h, w = a.shape
    rows, cols = upsample_axis(height, h), upsample_axis(width, w)
    pixels = _interleaved(frame)
    channels = slice(0, 4) if outputs.foreground else slice(3, 4)
    a, b = (np.ascontiguousarray(c[channels], np.float32) for c in (a, b))
    kernels = compiled_kernels()
    dtype = outputs.dtype
    if into is None:
        into = (
            np.empty((height, width), dtype),
            np.empty((height, width, 3), dtype) if outputs.foreground else None,
        )
    pha, fgr = into
    if dtype == np.float16:  # half floats: computed in float32, converted after
        pha, fgr = np.empty(pha.shape, np.float32), None if fgr is None else np.empty(fgr.shape, np.float32)
    top = np.float32(np.iinfo(dtype).max) if dtype.kind == "u" else np.float32(0.0)
    unit = _unit(pixels.dtype)
    if kernels is not None:
        rgb = None if fgr is None else fgr.reshape(height, 3 * width)
        with _ONE_AT_A_TIME:
            kernels.finish(pixels, a, b, cols.arrays, rows.arrays, unit, top, pha, rgb)
    else:
        # The coefficients lifted along the rows first, at the small height: every output row then blends two.
        across_a, across_b = (_lerp(c[:, :, cols.first], c[:, :, cols.second], cols.weight) for c in (a, b))
        for start in range(0, height, _TILE_ROWS):
            tile = slice(start, start + _TILE_ROWS)
            _finish_tile(pixels, across_a, across_b, rows, unit, top, pha, fgr, tile)
    if pha is not into[0]:
        np.copyto(into[0], pha, casting="same_kind")
        if fgr is not None and into[1] is not None:
            np.copyto(into[1], fgr, casting="same_kind")
    return (None if into[1] is None else into[1].transpose(2, 0, 1)), into[0][None]


def run_refined(
    src: np.ndarray,
    ratio: float,
    outputs: OutputSpec,
    step: Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray, Any]],
    state: Any,
) -> tuple[np.ndarray | None, np.ndarray, Any]:
    """A chunk ``[B, T, 3, H, W]`` (as it arrived) through a model that runs at the small size: each frame
    resized down, ``step(small, state)`` giving the coefficients ``a``, ``b`` (``[B, 4, h, w]``) and the next
    state, then the full-resolution planes in one pass. Returns ``fgr`` (``[B, T, 3, H, W]``, a view of
    interleaved samples) or None, ``pha`` (``[B, T, 1, H, W]``) and the state after the last frame."""
    retain_freed_memory()  # a frame's planes are allocated again for every chunk: reused, not faulted in
    batch, frames, _, height, width = src.shape
    pha = np.empty((batch, frames, 1, height, width), outputs.dtype)
    fgr = np.empty((batch, frames, height, width, 3), outputs.dtype) if outputs.foreground else None
    for t in range(frames):
        small = np.stack([downsample(src[i, t], ratio) for i in range(batch)])
        a, b, state = step(small, state)
        for i in range(batch):
            into = pha[i, t, 0], None if fgr is None else fgr[i, t]
            finish(src[i, t], np.asarray(a[i], np.float32), np.asarray(b[i], np.float32), outputs, into)
    return (None if fgr is None else fgr.transpose(0, 1, 4, 2, 3)), pha, state


def _finish_tile(
    pixels: np.ndarray,
    across_a: np.ndarray,
    across_b: np.ndarray,
    rows: Axis,
    unit: np.float32,
    top: np.float32,
    pha: np.ndarray,
    fgr: np.ndarray | None,
    where: slice,
) -> None:
    """:func:`finish` on the rows ``where``, in numpy: the compiled loops' operations, in their order."""
    first, second, weight = rows.first[where], rows.second[where], rows.weight[where, None]
    samples = pixels[where].reshape(len(first), -1, 3).astype(np.float32)
    gray = (samples[..., 0] + samples[..., 1] + samples[..., 2]) * (unit * np.float32(1 / 3))
    a = _lerp(across_a[-1, first], across_a[-1, second], weight)
    b = _lerp(across_b[-1, first], across_b[-1, second], weight)
    pha[where] = _quantised(a * gray + b, top)
    if fgr is not None:
        for c in range(3):
            a = _lerp(across_a[c, first], across_a[c, second], weight)
            b = _lerp(across_b[c, first], across_b[c, second], weight)
            value = samples[..., c] * unit
            fgr[where, :, c] = _quantised(a * value + b + value, top)


def _quantised(values: np.ndarray, top: np.float32) -> np.ndarray:
    """Clamped to 0..1, then (integers) scaled by ``top`` and rounded half to even."""
    np.clip(values, np.float32(0.0), np.float32(1.0), out=values)
    if top:
        values *= top
        np.rint(values, out=values)
    return values


def floor_bytes(height: int, width: int, in_dtype: np.dtype, outputs: OutputSpec) -> int:
    """The bytes the full-resolution stage must move at the least: the frame read once, the planes written."""
    planes = 4 if outputs.foreground else 1
    return (
        height
        * width
        * (3 * np.dtype(in_dtype).itemsize + planes * SAMPLE_DTYPES[outputs.sample_format].itemsize)
    )
