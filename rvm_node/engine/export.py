"""Export a ``MattingNetwork`` to ONNX or TorchScript with the official interface.

ONNX: inputs ``src, r1i, r2i, r3i, r4i, downsample_ratio``, outputs
``fgr, pha, r1o, r2o, r3o, r4o``; batch, height and width are dynamic, the
states accept zero ``[1, 1, 1, 1]`` tensors at the start, and
``downsample_ratio`` is a float32 ``[1]`` tensor read at run time. The graph
carries our refiner policy (skip at ratio 1).

TorchScript: the scripted network with the official call signature
``model(src, r1, r2, r3, r4, downsample_ratio)``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rvm_node.engine.network import MattingNetwork
from rvm_node.engine.network.onnx_ops import ResizeByFactor
from rvm_node.engine.onnx_graph import skip_refiner_at_unit_ratio
from rvm_node.errors import ExportError, InvalidInputError
from rvm_node.fsutil import atomic_write_bytes

__all__ = ["DEFAULT_OPSET", "export_onnx", "export_torchscript", "onnx_bytes"]

DEFAULT_OPSET = 17
_MIN_OPSET = 12


class _OnnxInterface(nn.Module):
    """The network behind the official ONNX signature; the refiner always runs here."""

    def __init__(self, net: MattingNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, src: Tensor, r1: Tensor, r2: Tensor, r3: Tensor, r4: Tensor, downsample_ratio: Tensor
    ) -> list[Tensor]:
        small = ResizeByFactor.apply(src, downsample_ratio)
        return self.net.infer(src, small, r1, r2, r3, r4, 1, True)


def _check(net: nn.Module, precision: str, opset: int) -> torch.dtype:
    if not isinstance(net, MattingNetwork):
        raise ExportError(f"expected a MattingNetwork to export, got {type(net).__name__}")
    if precision not in ("fp32", "fp16"):
        raise InvalidInputError(f"precision: expected fp32 or fp16 for export, got {precision!r}")
    if opset < _MIN_OPSET:
        raise InvalidInputError(f"opset: expected {_MIN_OPSET} or newer, got {opset}")
    return torch.float16 if precision == "fp16" else torch.float32


def onnx_bytes(net: MattingNetwork, *, precision: str = "fp32", opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model of ``net`` (weights included, refiner policy applied)."""
    import onnx

    dtype = _check(net, precision, opset)
    wrapper = _OnnxInterface(net).eval().to(dtype=dtype)
    rec = tuple(torch.zeros(1, 1, 1, 1, dtype=dtype) for _ in range(4))
    src = torch.rand(1, 3, 256, 320, dtype=dtype)
    ratio = torch.tensor([0.5], dtype=torch.float32)
    spatial = {0: "batch_size", 2: "height", 3: "width"}
    everything = {0: "batch_size", 1: "channels", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (src, *rec, ratio),
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=["src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio"],
                output_names=["fgr", "pha", "r1o", "r2o", "r3o", "r4o"],
                dynamic_axes={
                    "src": spatial,
                    "fgr": spatial,
                    "pha": spatial,
                    "r1i": everything,
                    "r2i": everything,
                    "r3i": everything,
                    "r4i": everything,
                    "r1o": spatial,
                    "r2o": spatial,
                    "r3o": spatial,
                    "r4o": spatial,
                },
            )
    except Exception as exc:  # torch.onnx raises many kinds; report one line
        raise ExportError(f"ONNX export (opset {opset}, {precision}) failed: {exc}") from exc
    finally:
        net.float()
    model = onnx.load_from_string(buffer.getvalue())
    _strip_wrapper_prefix(model)
    model.producer_name = "rvm-node"
    meta = model.metadata_props.add()
    meta.key, meta.value = "rvm_node.variant", net.variant
    skip_refiner_at_unit_ratio(model)
    return bytes(model.SerializeToString())


def _strip_wrapper_prefix(model: Any) -> None:
    """Give parameters the official names (``net.aspp...`` -> ``aspp...``)."""
    renamed = {}
    for tensor in model.graph.initializer:
        if tensor.name.startswith("net."):
            renamed[tensor.name] = tensor.name[len("net.") :]
            tensor.name = renamed[tensor.name]
    for node in model.graph.node:
        for i, value in enumerate(node.input):
            if value in renamed:
                node.input[i] = renamed[value]


def export_onnx(
    net: MattingNetwork,
    output: Path,
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    private: bool = False,
) -> Path:
    """Write ``net`` as ONNX to ``output`` (atomically; owner-only when ``private``, as caches are)."""
    atomic_write_bytes(output, onnx_bytes(net, precision=precision, opset=opset), private=private)
    return output


def export_torchscript(net: MattingNetwork, output: Path, *, precision: str = "fp32") -> Path:
    """Write ``net`` as a scripted TorchScript module to ``output`` (atomically)."""
    dtype = _check(net, precision, DEFAULT_OPSET)
    try:
        scripted = torch.jit.script(net.eval().to(dtype=dtype))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    except Exception as exc:  # torch.jit raises many kinds; report one line
        raise ExportError(f"TorchScript export ({precision}) failed: {exc}") from exc
    finally:
        net.float()
    atomic_write_bytes(output, buffer.getvalue())
    return output
