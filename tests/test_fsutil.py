"""The temporary-file contract every writer and plugin shares, and atomic writes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rvm_node.fsutil import (
    atomic_write,
    atomic_write_bytes,
    current_umask,
    is_temporary,
    new_file_mode,
    remove_temporaries,
    temporary_owner,
    temporary_path,
)


def test_a_temporary_names_its_final_file(tmp_path: Path) -> None:
    assert temporary_path(tmp_path / "m.0001.exr", "video").name == ".m.0001.video.rvmtmp.exr"
    assert temporary_owner(".m.0001.video.rvmtmp.exr") == "m.0001.exr"
    seen: list[str] = []
    atomic_write(tmp_path / "shot.0007.png", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert temporary_owner(seen[0]) == "shot.0007.png" and is_temporary(Path(seen[0]))
    for name in ("m.0001.exr", ".hidden.exr", ".rvmtmp.exr", "m.rvmtmp.exr"):
        assert temporary_owner(name) is None, name


def test_only_the_owned_temporaries_are_removed(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "m.0001.png", b"done")
    for name in (".m.0002.a1b2.rvmtmp.png", ".m.0003.c3.rvmtmp.png", ".n.0002.x.rvmtmp.png"):
        (tmp_path / name).write_bytes(b"partial")
    assert remove_temporaries(tmp_path, {"m.0002.png", "n.0009.png"}.__contains__) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".m.0003.c3.rvmtmp.png",
        ".n.0002.x.rvmtmp.png",
        "m.0001.png",
    ]
    assert remove_temporaries(tmp_path / "missing", lambda _: True) == 0


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "m.0001.exr", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_mode_open_gives_under_the_umask(tmp_path: Path, umask: int) -> None:
    """What a farm writes is readable on shared storage as the umask allows, never mkstemp's 0600."""
    (tmp_path / "plain").write_bytes(b"")  # what open() gives a new file
    atomic_write_bytes(tmp_path / "m.0001.png", b"done")
    atomic_write(tmp_path / "m.0002.exr", lambda tmp: tmp.write_bytes(b"x"))
    assert current_umask() == umask
    assert new_file_mode() == 0o666 & ~umask
    assert _mode(tmp_path / "m.0001.png") == _mode(tmp_path / "m.0002.exr") == _mode(tmp_path / "plain")


def test_a_writer_that_replaces_its_temporary_still_gives_the_mode(tmp_path: Path, umask: int) -> None:
    def replace(tmp: Path) -> None:  # some encoders unlink and recreate the file they are given
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    atomic_write(tmp_path / "m.0001.tif", replace)
    assert _mode(tmp_path / "m.0001.tif") == 0o666 & ~umask


def test_private_files_stay_their_owners(tmp_path: Path, umask: int) -> None:
    atomic_write_bytes(tmp_path / "weights.onnx", b"w", private=True)
    assert _mode(tmp_path / "weights.onnx") == 0o600
