"""An RVM ONNX graph cut down to its small-resolution part: the guided filter's coefficients.

The refining graph (:func:`~rvm_node.engine.onnx_graph.policy_graphs`) takes
the full frame, resizes it down, runs the network, and lifts the result to
full resolution. :func:`coefficient_graph` keeps only the middle: it takes
the resized frame ``src_small`` (``[B, 3, h, w]``, float 0..1) and the four
states, and returns the refiner's per-pixel coefficients ``coef_a`` and
``coef_b`` (``[B, 4, h, w]``, for R, G, B and gray) and the next states.
Everything at full resolution is then done in one pass by
:mod:`rvm_node.engine.fullres`, from the frame as it arrived.

The coefficients are found by structure: ``a`` is the output of the deep
guided filter's last convolution (its weights ``refiner.conv.6.weight``, in
the official files and ours), ``b`` the ``Sub`` that takes ``a * mean_x``
from ``mean_y``; the resize down is the ``Resize`` that reads ``src``. A
graph without them (the fast guided filter has no learned convolution) has
no coefficient graph, and runs whole.
"""

from __future__ import annotations

import copy
from typing import Any

from rvm_node.engine.onnx_graph import prune, rename_value

__all__ = ["COEFFICIENTS", "NOT_SPLIT", "SMALL_INPUT", "coefficient_graph"]

SMALL_INPUT = "src_small"
COEFFICIENTS = ("coef_a", "coef_b")
_LAST_CONV = "refiner.conv.6.weight"
NOT_SPLIT = "this graph has no deep guided filter to split off"  # why coefficient_graph gave None
_STATES_OUT = ("r1o", "r2o", "r3o", "r4o")


def _coefficients(graph: Any) -> tuple[str, str] | None:
    """The values holding the refiner's ``a`` and ``b``, where the graph has them."""
    conv = next(
        (n for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] == _LAST_CONV),
        None,
    )
    if conv is None:
        return None
    a = conv.output[0]
    for mul in (n for n in graph.node if n.op_type == "Mul" and a in n.input):
        sub = next((n for n in graph.node if n.op_type == "Sub" and n.input[1] == mul.output[0]), None)
        if sub is not None:
            return a, sub.output[0]
    return None


def coefficient_graph(refining: Any) -> Any | None:
    """The small-resolution part of an always-refining RVM graph (see the module docstring), or None."""
    from onnx import helper

    found = _coefficients(refining.graph)
    down = next((n for n in refining.graph.node if n.op_type == "Resize" and n.input[0] == "src"), None)
    if found is None or down is None:
        return None
    model = copy.deepcopy(refining)
    graph = model.graph
    elem_type = next(i.type.tensor_type.elem_type for i in graph.input if i.name == "src")
    small = down.output[0]
    kept = [n for n in graph.node if small not in n.output]
    del graph.node[:]
    graph.node.extend(kept)
    rename_value(graph, small, SMALL_INPUT)
    for value, name in zip(found, COEFFICIENTS, strict=True):
        rename_value(graph, value, name)
    states = [o for o in graph.output if o.name in _STATES_OUT]
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(name, elem_type, ["batch", 4, "height", "width"])
            for name in COEFFICIENTS
        ]
        + states
    )
    prune(model)
    used = {i for n in graph.node for i in n.input}
    inputs = [i for i in graph.input if i.name in used]
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(SMALL_INPUT, elem_type, ["batch", 3, "height", "width"]))
    graph.input.extend(inputs)
    return model
