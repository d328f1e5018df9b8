"""The Robust Video Matting network in PyTorch.

The module tree and parameter names match the official checkpoints
(``rvm_mobilenetv3.pth``, ``rvm_resnet50.pth``), so those load with
``strict=True``. The call contract is the official one::

    fgr, pha, r1, r2, r3, r4 = model(src, r1, r2, r3, r4, downsample_ratio)
"""

from rvm_node.engine.network.matting import REFINERS, MattingNetwork
from rvm_node.engine.states import VARIANTS

__all__ = ["REFINERS", "VARIANTS", "MattingNetwork"]
