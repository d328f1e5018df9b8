"""Lock files their holders remove (rvm_node.filelocks.take_lock_file, remove_lock_file): one that waited on a
file its holder removed takes the new one, never the removed one; a file another put at the path stays. The
Windows side of these is in test_windows.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rvm_node import filelocks


def _names(path: Path, fd: int) -> bool:
    return os.path.exists(path) and os.path.samestat(os.stat(path), os.fstat(fd))


def test_one_that_waited_on_a_removed_lock_file_takes_the_file_at_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "turn.lock"
    holder = filelocks.take_lock_file(path, wait=True)
    waiting = threading.Event()
    opened: list[int] = []
    real_open, real_lock = filelocks.open_lock_file, filelocks.lock

    def open_lock_file(where: str | os.PathLike[str], mode: int = 0o600) -> int:
        opened.append(real_open(where, mode))
        return opened[-1]

    def lock(fd: int, poll: float = 0.05) -> None:
        waiting.set()
        real_lock(fd, poll)

    monkeypatch.setattr(filelocks, "open_lock_file", open_lock_file)
    monkeypatch.setattr(filelocks, "lock", lock)
    taken: list[int] = []
    waiter = threading.Thread(target=lambda: taken.append(filelocks.take_lock_file(path, wait=True)))
    waiter.start()
    assert waiting.wait(30)  # it has opened the holder's file, and waits on its lock
    filelocks.remove_lock_file(path, holder)  # removed while still held, then let go
    waiter.join(30)
    try:
        assert len(opened) == 2 and taken == [opened[1]]  # the removed file let go of, the new one taken
        assert _names(path, taken[0])
        assert filelocks.take_lock_file(path, wait=False) is None  # the one at the path is held
    finally:
        filelocks.remove_lock_file(path, taken[0])
    assert not path.exists()


def test_removing_a_lock_file_leaves_one_another_put_at_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.alive"
    held = filelocks.take_lock_file(path, wait=False)
    assert held is not None
    path.unlink()  # removed under it (its folder swept), and the path taken by another
    path.write_text("another's")
    filelocks.remove_lock_file(path, held)
    assert path.read_text() == "another's"
    held = filelocks.take_lock_file(path, wait=False)
    assert held is not None

    def refused(where: str | os.PathLike[str], **_options: object) -> None:
        raise PermissionError(13, "Permission denied", str(where))

    monkeypatch.setattr(os, "unlink", refused)  # a folder that refuses it: the file stays, let go of
    filelocks.remove_lock_file(path, held)
    monkeypatch.undo()
    again = filelocks.take_lock_file(path, wait=False)
    assert again is not None
    filelocks.remove_lock_file(path, again)
    assert not path.exists()
