"""Parity with the official model at the sizes VFX delivers, for every backend and every plane combination.

Real footage (the example clip, resized up with our bilinear resize) at 1920x1080 and 3840x2160, and at sizes
whose edges fall anywhere: odd sizes, sizes that are no multiple of the full-resolution stage's tiles and
blocks, ratios where the small size rounds down. The official ONNX file in a plain onnxruntime session is the
reference; each backend runs the frames as a decoder gives them (uint8) and returns the planes a stream asks
for. Bounds: alpha within 2e-4 of the official float (foreground within 1e-3), plus half a quantisation step
for integer and half-float samples (the official float, rounded by the one rule, is at most that far).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rvm_node.engine import fullres
from rvm_node.engine.loader import imported_official_weights, load_model
from rvm_node.engine.samples import OutputSpec
from rvm_node.errors import BackendError
from rvm_node.io.resize import resize_image
from tests.helpers import official_reference

pytestmark = pytest.mark.slow

ALPHA_BOUND, FOREGROUND_BOUND = 2e-4, 1e-3
SIZES = [  # (width, height, ratio, frames)
    (1920, 1080, 0.25, 8),
    (3840, 2160, 0.125, 4),
    (1919, 1079, 0.25, 4),  # odd: the small size rounds down (479x269), rows fall across tiles and blocks
    (353, 287, 0.37, 8),
    (97, 3, 0.4),  # three rows: the small size is one pixel high
]
OUTPUTS = {
    "alpha uint16": OutputSpec(False, "uint16"),
    "alpha uint8": OutputSpec(False, "uint8"),
    "alpha + foreground float32": OutputSpec(True, "float32"),
    "alpha + foreground float16": OutputSpec(True, "float16"),
    "alpha + foreground uint16": OutputSpec(True, "uint16"),
}


def _backends(official_onnx: Path) -> dict[str, Callable[[], Any]]:
    import importlib.util

    backends = {
        "onnxruntime, the official file": lambda: load_model(backend="onnxruntime"),
        "onnxruntime, our export": lambda: load_model(
            backend="onnxruntime", weights=imported_official_weights()
        ),
        "torch eager": lambda: load_model(backend="torch"),
    }
    if importlib.util.find_spec("openvino") is not None:
        backends["openvino, the official file"] = lambda: load_model(backend="openvino")
        backends["openvino, our export"] = lambda: load_model(
            backend="openvino", weights=imported_official_weights()
        )
    return backends


@pytest.fixture(scope="module")
def footage(clip_frames: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The clip's frames at every size, ``[T, 3, H, W]`` uint8 views of interleaved samples."""
    out = {}
    for width, height, _, *count in SIZES:
        frames = [
            resize_image(f.transpose(1, 2, 0), (width, height)) for f in clip_frames[: (count or [4])[0]]
        ]
        out[(width, height)] = np.stack(frames).transpose(0, 3, 1, 2)
    return out


def _bound(values: np.ndarray, base: float) -> float:
    """``base`` plus half a step of the samples' type near 1 (how far rounding the official float moves it)."""
    if values.dtype.kind == "u":
        return base + 0.5 / np.iinfo(values.dtype).max
    return base + (2.0**-12 if values.dtype == np.float16 else 0.0)


def _unit(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64) / (np.iinfo(values.dtype).max if values.dtype.kind == "u" else 1.0)


@pytest.mark.parametrize(("width", "height", "ratio"), [s[:3] for s in SIZES])
def test_every_backend_and_every_plane_combination_matches_the_official_model(
    official_onnx: Path, footage: dict[tuple[int, int], np.ndarray], width: int, height: int, ratio: float
) -> None:
    frames = footage[(width, height)]
    ref_fgr, ref_pha = official_reference(official_onnx, frames, ratio)
    worst: list[str] = []
    for name, make in _backends(official_onnx).items():
        backend = make()
        if name.startswith("openvino") and min(fullres.small_size(height, width, ratio)) < 2:
            with pytest.raises(
                BackendError, match=r"^openvino: cannot compile the small-resolution part at 38x1"
            ):
                backend.new_session(ratio).process(frames[:1])
            continue  # its pools need two rows and two columns at the small size; onnxruntime and torch run it
        for label, outputs in OUTPUTS.items():
            session = backend.new_session(ratio, outputs)
            out = [session.process(frames[t : t + 1]) for t in range(len(frames))]
            pha = np.concatenate([o.pha for o in out])
            assert pha.dtype == outputs.dtype and pha.shape == ref_pha.shape
            pha_err = float(np.abs(_unit(pha) - ref_pha).max())
            line = f"{name}, {label}: alpha {pha_err:.2e}"
            assert pha_err <= _bound(pha, ALPHA_BOUND), line
            if outputs.foreground:
                fgr = np.concatenate([o.fgr for o in out if o.fgr is not None])
                assert fgr.shape == ref_fgr.shape
                fgr_err = float(np.abs(_unit(fgr) - ref_fgr).max())
                line += f", foreground {fgr_err:.2e}"
                assert fgr_err <= _bound(fgr, FOREGROUND_BOUND), line
            worst.append(line)
    print(
        f"\n{width}x{height} @{ratio}, {len(frames)} frames, against the official ONNX:\n  "
        + "\n  ".join(worst)
    )
