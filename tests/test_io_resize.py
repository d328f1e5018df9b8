"""The io layer's resize (numpy) equals torch's antialiased bilinear interpolation within one level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rvm_node.io.resize import resize_image


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((64, 96), (80, 48)),
        ((144, 176), (352, 288)),
        ((270, 480), (160, 90)),
        ((48, 64), (10, 10)),
        ((5, 7), (7, 5)),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_resize_equals_torch_antialiased_bilinear(
    shape: tuple[int, int], size: tuple[int, int], dtype: type
) -> None:
    rng = np.random.default_rng(0)
    top = 1.0 if dtype == np.float32 else float(np.iinfo(dtype).max)
    image = (rng.random((*shape, 3)) * top).astype(dtype)
    width, height = size
    reference = (
        F.interpolate(
            torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    ours = resize_image(image, size)
    assert ours.shape == (height, width, 3) and ours.dtype == image.dtype
    step = 1.0 if dtype != np.float32 else 1e-5  # integers round to the nearest level on either side
    assert float(np.abs(ours.astype(np.float64) - reference).max()) <= step * 1.0001


def test_the_same_size_is_returned_as_it_is() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    assert resize_image(image, (6, 4)) is image
