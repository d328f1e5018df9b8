"""The compiled loops of :mod:`rvm_node.engine.fullres` (numba): one pass over the frame's rows, on every core.

Each row is a few plain loops over contiguous memory, with no branch inside,
so LLVM vectorises them; the operations and their order are those of the
numpy path in :mod:`rvm_node.engine.fullres` (no fused multiply-add, no
reassociation), so the two give the same numbers to the bit. Compiled on
first use for each kind of sample and cached on disk by numba.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

__all__ = ["across", "downsample", "finish"]

_F = TypeVar("_F", bound=Callable[..., None])
# No fused multiply-add, no reassociation: the numpy path's operations, in its order.
_jit = cast(Callable[[_F], _F], numba.njit(cache=True, error_model="numpy", fastmath=False))
_parallel = cast(
    Callable[[_F], _F], numba.njit(cache=True, error_model="numpy", fastmath=False, parallel=True)
)
_BLOCK = 8  # rows a core takes at a time


@_parallel
def across(coefficients: Any, first: Any, second: Any, weight: Any, out: Any) -> None:
    """``coefficients`` (``[C, h, w]``) resized along the rows to ``out`` (``[C, h, W]``)."""
    channels, height, _ = out.shape
    for index in numba.prange(channels * height):
        c, y = index // height, index % height
        row, target = coefficients[c, y], out[c, y]
        for x in range(target.shape[0]):
            f = row[first[x]]
            target[x] = f + weight[x] * (row[second[x]] - f)


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
def _blend(top: Any, bottom: Any, weight: Any, out: Any) -> None:
    for x in range(out.shape[0]):
        out[x] = top[x] + weight * (bottom[x] - top[x])


@_jit
def _foreground(a: Any, b: Any, row: Any, unit: Any, top: Any, out: Any) -> None:
    """One row of the foreground, interleaved RGB, from blended coefficients ``a``, ``b`` (``[3, W]``):
    ``a * rgb + b + rgb``, clamped."""
    if top != 0:
        for x in range(a.shape[1]):
            for c in range(3):
                value = np.float32(row[3 * x + c]) * unit
                out[3 * x + c] = np.rint(
                    min(max(a[c, x] * value + b[c, x] + value, np.float32(0.0)), np.float32(1.0)) * top
                )
    else:
        for x in range(a.shape[1]):
            for c in range(3):
                value = np.float32(row[3 * x + c]) * unit
                out[3 * x + c] = min(max(a[c, x] * value + b[c, x] + value, np.float32(0.0)), np.float32(1.0))


@_jit
def _rows(start: int, stop: int, pixels: Any, across_a: Any, across_b: Any, first: Any, second: Any,
          weight: Any, unit: Any, top: Any, pha: Any, fgr: Any) -> None:  # fmt: skip
    width = pha.shape[1]
    last = across_a.shape[0] - 1
    third = unit * np.float32(1.0 / 3.0)
    guide = np.empty(width, np.float32)
    a = np.empty((3, width), np.float32)
    b = np.empty((3, width), np.float32)
    for y in range(start, stop):
        row, i0, i1, fy = pixels[y], first[y], second[y], weight[y]
        _gray(row, third, guide)
        _alpha(across_a[last, i0], across_a[last, i1], across_b[last, i0], across_b[last, i1], fy, guide, top,
               pha[y])  # fmt: skip
        if fgr is not None:
            for c in range(3):
                _blend(across_a[c, i0], across_a[c, i1], fy, a[c])
                _blend(across_b[c, i0], across_b[c, i1], fy, b[c])
            _foreground(a, b, row, unit, top, fgr[y])


@_parallel
def finish(pixels: Any, across_a: Any, across_b: Any, first: Any, second: Any, weight: Any, unit: Any,
           top: Any, pha: Any, fgr: Any) -> None:  # fmt: skip
    """Rows of ``pixels`` (``H x 3W``) to ``pha`` (``H x W``) and, unless None, ``fgr`` (``H x 3W``), from
    the coefficients resized along the rows (``[C, h, W]``, alpha's last); integer samples (``top``: their
    largest value; 0 for float samples) are scaled and rounded half to even. Blocks of rows on every core."""
    height = pha.shape[0]
    for block in numba.prange((height + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        _rows(start, min(height, start + _BLOCK), pixels, across_a, across_b, first, second, weight,
              unit, top, pha, fgr)  # fmt: skip


@_parallel
def downsample(pixels: Any, rows: Any, cols: Any, unit: Any, out: Any) -> None:
    """``pixels`` (``H x 3W``) resized to ``out`` (``[3, h, w]``); ``rows`` and ``cols`` are the axes'
    (first, second, weight) arrays (:class:`~rvm_node.engine.fullres.Axis`)."""
    _, height, width = out.shape
    first, second, weight = rows
    col_first, col_second, col_weight = cols
    for y in numba.prange(height):
        top_row = pixels[first[y]]
        bottom_row = pixels[second[y]]
        fy = weight[y]
        for x in range(width):
            x0 = col_first[x] * 3
            x1 = col_second[x] * 3
            fx = col_weight[x]
            for c in range(3):
                t0 = np.float32(top_row[x0 + c])
                top = t0 + fx * (np.float32(top_row[x1 + c]) - t0)
                b0 = np.float32(bottom_row[x0 + c])
                bottom = b0 + fx * (np.float32(bottom_row[x1 + c]) - b0)
                out[c, y, x] = (top + fy * (bottom - top)) * unit
