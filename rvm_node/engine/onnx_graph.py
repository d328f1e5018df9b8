"""Edits to RVM ONNX graphs that apply our refiner policy.

Official ONNX exports always run the refiner, even at ``downsample_ratio == 1``
where the official PyTorch model (and ours) skips it. Two ways to apply the
policy to such a graph:

* ``skip_refiner_at_unit_ratio`` adds an ``If`` that returns the unrefined
  matte at ratio 1. The graph stays self-contained; our exported files carry it.
* ``policy_graphs`` splits a graph into two plain graphs, one that always
  refines and one with the refiner removed. The onnxruntime backend runs the
  one the ratio calls for, so neither pays for the ``If`` (a copy of fgr and
  pha) nor, at ratio 1, for the refiner.
"""

from __future__ import annotations

import copy
from typing import Any

from rvm_node.errors import WeightsFormatError

__all__ = [
    "POLICY_KEY",
    "POLICY_VALUE",
    "freeze_ratio",
    "has_policy",
    "policy_graphs",
    "prune",
    "rename_value",
    "skip_refiner_at_unit_ratio",
]

POLICY_KEY = "rvm_node.unit_ratio"
POLICY_VALUE = "skip_refiner"
_PROJECT_MAT = "project_mat.conv.weight"
_REFINED = {"fgr": "rvm_node_fgr_refined", "pha": "rvm_node_pha_refined"}
_POLICY_NODES = ("rvm_node_one_f32", "rvm_node_unit_ratio")


def has_policy(model: Any) -> bool:
    return any(p.key == POLICY_KEY and p.value == POLICY_VALUE for p in model.metadata_props)


def _coarse_outputs(graph: Any, where: str) -> tuple[str, str]:
    """The projection's (fgr_residual, pha) before the refiner."""
    projection = next(
        (n for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] == _PROJECT_MAT),
        None,
    )
    split = next(
        (
            n
            for n in graph.node
            if projection is not None and n.op_type == "Split" and n.input[0] == projection.output[0]
        ),
        None,
    )
    outputs = {o.name for o in graph.output}
    if split is None or not {"fgr", "pha"} <= outputs:
        raise WeightsFormatError(
            f"{where}: expected an RVM graph with a {_PROJECT_MAT} projection and fgr/pha outputs"
        )
    return split.output[0], split.output[1]


def _src_type(graph: Any) -> int:
    return int(next(i.type.tensor_type.elem_type for i in graph.input if i.name == "src"))


def rename_value(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, value in enumerate(node.output):
            if value == old:
                node.output[i] = new
        for i, value in enumerate(node.input):
            if value == old:
                node.input[i] = new


def _const(name: str, value: float, elem_type: int) -> Any:
    from onnx import helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, elem_type, [], [value]))


def _unrefined_nodes(fgr_residual: str, pha_coarse: str, elem_type: int, fgr: str, pha: str) -> list[Any]:
    from onnx import helper

    return [
        _const("rvm_node_lo", 0.0, elem_type),
        _const("rvm_node_hi", 1.0, elem_type),
        helper.make_node("Add", [fgr_residual, "src"], ["rvm_node_fgr_raw"]),
        helper.make_node("Clip", ["rvm_node_fgr_raw", "rvm_node_lo", "rvm_node_hi"], [fgr]),
        helper.make_node("Clip", [pha_coarse, "rvm_node_lo", "rvm_node_hi"], [pha]),
    ]


def skip_refiner_at_unit_ratio(model: Any, where: str = "model") -> Any:
    """Return ``model`` (an ``onnx.ModelProto``, edited in place) with an ``If`` that skips the refiner at ratio 1."""
    import onnx
    from onnx import TensorProto, helper

    if has_policy(model):
        return model
    graph = model.graph
    fgr_residual, pha_coarse = _coarse_outputs(graph, where)
    elem_type = _src_type(graph)
    for name, refined in _REFINED.items():
        rename_value(graph, name, refined)

    def branch(name: str, nodes: list[Any], fgr: str, pha: str) -> Any:
        outputs = [helper.make_tensor_value_info(v, elem_type, None) for v in (fgr, pha)]
        return helper.make_graph(nodes, name, [], outputs)

    # An If, not a Where: below ratio 1 the coarse matte is smaller than the frame,
    # so it may only be touched in the branch taken at ratio 1.
    unrefined = branch(
        "rvm_node_unrefined",
        _unrefined_nodes(fgr_residual, pha_coarse, elem_type, "rvm_node_fgr", "rvm_node_pha"),
        "rvm_node_fgr",
        "rvm_node_pha",
    )
    refined = branch(
        "rvm_node_refined",
        [
            helper.make_node("Identity", [_REFINED["fgr"]], ["rvm_node_fgr_out"]),
            helper.make_node("Identity", [_REFINED["pha"]], ["rvm_node_pha_out"]),
        ],
        "rvm_node_fgr_out",
        "rvm_node_pha_out",
    )
    graph.node.extend(
        [
            _const(_POLICY_NODES[0], 1.0, TensorProto.FLOAT),
            helper.make_node("Equal", ["downsample_ratio", _POLICY_NODES[0]], [_POLICY_NODES[1]]),
            helper.make_node(
                "If", [_POLICY_NODES[1]], ["fgr", "pha"], then_branch=unrefined, else_branch=refined
            ),
        ]
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = POLICY_KEY, POLICY_VALUE
    onnx.checker.check_model(model)
    return model


def prune(model: Any) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
            for attribute in node.attribute:  # values a subgraph reads from this scope
                if attribute.g is not None:
                    for inner in attribute.g.node:
                        needed.update(inner.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def policy_graphs(model: Any, where: str = "model") -> tuple[Any, Any]:
    """Two plain graphs from an RVM graph: (always refines, never refines)."""
    refined = copy.deepcopy(model)
    graph = refined.graph
    if has_policy(refined):
        keep = [n for n in graph.node if n.op_type != "If" and not set(n.output) & set(_POLICY_NODES)]
        del graph.node[:]
        graph.node.extend(keep)
        for name, value in _REFINED.items():
            rename_value(graph, value, name)
        props = [p for p in refined.metadata_props if p.key != POLICY_KEY]
        del refined.metadata_props[:]
        refined.metadata_props.extend(props)
    fgr_residual, pha_coarse = _coarse_outputs(graph, where)

    unrefined = copy.deepcopy(refined)
    graph = unrefined.graph
    keep = [n for n in graph.node if not {"fgr", "pha"} & set(n.output)]
    del graph.node[:]
    graph.node.extend(keep)
    graph.node.extend(_unrefined_nodes(fgr_residual, pha_coarse, _src_type(graph), "fgr", "pha"))
    prune(unrefined)
    return refined, unrefined


def freeze_ratio(model: Any, ratio: float) -> Any:
    """A copy of ``model`` with ``downsample_ratio`` a constant, so runtimes with static shapes can fold
    the resize and everything sized from it."""
    import numpy as np
    from onnx import numpy_helper

    frozen = copy.deepcopy(model)
    graph = frozen.graph
    inputs = [i for i in graph.input if i.name != "downsample_ratio"]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.append(numpy_helper.from_array(np.asarray([ratio], np.float32), "downsample_ratio"))
    return frozen
