"""Shape-following ops with compact ONNX forms, used only while exporting.

Traced as-is, cropping and resizing to another tensor's size export as long
chains of Shape/Gather/Unsqueeze/Concat/Cast nodes. These autograd functions
export as one ``Slice`` or ``Resize`` each, which onnxruntime runs faster.
"""

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F


def _spatial_shape(g: Any, like: Any) -> Any:
    return g.op(
        "Slice",
        g.op("Shape", like),
        g.op("Constant", value_t=torch.tensor([2])),
        g.op("Constant", value_t=torch.tensor([4])),
        g.op("Constant", value_t=torch.tensor([0])),
    )


class CropTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, like: Tensor) -> Tensor:  # noqa: ARG004
        return x[:, :, : like.shape[2], : like.shape[3]]

    @staticmethod
    def symbolic(g: Any, x: Any, like: Any) -> Any:
        return g.op(
            "Slice",
            x,
            g.op("Constant", value_t=torch.tensor([0, 0])),
            _spatial_shape(g, like),
            g.op("Constant", value_t=torch.tensor([2, 3])),
        )


class ResizeTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, like: Tensor) -> Tensor:  # noqa: ARG004
        return F.interpolate(x, size=(like.shape[2], like.shape[3]), mode="bilinear", align_corners=False)

    @staticmethod
    def symbolic(g: Any, x: Any, like: Any) -> Any:
        leading = g.op(
            "Slice",
            g.op("Shape", x),
            g.op("Constant", value_t=torch.tensor([0])),
            g.op("Constant", value_t=torch.tensor([2])),
            g.op("Constant", value_t=torch.tensor([0])),
        )
        sizes = g.op("Concat", leading, _spatial_shape(g, like), axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op(
            "Resize",
            x,
            empty,
            empty,
            sizes,
            coordinate_transformation_mode_s="pytorch_half_pixel",
            mode_s="linear",
        )


class ResizeByFactor(torch.autograd.Function):
    """Bilinear resize by a factor held in a float32 ``[1]`` tensor read at run time."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: Tensor) -> Tensor:  # noqa: ARG004
        return F.interpolate(
            x,
            scale_factor=float(factor.item()),
            mode="bilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )

    @staticmethod
    def symbolic(g: Any, x: Any, factor: Any) -> Any:
        roi = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        ones = g.op("Constant", value_t=torch.tensor([1.0, 1.0], dtype=torch.float32))
        scales = g.op("Concat", ones, factor, factor, axis_i=0)
        return g.op(
            "Resize",
            x,
            roi,
            scales,
            coordinate_transformation_mode_s="pytorch_half_pixel",
            mode_s="linear",
        )


@torch.jit.unused
def crop_to_onnx(x: Tensor, like: Tensor) -> Tensor:
    return CropTo.apply(x, like)  # type: ignore[no-any-return]


@torch.jit.unused
def resize_to_onnx(x: Tensor, like: Tensor) -> Tensor:
    return ResizeTo.apply(x, like)  # type: ignore[no-any-return]


def exporting() -> bool:
    """True while ``torch.onnx.export`` traces the network (never inside TorchScript)."""
    if torch.jit.is_scripting():  # type: ignore[attr-defined]
        return False
    return torch.onnx.is_in_onnx_export()
