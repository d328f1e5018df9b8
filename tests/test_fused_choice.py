"""When a backend splits the refiner off (``fused_refiner``): the default falls back to the whole model where
the split cannot be made, asking for it there is a clear error, and a graph that cannot be split still runs,
with the official numbers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

from rvm_node.engine.backend import fused_refiner_choice
from rvm_node.engine.onnx_coefficients import coefficient_graph
from rvm_node.engine.torch_backend import TorchBackend, TorchOptions
from rvm_node.errors import InvalidInputError


@pytest.mark.parametrize(
    ("asked", "default", "why_not", "fused"),
    [
        (None, True, None, True),
        (None, False, None, False),
        (None, True, "no split", False),  # the default falls back
        (True, False, None, True),
        (False, True, None, False),
        (False, True, "no split", False),
    ],
)
def test_the_choice(asked: bool | None, default: bool, why_not: str | None, fused: bool) -> None:
    assert fused_refiner_choice(asked, default, why_not, "model") is fused


def test_asking_for_a_split_that_cannot_be_made_names_why() -> None:
    with pytest.raises(InvalidInputError, match=r"^model: fused_refiner: no split here$"):
        fused_refiner_choice(True, True, "no split here", "model")


def test_a_torch_module_without_coefficients_runs_whole_or_refuses_the_split() -> None:
    plain = nn.Conv2d(3, 3, 1)  # a stand-in for an official TorchScript file: no coefficients method
    assert not TorchBackend(plain, variant="mobilenetv3").fused_refiner
    with pytest.raises(InvalidInputError, match="fused_refiner: this TorchScript module has no coefficients"):
        TorchBackend(plain, variant="mobilenetv3", options=TorchOptions(fused_refiner=True))


def _without_deep_guided_filter(official_onnx: Path) -> Any:
    """The official graph with its refiner's last convolution under another name: nothing to split off."""
    import onnx

    model = onnx.load(str(official_onnx))
    edited = copy.deepcopy(model)
    for tensor in edited.graph.initializer:
        if tensor.name == "refiner.conv.6.weight":
            tensor.name = "renamed.weight"
    for node in edited.graph.node:
        node.input[:] = ["renamed.weight" if i == "refiner.conv.6.weight" else i for i in node.input]
    return model, edited


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_graph_without_the_deep_guided_filter_runs_whole_with_the_official_numbers(
    official_onnx: Path, clip_frames: np.ndarray, tmp_path: Path, backend: str
) -> None:
    import onnx

    from rvm_node.engine.loader import load_model
    from rvm_node.engine.onnx_graph import policy_graphs
    from rvm_node.engine.openvino_backend import OpenVinoOptions
    from rvm_node.engine.ort_backend import OrtOptions

    pytest.importorskip(backend)
    model, edited = _without_deep_guided_filter(official_onnx)
    assert coefficient_graph(policy_graphs(model, "m")[0]) is not None
    assert coefficient_graph(policy_graphs(edited, "m")[0]) is None
    path = tmp_path / "edited.onnx"
    onnx.save(edited, str(path))
    options: Any = OrtOptions if backend == "onnxruntime" else OpenVinoOptions
    with pytest.raises(
        InvalidInputError, match=r"edited\.onnx.*fused_refiner: this graph has no deep guided"
    ):
        load_model(backend=backend, weights=path, options=options(fused_refiner=True))
    whole = load_model(backend=backend, weights=path).new_session(0.5).process(clip_frames[:4])
    fused = load_model(backend=backend, weights=official_onnx).new_session(0.5).process(clip_frames[:4])
    reference = load_model(
        backend="onnxruntime", weights=official_onnx, options=OrtOptions(fused_refiner=False)
    )
    official = reference.new_session(0.5).process(clip_frames[:4])
    for out in (whole, fused):  # 2e-4: fp32 against the official graph in onnxruntime, as the parity tests
        assert float(np.abs(out.pha - official.pha).max()) <= 2e-4
        assert float(np.abs(out.fgr - official.fgr).max()) <= 2e-4
