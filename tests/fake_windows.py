"""A fake of Windows at the operating system's edge, for the code paths rvm-node takes there.

Windows cannot run here. rvm-node's Windows code is confined to two modules,
:mod:`rvm_node.filelocks` and :mod:`rvm_node.processes`, which choose it by
their ``WINDOWS`` flag; the rest asks them, or asks whether the host has
what it needs (:func:`rvm_node.v1.protocol.rings_supported`). This fake sets
the flags and stands in for what those modules call on Windows:

* ``msvcrt.locking``: a byte lock, modelled by an ``flock`` of the whole
  file (per open file, as Windows' locks are per handle); a lock that is
  held fails with ``EACCES``, as the C runtime's does. It records where each
  lock was taken.
* kernel32's ``OpenProcess``, ``GetExitCodeProcess`` and ``CloseHandle``,
  read from ``/proc``: an exited process that nobody has reaped has an exit
  code, as on Windows while a handle to it is open; a missing one is error
  87 (``ERROR_INVALID_PARAMETER``). Every handle must be closed.
* What Windows lacks is taken away: ``fcntl``, ``grp``, ``pwd``, ``resource``
  and ``termios`` cannot be imported; ``os`` has no ``fchmod`` (before Python
  3.13), ``pread``, ``pwrite``, ``getuid``, ``geteuid``, ``memfd_create``,
  ``O_CLOEXEC`` or ``O_NOFOLLOW`` (so no shared-memory rings either); the
  event loop watches no signals. (``socket.AF_UNIX`` stays: Python's own
  socket pairs need it here.)
* Process creation: ``creationflags`` (which POSIX refuses) are checked to be
  the ones rvm-node uses, ``CREATE_NEW_PROCESS_GROUP`` becomes a new session,
  and ``TerminateProcess`` (``os.kill`` with any signal but Ctrl-C and
  Ctrl-Break) becomes SIGKILL. Ctrl-Break is SIGUSR2.

What this does not show: Windows' own semantics beyond these calls (its
file sharing rules, ACLs, a real console). The code paths' logic runs for
real against this fake, in process (:func:`install`) and in whole
``rvm-node`` processes (``python tests/fake_windows.py ARGS``, as after
``rvm-node``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
_STILL_ACTIVE = 259
_ERROR_INVALID_PARAMETER = 87
MISSING_MODULES = ("fcntl", "grp", "pwd", "resource", "termios")
POSIX_KILL = os.kill  # the real one, for a test's own signals while the fake is installed
_MISSING_OS = ("fchmod", "pread", "pwrite", "getuid", "geteuid", "memfd_create", "O_CLOEXEC", "O_NOFOLLOW")


def fake_msvcrt() -> types.ModuleType:
    """``msvcrt`` with ``locking``; ``module.locked_at`` lists the file positions locks were taken at."""
    module = types.ModuleType("msvcrt")
    module.LK_UNLCK, module.LK_LOCK, module.LK_NBLCK, module.LK_RLCK, module.LK_NBRLCK = 0, 1, 2, 3, 4
    module.locked_at = []

    def locking(fd: int, mode: int, nbytes: int) -> None:
        if nbytes != 1 or mode not in (module.LK_NBLCK, module.LK_UNLCK):
            raise AssertionError(f"msvcrt.locking({fd}, {mode}, {nbytes}): not a call rvm-node makes")
        if mode == module.LK_UNLCK:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(errno.EACCES, "Permission denied") from None
        module.locked_at.append(os.lseek(fd, 0, os.SEEK_CUR))

    module.locking = locking
    return module


class FakeKernel32:
    """kernel32's process calls, from /proc. ``denied``: pids whose OpenProcess fails with access denied."""

    def __init__(self) -> None:
        self.last_error = 0
        self.handles: dict[int, int] = {}
        self.denied: set[int] = set()
        self._next = 100

    def OpenProcess(self, _access: int, _inherit: int, pid: int) -> int | None:
        if pid in self.denied:
            self.last_error = 5
            return None
        if not Path(f"/proc/{pid}").exists():
            self.last_error = _ERROR_INVALID_PARAMETER
            return None
        self._next += 4
        self.handles[self._next] = pid
        return self._next

    def GetExitCodeProcess(self, handle: int, code: Any) -> int:
        pid = self.handles[handle]
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "X"
        code._obj.value = _STILL_ACTIVE if state not in ("Z", "X") else 0
        return 1

    def CloseHandle(self, handle: int) -> int:
        del self.handles[handle]
        return 1

    def api(self) -> tuple[Any, Any]:
        return self, lambda: self.last_error


def install(monkeypatch: Any) -> tuple[types.ModuleType, FakeKernel32]:
    """Windows, as far as rvm-node can tell, in this process until ``monkeypatch`` undoes it."""
    import asyncio

    import rvm_node.filelocks
    import rvm_node.processes

    msvcrt, kernel32 = fake_msvcrt(), FakeKernel32()
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    for name in MISSING_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    for name in _MISSING_OS:
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR2, raising=False)
    monkeypatch.setattr(rvm_node.filelocks, "WINDOWS", True)
    monkeypatch.setattr(rvm_node.processes, "WINDOWS", True)
    monkeypatch.setattr(rvm_node.processes, "_windows_api", kernel32.api)
    monkeypatch.setattr(subprocess.Popen, "__init__", _windows_popen(subprocess.Popen.__init__))
    monkeypatch.setattr(os, "kill", _windows_kill(os.kill))
    monkeypatch.setattr(asyncio.unix_events._UnixSelectorEventLoop, "add_signal_handler", _no_signal_watch)
    return msvcrt, kernel32


def _windows_popen(init: Any) -> Any:
    def popen(self: Any, *args: Any, creationflags: int = 0, **kwargs: Any) -> None:
        if creationflags & ~(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW):
            raise AssertionError(f"creationflags {creationflags:#x}: not flags rvm-node uses")
        if kwargs.get("start_new_session"):
            raise AssertionError("start_new_session: POSIX only; Windows' Popen ignores it")
        if creationflags & CREATE_NEW_PROCESS_GROUP:
            kwargs["start_new_session"] = True
        init(self, *args, **kwargs)

    return popen


def _windows_kill(kill: Any) -> Any:
    def terminate(pid: int, sig: int) -> None:
        if sig == 0:
            raise AssertionError("os.kill(pid, 0) terminates the process on Windows")
        kill(pid, sig if sig in (signal.SIGINT, signal.SIGUSR2) else signal.SIGKILL)

    return terminate


def _no_signal_watch(self: Any, sig: int, callback: Any, *args: Any) -> None:
    raise NotImplementedError  # as Windows' event loops do


def install_for_good() -> None:
    """:func:`install` for the rest of this process (a whole process on the fake Windows)."""
    install(_ForGood())


def main() -> int:
    """``rvm-node ARGS...`` on the fake Windows."""
    install_for_good()
    from rvm_node.cli import main as rvm_node

    return rvm_node(sys.argv[1:])


class _ForGood:
    """pytest's monkeypatch calls that :func:`install` makes, for a whole process (never undone)."""

    def setitem(self, mapping: dict[str, Any], name: str, value: Any) -> None:
        mapping[name] = value

    def setattr(self, target: Any, name: str, value: Any, **_options: Any) -> None:
        setattr(target, name, value)

    def delattr(self, target: Any, name: str, **_options: Any) -> None:
        with contextlib.suppress(AttributeError):
            delattr(target, name)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
