"""The temporary-file contract every writer and plugin shares, and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvm_node.fsutil import (
    atomic_write,
    atomic_write_bytes,
    is_temporary,
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
