"""Exclusive locks on open files, which the system releases when the holder dies, however it dies.

* POSIX: ``flock`` on the whole file. It belongs to the open file, so two
  opens in one process exclude each other as two processes do.
* Windows: ``msvcrt.locking`` of one byte far past anything the file holds.
  Windows' byte locks are mandatory: a lock on the file's content would stop
  others from reading what a lock file records about its holder.

A lock file that its holders remove (:func:`take_lock_file`,
:func:`remove_lock_file`) has a race of its own: one that opened the file
just before its holder removed it would lock a file no longer at its path,
while a third takes a new one there. So whoever takes such a lock checks,
once it holds it, that the path still names the file it locked, and opens
the path again where it does not. Windows removes no file that is open, so
there the file goes once its holder has closed it, unless another has it
open (that one removes it in turn).

Also here: reading and writing a small file from its start through a
descriptor, and the flags every descriptor opened here takes, on both.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import time
from typing import Any, Literal, overload

__all__ = [
    "OPEN_FLAGS",
    "WINDOWS",
    "lock",
    "open_lock_file",
    "read_start",
    "remove_lock_file",
    "take_lock_file",
    "try_lock",
    "unlock",
    "write_start",
]

WINDOWS = sys.platform == "win32"

#: Not inherited by child processes, and binary (Windows would translate line ends otherwise).
OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_BINARY", 0)

_WINDOWS_LOCKED_BYTE = 1 << 30  # past any lock file's record; Windows lets a lock lie past the end
_WINDOWS_HELD = (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK))


def open_lock_file(path: str | os.PathLike[str], mode: int = 0o600) -> int:
    """A descriptor of ``path``, made with ``mode`` (under the umask) where it is missing, to lock."""
    return os.open(path, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, mode)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of open file ``fd`` if nobody holds it; False if somebody does."""
    if WINDOWS:
        msvcrt = _msvcrt()
        try:
            _windows_locking(msvcrt, fd, msvcrt.LK_NBLCK)
        except OSError as exc:
            if exc.errno in _WINDOWS_HELD:
                return False
            raise
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock(fd: int, poll: float = 0.05) -> None:
    """Take the exclusive lock of open file ``fd``, waiting for its holder as long as it takes."""
    if not WINDOWS:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not try_lock(fd):  # msvcrt's own waiting lock gives up after ten seconds
        time.sleep(poll)


def unlock(fd: int) -> None:
    """Let go of the lock of ``fd`` (closing it does too)."""
    if WINDOWS:
        msvcrt = _msvcrt()
        _windows_locking(msvcrt, fd, msvcrt.LK_UNLCK)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


@overload
def take_lock_file(path: str | os.PathLike[str], *, wait: Literal[True]) -> int: ...
@overload
def take_lock_file(path: str | os.PathLike[str], *, wait: bool) -> int | None: ...


def take_lock_file(path: str | os.PathLike[str], *, wait: bool) -> int | None:
    """A descriptor of ``path`` (made where it is missing) whose lock is taken, waiting for its holder with
    ``wait``, else None while another holds it. The lock is the one of the file at ``path`` now, not of one
    its holder removed meanwhile (see the module docstring). Raises OSError where ``path`` cannot be opened."""
    while True:
        fd = open_lock_file(path)
        try:
            if wait:
                lock(fd)
            elif not try_lock(fd):
                os.close(fd)
                return None
            if _names(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed by its holder as this one waited: the path names another file, or none


def remove_lock_file(path: str | os.PathLike[str], fd: int) -> None:
    """Remove ``path``, whose lock ``fd`` holds, and close ``fd``; a file another process has put at
    ``path`` meanwhile stays. POSIX: removed while still locked; Windows: once closed (see the module
    docstring). Nothing is raised where it cannot be removed."""
    try:
        if not WINDOWS and _names(path, fd):
            os.unlink(path)
    except OSError:
        pass  # a folder that refuses it: the file stays, unlocked
    finally:
        os.close(fd)
    if WINDOWS:
        with contextlib.suppress(OSError):  # another process has it open: that one removes it
            os.unlink(path)


def _names(path: str | os.PathLike[str], fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _msvcrt() -> Any:
    return importlib.import_module("msvcrt")


def _windows_locking(msvcrt: Any, fd: int, mode: int) -> None:
    """``msvcrt.locking`` works from the file's position: lock the far byte, and keep the position."""
    position = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, mode, 1)
    finally:
        os.lseek(fd, position, os.SEEK_SET)


def read_start(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``fd`` (``os.pread`` is POSIX only)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, size)


def write_start(fd: int, data: bytes) -> None:
    """Make ``data`` the whole content of ``fd``."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
