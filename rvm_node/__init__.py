"""rvm-node: Robust Video Matting for VFX pipelines.

>>> import rvm_node
>>> model = rvm_node.load_model("mobilenetv3", backend="torch", device="cpu")
>>> session = model.new_session(downsample_ratio=None)  # None: auto
>>> chunk = session.process(frames)                      # [T, 3, H, W] RGB
>>> chunk.pha, chunk.fgr
>>> rvm_node.convert_video(model, "plate.####.exr", output_alpha="matte.####.exr")
"""

from __future__ import annotations

import importlib
from typing import Any

from rvm_node import errors as _errors
from rvm_node.errors import *  # noqa: F403 - every error of the tree, as listed in errors.__all__
from rvm_node.version import __version__

# Loaded on first use: the client and the plugins import rvm_node without torch.
_LAZY = {
    "BACKENDS": "rvm_node.engine",
    "MatteChunk": "rvm_node.engine",
    "MattingBackend": "rvm_node.engine",
    "MattingNetwork": "rvm_node.engine",
    "MattingSession": "rvm_node.engine",
    "OpenVinoOptions": "rvm_node.engine",
    "OrtOptions": "rvm_node.engine",
    "RecurrentState": "rvm_node.engine",
    "TorchOptions": "rvm_node.engine",
    "auto_downsample_ratio": "rvm_node.engine",
    "load_model": "rvm_node.engine",
    "load_network": "rvm_node.engine",
    "convert_video": "rvm_node.convert",
}

__all__ = [*_errors.__all__, "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rvm_node' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
