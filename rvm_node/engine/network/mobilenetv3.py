"""MobileNetV3-Large encoder with the layer names of torchvision's model.

RVM dilates the last stage instead of striding it, so the encoder's deepest
feature map is 1/16 of the input, not 1/32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

_BN_EPS = 0.001
_BN_MOMENTUM = 0.01


class _Stage(NamedTuple):
    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    squeeze_excite: bool
    hard_swish: bool
    stride: int
    dilation: int


# MobileNetV3-Large as configured by RVM: the stride-2 stage at index 13 is dilated.
_STAGES = (
    _Stage(16, 3, 16, 16, False, False, 1, 1),
    _Stage(16, 3, 64, 24, False, False, 2, 1),
    _Stage(24, 3, 72, 24, False, False, 1, 1),
    _Stage(24, 5, 72, 40, True, False, 2, 1),
    _Stage(40, 5, 120, 40, True, False, 1, 1),
    _Stage(40, 5, 120, 40, True, False, 1, 1),
    _Stage(40, 3, 240, 80, False, True, 2, 1),
    _Stage(80, 3, 200, 80, False, True, 1, 1),
    _Stage(80, 3, 184, 80, False, True, 1, 1),
    _Stage(80, 3, 184, 80, False, True, 1, 1),
    _Stage(80, 3, 480, 112, True, True, 1, 1),
    _Stage(112, 3, 672, 112, True, True, 1, 1),
    _Stage(112, 5, 672, 160, True, True, 2, 2),
    _Stage(160, 5, 960, 160, True, True, 1, 2),
    _Stage(160, 5, 960, 160, True, True, 1, 2),
)


def _round_to_eight(value: float) -> int:
    """torchvision's ``_make_divisible(value, 8)``."""
    rounded = max(8, int(value + 4) // 8 * 8)
    if rounded < 0.9 * value:
        rounded += 8
    return rounded


def conv_bn_act(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    padding = (kernel - 1) // 2 * dilation
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    def __init__(self, stage: _Stage) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if stage.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if stage.expanded != stage.in_ch:
            layers.append(conv_bn_act(stage.in_ch, stage.expanded, 1, activation=act))
        stride = 1 if stage.dilation > 1 else stage.stride
        layers.append(
            conv_bn_act(
                stage.expanded,
                stage.expanded,
                stage.kernel,
                stride,
                stage.dilation,
                groups=stage.expanded,
                activation=act,
            )
        )
        if stage.squeeze_excite:
            layers.append(SqueezeExcitation(stage.expanded, _round_to_eight(stage.expanded / 4)))
        layers.append(conv_bn_act(stage.expanded, stage.out_ch, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stage.stride == 1 and stage.in_ch == stage.out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        if self.use_residual:
            y = y + x
        return y


class MobileNetV3LargeEncoder(nn.Module):
    """Returns features at 1/2, 1/4, 1/8 and 1/16 of the input, with 16, 24, 40, 960 channels."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 16, 3, stride=2, activation=nn.Hardswish)]
        layers.extend(InvertedResidual(stage) for stage in _STAGES)
        layers.append(conv_bn_act(160, 960, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std  # ImageNet normalisation
        f1 = f2 = f3 = x
        # f1, f2 and f3 are tapped after features 1, 3 and 6 (1/2, 1/4, 1/8).
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == 1:
                f1 = x
            elif index == 3:
                f2 = x
            elif index == 6:
                f3 = x
        return f1, f2, f3, x
