"""Other processes on this host: whether one exists, how to start one apart, how to stop one.

POSIX does all of it with signals. Windows has none of them but Ctrl-C and
Ctrl-Break, and those reach only processes that share a console, so there:

* whether a process exists is asked of the kernel (``OpenProcess``,
  ``GetExitCodeProcess``), never with ``os.kill(pid, 0)``, which on Windows
  terminates the process;
* a process started apart (:func:`popen_options`) gets a process group of its
  own and no console window;
* stopping one is ``TerminateProcess`` at once. Nothing is lost by it: frames
  are written whole or not at all, and a private node stops by itself with
  its application anyway (``serve --exit-with-pid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "WINDOWS",
    "ask_to_stop",
    "kill_process",
    "on_stop_signals",
    "popen_options",
    "process_exists",
    "stop_signals",
]

WINDOWS = sys.platform == "win32"

# Windows' process API (winbase.h, winnt.h, winerror.h)
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259
_ERROR_ACCESS_DENIED = 5
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000


def process_exists(pid: int) -> bool:
    """Whether a process numbered ``pid`` runs (another user's included); it says nothing of what it runs."""
    if pid <= 0:
        return False  # 0 and negative numbers name process groups to os.kill, not processes
    return _windows_process_exists(pid) if WINDOWS else _posix_process_exists(pid)


def _posix_process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


def _windows_api() -> tuple[Any, Callable[[], int]]:
    """kernel32 with the signatures used here, and ``ctypes.get_last_error``."""
    import ctypes

    windows_ctypes: Any = ctypes  # WinDLL and get_last_error exist on Windows only
    kernel32 = windows_ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32]
    kernel32.OpenProcess.restype = ctypes.c_void_p  # a HANDLE is pointer-sized, not an int
    kernel32.GetExitCodeProcess.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    kernel32.GetExitCodeProcess.restype = ctypes.c_int
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    kernel32.CloseHandle.restype = ctypes.c_int
    return kernel32, windows_ctypes.get_last_error


def _windows_process_exists(pid: int) -> bool:
    import ctypes

    kernel32, last_error = _windows_api()
    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, 0, pid)
    if not handle:
        return bool(last_error() == _ERROR_ACCESS_DENIED)  # it exists, as a process we may not query
    try:
        code = ctypes.c_uint32()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # it exists; its state is not ours to read
        return code.value == _STILL_ACTIVE  # an exited process lives on while someone holds a handle to it
    finally:
        kernel32.CloseHandle(handle)


def ask_to_stop(pid: int) -> None:
    """Ask process ``pid`` to stop: SIGTERM (a node drains, a job stops as on Ctrl-C); on Windows it is
    terminated. Nothing happens if it is gone."""
    with contextlib.suppress(ProcessLookupError):
        if WINDOWS:
            kill_process(pid)
        else:
            os.kill(pid, signal.SIGTERM)


def kill_process(pid: int) -> None:
    """End process ``pid`` at once (SIGKILL; TerminateProcess on Windows). Nothing happens if it is gone."""
    if not WINDOWS:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    elif process_exists(pid):
        with contextlib.suppress(OSError):  # it ended meanwhile
            os.kill(
                pid, signal.SIGTERM
            )  # on Windows any signal but Ctrl-C and Ctrl-Break is TerminateProcess


def popen_options(*, detach: bool) -> dict[str, Any]:
    """``subprocess.Popen`` keywords for a process started in the background: never a console window on
    Windows; with ``detach``, a session (POSIX) or process group (Windows) of its own, so a Ctrl-C at the
    parent's terminal does not reach it."""
    if WINDOWS:
        return {"creationflags": _CREATE_NO_WINDOW | (_CREATE_NEW_PROCESS_GROUP if detach else 0)}
    return {"start_new_session": True} if detach else {}


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that ask this process to stop: SIGTERM and SIGINT; Ctrl-C and Ctrl-Break on Windows."""
    if WINDOWS:
        windows_signal: Any = signal  # SIGBREAK exists on Windows only
        return (signal.SIGINT, windows_signal.SIGBREAK)
    return (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run ``callback`` in ``loop`` when a stop signal arrives (:func:`stop_signals`).

    Windows' event loops cannot watch signals; there a plain handler hands the call to the loop.
    """
    for sig in stop_signals():
        try:
            loop.add_signal_handler(sig, callback)
        except NotImplementedError:
            signal.signal(sig, lambda _signum, _frame: loop.call_soon_threadsafe(callback))
