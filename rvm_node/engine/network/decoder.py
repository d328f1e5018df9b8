"""The recurrent decoder: ConvGRUs at 1/16, 1/8, 1/4 and 1/2 resolution.

Tensors inside the decoder are 4-D, ``[B*T, C, H, W]``; each ConvGRU unfolds
the time axis itself and walks the frames in order, so a chunk of T frames
gives the same result as T single-frame calls.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvm_node.engine.network.onnx_ops import crop_to_onnx, exporting


def _crop_to(x: Tensor, like: Tensor) -> Tensor:
    """Crop an upsampled map to the size of ``like`` (odd sizes round up on the way down)."""
    if exporting():
        return crop_to_onnx(x, like)
    return x[:, :, : like.shape[2], : like.shape[3]]


def _upsample2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ConvGRU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.ih = nn.Sequential(nn.Conv2d(channels * 2, channels * 2, 3, padding=1), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(channels * 2, channels, 3, padding=1), nn.Tanh())

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        r, z = self.ih(torch.cat([x, h], dim=1)).split(self.channels, dim=1)
        c = self.hh(torch.cat([x, r * h], dim=1))
        return (1 - z) * h + z * c

    def forward(self, x: Tensor, h: Tensor | None, frames: int) -> tuple[Tensor, Tensor]:
        n, ch, height, width = x.shape
        batch = n // frames
        if h is None:
            state = torch.zeros(batch, ch, height, width, dtype=x.dtype, device=x.device)
        elif frames == 1:
            state = h.expand_as(x)
        else:
            state = h.expand(batch, ch, height, width)
        if frames == 1:
            state = self.step(x, state)
            return state, state
        xs = x.reshape(batch, frames, ch, height, width)
        outputs: list[Tensor] = []
        for t in range(frames):
            state = self.step(xs[:, t], state)
            outputs.append(state)
        return torch.stack(outputs, dim=1).reshape(n, ch, height, width), state


class BottleneckBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gru = ConvGRU(channels // 2)

    def forward(self, x: Tensor, r: Tensor | None, frames: int) -> tuple[Tensor, Tensor]:
        a, b = x.split(self.channels // 2, dim=1)
        b, r_out = self.gru(b, r, frames)
        return torch.cat([a, b], dim=1), r_out


class UpsamplingBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, src_ch: int, out_ch: int) -> None:
        super().__init__()
        self.out_channels = out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch + src_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(True),
        )
        self.gru = ConvGRU(out_ch // 2)

    def forward(
        self, x: Tensor, f: Tensor, s: Tensor, r: Tensor | None, frames: int
    ) -> tuple[Tensor, Tensor]:
        x = _crop_to(_upsample2x(x), s)
        x = self.conv(torch.cat([x, f, s], dim=1))
        a, b = x.split(self.out_channels // 2, dim=1)
        b, r_out = self.gru(b, r, frames)
        return torch.cat([a, b], dim=1), r_out


class OutputBlock(nn.Module):
    def __init__(self, in_ch: int, src_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + src_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(True),
        )

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        x = _crop_to(_upsample2x(x), s)
        return self.conv(torch.cat([x, s], dim=1))


class RecurrentDecoder(nn.Module):
    def __init__(self, feature_ch: list[int], decoder_ch: list[int]) -> None:
        super().__init__()
        self.avgpool = nn.AvgPool2d(2, 2, count_include_pad=False, ceil_mode=True)
        self.decode4 = BottleneckBlock(feature_ch[3])
        self.decode3 = UpsamplingBlock(feature_ch[3], feature_ch[2], 3, decoder_ch[0])
        self.decode2 = UpsamplingBlock(decoder_ch[0], feature_ch[1], 3, decoder_ch[1])
        self.decode1 = UpsamplingBlock(decoder_ch[1], feature_ch[0], 3, decoder_ch[2])
        self.decode0 = OutputBlock(decoder_ch[2], 3, decoder_ch[3])

    def forward(
        self,
        s0: Tensor,
        f1: Tensor,
        f2: Tensor,
        f3: Tensor,
        f4: Tensor,
        r1: Tensor | None,
        r2: Tensor | None,
        r3: Tensor | None,
        r4: Tensor | None,
        frames: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        s1 = self.avgpool(s0)
        s2 = self.avgpool(s1)
        s3 = self.avgpool(s2)
        x4, r4_out = self.decode4(f4, r4, frames)
        x3, r3_out = self.decode3(x4, f3, s3, r3, frames)
        x2, r2_out = self.decode2(x3, f2, s2, r2, frames)
        x1, r1_out = self.decode1(x2, f1, s1, r1, frames)
        return self.decode0(x1, s0), r1_out, r2_out, r3_out, r4_out


class Projection(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
