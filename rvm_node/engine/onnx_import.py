"""Import the weights of an official RVM ONNX file into ``MattingNetwork``.

The official export folded every BatchNorm into the convolution before it, and
most folded tensors lost their names (they are numbered). So the mapping is
made by graph structure: the ONNX graph's convolutions, in node order, are
matched one to one with the network's convolutions in the order they run, and
each pair must agree on kernel, stride, padding, dilation, groups and weight
shape. Every initializer that kept its parameter name must land on the parameter of
that name, which proves the alignment.

A folded convolution is stored in the official structure: the convolution
gets the folded weight and its BatchNorm becomes an identity (mean 0, variance
``1 - eps``, scale 1) carrying the folded bias. The ONNX graph has no
segmentation head, so ``project_seg`` is absent from the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from rvm_node.engine.network import MattingNetwork
from rvm_node.errors import WeightsFormatError

__all__ = ["SEGMENTATION_KEYS", "state_dict_from_onnx"]

SEGMENTATION_KEYS = ("project_seg.conv.weight", "project_seg.conv.bias")


def _conv_call_order(net: MattingNetwork) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """The network's convolutions in the order they run, each with the BatchNorm it feeds."""
    names = {module: name for name, module in net.named_modules()}
    calls: list[nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda m, _i, _o: calls.append(m))
        for module in net.modules()
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.rand(1, 3, 64, 64), downsample_ratio=0.5)
    finally:
        for hook in hooks:
            hook.remove()
    order: list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]] = []
    seen: set[nn.Module] = set()
    for index, module in enumerate(calls):
        if not isinstance(module, nn.Conv2d) or module in seen:
            continue
        seen.add(module)
        follower = calls[index + 1] if index + 1 < len(calls) else None
        bn = follower if module.bias is None and isinstance(follower, nn.BatchNorm2d) else None
        order.append((names[module], module, bn))
    return order


def _attr(node: object, name: str, default: list[int]) -> list[int]:
    import onnx

    for attribute in node.attribute:  # type: ignore[attr-defined]
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]
    return default


def state_dict_from_onnx(
    path: Path, variant: str, refiner: str = "deep_guided_filter"
) -> dict[str, torch.Tensor]:
    """Read an official ONNX file (fp32 or fp16) into a state dict of official structure.

    With the parameter-free fast refiner, the graph's trailing box-filter
    convolutions (fixed kernels, after the projection) carry no weights to import.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... on damaged files
        raise WeightsFormatError(f"{path}: not a readable ONNX model ({exc})") from exc
    if any(node.op_type == "BatchNormalization" for node in graph.node):
        raise WeightsFormatError(
            f"{path}: expected an RVM export with BatchNorm folded into its convolutions"
        )
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    onnx_convs = []
    seen_weights: set[str] = set()
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] not in seen_weights:
            seen_weights.add(node.input[1])
            onnx_convs.append(node)

    net = MattingNetwork(variant, refiner)
    order = _conv_call_order(net)
    if refiner == "fast_guided_filter" and len(onnx_convs) > len(order):
        onnx_convs = onnx_convs[: len(order)]
    if len(order) != len(onnx_convs):
        raise WeightsFormatError(
            f"{path}: expected {len(order)} distinct convolutions for RVM {variant}, found {len(onnx_convs)}"
        )
    state: dict[str, torch.Tensor] = {
        key: value.clone() for key, value in net.state_dict().items() if key not in SEGMENTATION_KEYS
    }
    for (name, conv, bn), node in zip(order, onnx_convs, strict=True):
        where = f"{path}: convolution {node.name or node.input[1]} (for {name})"
        weight_name = node.input[1]
        if weight_name not in inits:
            raise WeightsFormatError(f"{where}: weight {weight_name!r} is not an initializer")
        weight = inits[weight_name]
        expected = (
            tuple(conv.weight.shape),
            list(conv.stride),
            list(conv.dilation),
            [conv.groups],
            list(conv.padding) * 2,
        )
        found = (
            weight.shape,
            _attr(node, "strides", [1, 1]),
            _attr(node, "dilations", [1, 1]),
            _attr(node, "group", [1]),
            _attr(node, "pads", [0, 0, 0, 0]),
        )
        if expected != found:
            raise WeightsFormatError(
                f"{where}: expected (shape, strides, dilations, group, pads) {expected}, found {found}"
            )
        if weight_name in state and weight_name != f"{name}.weight":
            raise WeightsFormatError(f"{where}: named weight {weight_name!r} landed on {name}.weight")
        bias = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        state[f"{name}.weight"] = torch.from_numpy(weight.copy())
        if conv.bias is not None:
            if bias is None:
                raise WeightsFormatError(f"{where}: expected a bias")
            state[f"{name}.bias"] = torch.from_numpy(bias.copy())
        elif bn is not None:
            bn_name = _bn_name(net, bn)
            channels = weight.shape[0]
            state[f"{bn_name}.weight"] = torch.ones(channels)
            state[f"{bn_name}.bias"] = torch.from_numpy(
                bias.copy() if bias is not None else np.zeros(channels, np.float32)
            )
            state[f"{bn_name}.running_mean"] = torch.zeros(channels)
            state[f"{bn_name}.running_var"] = torch.full((channels,), 1.0 - bn.eps)
        elif bias is not None and np.any(bias != 0):
            raise WeightsFormatError(f"{where}: has a bias that {name} cannot hold")
    return state


def _bn_name(net: nn.Module, bn: nn.Module) -> str:
    for name, module in net.named_modules():
        if module is bn:
            return str(name)
    raise WeightsFormatError("internal: BatchNorm not found in the network")
