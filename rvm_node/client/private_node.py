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
* Windows: the folder is the user's own (its profile's ACL); the node runs
  in a process group of its own with no console window, on the loopback
  port only (see :mod:`rvm_node.processes` for how it is stopped).

The node is ``rvm-node serve`` run by ``command`` (default: this Python with
``-m rvm_node``; a plugin passes the "rvm-node command" of its preferences).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rvm_node import filelocks, processes
from rvm_node.errors import InvalidInputError, NodeError, NodeUnavailableError
from rvm_node.fsutil import atomic_write_bytes

__all__ = ["DEFAULT_IDLE_EXIT", "PrivateNode", "private_folder", "private_node", "stop_private_node"]

DEFAULT_IDLE_EXIT = 900.0  # seconds without a stream before the node stops by itself
_KILL_WAIT = 10.0  # seconds a killed node may take to let go of its lock file
_START_TIMEOUT = 300.0  # loading a model on a cold machine, or compiling for a GPU, takes a while


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


def _runs(files: dict[str, Path]) -> bool:
    """Whether a node holds the private node's lock file: it runs, answering or frozen."""
    try:
        fd = filelocks.open_lock_file(files["alive"])
    except OSError:
        return False
    try:
        if not filelocks.try_lock(fd):
            return True
        filelocks.unlock(fd)
        return False
    finally:
        os.close(fd)


def _wait_gone(files: dict[str, Path], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the node to let go of its lock file; whether it has."""
    deadline = time.monotonic() + timeout
    while _runs(files):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(filelocks.open_lock_file(path), "rb+") as lock:
        filelocks.lock(lock.fileno())
        try:
            yield
        finally:
            filelocks.unlock(lock.fileno())


def _files(folder: Path, owner: int) -> dict[str, Path]:
    return {
        kind: folder / f"node-{owner}.{kind}" for kind in ("json", "lock", "alive", "token", "sock", "log")
    }


def _recorded(path: Path) -> PrivateNode | None:
    try:
        record = json.loads(path.read_text())
        return PrivateNode(str(record["address"]), Path(record["token_file"]), int(record["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
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
    files = _files(_checked_folder(folder or private_folder()), owner)
    with _locked(files["lock"]):
        earlier = _recorded(files["json"])
        if earlier is not None and _answers(earlier):
            return earlier
        if earlier is not None and _runs(files):
            processes.kill_process(earlier.pid)  # running but not answering: frozen
            if not _wait_gone(files, _KILL_WAIT):
                raise NodeUnavailableError(
                    f"private node: process {earlier.pid} is frozen and cannot be ended"
                )
        node = _start(
            list(command or [sys.executable, "-m", "rvm_node"]),
            owner,
            idle_exit,
            files,
            serve_options,
            start_timeout,
            env,
        )
        record = {"address": node.address, "token_file": str(node.token_file), "pid": node.pid}
        try:
            atomic_write_bytes(files["json"], json.dumps(record).encode(), private=True)
        except BaseException as exc:  # unrecorded, it would hold the lock under another node's record
            processes.kill_process(node.pid)
            if isinstance(exc, OSError):
                raise NodeUnavailableError(
                    f"private node: cannot record it in {files['json']} ({exc.strerror or exc})"
                ) from None
            raise
        return node


def _start(
    command: list[str],
    owner: int,
    idle_exit: float,
    files: dict[str, Path],
    serve_options: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None,
) -> PrivateNode:
    atomic_write_bytes(files["token"], secrets.token_urlsafe(32).encode(), private=True)
    files["sock"].unlink(missing_ok=True)
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
    with open(
        os.open(files["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | filelocks.OPEN_FLAGS, 0o600), "wb"
    ) as log:
        try:
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                **processes.popen_options(detach=True),
                env=None if env is None else dict(env),
            )
        except OSError as exc:
            raise NodeUnavailableError(f"private node: cannot run {command[0]} ({exc.strerror})") from None
    address = _first_line(process, timeout)
    if not address:
        try:
            process.wait(10)  # it closed its output: it is on its way out
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise NodeUnavailableError(
                f"private node: not serving after {timeout:g} s (log: {files['log']})"
            ) from None
        raise NodeUnavailableError(f"private node did not start: {_last_line(files['log'])}")
    # The node goes on by itself; nothing here waits for it (its exit is its owner's or its idle time's).
    threading.Thread(target=process.wait, daemon=True).start()
    return PrivateNode(f"unix://{files['sock']}" if unix else address, files["token"], process.pid)


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The address the node prints once serving, or "" if it exits or takes longer than ``timeout``."""
    line: list[str] = []
    reader = threading.Thread(
        target=lambda: line.append(process.stdout.readline() if process.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout)
    return line[0].strip() if line else ""


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "it exited without a word"


def stop_private_node(
    owner_pid: int | None = None, *, folder: Path | None = None, timeout: float = 30.0
) -> bool:
    """Stop the private node of ``owner_pid`` (default: this process), draining it; False if none ran."""
    owner = os.getpid() if owner_pid is None else owner_pid
    files = _files(_checked_folder(folder or private_folder()), owner)
    with _locked(files["lock"]):
        node = _recorded(files["json"])
        files["json"].unlink(missing_ok=True)
        if node is None or not _runs(files):
            return False
        processes.stop_process(node.pid)
        if not _wait_gone(files, timeout):
            processes.kill_process(node.pid)
            _wait_gone(files, _KILL_WAIT)
        return True
