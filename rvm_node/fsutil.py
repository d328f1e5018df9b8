"""Atomic file writes: a temporary file in the same directory, fsync, then rename.

A crashed or killed job never leaves a partial file under its final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "is_temporary"]

_TMP_MARK = ".rvmtmp"


def is_temporary(path: Path) -> bool:
    """True for the temporary files :func:`atomic_write` creates (left behind only by a crash)."""
    return _TMP_MARK in path.name


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temporary path beside ``path``, then move it into place.

    The temporary name keeps the final extension, so encoders that look at it
    (EXR, PNG, video muxers) see the right one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{_TMP_MARK}{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)
