"""``MattingNetwork``: encoder, LR-ASPP, recurrent decoder and refiner.

Refiner policy at ``downsample_ratio == 1``: the refiner is skipped, as in the
official PyTorch model and as the network was trained. (The official ONNX
export always runs it, which changes alpha by up to 0.5 on real frames at
ratio 1.) Our ONNX backend applies the same rule to every ONNX graph it runs,
so a matte is the same whichever backend computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvm_node.engine.network.decoder import Projection, RecurrentDecoder
from rvm_node.engine.network.lraspp import LRASPP
from rvm_node.engine.network.mobilenetv3 import MobileNetV3LargeEncoder
from rvm_node.engine.network.refiners import DeepGuidedFilterRefiner, FastGuidedFilterRefiner
from rvm_node.engine.network.resnet import ResNet50Encoder
from rvm_node.engine.states import VARIANTS

REFINERS = ("deep_guided_filter", "fast_guided_filter")


def resize_by_ratio(x: Tensor, ratio: float) -> Tensor:
    """Bilinear resize by a factor, with the factor itself (not the rounded size) in the sampling grid."""
    return F.interpolate(
        x, scale_factor=ratio, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )


class MattingNetwork(nn.Module):
    """Robust Video Matting.

    ``forward(src, r1, r2, r3, r4, downsample_ratio=1.0, segmentation_pass=False)``
    takes ``src`` as ``[B, 3, H, W]`` or ``[B, T, 3, H, W]`` RGB in 0..1 and the
    four recurrent states (None at the start of a clip), and returns
    ``[fgr, pha, r1, r2, r3, r4]`` (``[seg, r1, r2, r3, r4]`` for the
    segmentation pass). For a chunk of T frames the states are those after the
    last frame.
    """

    def __init__(self, variant: str = "mobilenetv3", refiner: str = "deep_guided_filter") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
        if refiner not in REFINERS:
            raise ValueError(f"refiner: expected one of {', '.join(REFINERS)}, got {refiner!r}")
        self.variant = variant
        self.refiner_name = refiner
        # False when the weights came without a segmentation head (imported from ONNX).
        self.has_segmentation = True
        self.backbone: nn.Module
        if variant == "mobilenetv3":
            self.backbone = MobileNetV3LargeEncoder()
            self.aspp = LRASPP(960, 128)
            self.decoder = RecurrentDecoder([16, 24, 40, 128], [80, 40, 32, 16])
        else:
            self.backbone = ResNet50Encoder()
            self.aspp = LRASPP(2048, 256)
            self.decoder = RecurrentDecoder([64, 256, 512, 256], [128, 64, 32, 16])
        self.project_mat = Projection(16, 4)
        self.project_seg = Projection(16, 1)
        self.refiner: DeepGuidedFilterRefiner | FastGuidedFilterRefiner
        if refiner == "deep_guided_filter":
            self.refiner = DeepGuidedFilterRefiner()
        else:
            self.refiner = FastGuidedFilterRefiner()

    def forward(
        self,
        src: Tensor,
        r1: Tensor | None = None,
        r2: Tensor | None = None,
        r3: Tensor | None = None,
        r4: Tensor | None = None,
        downsample_ratio: float = 1.0,
        segmentation_pass: bool = False,
    ) -> list[Tensor]:
        if src.dim() == 5:
            batch, frames = src.shape[0], src.shape[1]
            flat = src.flatten(0, 1)
        elif src.dim() == 4:
            batch, frames = src.shape[0], 1
            flat = src
        else:
            raise ValueError(f"src: expected [B,3,H,W] or [B,T,3,H,W], got {list(src.shape)}")
        if segmentation_pass and not self.has_segmentation:
            raise ValueError("segmentation_pass: these weights have no segmentation head")
        small = resize_by_ratio(flat, downsample_ratio) if downsample_ratio != 1 else flat
        outputs = self.infer(flat, small, r1, r2, r3, r4, frames, downsample_ratio != 1, segmentation_pass)
        if src.dim() == 5:
            for i in range(len(outputs) - 4):
                out = outputs[i]
                outputs[i] = out.reshape([batch, frames] + list(out.shape[1:]))  # noqa: RUF005 (TorchScript)
        return outputs

    @torch.jit.export
    def coefficients(
        self, src_sm: Tensor, r1: Tensor | None, r2: Tensor | None, r3: Tensor | None, r4: Tensor | None
    ) -> list[Tensor]:
        """The network at the small size only: ``[a, b, r1, r2, r3, r4]``, where ``a`` and ``b`` are the
        refiner's coefficients (``[B, 4, h, w]``) for frames already resized down (``[B, 3, h, w]``), one
        frame per stream. The full-resolution planes are ``rvm_node.engine.fullres``'s to make."""
        f1, f2, f3, f4 = self.backbone(src_sm)
        f4 = self.aspp(f4)
        hid, r1, r2, r3, r4 = self.decoder(src_sm, f1, f2, f3, f4, r1, r2, r3, r4, 1)
        fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)
        a, b = self.refiner.coefficients(src_sm, fgr_residual, pha, hid)
        return [a, b, r1, r2, r3, r4]

    def infer(
        self,
        src: Tensor,
        src_sm: Tensor,
        r1: Tensor | None,
        r2: Tensor | None,
        r3: Tensor | None,
        r4: Tensor | None,
        frames: int,
        refine: bool,
        segmentation_pass: bool = False,
    ) -> list[Tensor]:
        """The network on flattened ``[B*T, 3, H, W]`` frames and their downsampled copy."""
        f1, f2, f3, f4 = self.backbone(src_sm)
        f4 = self.aspp(f4)
        hid, r1, r2, r3, r4 = self.decoder(src_sm, f1, f2, f3, f4, r1, r2, r3, r4, frames)
        if segmentation_pass:
            return [self.project_seg(hid), r1, r2, r3, r4]
        fgr_residual, pha = self.project_mat(hid).split([3, 1], dim=1)
        if refine:
            fgr, pha = self.refiner(src, src_sm, fgr_residual, pha, hid)
        else:
            fgr, pha = (fgr_residual + src).clamp(0.0, 1.0), pha.clamp(0.0, 1.0)
        return [fgr, pha, r1, r2, r3, r4]
