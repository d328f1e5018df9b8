"""Small helpers shared by the tests."""

from __future__ import annotations

import numpy as np

from rvm_node.engine.session import MattingBackend


def run_frames(
    backend: MattingBackend, frames: np.ndarray, ratio: float | None, chunk: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``[T, 3, H, W]`` frames through a fresh session in chunks; return (fgr, pha) ``[T, ...]``."""
    session = backend.new_session(ratio)
    fgr, pha = [], []
    for start in range(0, len(frames), chunk):
        out = session.process(frames[start : start + chunk])
        fgr.append(out.fgr)
        pha.append(out.pha)
    return np.concatenate(fgr), np.concatenate(pha)


def per_frame_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return diff.reshape(len(a), -1).max(axis=1)
