"""The compiled loops of :mod:`rvm_node.engine.fullres` (numba): one pass over the frame's rows, on every core.

Each row is a few plain loops over contiguous memory, with no branch inside,
so LLVM vectorises them; the operations and their order are those of the
numpy path in :mod:`rvm_node.engine.fullres` (no fused multiply-add, no
reassociation), so the two give the same numbers to the bit. Each core takes
a block of output rows and lifts along the rows only the few coefficient
rows that block blends. Compiled on first use for each kind of sample and
cached on disk by numba.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

__all__ = ["downsample", "finish"]

_F = TypeVar("_F", bound=Callable[..., None])
# No fused multiply-add, no reassociation: the numpy path's operations, in its order.
_jit = cast(Callable[[_F], _F], numba.njit(cache=True, error_model="numpy", fastmath=False))
_parallel = cast(
    Callable[[_F], _F], numba.njit(cache=True, error_model="numpy", fastmath=False, parallel=True)
)
_BLOCK = 32  # output rows a core takes at a time


@_jit
def _blend(top: Any, bottom: Any, weight: Any, out: Any) -> None:
    for x in range(out.shape[0]):
        out[x] = top[x] + weight * (bottom[x] - top[x])


@_jit
def _across(row: Any, first: Any, second: Any, weight: Any, out: Any) -> None:
    """One coefficient row lifted along the row: ``out[x]`` blends ``row[first[x]]`` and ``row[second[x]]``."""
    for x in range(out.shape[0]):
        f = row[first[x]]
        out[x] = f + weight[x] * (row[second[x]] - f)


@_jit
def _gray(row: Any, third: Any, out: Any) -> None:
    for x in range(out.shape[0]):
        out[x] = (np.float32(row[3 * x]) + np.float32(row[3 * x + 1]) + np.float32(row[3 * x + 2])) * third


@_jit
def _alpha(a0: Any, a1: Any, b0: Any, b1: Any, fy: Any, guide: Any, top: Any, out: Any) -> None:
    """One row of alpha: the coefficients blended between two rows, times the gray, plus; clamped."""
    if top != 0:  # integers: scaled and rounded half to even (a loop of its own: no branch inside)
        for x in range(out.shape[0]):
            a = a0[x] + fy * (a1[x] - a0[x])
            b = b0[x] + fy * (b1[x] - b0[x])
            out[x] = np.rint(min(max(a * guide[x] + b, np.float32(0.0)), np.float32(1.0)) * top)
    else:
        for x in range(out.shape[0]):
            a = a0[x] + fy * (a1[x] - a0[x])
            b = b0[x] + fy * (b1[x] - b0[x])
            out[x] = min(max(a * guide[x] + b, np.float32(0.0)), np.float32(1.0))


@_jit
def _foreground(a: Any, b: Any, row: Any, unit: Any, top: Any, out: Any) -> None:
    """One row of the foreground, interleaved RGB, from blended coefficients ``a``, ``b`` (``[3, W]``):
    ``a * rgb + b + rgb``, clamped."""
    if top != 0:
        for x in range(a.shape[1]):
            for c in range(3):
                value = np.float32(row[3 * x + c]) * unit
                value = min(max(a[c, x] * value + b[c, x] + value, np.float32(0.0)), np.float32(1.0))
                out[3 * x + c] = np.rint(value * top)
    else:
        for x in range(a.shape[1]):
            for c in range(3):
                value = np.float32(row[3 * x + c]) * unit
                out[3 * x + c] = min(max(a[c, x] * value + b[c, x] + value, np.float32(0.0)), np.float32(1.0))


@_jit
def _block(start: int, stop: int, pixels: Any, a: Any, b: Any, cols: Any, rows: Any, unit: Any, top: Any,
           pha: Any, fgr: Any) -> None:  # fmt: skip
    """Output rows ``start`` to ``stop``: their coefficient rows lifted along the row, then row by row."""
    col_first, col_second, col_weight = cols
    first, second, weight = rows
    width = pha.shape[1]
    channels = a.shape[0]
    low, high = first[start], second[stop - 1]  # the coefficient rows this block blends (rows only go down)
    lifted_a = np.empty((channels, high - low + 1, width), np.float32)
    lifted_b = np.empty((channels, high - low + 1, width), np.float32)
    for c in range(channels):
        for i in range(high - low + 1):
            _across(a[c, low + i], col_first, col_second, col_weight, lifted_a[c, i])
            _across(b[c, low + i], col_first, col_second, col_weight, lifted_b[c, i])
    last = channels - 1
    third = unit * np.float32(1.0 / 3.0)
    guide = np.empty(width, np.float32)
    blended_a = np.empty((3, width), np.float32)
    blended_b = np.empty((3, width), np.float32)
    for y in range(start, stop):
        row, i0, i1, fy = pixels[y], first[y] - low, second[y] - low, weight[y]
        _gray(row, third, guide)
        _alpha(lifted_a[last, i0], lifted_a[last, i1], lifted_b[last, i0], lifted_b[last, i1], fy, guide, top,
               pha[y])  # fmt: skip
        if fgr is not None:
            for c in range(3):
                _blend(lifted_a[c, i0], lifted_a[c, i1], fy, blended_a[c])
                _blend(lifted_b[c, i0], lifted_b[c, i1], fy, blended_b[c])
            _foreground(blended_a, blended_b, row, unit, top, fgr[y])


@_parallel
def finish(
    pixels: Any, a: Any, b: Any, cols: Any, rows: Any, unit: Any, top: Any, pha: Any, fgr: Any
) -> None:
    """Rows of ``pixels`` (``H x 3W``) to ``pha`` (``H x W``) and, unless None, ``fgr`` (``H x 3W``), from the
    coefficients ``a``, ``b`` (``[C, h, w]``, alpha's last) and the axes' (first, second, weight) arrays;
    integer samples (``top``: their largest value; 0 for float samples) scaled and rounded half to even.
    Blocks of rows on every core."""
    height = pha.shape[0]
    for block in numba.prange((height + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        _block(start, min(height, start + _BLOCK), pixels, a, b, cols, rows, unit, top, pha, fgr)


@_parallel
def downsample(pixels: Any, rows: Any, cols: Any, unit: Any, out: Any) -> None:
    """``pixels`` (``H x 3W``) resized to ``out`` (``[3, h, w]``): the two rows blended first, whole (a
    contiguous loop), then the columns; ``rows`` and ``cols`` are the axes' (first, second, weight) arrays."""
    _, height, width = out.shape
    first, second, weight = rows
    col_first, col_second, col_weight = cols
    for y in numba.prange(height):
        blended = np.empty(pixels.shape[1], np.float32)
        top_row, bottom_row, fy = pixels[first[y]], pixels[second[y]], weight[y]
        for i in range(blended.shape[0]):
            t = np.float32(top_row[i])
            blended[i] = t + fy * (np.float32(bottom_row[i]) - t)
        for c in range(3):
            target = out[c, y]
            for x in range(width):
                f = blended[col_first[x] * 3 + c]
                target[x] = (f + col_weight[x] * (blended[col_second[x] * 3 + c] - f)) * unit
