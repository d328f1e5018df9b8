"""Sample formats: one conversion rule on the host, on a torch device and in every backend's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvm_node import load_model
from rvm_node.engine.samples import OutputSpec, finest_format, to_samples, to_unit_float
from rvm_node.engine.torch_backend import from_samples_tensor, to_samples_tensor
from rvm_node.errors import InvalidInputError
from tests.helpers import FORMATS, edge_values


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_conversion_equals_the_host_rule(fmt: str) -> None:
    values = edge_values()
    host = to_samples(values, fmt)  # type: ignore[arg-type]
    device = to_samples_tensor(torch.from_numpy(values), fmt).numpy()
    assert device.dtype == host.dtype and np.array_equal(device, host)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_raw_frames_scaled_on_the_device_equal_the_host_scaling(dtype: type) -> None:
    top = np.iinfo(dtype).max
    raw = np.arange(top + 1, dtype=dtype)
    host = to_unit_float(raw)
    assert np.array_equal(from_samples_tensor(torch.from_numpy(raw), float(top)).numpy(), host)


def test_the_rule_rounds_half_to_even_and_clips() -> None:
    assert to_samples(np.array([0.5 / 255, 1.5 / 255, -1.0, 2.0], np.float32), "uint8").tolist() == [
        0,
        2,
        0,
        255,
    ]
    assert to_samples(np.array([0.25], np.float32), "float16").dtype == np.float16
    with pytest.raises(InvalidInputError, match="cannot convert uint8 samples to uint16"):
        to_samples(np.zeros(2, np.uint8), "uint16")
    with pytest.raises(InvalidInputError, match="sample_format: expected one of"):
        OutputSpec(sample_format="int8")  # type: ignore[arg-type]
    assert finest_format(["uint16", "uint16"]) == "uint16"
    assert finest_format(["uint8", "uint16"]) == "float32"


@pytest.mark.slow  # the real model
@pytest.mark.parametrize("backend_name", ["torch", "onnxruntime"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_backends_return_what_the_spec_asks_for(backend_name: str, fmt: str, clip_frames: np.ndarray) -> None:
    backend = load_model(backend=backend_name)
    spec = OutputSpec(foreground=fmt != "uint8", sample_format=fmt)  # type: ignore[arg-type]
    floats = backend.new_session(0.5).process(clip_frames[:2])
    out = backend.new_session(0.5, spec).process(clip_frames[:2])
    assert out.pha.dtype == np.dtype(fmt)
    assert np.array_equal(out.pha, to_samples(floats.pha, fmt))  # type: ignore[arg-type]
    if spec.foreground:
        assert out.fgr is not None and np.array_equal(out.fgr, to_samples(floats.fgr, fmt))  # type: ignore[arg-type]
    else:
        assert out.fgr is None


@pytest.mark.slow  # the real model
def test_torch_raw_input_path_equals_host_float_input(clip_frames: np.ndarray) -> None:
    """A GPU backend takes uint8 frames and scales them on the device; on the CPU the same code runs here."""
    backend = load_model(backend="torch")
    spec = OutputSpec()
    raw = clip_frames[None, :2]
    fgr_a, pha_a, _ = backend.infer(raw, None, 0.5, spec)  # raw samples, scaled inside infer
    fgr_b, pha_b, _ = backend.infer(backend.prepare(raw), None, 0.5, spec)  # scaled by prepare on the host
    assert np.array_equal(pha_a, pha_b) and np.array_equal(fgr_a, fgr_b)


@pytest.mark.slow  # the real model
def test_torch_state_stacking_equals_the_host_default(clip_frames: np.ndarray) -> None:
    from rvm_node.engine.backend import MattingBackend

    backend = load_model(backend="torch")
    states = []
    for start in (0, 5):
        session = backend.new_session(0.5)
        session.process(clip_frames[start : start + 1])
        states.append(session.state)
    stacked = backend.stack_states(states)
    by_host = MattingBackend.stack_states(backend, states)
    assert all(torch.equal(a, b) for a, b in zip(stacked, by_host, strict=True))
    split = backend.split_state(stacked, 2)
    assert all(torch.equal(a, b) for a, b in zip(split[1], states[1], strict=True))
    assert all(not t.any() for t in backend.zero_state_like(states[0]))
    with pytest.raises(InvalidInputError, match="expected a batch of 3"):
        backend.split_state(stacked, 3)
