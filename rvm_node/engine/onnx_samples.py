"""Graph edits that let an RVM ONNX graph take samples in and give samples out.

``with_samples`` puts the conversions of :mod:`rvm_node.engine.samples` into
the graph itself: ``src`` accepts the frames as they arrived (uint8, uint16,
float16 or float32) and ``fgr``/``pha`` come out in the stream's sample
format, with ``fgr`` left out when the stream does not need it. On a GPU, the
frames then cross to the device at their own size and only the asked-for
planes come back, already quantised. The nodes compute the host rules in the
same float32 operations (integers times ``float32(1 / max)``; clip to 0..1,
times ``max``, round half to even), so the numbers equal the host path's to
the bit, which the CPU tests check.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from rvm_node.engine.onnx_graph import prune, rename_value
from rvm_node.engine.samples import OutputSpec, SampleFormat

__all__ = ["with_samples"]

_PREFIX = "rvm_node_samples_"


def _onnx_type(fmt: SampleFormat) -> int:
    from onnx import TensorProto

    return {
        "uint8": TensorProto.UINT8,
        "uint16": TensorProto.UINT16,
        "float16": TensorProto.FLOAT16,
        "float32": TensorProto.FLOAT,
    }[fmt]


def _scalar(name: str, value: float) -> Any:
    from onnx import TensorProto, helper

    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [value])
    )


def _cast(source: str, target: str, to: int) -> Any:
    from onnx import helper

    return helper.make_node("Cast", [source], [target], to=to)


def _input_nodes(fmt: SampleFormat, model_type: int, src: str) -> list[Any]:
    """``src`` as ``fmt`` samples to the model's float type, by the host rule."""
    from onnx import TensorProto, helper

    nodes: list[Any] = []
    value = "src"
    if fmt in ("uint8", "uint16"):
        top = float(np.float32(1 / np.iinfo(fmt).max))
        nodes += [
            _cast(value, f"{_PREFIX}src_f32", TensorProto.FLOAT),
            _scalar(f"{_PREFIX}src_scale", top),
            helper.make_node("Mul", [f"{_PREFIX}src_f32", f"{_PREFIX}src_scale"], [f"{_PREFIX}src_unit"]),
        ]
        value = f"{_PREFIX}src_unit"
        if model_type == TensorProto.FLOAT:
            nodes[-1].output[0] = src
            return nodes
    nodes.append(_cast(value, src, model_type))
    return nodes


def _output_nodes(name: str, model_type: int, fmt: SampleFormat, inner: str) -> list[Any]:
    """The model's ``inner`` plane as the output ``name`` in ``fmt``, by the host rule."""
    from onnx import TensorProto, helper

    target = _onnx_type(fmt)
    if fmt in ("float16", "float32"):
        return [_cast(inner, name, target)]
    nodes: list[Any] = []
    value = inner
    if model_type != TensorProto.FLOAT:
        nodes.append(_cast(inner, f"{_PREFIX}{name}_f32", TensorProto.FLOAT))
        value = f"{_PREFIX}{name}_f32"
    top = float(np.iinfo(fmt).max)
    nodes += [
        _scalar(f"{_PREFIX}{name}_lo", 0.0),
        _scalar(f"{_PREFIX}{name}_hi", 1.0),
        _scalar(f"{_PREFIX}{name}_top", top),
        helper.make_node(
            "Clip", [value, f"{_PREFIX}{name}_lo", f"{_PREFIX}{name}_hi"], [f"{_PREFIX}{name}_clipped"]
        ),
        helper.make_node(
            "Mul", [f"{_PREFIX}{name}_clipped", f"{_PREFIX}{name}_top"], [f"{_PREFIX}{name}_scaled"]
        ),
        helper.make_node("Round", [f"{_PREFIX}{name}_scaled"], [f"{_PREFIX}{name}_rounded"]),
        _cast(f"{_PREFIX}{name}_rounded", name, target),
    ]
    return nodes


def with_samples(model: Any, src_format: SampleFormat, outputs: OutputSpec) -> Any:
    """A copy of ``model`` (an RVM ``onnx.ModelProto``) taking ``src_format`` frames, giving ``outputs``.

    The states and ``downsample_ratio`` keep their types; ``fgr`` is dropped
    (with what only it needs) unless ``outputs.foreground``.
    """
    import onnx

    edited = copy.deepcopy(model)
    graph = edited.graph
    src_input = next(i for i in graph.input if i.name == "src")
    model_type = int(src_input.type.tensor_type.elem_type)
    nodes: list[Any] = []
    if _onnx_type(src_format) != model_type:
        rename_value(graph, "src", f"{_PREFIX}src_model")
        src_input.type.tensor_type.elem_type = _onnx_type(src_format)
        nodes = _input_nodes(src_format, model_type, f"{_PREFIX}src_model")
    planes = ("fgr", "pha") if outputs.foreground else ("pha",)
    tail: list[Any] = []
    for name in planes:
        if _onnx_type(outputs.sample_format) == model_type:
            continue
        inner = f"{_PREFIX}{name}_model"
        rename_value(graph, name, inner)
        tail += _output_nodes(name, model_type, outputs.sample_format, inner)
        output = next(o for o in graph.output if o.name == name)
        output.type.tensor_type.elem_type = _onnx_type(outputs.sample_format)
    if not outputs.foreground:
        kept = [o for o in graph.output if o.name != "fgr"]
        del graph.output[:]
        graph.output.extend(kept)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body + tail)
    prune(edited)
    onnx.checker.check_model(edited)
    return edited
