"""Atomic file writes: a temporary file in the same directory, fsync, then rename.

A crashed or killed job never leaves a partial file under its final name.

The temporary-file contract, which the converter, the node's clients and the
plugins share: a temporary of ``<stem><ext>`` is named
``.<stem>.<token><TEMPORARY_MARK><ext>`` beside it (the token has no dots).
:func:`temporary_owner` reads the final name back from a temporary's name,
and :func:`remove_temporaries` deletes only the temporaries of the files a
caller owns, never those another job may be writing in the same folder.

Modes: a file written here gets the mode ``open()`` would give a new file
under the process's umask (``0o666 & ~umask``), so artists and other
accounts on shared storage read what a farm wrote; ``private=True`` (caches,
weights) keeps a file to its owner (``0o600``), and ``group_writable`` adds
group read and write for studios whose artists share outputs.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "TEMPORARY_MARK",
    "atomic_write",
    "atomic_write_bytes",
    "current_umask",
    "is_temporary",
    "make_directory",
    "new_file_mode",
    "remove_temporaries",
    "temporary_owner",
    "temporary_path",
]

TEMPORARY_MARK = ".rvmtmp"
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the platform allows (Linux 4.7+)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it, and set it back at once
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode(*, private: bool = False, group_writable: bool = False) -> int:
    """The mode of a new file: what ``open()`` gives under the umask, or owner-only when ``private``;
    ``group_writable`` adds group read and write (studios whose artists share outputs)."""
    if private:
        return 0o600
    return (0o666 & ~current_umask()) | (0o060 if group_writable else 0)


def make_directory(path: Path, *, group_writable: bool = False) -> None:
    """``path`` and any missing parents, as ``mkdir`` makes them; ``group_writable`` gives the folders it
    creates group read, write and search too."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    path.mkdir(parents=True, exist_ok=True)
    if group_writable:
        for created in missing:
            created.chmod((0o777 & ~current_umask()) | 0o070)


def is_temporary(path: Path) -> bool:
    """True for the temporary files rvm-node writes (left behind only by a crash)."""
    return temporary_owner(path.name) is not None


def temporary_path(path: Path, token: str) -> Path:
    """The temporary name for ``path`` with ``token`` (no dots), beside it."""
    return path.with_name(f".{path.stem}.{token}{TEMPORARY_MARK}{path.suffix}")


def temporary_owner(name: str) -> str | None:
    """The final file name a temporary's ``name`` stands for, or None if it is no temporary of ours."""
    if not name.startswith(".") or TEMPORARY_MARK not in name:
        return None
    head, _, ext = name[1:].rpartition(TEMPORARY_MARK)
    stem, dot, _token = head.rpartition(".")
    return f"{stem}{ext}" if dot and stem else None


def remove_temporaries(directory: Path, owned: Callable[[str], bool]) -> int:
    """Delete the temporaries in ``directory`` of the final names ``owned`` accepts; how many went."""
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for entry in entries:
        final = temporary_owner(entry.name)
        if final is not None and owned(final):
            try:
                entry.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def atomic_write(
    path: Path, write: Callable[[Path], None], *, private: bool = False, group_writable: bool = False
) -> None:
    """Call ``write(tmp)`` for a temporary path beside ``path``, then move it into place.

    The temporary name keeps the final extension, so encoders that look at it
    (EXR, PNG, video muxers) see the right one. The file gets
    :func:`new_file_mode` (``mkstemp``'s 0600 is replaced before the rename,
    whatever ``write`` did to the temporary).
    """
    make_directory(path.parent, group_writable=group_writable)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f"{TEMPORARY_MARK}{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        mode = new_file_mode(private=private, group_writable=group_writable)
        with tmp.open("rb+") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)
            else:  # Windows before Python 3.13; there a mode only says read-only or not
                os.chmod(tmp, mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(
    path: Path, data: bytes, *, private: bool = False, group_writable: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically (owner-only when ``private``)."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write, private=private, group_writable=group_writable)
