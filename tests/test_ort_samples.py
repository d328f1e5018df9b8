"""Sample conversions inside the onnxruntime graph (what a CUDA node runs) equal the host rule to the bit."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from rvm_node import load_model
from rvm_node.engine.onnx_samples import _input_nodes, _output_nodes
from rvm_node.engine.ort_backend import OrtOptions
from rvm_node.engine.samples import OutputSpec, to_samples, to_unit_float
from rvm_node.errors import InvalidInputError
from tests.helpers import FORMATS, edge_values

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender


def _run_nodes(nodes: list[Any], source: np.ndarray, source_type: int, target_type: int) -> np.ndarray:
    """A graph of just ``nodes`` (reading ``src``, writing ``out``), run in onnxruntime on the CPU."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(
        nodes,
        "conversion",
        [helper.make_tensor_value_info("src", source_type, [None])],
        [helper.make_tensor_value_info("out", target_type, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"src": source})[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_graph_quantisation_equals_the_host_rule(fmt: str) -> None:
    from onnx import TensorProto

    from rvm_node.engine.onnx_samples import _onnx_type

    values = edge_values()  # every rounding edge, 0, 1 and values beyond both
    out = _run_nodes(
        _output_nodes("out", TensorProto.FLOAT, fmt, "src"), values, TensorProto.FLOAT, _onnx_type(fmt)
    )  # type: ignore[arg-type]
    host = to_samples(values, fmt)  # type: ignore[arg-type]
    assert out.dtype == host.dtype and np.array_equal(out, host)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_graph_scaling_of_raw_frames_equals_the_host_rule(dtype: type) -> None:
    from onnx import TensorProto

    raw = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    source_type = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.UINT16
    out = _run_nodes(
        _input_nodes(np.dtype(dtype).name, TensorProto.FLOAT, "out"), raw, source_type, TensorProto.FLOAT
    )  # type: ignore[arg-type]
    assert np.array_equal(out, to_unit_float(raw))


@pytest.fixture(scope="module")
def backends() -> tuple[Any, Any]:
    """The same model with the conversions in the graph and on the host, run whole (as on a GPU: below
    ratio 1 a CPU runs the network's small-resolution part and converts in ``fullres``)."""
    whole = OrtOptions(fused_refiner=False, max_sessions=32)
    in_graph = load_model(backend="onnxruntime", options=replace(whole, samples_in_graph=True))
    on_host = load_model(backend="onnxruntime", options=replace(whole, samples_in_graph=False))
    return in_graph, on_host


def _inputs(frames: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "uint8": frames,
        "uint16": frames.astype(np.uint16) * 257 + 3,
        "float16": (frames / 255).astype(np.float16),
        "float32": frames / np.float32(255),
    }


@pytest.mark.parametrize(("src_format", "fmt"), list(itertools.product(FORMATS, FORMATS)))
def test_in_graph_conversion_equals_the_host_path(
    backends: tuple[Any, Any], clip_frames: np.ndarray, src_format: str, fmt: str
) -> None:
    in_graph, on_host = backends
    assert in_graph.samples_in_graph and not on_host.samples_in_graph
    index = FORMATS.index(src_format) + FORMATS.index(fmt)
    foreground, ratio = index % 2 == 0, (0.5, 1.0)[index // 2 % 2]  # both planes, and both ratio rules
    spec = OutputSpec(foreground, fmt)  # type: ignore[arg-type]
    src = _inputs(clip_frames[:3])[src_format]
    assert in_graph.prepare(src).dtype == src.dtype  # frames are bound as they arrived
    ours = in_graph.new_session(ratio, spec)
    reference = on_host.new_session(ratio, spec)
    for t in range(0, 3, 2):  # a chunk of two, then one: the state carries over
        a, b = ours.process(src[t : t + 2]), reference.process(src[t : t + 2])
        assert a.pha.dtype == np.dtype(fmt) and np.array_equal(a.pha, b.pha)
        if foreground:
            assert a.fgr is not None and b.fgr is not None
            assert a.fgr.dtype == np.dtype(fmt) and np.array_equal(a.fgr, b.fgr)
        else:
            assert a.fgr is None
    for x, y in zip(ours.snapshot().arrays(), reference.snapshot().arrays(), strict=True):
        assert np.array_equal(x, y)


def test_a_graph_without_the_foreground_does_not_compute_it(backends: tuple[Any, Any]) -> None:
    in_graph, _ = backends
    session = in_graph._session(False, "uint8", OutputSpec(False, "uint16"))
    assert [o.name for o in session.get_outputs()] == ["pha", "r1o", "r2o", "r3o", "r4o"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].type == "tensor(uint16)"


def test_sessions_are_kept_in_a_bounded_cache(clip_frames: np.ndarray) -> None:
    backend = load_model(backend="onnxruntime", options=OrtOptions(max_sessions=2, fused_refiner=False))
    for fmt in ("uint8", "uint16", "float16"):
        backend.new_session(0.5, OutputSpec(False, fmt)).process(clip_frames[:1])  # type: ignore[arg-type]
    assert len(backend._sessions) == 2
    assert [key[2].sample_format for key in backend._sessions] == ["uint16", "float16"]


def test_fp16_on_the_cpu_converts_on_the_host() -> None:
    assert load_model(backend="onnxruntime").samples_in_graph
    assert not load_model(backend="onnxruntime", precision="fp16").samples_in_graph
    assert load_model(
        backend="onnxruntime", precision="fp16", options=OrtOptions(samples_in_graph=True)
    ).samples_in_graph


def test_frames_of_another_type_are_refused(backends: tuple[Any, Any], clip_frames: np.ndarray) -> None:
    in_graph, _ = backends
    with pytest.raises(InvalidInputError, match="int32"):
        in_graph.new_session(0.5).process(clip_frames[:1].astype(np.int32))
