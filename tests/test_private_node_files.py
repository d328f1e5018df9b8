"""What a private node leaves behind: nothing (rvm_node.client.private_node, ``serve --private-folder`` and
``--lock-file``). Real `rvm-node serve` processes on the stand-in model: a clean stop, an owner killed, a node
killed (swept at the next start, never a running node's files), a node exiting as its owner starts the next,
owners killed as they start their node, starts that fail; and what any node removes as it exits."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rvm_node import filelocks
from rvm_node.client import NodeClient
from rvm_node.client.private_node import PrivateNode, private_node, running_private_node, stop_private_node
from rvm_node.errors import NodeUnavailableError
from rvm_node.fsutil import TEMPORARY_MARK
from tests.helpers import RVM_NODE_STANDIN, listing, process_gone, wait_until

ROOT = Path(__file__).resolve().parent.parent

# An application that starts its private node (the stand-in) in FOLDER, says its process, and runs on.
_OWNER = (
    "import sys\n"
    "from pathlib import Path\n"
    "from rvm_node.client.private_node import private_node\n"
    "from tests.helpers import RVM_NODE_STANDIN\n"
    "node = private_node(RVM_NODE_STANDIN, folder=Path(sys.argv[1]))\n"
    "print(node.pid, flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A private folder that already holds others' files: a live owner's (process 1), and not a node's."""
    where = tmp_path / "private"
    where.mkdir(mode=0o700)
    (where / "node-1.json").write_text("process 1's: it runs")
    (where / "notes.txt").write_text("not a node's")
    (where / "kept").mkdir()
    (where / "kept" / "node-2.log").write_text("in a folder of another's")
    return where


@pytest.fixture
def owners() -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Processes that stand for applications (sleepers), killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], text=True))
        return started[-1]

    yield start
    for owner in started:
        owner.kill()
        owner.wait()


def _absent(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def _serves(node: PrivateNode) -> bool:
    with NodeClient(node.address, token=node.token, retries=0) as client:
        return bool(client.info(timeout=10).backend)


def _dead_process() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_clean_start_and_stop_leaves_the_folder_as_it_was(folder: Path) -> None:
    before = listing(folder)
    node = private_node(RVM_NODE_STANDIN, folder=folder)
    try:
        own = node.token_file.parent  # the node's own folder: its lock, socket, token, log and record
        assert own.parent == folder and own.name.startswith(f"node-{os.getpid()}.")
        assert own.stat().st_mode & 0o777 == 0o700
        assert {p.name for p in own.iterdir()} == {"alive", "sock", "token", "log", "record.json"}
        assert running_private_node(folder=folder) == node and _serves(node)
    finally:
        assert stop_private_node(folder=folder)
    assert listing(folder) == before
    assert process_gone(node.pid) and running_private_node(folder=folder) is None
    assert not stop_private_node(folder=folder)  # nothing left to stop, and nothing made to find that out
    assert listing(folder) == before


def test_a_node_whose_owner_is_killed_exits_and_leaves_the_folder_as_it_was(folder: Path) -> None:
    before = listing(folder)
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert listing(folder) != before
    finally:
        owner.kill()  # SIGKILL: the application had no say
        owner.wait()
    assert process_gone(pid)
    assert wait_until(lambda: listing(folder) == before)


def test_a_killed_nodes_files_stay_until_the_next_start_sweeps_them_never_a_running_nodes(
    folder: Path, owners: Callable[[], subprocess.Popen[str]]
) -> None:
    before = listing(folder)
    live_owner, killed_owner, frozen_owner = owners(), owners(), owners()
    live = private_node(RVM_NODE_STANDIN, folder=folder, owner_pid=live_owner.pid)
    killed = private_node(RVM_NODE_STANDIN, folder=folder, owner_pid=killed_owner.pid)
    frozen = private_node(RVM_NODE_STANDIN, folder=folder, owner_pid=frozen_owner.pid)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        assert process_gone(killed.pid)
        killed_owner.kill()
        killed_owner.wait()
        os.kill(frozen.pid, signal.SIGSTOP)  # its owner is gone too, but it holds its lock
        frozen_owner.kill()
        frozen_owner.wait()
        assert killed.token_file.parent.is_dir()  # a killed node removes nothing
        dead = _dead_process()  # files of the layout before node folders, of an owner that is gone
        earlier = [
            f"node-{dead}.json",
            f"node-{dead}.lock",
            f"node-{dead}.token",
            f".node-{dead}.x{TEMPORARY_MARK}.json",
        ]
        for name in earlier:
            (folder / name).write_text("left")
        older = _dead_process()  # the same, but a node of that layout runs on (it holds node-PID.alive)
        (folder / f"node-{older}.token").write_text("its token")
        older_alive = filelocks.take_lock_file(folder / f"node-{older}.alive", wait=False)
        unknown = folder / f"node-{older}.abcdefgh"  # a node folder whose lock cannot be opened to tell
        (unknown / "alive").mkdir(parents=True)
        mine = private_node(RVM_NODE_STANDIN, folder=folder)  # another owner's start sweeps
        assert not killed.token_file.parent.exists()
        assert not [name for name in earlier if (folder / name).exists()]
        assert (folder / f"node-{older}.token").exists() and (unknown / "alive").is_dir()  # kept
        assert older_alive is not None
        filelocks.remove_lock_file(folder / f"node-{older}.alive", older_alive)
        (folder / f"node-{older}.token").unlink()
        shutil.rmtree(unknown)
        assert frozen.token_file.parent.is_dir()
        assert running_private_node(frozen_owner.pid, folder=folder) == frozen
        assert running_private_node(live_owner.pid, folder=folder) == live and _serves(live)
        assert stop_private_node(folder=folder) and process_gone(mine.pid)
        assert stop_private_node(live_owner.pid, folder=folder) and process_gone(live.pid)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)  # on again: its owner is gone, so it exits and removes its folder
        for node in (live, frozen):
            if not process_gone(node.pid):
                os.kill(node.pid, signal.SIGKILL)
    assert process_gone(frozen.pid)
    assert wait_until(lambda: listing(folder) == before)


def test_a_node_exiting_as_its_owner_starts_the_next_leaves_the_next_ones_files(folder: Path) -> None:
    """A node on its way out (idle) has let go of its record, but not yet of its folder, when the same owner
    starts the next one: each removes its own folder, so the next one's files stay."""
    before = listing(folder)
    old = private_node(RVM_NODE_STANDIN, folder=folder, idle_exit=0.5)
    os.kill(old.pid, signal.SIGSTOP)
    (old.token_file.parent / "record.json").unlink()  # as its removal does first, in its folder's order
    new = private_node(RVM_NODE_STANDIN, folder=folder)
    try:
        assert new.pid != old.pid and new.token_file.parent != old.token_file.parent
        os.kill(old.pid, signal.SIGCONT)  # idle: it goes on out, removing its folder
        assert process_gone(old.pid) and wait_until(_absent(old.token_file.parent))
        assert {p.name for p in new.token_file.parent.iterdir()} == {
            "alive",
            "sock",
            "token",
            "log",
            "record.json",
        }
        assert running_private_node(folder=folder) == new and _serves(new)
        assert private_node(RVM_NODE_STANDIN, folder=folder) == new
    finally:
        stop_private_node(folder=folder)
    assert listing(folder) == before
    for _ in range(3):  # and as it happens: a node exits idle while its owner asks for one again and again
        old = private_node(RVM_NODE_STANDIN, folder=folder, idle_exit=0.5)
        new = old
        deadline = time.monotonic() + 30
        while new.pid == old.pid and time.monotonic() < deadline:
            new = private_node(RVM_NODE_STANDIN, folder=folder)
        try:
            assert new.pid != old.pid and process_gone(old.pid)
            assert wait_until(_absent(old.token_file.parent))
            assert running_private_node(folder=folder) == new and _serves(new)
        finally:
            stop_private_node(folder=folder)
        assert listing(folder) == before


def test_owners_killed_as_they_start_their_node_leave_nothing_after_the_next_start_and_stop(
    folder: Path,
) -> None:
    before = listing(folder)
    delays = random.Random(1047)
    for _ in range(6):  # killed anywhere from Python's start to a recorded, serving node
        owner = subprocess.Popen(
            [sys.executable, "-c", _OWNER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):  # it never ends by itself: it waits on its stdin
            owner.wait(delays.uniform(0.1, 2.5))
        owner.kill()
        owner.wait()
    node = private_node(RVM_NODE_STANDIN, folder=folder)
    assert stop_private_node(folder=folder) and process_gone(node.pid)
    assert wait_until(lambda: listing(folder) == before)


def test_a_start_that_fails_says_why_in_one_line_and_leaves_the_folder_as_it_was(folder: Path) -> None:
    before = listing(folder)
    # The node removes its folder, its log with it, before its last line is out: read through the log still.
    with pytest.raises(
        NodeUnavailableError, match=r"^private node did not start: rvm-node: error: .*max.streams"
    ):
        private_node(RVM_NODE_STANDIN, folder=folder, serve_options=("--max-streams", "0"))
    assert listing(folder) == before
    silent = [
        sys.executable,
        "-c",
        "import sys, time; print('loading', file=sys.stderr, flush=True); time.sleep(600)",
    ]
    with pytest.raises(
        NodeUnavailableError, match=r"^private node: not serving after 1 s \(its last line: loading\)$"
    ):
        private_node(silent, folder=folder, start_timeout=1)
    assert listing(folder) == before
    missing = str(folder.parent / "no-such-rvm-node")
    with pytest.raises(NodeUnavailableError, match=f"^private node: cannot run {missing} \\(No such file"):
        private_node([missing], folder=folder)
    assert listing(folder) == before


@pytest.fixture
def standin_serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``rvm-node serve`` in this process runs the stand-in model; the logging it sets up is put back after."""
    import logging

    from tests.standin import StandInBackend

    monkeypatch.setattr("rvm_node.cli.common.load_local", lambda _choice, _options: StandInBackend())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_serve_removes_its_socket_and_lock_file_as_it_exits(
    tmp_path: Path, standin_serve: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any node, not only a private one: gRPC removes the socket as it stops serving, the node its lock file."""
    from rvm_node.cli import main

    sock, lock = tmp_path / "node.sock", tmp_path / "node.alive"
    argv = ["serve", "--port", "0", "--unix", str(sock), "--lock-file", str(lock), "--exit-when-idle", "0.5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("127.0.0.1:")  # it served
    assert list(tmp_path.iterdir()) == []


def test_serve_removes_its_private_folder_as_it_exits_by_itself_or_on_an_error(
    tmp_path: Path, standin_serve: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from rvm_node.cli import EXIT_INPUT, main

    ends = {
        "idle": (["--exit-when-idle", "0.5"], 0),
        "error": (["--exit-with-pid", str(_dead_process())], EXIT_INPUT),
    }
    for name, (flags, code) in ends.items():
        own = tmp_path / name
        own.mkdir(mode=0o700)
        (own / "token").write_text("a token")
        (own / "log").write_text("its log")
        (own / "more").mkdir()
        argv = ["serve", "--port", "0", "--private-folder", str(own), "--lock-file", str(own / "alive")]
        argv += ["--unix", str(own / "sock"), "--token-file", str(own / "token"), *flags]
        assert main(argv) == code, capsys.readouterr().err
        assert not own.exists(), name
    assert "--exit-with-pid: no process" in capsys.readouterr().err


def test_serve_refuses_a_private_folder_that_is_not_its_alone_and_removes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rvm_node.cli import EXIT_INPUT, main

    own = tmp_path / "own"
    own.mkdir()
    (own / "log").write_text("another node's")
    missing = tmp_path / "missing"
    refused = [
        (
            [str(missing), "--lock-file", str(missing / "alive")],
            f"--private-folder: {missing} is not a folder",
        ),
        ([str(own)], f"--private-folder: {own} must hold the node's --lock-file"),
        (
            [str(own), "--lock-file", str(tmp_path / "a")],
            f"--private-folder: {own} must hold the node's --lock-file",
        ),
    ]
    for flags, said in refused:
        assert main(["serve", "--port", "0", "--private-folder", *flags]) == EXIT_INPUT
        assert said in capsys.readouterr().err
    fd = filelocks.take_lock_file(own / "alive", wait=False)
    try:
        assert fd is not None  # another node's
        assert (
            main(["serve", "--port", "0", "--private-folder", str(own), "--lock-file", str(own / "alive")])
            == EXIT_INPUT
        )
    finally:
        assert fd is not None
        filelocks.remove_lock_file(own / "alive", fd)
    assert f"--lock-file: {own / 'alive'} is held by another running node" in capsys.readouterr().err
    assert [p.name for p in own.iterdir()] == ["log"]
