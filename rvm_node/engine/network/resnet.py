"""ResNet-50 encoder with the layer names of torchvision's model.

The last stage is dilated instead of strided (1/16 output). Like the official
encoder, it takes 0..1 RGB without ImageNet normalisation.
"""

from __future__ import annotations

from torch import Tensor, nn

_EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        out_ch = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class ResNet50Encoder(nn.Module):
    """Returns features at 1/2, 1/4, 1/8 and 1/16 of the input, with 64, 256, 512, 2048 channels."""

    def __init__(self) -> None:
        super().__init__()
        self._in_ch = 64
        self._dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3, stride=1, dilate=False)
        self.layer2 = self._make_layer(128, 4, stride=2, dilate=False)
        self.layer3 = self._make_layer(256, 6, stride=2, dilate=False)
        self.layer4 = self._make_layer(512, 3, stride=2, dilate=True)

    def _make_layer(self, width: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_ch = width * _EXPANSION
        downsample: nn.Module | None = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        layers = [Bottleneck(self._in_ch, width, stride, first_dilation, downsample)]
        self._in_ch = out_ch
        layers.extend(Bottleneck(out_ch, width, 1, self._dilation, None) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer4(self.layer3(f3))
        return f1, f2, f3, f4
