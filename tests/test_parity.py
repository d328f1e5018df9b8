"""Our engine against the official model, on 30+ real frames with the state carried.

Bounds: alpha and foreground max-abs <= 2e-4 on every frame (the official
PyTorch code itself reaches 2.7e-5 against the official ONNX). The measured
figures are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rvm_node.engine.loader import load_model
from tests.helpers import BOUND, official_reference, per_frame_max, run_frames

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

RATIOS = (0.4, 0.75)


@pytest.fixture(scope="module")
def frames(clip_frames_2x: np.ndarray) -> np.ndarray:
    return clip_frames_2x[:30]


@pytest.fixture(scope="module", params=RATIOS)
def reference(
    request: pytest.FixtureRequest, official_onnx: Path, frames: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    fgr, pha = official_reference(official_onnx, frames, request.param)
    assert pha.mean() > 0.1, "the clip must show a person, or parity proves nothing"
    return request.param, fgr, pha


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("torch eager", {"backend": "torch"}),
        ("torch frozen TorchScript", {"backend": "torch", "options": "freeze"}),
        ("onnxruntime (the default: the official file in our backend)", {"backend": "onnxruntime"}),
        ("our ONNX export in onnxruntime", {"backend": "onnxruntime", "weights": "imported"}),
    ],
)
def test_matches_official_onnx(name: str, kwargs: dict, frames: np.ndarray, reference: tuple) -> None:
    from rvm_node.engine.loader import imported_official_weights
    from rvm_node.engine.torch_backend import TorchOptions

    ratio, ref_fgr, ref_pha = reference
    if kwargs.get("options") == "freeze":
        kwargs = {**kwargs, "options": TorchOptions(torchscript="freeze")}
    if kwargs.get("weights") == "imported":  # the official weights through PyTorch, then our export
        kwargs = {**kwargs, "weights": imported_official_weights()}
    fgr, pha = run_frames(load_model("mobilenetv3", **kwargs), frames, ratio)
    pha_err, fgr_err = per_frame_max(pha, ref_pha), per_frame_max(fgr, ref_fgr)
    print(
        f"\n{name} vs official ONNX @ ratio {ratio}, {len(frames)} frames: "
        f"pha max {pha_err.max():.2e} (mean over frames {pha_err.mean():.2e}), fgr max {fgr_err.max():.2e}"
    )
    assert pha_err.max() <= BOUND
    assert fgr_err.max() <= BOUND


def test_unit_ratio_policy_is_the_same_on_every_backend(official_onnx: Path, frames: np.ndarray) -> None:
    """At ratio 1 every backend skips the refiner, the official ONNX file included."""
    torch_fgr, torch_pha = run_frames(load_model(backend="torch"), frames[:10], 1.0)
    for kwargs in ({"backend": "onnxruntime"}, {"backend": "onnxruntime", "weights": official_onnx}):
        fgr, pha = run_frames(load_model(**kwargs), frames[:10], 1.0)
        assert per_frame_max(pha, torch_pha).max() <= BOUND
        assert per_frame_max(fgr, torch_fgr).max() <= BOUND
    # The official ONNX run as published refines at ratio 1 and gives another matte.
    _, raw_pha = official_reference(official_onnx, frames[:10], 1.0)
    print(
        f"\nofficial ONNX as published vs policy at ratio 1: pha max {per_frame_max(raw_pha, torch_pha).max():.3f}"
    )
    assert per_frame_max(raw_pha, torch_pha).max() > 0.05
