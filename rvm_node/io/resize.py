"""Image resizing for ``--input-resize`` and backgrounds, in numpy (the io layer needs no torch).

Separable triangle (bilinear) filtering that widens with the scale when
shrinking, so a downscale averages every source pixel it covers instead of
aliasing (the antialiased bilinear of PIL and ``torch.nn.functional.
interpolate(..., antialias=True)``). Integers are rounded back to their type.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["resize_image"]


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each ``[size_out, K]``: the source pixels and weights of every output pixel."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    count = math.ceil(support) * 2 + 1
    centers = (np.arange(size_out) + 0.5) * scale
    first = np.floor(centers - support).astype(np.int64)
    indices = first[:, None] + np.arange(count)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs((indices + 0.5 - centers[:, None]) / support))
    weights[(indices < 0) | (indices >= size_in)] = 0.0  # taps outside the image are dropped
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(indices, 0, size_in - 1), weights.astype(np.float32)


def _along(image: np.ndarray, axis: int, size_out: int) -> np.ndarray:
    indices, weights = _taps(image.shape[axis], size_out)
    out = np.zeros((*image.shape[:axis], size_out, *image.shape[axis + 1 :]), np.float32)
    shape = [1] * image.ndim
    shape[axis] = size_out
    for k in range(indices.shape[1]):
        out += weights[:, k].reshape(shape) * np.take(image, indices[:, k], axis=axis)
    return out


def resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``HxWxC`` samples resized to ``size`` (width, height), in their own dtype."""
    width, height = size
    if (pixels.shape[1], pixels.shape[0]) == (width, height):
        return pixels
    resized = _along(_along(pixels.astype(np.float32), 0, height), 1, width)
    if pixels.dtype.kind == "u":
        top = np.iinfo(pixels.dtype).max
        return np.clip(np.rint(resized), 0, top).astype(pixels.dtype)
    return resized.astype(pixels.dtype, copy=False)
