"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys

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


def spawn_node(*options: str) -> tuple[subprocess.Popen[str], str]:
    """A real `rvm-node serve --port 0` subprocess and the address it printed once SERVING."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rvm_node", "serve", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=os.environ.copy(),
    )
    address = process.stdout.readline().strip() if process.stdout is not None else ""
    if not address.startswith("127.0.0.1:"):
        process.kill()
        raise RuntimeError(f"rvm-node serve did not start: {address!r}")
    return process, address
