"""Recurrent-state shapes and the check of states that come from outside (snapshots, checkpoints)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest
import torch

from rvm_node import load_model
from rvm_node.engine.network.matting import MattingNetwork
from rvm_node.engine.states import RecurrentState, check_state, state_shapes
from rvm_node.errors import StateMismatchError

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender


@pytest.fixture(scope="module")
def backend() -> Any:
    return load_model(backend="onnxruntime")


@pytest.mark.parametrize(
    ("size", "ratio"), [((144, 176), 0.5), ((101, 77), 0.37), ((288, 352), 1.0), ((99, 250), 0.123)]
)
def test_the_shapes_are_what_the_official_model_makes(
    backend: Any, size: tuple[int, int], ratio: float
) -> None:
    height, width = size
    session = backend.new_session(ratio)
    session.process(np.zeros((1, 3, height, width), np.uint8))
    snapshot = session.snapshot()
    assert snapshot is not None
    assert [tuple(a.shape) for a in snapshot.arrays()] in state_shapes("mobilenetv3", size, ratio)
    check_state(snapshot, "mobilenetv3")  # a real snapshot passes


@pytest.mark.parametrize(("size", "ratio"), [((101, 77), 0.37), ((64, 48), 1.0)])
def test_the_resnet50_shapes_are_what_the_network_makes(size: tuple[int, int], ratio: float) -> None:
    network = MattingNetwork("resnet50").eval()  # untrained: only the shapes matter here
    with torch.inference_mode():
        *_, r1, r2, r3, r4 = network(torch.zeros(1, 3, *size), downsample_ratio=ratio)
    assert [tuple(t.shape) for t in (r1, r2, r3, r4)] in state_shapes("resnet50", size, ratio)


def _broken(snapshot: RecurrentState, case: str) -> RecurrentState:
    r1, r2, r3, r4 = snapshot.arrays()
    if case == "channels":
        return dataclasses.replace(snapshot, r1=r1[:, :5])
    if case == "spatial":
        return dataclasses.replace(snapshot, r3=r3[:, :, :-1])
    if case == "batch":
        return dataclasses.replace(snapshot, r2=np.concatenate([r2, r2]))
    if case == "rank":
        return dataclasses.replace(snapshot, r1=r1[0])
    if case == "nan":
        bad = r4.copy()
        bad[0, 0, 0, 0] = np.nan
        return dataclasses.replace(snapshot, r4=bad)
    if case == "inf":
        return dataclasses.replace(snapshot, r1=np.full_like(r1, np.inf))
    if case == "variant":
        return dataclasses.replace(snapshot, variant="resnet50")
    if case == "frames":
        return dataclasses.replace(snapshot, frames=-1)
    if case == "size":
        return dataclasses.replace(snapshot, frame_size=(288, 352))
    return dataclasses.replace(snapshot, downsample_ratio=float(case.removeprefix("ratio ")))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("channels", "do not fit mobilenetv3"),
        ("spatial", "do not fit"),
        ("batch", "do not fit"),
        ("rank", "do not fit"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("variant", "the state is for resnet50"),
        ("frames", "frames must be 0 or more"),
        ("size", "do not fit mobilenetv3 at 352x288"),
        ("ratio 0", "in (0, 1]"),
        ("ratio -1", "in (0, 1]"),
        ("ratio nan", "got nan"),
        ("ratio 2", "in (0, 1]"),
        ("ratio 8", "in (0, 1]"),
        ("ratio 0.25", "do not fit"),
        ("ratio 0.001", "smaller than one pixel"),
    ],
)
def test_restore_refuses_a_state_that_does_not_fit(
    backend: Any, clip_frames: np.ndarray, case: str, message: str
) -> None:
    session = backend.new_session(0.5)
    session.process(clip_frames[:1])
    snapshot = session.snapshot()
    assert snapshot is not None
    target = backend.new_session()
    with pytest.raises(StateMismatchError, match=re.escape(message)):
        target.restore(_broken(snapshot, case))
    assert target.state is None  # nothing was taken
