"""rvm-node's Windows code paths, against the fake of Windows' edge in ``tests/fake_windows.py`` (Windows cannot
run here; that module says what the fake shows and what it does not): file locks, process checks, stop
signals, every module's import, one writer per output, and the private node "This computer" starts, in
whole rvm-node processes on the fake."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rvm_node import filelocks, processes
from tests import fake_windows

ROOT = Path(__file__).resolve().parent.parent
RVM_NODE_ON_FAKE_WINDOWS = [sys.executable, str(ROOT / "tests" / "fake_windows.py")]


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, fake_windows.FakeKernel32]:
    return fake_windows.install(monkeypatch)


def _open(path: Path) -> int:
    return filelocks.open_lock_file(path)


def test_file_locks_exclude_a_second_open_and_leave_the_content_readable(
    windows: Any, tmp_path: Path
) -> None:
    msvcrt, _ = windows
    path = tmp_path / "lock"
    first, second = _open(path), _open(path)
    try:
        filelocks.write_start(first, b'{"holder": 1}')
        os.lseek(first, 3, os.SEEK_SET)
        assert filelocks.try_lock(first)
        assert os.lseek(first, 0, os.SEEK_CUR) == 3  # the position is kept
        assert msvcrt.locked_at == [1 << 30]  # far past the record, which others still read
        assert not filelocks.try_lock(second)
        assert filelocks.read_start(second, 100) == b'{"holder": 1}'
        threading.Timer(0.2, filelocks.unlock, (first,)).start()
        started = time.monotonic()
        filelocks.lock(second)  # waits for the holder, as long as it takes
        assert time.monotonic() - started > 0.1
        assert not filelocks.try_lock(first)
    finally:
        os.close(first)
        os.close(second)


def test_another_error_of_the_lock_call_is_not_taken_for_a_held_lock(windows: Any, tmp_path: Path) -> None:
    msvcrt, _ = windows

    def broken(fd: int, mode: int, nbytes: int) -> None:
        raise OSError(9, "Bad file descriptor")

    msvcrt.locking = broken
    fd = _open(tmp_path / "lock")
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):
            filelocks.try_lock(fd)
    finally:
        os.close(fd)


def test_process_checks_ask_the_kernel_and_close_their_handles(windows: Any) -> None:
    _, kernel32 = windows
    assert processes.process_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert not processes.process_exists(child.pid)  # exited: its exit code is known, it is not running
    child.wait()
    assert not processes.process_exists(child.pid)  # gone altogether
    kernel32.denied.add(4)
    assert processes.process_exists(4)  # a process we may not query exists
    assert not processes.process_exists(0)
    assert kernel32.handles == {}


def test_stopping_a_process_terminates_it(windows: Any) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ]
    )
    time.sleep(0.3)
    processes.ask_to_stop(child.pid)  # TerminateProcess: no handler can refuse it
    assert child.wait(10) == -signal.SIGKILL
    processes.ask_to_stop(child.pid)  # gone: nothing happens
    processes.kill_process(child.pid)


def test_background_processes_get_no_console_window() -> None:
    assert processes.popen_options(detach=True) == {"start_new_session": True}
    assert processes.popen_options(detach=False) == {}


def test_background_processes_get_no_console_window_on_windows(windows: Any) -> None:
    flags = fake_windows.CREATE_NO_WINDOW | fake_windows.CREATE_NEW_PROCESS_GROUP
    assert processes.popen_options(detach=True) == {"creationflags": flags}
    assert processes.popen_options(detach=False) == {"creationflags": fake_windows.CREATE_NO_WINDOW}


def test_stop_signals_reach_a_loop_that_cannot_watch_them(windows: Any) -> None:
    assert processes.stop_signals() == (signal.SIGINT, signal.SIGUSR2)  # Ctrl-C, and Ctrl-Break (the fake's)
    previous = signal.getsignal(signal.SIGUSR2)

    async def wait_for_stop() -> bool:
        stop = asyncio.Event()
        processes.on_stop_signals(asyncio.get_running_loop(), stop.set)
        os.kill(os.getpid(), signal.SIGUSR2)
        await asyncio.wait_for(stop.wait(), 10)
        return stop.is_set()

    try:
        assert asyncio.run(wait_for_stop())
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_every_module_imports_without_what_windows_lacks() -> None:
    """Every module of rvm_node (what both plugins run), in a process that cannot import fcntl, grp, pwd,
    resource or termios, as Blender's or Nuke's Python on Windows cannot."""
    script = (
        "import pkgutil, importlib\n"
        "import tests.fake_windows as fw\n"
        "fw.install_for_good()\n"
        "import rvm_node\n"
        "failed = []\n"
        "for info in pkgutil.walk_packages(rvm_node.__path__, 'rvm_node.'):\n"
        "    if info.name.endswith('__main__'):\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name in fw.MISSING_MODULES:\n"
        "            failed.append(f'{info.name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout


def test_one_writer_per_output(windows: Any, tmp_path: Path) -> None:
    from rvm_node.errors import OutputInUseError
    from rvm_node.io.outlock import OutputLock, lock_path

    target = tmp_path / "out" / "m.####.png"
    lock = lock_path(target.parent, "m.")
    refused = pytest.raises(OutputInUseError, match=f"host .*, pid {os.getpid()}")
    with OutputLock([("output_alpha", lock)]), refused, OutputLock([("output_alpha", lock)]):
        pass
    assert not lock.exists()  # released and removed
    with OutputLock([("output_alpha", lock)]):
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()


def test_a_lock_file_that_cannot_be_removed_while_open_is_removed_after(
    windows: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows removes no open file: the lock goes once closed."""
    from rvm_node.io.outlock import OutputLock

    lock = tmp_path / ".m.rvmlock"
    opened: set[int] = set()
    real_unlink, real_close = Path.unlink, os.close

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == lock and opened:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real_unlink(self, missing_ok)

    def close(fd: int) -> None:
        opened.discard(fd)
        real_close(fd)

    with OutputLock([("output_alpha", lock)]) as held:
        opened.update(fd for _, fd in held._held)
        monkeypatch.setattr(Path, "unlink", unlink)
        monkeypatch.setattr(os, "close", close)
    assert not lock.exists()


@pytest.mark.slow
def test_this_computer_on_windows(windows: Any, tmp_path: Path) -> None:
    """The private node on the fake Windows: rvm-node processes on it, a loopback port with a token, reused,
    its mattes equal a local convert bit for bit, a frozen node replaced, stopped, and gone with its owner."""
    from rvm_node.client import NodeClient, matte_shot
    from rvm_node.client.private_node import private_node, stop_private_node
    from rvm_node.errors import NodeAuthError
    from rvm_node.example import example_clip
    from rvm_node.io.sequence import FrameRange
    from tests.helpers import process_gone, run_rvm_node

    folder = tmp_path / "private"
    node = private_node(RVM_NODE_ON_FAKE_WINDOWS, folder=folder)
    try:
        assert node.address.startswith("127.0.0.1:")  # no Unix socket on Windows
        assert (
            private_node(RVM_NODE_ON_FAKE_WINDOWS, folder=folder) == node
        )  # the second shot: the same process
        with pytest.raises(NodeAuthError), NodeClient(node.address, retries=0) as stranger:
            stranger.info()
        with NodeClient(node.address, token=node.token) as client:
            assert client.info().transports and "shm" not in client.info().transports
            out = tmp_path / "node" / "m.####.png"
            matte_shot(
                client,
                example_clip(),
                output_alpha=str(out),
                frames=FrameRange(1, 8),
                progress=False,
            )
        fake_windows.POSIX_KILL(node.pid, signal.SIGSTOP)  # frozen: replaced on the next use
        again = private_node(RVM_NODE_ON_FAKE_WINDOWS, folder=folder)
        assert again.pid != node.pid and process_gone(node.pid)
        assert stop_private_node(folder=folder)
        assert process_gone(again.pid)
    finally:
        stop_private_node(folder=folder)
    reference = tmp_path / "local" / "m.####.png"
    run_rvm_node(
        "convert", "--input-source", str(example_clip()), "--output-alpha", str(reference), "--frames", "1-8"
    )
    for n in range(1, 9):
        name = f"m.{n:04d}.png"
        assert (out.parent / name).read_bytes() == (reference.parent / name).read_bytes(), n

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        owned = private_node(RVM_NODE_ON_FAKE_WINDOWS, folder=folder, owner_pid=owner.pid)
    finally:
        owner.kill()
        owner.wait()
    assert process_gone(owned.pid)  # the application quit: its node saw it through the kernel and stopped
    deadline = time.monotonic() + 30
    while list(folder.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.iterdir()) == []  # and removed its folder


def test_serve_refuses_several_workers_where_ports_cannot_be_shared(
    windows: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from rvm_node.cli import EXIT_INPUT, main

    monkeypatch.delattr(socket, "SO_REUSEPORT")  # as on Windows
    assert main(["serve", "--port", "0", "--workers", "2"]) == EXIT_INPUT  # before any model loads
    assert "--workers: several node processes share a port through SO_REUSEPORT" in capsys.readouterr().err


def test_a_unix_socket_is_refused_in_one_line_where_there_are_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from rvm_node.errors import InvalidInputError
    from rvm_node.node.server import _bind_unix

    monkeypatch.delattr(socket, "AF_UNIX")  # as in Python on Windows
    with pytest.raises(
        InvalidInputError, match=r"unix_socket: .*node\.sock: this system has no Unix domain sockets"
    ):
        _bind_unix(None, tmp_path / "node.sock")


def test_a_shared_memory_ring_is_refused_in_one_line_where_there_are_none(windows: Any) -> None:
    from rvm_node.client.ring import ClientRing
    from rvm_node.errors import InvalidInputError
    from rvm_node.v1.protocol import SlotLayout, rings_supported

    assert not rings_supported()
    with pytest.raises(InvalidInputError, match=r"^shared-memory rings: this host has no memfds "):
        ClientRing(SlotLayout(48, (16,), 64), 2)


class _OpenFilesStay:
    """Windows' rule that no open file can be removed, for the lock files rvm-node opens: ``os.unlink`` (also
    as ``shutil.rmtree`` calls it) refuses a file while a descriptor of it is open."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open: dict[int, str] = {}
        self.refused: list[str] = []
        real_open, real_close, real_unlink = filelocks.open_lock_file, os.close, os.unlink

        def open_lock_file(path: str | os.PathLike[str], mode: int = 0o600) -> int:
            fd = real_open(path, mode)
            self.open[fd] = os.path.realpath(path)
            return fd

        def close(fd: int) -> None:
            self.open.pop(fd, None)
            real_close(fd)

        def unlink(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
            where = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path) if dir_fd is not None else path
            if os.path.realpath(where) in self.open.values():
                self.refused.append(os.path.basename(where))
                raise PermissionError(13, "The process cannot access the file because it is being used")
            real_unlink(path, dir_fd=dir_fd)

        monkeypatch.setattr(filelocks, "open_lock_file", open_lock_file)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "unlink", unlink)


def test_a_lock_file_goes_once_closed_unless_another_has_it_open(
    windows: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = _OpenFilesStay(monkeypatch)
    path = tmp_path / "turn.lock"
    holder = filelocks.take_lock_file(path, wait=True)
    waiter = filelocks.open_lock_file(path)  # another call, waiting for its turn
    assert not filelocks.try_lock(waiter)
    filelocks.remove_lock_file(path, holder)  # closed, then not removed: the waiter has it open
    assert rule.refused == ["turn.lock"] and path.exists()
    assert filelocks.try_lock(waiter)  # its turn, on the file at the path
    filelocks.remove_lock_file(path, waiter)  # the last one removes it
    assert not path.exists() and rule.open == {}


def test_serve_removes_its_private_folder_on_windows_once_its_lock_file_is_closed(
    windows: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from rvm_node.cli import main
    from tests.standin import StandInBackend

    monkeypatch.setattr("rvm_node.cli.common.load_local", lambda _choice, _options: StandInBackend())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR2)}
    rule = _OpenFilesStay(monkeypatch)
    own = tmp_path / "node-1.abcdefgh"
    own.mkdir()
    (own / "token").write_text("a token")
    argv = ["serve", "--port", "0", "--private-folder", str(own), "--lock-file", str(own / "alive")]
    try:
        assert main([*argv, "--token-file", str(own / "token"), "--exit-when-idle", "0.5"]) == 0
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert capsys.readouterr().out.startswith("127.0.0.1:")
    assert "alive" in rule.refused  # not while the node held it
    assert not own.exists()
