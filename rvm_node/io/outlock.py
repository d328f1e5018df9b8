"""One writer per output: an advisory lock beside every output a run writes.

Two runs of one shot (two artists, or a farm task submitted twice) would
otherwise both write the sequence and leave it a mix of their frames. A run
takes ``.<name>rvmlock`` beside each of its outputs before it writes
anything, and a second run refuses with one line naming the holder.

The lock is an ``flock`` on the file (a byte lock on Windows: see
:mod:`rvm_node.filelocks`), which the kernel releases when the
holder dies, however it dies. Some NFS setups do not make ``flock``
exclusive across hosts, so the file also records the holder (host, PID,
time); a run whose ``flock`` succeeded still refuses while
a holder on another host has touched the file within
:data:`STALE_SECONDS` (holders touch it every :data:`HEARTBEAT_SECONDS`).
A holder on the same host whose ``flock`` is gone is gone itself (one host's
kernel sees its own locks), and a silent one elsewhere: both are taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from rvm_node import filelocks
from rvm_node.errors import OutputError, OutputInUseError
from rvm_node.fsutil import make_directory

__all__ = ["HEARTBEAT_SECONDS", "STALE_SECONDS", "LockHolder", "OutputLock", "lock_path"]

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 180.0
_SUFFIX = "rvmlock"


def lock_path(target: Path, prefix: str | None = None) -> Path:
    """The lock file of an output: beside a sequence's frames (``prefix``: its name before the frame
    field), or beside a single file."""
    name = f".{prefix}{_SUFFIX}" if prefix is not None else f".{target.name}.{_SUFFIX}"
    return (target if prefix is not None else target.parent) / name


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    since: float

    @staticmethod
    def me() -> LockHolder:
        return LockHolder(socket.gethostname(), os.getpid(), time.time())

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {started}"

    def alive(self, path: Path) -> bool:
        """Whether the run this record names may still hold its lock, once our ``flock`` succeeded (see the
        module docstring)."""
        if self.host == socket.gethostname():
            return (
                False  # its flock would have held: it ended (or is ending, a process killed but not reaped)
            )
        try:
            return time.time() - path.stat().st_mtime < STALE_SECONDS
        except OSError:
            return False


def _read(fd: int) -> LockHolder | None:
    try:
        record = json.loads(filelocks.read_start(fd, 4096) or b"null")
        return LockHolder(**record) if isinstance(record, dict) else None
    except (OSError, ValueError, TypeError):
        return None  # empty, or written by something else: nobody holds it


class OutputLock:
    """Holds the locks of ``targets`` (``(output, lock file)`` pairs) while the run writes."""

    def __init__(self, targets: Iterable[tuple[str, Path]], *, group_writable: bool = False) -> None:
        self._group_writable = group_writable
        self._targets = sorted(dict((path, output) for output, path in targets).items())
        self._held: list[tuple[Path, int]] = []
        self._me = LockHolder.me()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        try:
            for path, output in self._targets:
                self._held.append((path, self._take(path, output)))
        except BaseException:
            self._release()
            raise
        if self._held:
            self._heartbeat = threading.Thread(target=self._beat, name="rvm-output-lock", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _take(self, path: Path, output: str) -> int:
        try:
            make_directory(path.parent, group_writable=self._group_writable)  # the output's folder, made once
            return self._lock(path, output)
        except OSError as exc:  # a read-only folder, a full disk: the run cannot write there at all
            raise OutputError.of(path, exc, f"the lock of {output}") from exc

    def _lock(self, path: Path, output: str) -> int:
        for _ in range(10):
            fd = filelocks.open_lock_file(path, 0o666)
            if not filelocks.try_lock(fd):
                holder = _read(fd)
                for _ in range(20):  # a holder that has just taken the lock writes its record a moment later
                    if holder is not None:
                        break
                    time.sleep(0.025)
                    holder = _read(fd)
                os.close(fd)
                raise OutputInUseError(
                    f"{output}: another run is writing it ({holder.describe() if holder else 'its holder is unknown'}); "
                    "wait for it to finish, or stop it"
                ) from None
            try:
                if os.fstat(fd).st_ino != os.stat(path).st_ino:  # released and removed meanwhile: again
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            holder = _read(fd)
            if holder is not None and holder != self._me and holder.alive(path):
                os.close(fd)
                raise OutputInUseError(
                    f"{output}: another run is writing it ({holder.describe()}; its lock file says so, where "
                    "this storage's locks are not exclusive); wait for it to finish, or stop it"
                )
            filelocks.write_start(fd, json.dumps(asdict(self._me)).encode())
            return fd
        raise OutputInUseError(f"{output}: its lock file {path} keeps changing; another run is starting")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            for path, _ in self._held:
                with contextlib.suppress(OSError):
                    os.utime(path)

    def _release(self) -> None:
        self._stop.set()
        for path, fd in reversed(self._held):
            try:
                path.unlink()  # while still locked: a run that opens it now gets a new file
                removed = True
            except FileNotFoundError:
                removed = True
            except OSError:
                removed = False  # Windows removes no file that is open
            os.close(fd)
            if not removed:
                with contextlib.suppress(OSError):  # one that another run holds open stays
                    path.unlink()
        self._held.clear()
