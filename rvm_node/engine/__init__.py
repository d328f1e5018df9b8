"""The matting engine: the RVM network, its weights, and the backends that run it.

Names are loaded on first use, so that ``rvm_node.engine.backend``,
``session`` and ``states`` (numpy only) are usable by clients and plugins that
have no torch or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKENDS": "rvm_node.engine.backend",
    "load_model": "rvm_node.engine.loader",
    "load_network": "rvm_node.engine.loader",
    "MattingNetwork": "rvm_node.engine.network",
    "OpenVinoOptions": "rvm_node.engine.openvino_backend",
    "OrtOptions": "rvm_node.engine.ort_backend",
    "TorchOptions": "rvm_node.engine.torch_backend",
    "MatteChunk": "rvm_node.engine.chunks",
    "MattingBackend": "rvm_node.engine.backend",
    "MattingSession": "rvm_node.engine.session",
    "RecurrentState": "rvm_node.engine.states",
    "auto_downsample_ratio": "rvm_node.engine.ratio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rvm_node.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
