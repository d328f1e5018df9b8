"""Guided-filter refiners that lift the low-resolution matte to full resolution.

Both refiners return the final, clamped ``(fgr, pha)``. A guided filter
computes per-pixel linear coefficients ``a, b`` at low resolution and applies
``a * guide + b`` at full resolution, where the guide is RGB + gray. The full
resolution work is memory-bound, so it is arranged to touch as few
full-resolution channels as possible: the foreground's ``+ src`` residual is
folded into ``a`` (``up(a + 1) == up(a) + 1`` for a bilinear resize), and the
gray guide channel is only formed for alpha. Mathematically this is the
official formulation; numerically it differs by float rounding (~1e-7).

The deep refiner's ``box_filter`` is a trained grouped convolution: it starts
at 1/9 but the released weights differ, so it is always loaded, never rebuilt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvm_node.engine.network.onnx_ops import exporting, resize_to_onnx


def _resize_to(x: Tensor, like: Tensor) -> Tensor:
    if exporting():
        return resize_to_onnx(x, like)
    return F.interpolate(x, size=(like.shape[2], like.shape[3]), mode="bilinear", align_corners=False)


def _with_gray(x: Tensor) -> Tensor:
    return torch.cat([x, x.mean(1, keepdim=True)], dim=1)


def _apply_coefficients(a: Tensor, b: Tensor, src: Tensor) -> tuple[Tensor, Tensor]:
    """Final ``fgr = clamp(up(a_rgb) * src + up(b_rgb) + src)``, ``pha = clamp(up(a_a) * gray + up(b_a))``."""
    a_rgb, a_alpha = a.split([3, 1], dim=1)
    b_rgb, b_alpha = b.split([3, 1], dim=1)
    # In place after each resize: two full-resolution temporaries per plane instead of five.
    fgr = _resize_to(a_rgb + 1.0, src).mul_(src).add_(_resize_to(b_rgb, src)).clamp_(0.0, 1.0)
    pha = _resize_to(a_alpha, src).mul_(src.mean(1, keepdim=True)).add_(_resize_to(b_alpha, src))
    return fgr, pha.clamp_(0.0, 1.0)


class DeepGuidedFilterRefiner(nn.Module):
    def __init__(self, hid_ch: int = 16) -> None:
        super().__init__()
        self.box_filter = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False, groups=4)
        with torch.no_grad():
            self.box_filter.weight.fill_(1 / 9)
        self.conv = nn.Sequential(
            nn.Conv2d(4 * 2 + hid_ch, hid_ch, kernel_size=1, bias=False),
            nn.BatchNorm2d(hid_ch),
            nn.ReLU(True),
            nn.Conv2d(hid_ch, hid_ch, kernel_size=1, bias=False),
            nn.BatchNorm2d(hid_ch),
            nn.ReLU(True),
            nn.Conv2d(hid_ch, 4, kernel_size=1, bias=True),
        )

    def forward(
        self, fine_src: Tensor, base_src: Tensor, base_fgr: Tensor, base_pha: Tensor, base_hid: Tensor
    ) -> tuple[Tensor, Tensor]:
        a, b = self.coefficients(base_src, base_fgr, base_pha, base_hid)
        return _apply_coefficients(a, b, fine_src)

    def coefficients(
        self, base_src: Tensor, base_fgr: Tensor, base_pha: Tensor, base_hid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The guided filter's ``a`` and ``b`` at the small size (``[B, 4, h, w]``: R, G, B, gray)."""
        base_x = _with_gray(base_src)
        base_y = torch.cat([base_fgr, base_pha], dim=1)
        mean_x = self.box_filter(base_x)
        mean_y = self.box_filter(base_y)
        cov_xy = self.box_filter(base_x * base_y) - mean_x * mean_y
        var_x = self.box_filter(base_x * base_x) - mean_x * mean_x
        a = self.conv(torch.cat([cov_xy, var_x, base_hid], dim=1))
        return a, mean_y - a * mean_x


class FastGuidedFilterRefiner(nn.Module):
    """A fixed (untrained) guided filter of radius 1; it has no parameters."""

    def __init__(self, radius: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.radius = radius
        self.eps = eps

    def _box(self, x: Tensor) -> Tensor:
        """Separable box mean over 4-channel (RGB + gray, or fgr + alpha) maps."""
        size = 2 * self.radius + 1
        ch = 4  # a constant, so that ONNX export sees a kernel of known shape
        kx = torch.full((ch, 1, 1, size), 1 / size, dtype=x.dtype, device=x.device)
        ky = torch.full((ch, 1, size, 1), 1 / size, dtype=x.dtype, device=x.device)
        x = F.conv2d(x, kx, padding=(0, self.radius), groups=ch)
        return F.conv2d(x, ky, padding=(self.radius, 0), groups=ch)

    def forward(
        self,
        fine_src: Tensor,
        base_src: Tensor,
        base_fgr: Tensor,
        base_pha: Tensor,
        base_hid: Tensor,
    ) -> tuple[Tensor, Tensor]:
        a, b = self.coefficients(base_src, base_fgr, base_pha, base_hid)
        return _apply_coefficients(a, b, fine_src)

    def coefficients(
        self,
        base_src: Tensor,
        base_fgr: Tensor,
        base_pha: Tensor,
        base_hid: Tensor,  # noqa: ARG002 (the deep refiner's call signature)
    ) -> tuple[Tensor, Tensor]:
        """The guided filter's ``a`` and ``b`` at the small size (``[B, 4, h, w]``: R, G, B, gray)."""
        lr_x = _with_gray(base_src)
        lr_y = torch.cat([base_fgr, base_pha], dim=1)
        mean_x = self._box(lr_x)
        mean_y = self._box(lr_y)
        cov_xy = self._box(lr_x * lr_y) - mean_x * mean_y
        var_x = self._box(lr_x * lr_x) - mean_x * mean_x
        a = cov_xy / (var_x + self.eps)
        return a, mean_y - a * mean_x
