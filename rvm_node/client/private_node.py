"""A render node private to one application on this machine ("This computer"): started on first use,
reused for the shots after, stopped when the application exits or after an idle time.

* It listens on a loopback port, never on the network, and on a Unix socket
  in a folder only the user can enter (0700) where the platform has them.
  The address clients get is the socket, so co-located streams take shared
  memory by themselves (Linux).
* A random token, kept in an owner-only file beside the socket, so other
  users of the machine cannot use the node.
* ``serve --device auto``: the GPU where the rvm-node that runs it can use
  one, else the CPU.
* ``serve --exit-with-pid APP --exit-when-idle SECONDS``: the node stops by
  itself when the application that started it exits (a crash included) or
  after an idle time; nothing is left running.
* The node holds a lock file while it runs (``serve --lock-file``), so a
  node that is gone is told from one that runs (answering or frozen)
  without trusting a process number the system may have given again. A
  frozen node is killed and replaced on the next use, a dead one replaced;
  a second call while one starts waits for it (another lock), so an
  application never runs two.
* Nothing is left behind. Each node has a folder of its own in the private
  folder, ``node-APP.XXXXXXXX`` (APP: the owner's process; a unique name,
  0700), holding its lock file, socket, token, log and record (address,
  token file, process); the node removes it when it exits, however it stops
  but killed (``serve --private-folder``). A node removes only its own
  folder, so one that exits as the next starts never touches the next
  one's files. The calls of one owner take turns on ``node-APP.lock``,
  which goes when the call is done. What killed processes leave (a killed
  node's folder, the files of a start whose caller was killed) goes at the
  next start, whoever's: an owner's entries once that owner has exited, save
  a folder whose node holds its lock. Files of the layout before node
  folders (``node-APP.json`` and the like) go the same way.
* Windows: the folder is the user's own (its profile's ACL); the node runs
  in a process group of its own with no console window, on the loopback
  port only (see :mod:`rvm_node.processes` for how it is stopped). Windows
  removes no open file, and a node's log is its own output: a node that
  stops by itself leaves that log in its folder, which goes at the next
  start.

The node is ``rvm-node serve`` run by ``command`` (default: this Python with
``-m rvm_node``; a plugin passes the "rvm-node command" of its preferences).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rvm_node import filelocks, processes
from rvm_node.errors import InvalidInputError, NodeError, NodeUnavailableError
from rvm_node.fsutil import atomic_write_bytes, temporary_owner

__all__ = [
    "DEFAULT_IDLE_EXIT",
    "PrivateNode",
    "private_folder",
    "private_node",
    "running_private_node",
    "stop_private_node",
]

DEFAULT_IDLE_EXIT = 900.0  # seconds without a stream before the node stops by itself
_KILL_WAIT = 10.0  # seconds a killed node may take to let go of its lock file
_START_TIMEOUT = 300.0  # loading a model on a cold machine, or compiling for a GPU, takes a while
# The private folder's entries of process APP: node-APP.XXXXXXXX (a node's folder), node-APP.lock (its
# calls' turn), and node-APP.json and the like (the layout before node folders).
_ENTRY = re.compile(r"node-([0-9]+)\..+")
# What a node's own folder holds: names kept short, for the socket's path (about 100 bytes at most).
_NAMES = {"alive": "alive", "record": "record.json", "token": "token", "sock": "sock", "log": "log"}


@dataclass(frozen=True)
class PrivateNode:
    """Where the private node listens (``unix:///...`` or ``127.0.0.1:PORT``), its token file and process."""

    address: str
    token_file: Path
    pid: int

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


def private_folder() -> Path:
    """The user's own folder for private nodes: ``$XDG_RUNTIME_DIR/rvm-node``, else ``private`` in the cache
    (``$RVM_NODE_CACHE_DIR``, or the platform's user cache folder)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "rvm-node"
    from rvm_node.engine.weights import cache_dir

    return cache_dir() / "private"


def _checked_folder(folder: Path) -> Path:
    """``folder``, made 0700 where it is missing; refused unless it is the user's own and closed to others.
    Windows keeps no such modes: there the folder is in the user's profile, which its ACL closes."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if processes.WINDOWS:
        closed = stat.S_ISDIR(info.st_mode)
    else:
        closed = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
    if not closed:
        raise InvalidInputError(
            f"{folder}: a private node's folder must be a directory of this user's, closed to others (mode 0700)"
        )
    return folder


def _answers(node: PrivateNode) -> bool:
    """Whether the node serves, and with this token (a node of another user's would refuse it)."""
    from rvm_node.client.node_client import NodeClient

    try:
        with NodeClient(node.address, token=node.token, retries=0) as client:
            client.info(timeout=5.0)
    except (NodeError, OSError):
        return False
    return True


def _files(instance: Path) -> dict[str, Path]:
    """The files of the node whose own folder is ``instance``."""
    return {kind: instance / name for kind, name in _NAMES.items()}


def _holds_lock(path: Path) -> bool:
    """Whether a node holds the lock file ``path``: it runs, answering or frozen. A missing file is held by
    none, and none is made here (a folder being removed would get it back)."""
    try:
        fd = os.open(path, os.O_RDWR | filelocks.OPEN_FLAGS)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # not ours to tell: kept, as a running node's would be
    try:
        if not filelocks.try_lock(fd):
            return True
        filelocks.unlock(fd)
        return False
    finally:
        os.close(fd)


def _wait_gone(instance: Path, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the node of folder ``instance`` to let go of its lock file."""
    deadline = time.monotonic() + timeout
    while _holds_lock(_files(instance)["alive"]):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _owner_of(name: str) -> int | None:
    """The process an entry of the private folder is of (for a temporary, its file's), or None."""
    match = _ENTRY.fullmatch(temporary_owner(name) or name)
    return int(match[1]) if match else None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _start_lock(folder: Path, owner: int) -> Path:
    return folder / f"node-{owner}.lock"


@contextlib.contextmanager
def _turn(folder: Path, owner: int) -> Iterator[None]:
    """The turn of ``owner``'s calls: its start lock, held, then removed."""
    path = _start_lock(folder, owner)
    fd = filelocks.take_lock_file(path, wait=True)
    try:
        yield
    finally:
        filelocks.remove_lock_file(path, fd)


def _clear(folder: Path, owner: int) -> list[Path]:
    """Remove ``owner``'s entries that no node holds (its turn held); the node folders that are left, whose
    node holds its lock: it runs (answering or not), or it is on its way out and removes them itself."""
    lock = _start_lock(folder, owner)
    earlier_layout_runs = _holds_lock(folder / f"node-{owner}.alive")
    running = []
    for entry in _entries(folder):
        if _owner_of(entry.name) != owner or entry == lock:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if _holds_lock(_files(entry)["alive"]):
                running.append(entry)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif not earlier_layout_runs:
            with contextlib.suppress(OSError):
                entry.unlink()
    return running


def _sweep(folder: Path, owner: int) -> None:
    """Remove what processes that are gone left: the entries of each other owner that has exited, save a
    folder whose node holds its lock (it ends by itself). An owner whose turn another call holds is left to
    that call."""
    owners = {_owner_of(entry.name) for entry in _entries(folder)}
    for gone in sorted(o for o in owners if o is not None and o != owner and not processes.process_exists(o)):
        path = _start_lock(folder, gone)
        try:
            fd = filelocks.take_lock_file(path, wait=False)
        except OSError:
            continue
        if fd is None:
            continue
        try:
            _clear(folder, gone)
        finally:
            filelocks.remove_lock_file(path, fd)


def _recorded(instance: Path) -> PrivateNode | None:
    try:
        record = json.loads(_files(instance)["record"].read_text())
        return PrivateNode(str(record["address"]), Path(record["token_file"]), int(record["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_private_node(owner_pid: int | None = None, *, folder: Path | None = None) -> PrivateNode | None:
    """The private node of ``owner_pid`` (default: this process) that runs now (answering or not), or None.
    Nothing is started, stopped or removed."""
    owner = os.getpid() if owner_pid is None else owner_pid
    for entry in _entries(folder or private_folder()):
        if _owner_of(entry.name) == owner and entry.is_dir() and _holds_lock(_files(entry)["alive"]):
            node = _recorded(entry)
            if node is not None:
                return node
    return None


def private_node(
    command: Sequence[str] | None = None,
    *,
    owner_pid: int | None = None,
    idle_exit: float = DEFAULT_IDLE_EXIT,
    folder: Path | None = None,
    serve_options: Sequence[str] = (),
    start_timeout: float = _START_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> PrivateNode:
    """The private node of process ``owner_pid`` (default: this one), started if it runs no live one.

    ``command`` runs in ``env`` (default: this process's environment), as ``COMMAND serve ...``. Raises
    :class:`NodeUnavailableError` with the node's own last line when it cannot start (no weights: it
    says how to fetch them), and :class:`InvalidInputError` for an unsafe folder.
    """
    if not idle_exit > 0:
        raise InvalidInputError(f"idle_exit: expected seconds > 0, got {idle_exit}")
    owner = os.getpid() if owner_pid is None else owner_pid
    where = _checked_folder(folder or private_folder())
    _sweep(where, owner)
    with _turn(where, owner):
        for instance in _clear(where, owner):
            earlier = _recorded(instance)
            if earlier is None:
                continue  # on its way out, or started by a call killed before it recorded it: it ends by itself
            if _answers(earlier):
                return earlier
            processes.kill_process(earlier.pid)  # running but not answering: frozen (or on its way out)
            if not _wait_gone(instance, _KILL_WAIT):
                raise NodeUnavailableError(
                    f"private node: process {earlier.pid} is frozen and cannot be ended"
                )
            shutil.rmtree(instance, ignore_errors=True)
        command = list(command or [sys.executable, "-m", "rvm_node"])
        node = _start(command, owner, idle_exit, where, serve_options, start_timeout, env)
        instance = node.token_file.parent
        record = {"address": node.address, "token_file": str(node.token_file), "pid": node.pid}
        path = _files(instance)["record"]
        try:
            atomic_write_bytes(path, json.dumps(record).encode(), private=True)
        except BaseException as exc:  # unrecorded, nothing would find it to reuse or stop it
            processes.kill_process(node.pid)
            if _wait_gone(instance, _KILL_WAIT):
                shutil.rmtree(instance, ignore_errors=True)
            if isinstance(exc, OSError):
                raise NodeUnavailableError(
                    f"private node: cannot record it in {path} ({exc.strerror or exc})"
                ) from None
            raise
        return node


def _start(
    command: list[str],
    owner: int,
    idle_exit: float,
    folder: Path,
    serve_options: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None,
) -> PrivateNode:
    """A node in a new folder of its own in ``folder``; the folder goes with it where it does not start."""
    instance = Path(tempfile.mkdtemp(prefix=f"node-{owner}.", dir=folder))
    files = _files(instance)
    unix = hasattr(socket, "AF_UNIX") and not processes.WINDOWS
    argv = [
        *command,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--token-file",
        str(files["token"]),
        "--exit-with-pid",
        str(owner),
        "--exit-when-idle",
        f"{idle_exit:g}",
        "--lock-file",
        str(files["alive"]),
        *(["--unix", str(files["sock"])] if unix else []),
        "--fetch-weights",
        "on",
        "--device",
        "auto",  # the GPU, where the rvm-node that runs it can use one
        *serve_options,
    ]
    # The folder is its own to remove as it exits. Said in the environment, not as a flag: an rvm-node from
    # before that setting runs all the same (its folder goes at the next start instead).
    node_env = {**(os.environ if env is None else env), "RVM_NODE_PRIVATE_FOLDER": str(instance)}
    process = None
    try:
        atomic_write_bytes(files["token"], secrets.token_urlsafe(32).encode(), private=True)
        # Read through this descriptor if it fails: the node may have removed the file by then.
        log = os.open(files["log"], os.O_RDWR | os.O_CREAT | os.O_TRUNC | filelocks.OPEN_FLAGS, 0o600)
        try:
            try:
                process = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    **processes.popen_options(detach=True),
                    env=node_env,
                )
            except OSError as exc:
                raise NodeUnavailableError(
                    f"private node: cannot run {command[0]} ({exc.strerror})"
                ) from None
            address = _address(process, timeout, log)
        finally:
            os.close(log)
    except BaseException:
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()
        shutil.rmtree(instance, ignore_errors=True)
        raise
    # The node goes on by itself; nothing here waits for it (its exit is its owner's or its idle time's).
    threading.Thread(target=process.wait, daemon=True).start()
    return PrivateNode(f"unix://{files['sock']}" if unix else address, files["token"], process.pid)


def _address(process: subprocess.Popen[str], timeout: float, log: int) -> str:
    """The address the node prints once serving; NodeUnavailableError with its last line if it exits
    first, or once ``timeout`` has passed (the node is killed)."""
    address = _first_line(process, timeout)
    if address:
        return address
    try:
        process.wait(10)  # it closed its output: it is on its way out
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise NodeUnavailableError(
            f"private node: not serving after {timeout:g} s (its last line: {_last_line(log)})"
        ) from None
    raise NodeUnavailableError(f"private node did not start: {_last_line(log)}")


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The address the node prints once serving, or "" if it exits or takes longer than ``timeout``."""
    line: list[str] = []
    reader = threading.Thread(
        target=lambda: line.append(process.stdout.readline() if process.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout)
    return line[0].strip() if line else ""


def _last_line(log: int) -> str:
    """The last line of the node's log, read through descriptor ``log`` from its start."""
    os.lseek(log, 0, os.SEEK_SET)
    with open(log, "rb", closefd=False) as text:
        lines = [line.strip() for line in text.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "it exited without a word"


def stop_private_node(
    owner_pid: int | None = None, *, folder: Path | None = None, timeout: float = 30.0
) -> bool:
    """Stop the private node of ``owner_pid`` (default: this process), draining it, and remove its folder
    once it has let go of it; False if none ran."""
    owner = os.getpid() if owner_pid is None else owner_pid
    where = _checked_folder(folder or private_folder())
    stopped = False
    with _turn(where, owner):
        for instance in _clear(where, owner):
            node = _recorded(instance)
            if node is None:  # on its way out (or started by a call killed before it recorded it)
                if _wait_gone(instance, timeout):
                    shutil.rmtree(instance, ignore_errors=True)
                continue
            processes.ask_to_stop(node.pid)
            if not _wait_gone(instance, timeout):
                processes.kill_process(node.pid)
            if _wait_gone(instance, _KILL_WAIT):
                shutil.rmtree(instance, ignore_errors=True)  # what it had no time to remove, or could not
            stopped = True
    return stopped
