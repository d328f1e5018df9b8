"""Recurrent-state checkpoints beside image-sequence outputs, for exact resume.

Every ``STATE_EVERY`` frames the converter saves the stream's recurrent state
(after the writer has put that frame on disk) to a hidden file beside the
first sequence output. ``--resume`` restores the newest checkpoint at or
before the first missing frame and replays only the frames after it, so the
resumed mattes equal an uninterrupted run. Without a usable checkpoint it
falls back to a warm-up of ``RESUME_WARMUP`` frames, which is approximate.

A checkpoint records what the state depends on (input, first frame, frame
size, ratio, model) and is ignored when any of it differs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.engine.states import RecurrentState
from rvm_node.errors import OutputError
from rvm_node.fsutil import atomic_write_bytes
from rvm_node.io.sequence import FramePattern

__all__ = ["STATE_EVERY", "checkpoint_path", "load_checkpoint", "save_checkpoint"]

STATE_EVERY = 25


def checkpoint_path(pattern: FramePattern, first_frame: int) -> Path:
    """One checkpoint per output and first frame, so segments of one shot never share one."""
    return pattern.directory / f".{pattern.prefix}rvmstate.{first_frame}.npz"


def save_checkpoint(
    path: Path,
    state: RecurrentState,
    number: int,
    fingerprint: dict[str, Any],
    *,
    group_writable: bool = False,
) -> None:
    buffer = io.BytesIO()
    meta = {
        "fingerprint": fingerprint,
        "number": number,
        "frame_size": list(state.frame_size),
        "downsample_ratio": state.downsample_ratio,
        "frames": state.frames,
        "variant": state.variant,
    }
    np.savez(buffer, r1=state.r1, r2=state.r2, r3=state.r3, r4=state.r4, meta=np.array(json.dumps(meta)))
    try:
        atomic_write_bytes(path, buffer.getvalue(), group_writable=group_writable)
    except OSError as exc:
        raise OutputError.of(path, exc, f"the checkpoint after frame {number}") from exc


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> tuple[int, RecurrentState] | None:
    """(the frame number the state follows, the state), or None when absent, damaged or foreign."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            arrays = [np.asarray(data[name], np.float32) for name in ("r1", "r2", "r3", "r4")]
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("fingerprint") != fingerprint:
        return None
    height, width = meta["frame_size"]
    state = RecurrentState.from_arrays(
        arrays,
        frame_size=(int(height), int(width)),
        downsample_ratio=float(meta["downsample_ratio"]),
        frames=int(meta["frames"]),
        variant=str(meta.get("variant", "")),
    )
    return int(meta["number"]), state
