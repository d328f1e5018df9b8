"""The matting engine: the RVM network, its weights, and the backends that run it."""

from rvm_node.engine.loader import BACKENDS, load_model, load_network
from rvm_node.engine.network import MattingNetwork
from rvm_node.engine.ort_backend import OrtOptions
from rvm_node.engine.session import (
    MatteChunk,
    MattingBackend,
    MattingSession,
    RecurrentState,
    auto_downsample_ratio,
)
from rvm_node.engine.torch_backend import TorchOptions

__all__ = [
    "BACKENDS",
    "MatteChunk",
    "MattingBackend",
    "MattingNetwork",
    "MattingSession",
    "OrtOptions",
    "RecurrentState",
    "TorchOptions",
    "auto_downsample_ratio",
    "load_model",
    "load_network",
]
