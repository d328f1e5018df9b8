"""The farm against real `rvm-node serve` subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rvm_node import InvalidInputError, load_model
from rvm_node.client import NodeClient
from rvm_node.convert import convert_video
from rvm_node.errors import NodeError
from rvm_node.events import ProgressEvent
from rvm_node.farm import NodePool, load_shot_list, parse_nodes, run_shots
from rvm_node.io.images import read_image
from rvm_node.io.sequence import parse_frame_range
from rvm_node.node.launch import rvm_node_command
from tests.helpers import spawn_node, wait_until

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

RATIO = 0.5


class Node:
    def __init__(self, *args: str) -> None:
        self.process, self.address = spawn_node(*args)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def clip(weights_cache: Path) -> Path:
    from rvm_node.example import example_clip

    return example_clip()


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[list[Node]]:
    nodes = [Node("--max-streams", "2") for _ in range(3)]
    yield nodes
    for node in nodes:
        node.kill()


def shot_list(path: Path, clip: Path, out: Path, shots: dict[str, str]) -> Path:
    lines = [
        "[defaults]",
        f'input = "{clip}"',
        f"downsample_ratio = {RATIO}",
        f'output_alpha = "{out}/{{shot}}/m.####.png"',
        "",
    ]
    for name, frames in shots.items():
        lines += ["[[shot]]", f'name = "{name}"', f'frames = "{frames}"', ""]
    path.write_text("\n".join(lines))
    return path


def reference(clip: Path, frames: str, out: Path) -> Path:
    convert_video(
        load_model(),  # --backend auto, as the nodes run
        clip,
        downsample_ratio=RATIO,
        output_alpha=out / "m.####.png",
        frames=parse_frame_range(frames),
        progress=False,
    )
    return out


def same_frames(a: Path, b: Path, frames: str) -> None:
    span = parse_frame_range(frames)
    for n in range(span.first, span.last + 1):
        assert np.array_equal(
            read_image(a / f"m.{n:04d}.png").pixels, read_image(b / f"m.{n:04d}.png").pixels
        ), (a, n)
    assert len(list(a.glob("m.*.png"))) >= len(span)


def test_six_shots_on_three_nodes(three_nodes: list[Node], clip: Path, tmp_path: Path) -> None:
    shots = {f"sh{i}": f"{1 + 7 * i}-{8 + 7 * i}" for i in range(6)}
    pool = NodePool([n.address for n in three_nodes])
    try:
        events = list(
            run_shots(load_shot_list(shot_list(tmp_path / "shots.toml", clip, tmp_path / "out", shots)), pool)
        )
    finally:
        pool.close()
    finals = {e.shot: e for e in events if e.kind in ("done", "failed")}
    assert {k: e.kind for k, e in finals.items()} == dict.fromkeys(shots, "done")
    used = {node for e in finals.values() for node in e.result.nodes}
    assert len(used) >= 2  # spread over the pool
    for name, frames in shots.items():
        same_frames(tmp_path / "out" / name, reference(clip, frames, tmp_path / "ref" / name), frames)


def test_node_killed_mid_shot_moves_with_no_seam(clip: Path, tmp_path: Path) -> None:
    first, second = Node("--max-streams", "1"), Node("--max-streams", "1")
    pool = NodePool([first.address, second.address], cooldown=60)
    try:
        shots = load_shot_list(shot_list(tmp_path / "shots.toml", clip, tmp_path / "out", {"long": "1-90"}))
        killed_at = None
        for event in run_shots(shots, pool, backoff=0.1, checkpoint_every=10):
            if event.kind == "frame" and killed_at is None and event.result.frames >= 35:
                victim = first if event.node == first.address else second
                victim.kill()
                killed_at = event.result.frames
            last = event
        assert last.kind == "done" and last.result.retries == 1 and len(last.result.nodes) == 2
        print(
            f"\nnode killed after {killed_at} frames; frames recomputed on the second node: "
            f"{last.result.frames - 90} extra writes, retries {last.result.retries}"
        )
        same_frames(tmp_path / "out" / "long", reference(clip, "1-90", tmp_path / "ref"), "1-90")
    finally:
        pool.close()
        first.kill()
        second.kill()


def test_busy_node_sends_shots_elsewhere(clip: Path, tmp_path: Path) -> None:
    busy, free = Node("--max-streams", "1"), Node("--max-streams", "2")
    holder_client = NodeClient(busy.address)
    holder = holder_client.open_stream(width=64, height=48)
    pool = NodePool([busy.address, free.address])
    try:
        shots = load_shot_list(
            shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"a": "1-4", "b": "5-8"})
        )
        finals = [e for e in run_shots(shots, pool) if e.kind in ("done", "failed")]
        assert all(e.kind == "done" and e.result.nodes == [free.address] for e in finals)
    finally:
        holder.cancel()
        holder_client.close()
        pool.close()
        busy.kill()
        free.kill()


def test_all_nodes_down_then_rerun(clip: Path, tmp_path: Path) -> None:
    shots_file = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"a": "1-5"})
    pool = NodePool(["127.0.0.1:9"], cooldown=0.1)
    with pytest.raises(NodeError, match=r"no node of the pool answered: 127\.0\.0\.1:9"):
        list(run_shots(load_shot_list(shots_file), pool))
    pool.close()
    assert not (tmp_path / "out").exists()
    node = Node()
    try:
        result = subprocess.run(
            rvm_node_command("farm", "run", str(shots_file), "--nodes", node.address),
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "done" in result.stderr and len(list((tmp_path / "out" / "a").glob("m.*.png"))) == 5
    finally:
        node.kill()


def test_farm_client_killed_and_rerun_redoes_nothing(
    three_nodes: list[Node], clip: Path, tmp_path: Path
) -> None:
    shots_file = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"a": "1-60", "b": "61-120"})
    nodes = ",".join(n.address for n in three_nodes)
    command = rvm_node_command(
        "farm",
        "run",
        str(shots_file),
        "--nodes",
        nodes,
        "--progress-json",
    )
    progress = tmp_path / "progress.jsonl"
    with progress.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.DEVNULL, env=os.environ.copy())
    wait_until(lambda: len(list((tmp_path / "out").glob("*/m.*.png"))) >= 40, 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*/m.*.png")}
    assert 0 < len(before) < 120
    records = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    assert all(r["v"] == 1 for r in records)
    frames = [ProgressEvent.from_json(json.dumps(r)) for r in records if r["kind"] == "frame"]
    assert frames and frames[-1].total == 60 and frames[-1].node and frames[-1].shot in ("a", "b")
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stderr
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime  # nothing redone
    same_frames(tmp_path / "out" / "a", reference(clip, "1-60", tmp_path / "ref_a"), "1-60")
    same_frames(tmp_path / "out" / "b", reference(clip, "61-120", tmp_path / "ref_b"), "61-120")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[shot]]\ninput = "{missing}"\noutput_alpha = "o/m.####.png"\n', "does not exist"),
        (
            '[[shot]]\ninput = "{clip}"\nname = "a"\noutput_alpha = "o/m.####.png"\n'
            '[[shot]]\ninput = "{clip}"\nname = "b"\noutput_alpha = "o/m.####.png"\n',
            "used by shots a and b",
        ),
        ('[[shot]]\ninput = "{clip}"\ncolour = 1\noutput_alpha = "o/m.####.png"\n', "unknown keys colour"),
        ('[[shot]]\ninput = "{clip}"\noutput_alpha = "o/m.png"\n', "needs a frame field"),
        ('[[shot]]\ninput = "{clip}"\n', "has no output"),
        ('[defaults]\nspeed = 1\n[[shot]]\ninput = "{clip}"\n', "[defaults]: unknown keys speed"),
        ("[[shots]]\ninput = 1\n", "unknown tables shots"),
        ("", "no [[shot]] entries"),
        ("[[shot\n", "not valid TOML"),
    ],
)
def test_bad_shot_lists(text: str, message: str, clip: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text.format(clip=clip, missing=tmp_path / "nope.mov"))
    with pytest.raises(InvalidInputError) as info:
        load_shot_list(path)
    assert message in str(info.value)
    assert not (tmp_path / "o").exists()


def test_node_specs(tmp_path: Path) -> None:
    assert parse_nodes("a:1,b:2,a:1") == ["a:1", "b:2"]
    assert parse_nodes("dns:///localhost:50051")[0].endswith(":50051")
    (tmp_path / "n.toml").write_text('nodes = ["h1:1", "h2:2"]\n')
    assert parse_nodes(str(tmp_path / "n.toml")) == ["h1:1", "h2:2"]
    for bad, message in (
        ("h1", "HOST:PORT"),
        ("dns:///nowhere.invalid:1", "cannot resolve"),
        ("", "no node"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            parse_nodes(bad)


def test_split_shot_seams(three_nodes: list[Node], clip: Path, tmp_path: Path) -> None:
    """A 120-frame shot in 2 segments with the default pre-roll: the seam stays within the documented bound."""
    from rvm_node.farm import DEFAULT_PREROLL, split_shot

    shots = load_shot_list(shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"long": "1-120"}))
    segments = split_shot(shots[0], 2)
    assert [(s.frames.first, s.frames.last, s.write_from) for s in segments] == [  # type: ignore[union-attr]
        (1, 60, None),
        (61 - DEFAULT_PREROLL, 120, 61),
    ]
    pool = NodePool([n.address for n in three_nodes])
    try:
        later = [e for e in run_shots(segments[1:], pool) if e.kind in ("done", "failed")]
        # the second segment alone writes only its own frames: its pre-roll is run, not written
        assert sorted(int(p.name.split(".")[1]) for p in (tmp_path / "out" / "long").glob("m.*.png")) == list(
            range(61, 121)
        )
        finals = later + [e for e in run_shots(segments[:1], pool) if e.kind in ("done", "failed")]
    finally:
        pool.close()
    assert [e.kind for e in finals] == ["done", "done"]
    assert len(list((tmp_path / "out" / "long").glob("m.*.png"))) == 120
    ref = reference(clip, "1-120", tmp_path / "ref")
    same_frames(tmp_path / "out" / "long", ref, "1-60")  # the first segment is the continuous run
    seam = max(
        float(
            np.abs(
                read_image(tmp_path / "out" / "long" / f"m.{n:04d}.png").pixels.astype(np.float32)
                - read_image(ref / f"m.{n:04d}.png").pixels.astype(np.float32)
            ).max()
        )
        / 65535
        for n in range(61, 121)
    )
    print(f"\nsplit in 2 with a {DEFAULT_PREROLL}-frame pre-roll: alpha max {seam:.3f} after the seam")
    assert seam <= 0.1


def test_farm_cli_without_a_shot_list(three_nodes: list[Node], clip: Path, tmp_path: Path) -> None:
    from rvm_node.cli import main

    link = tmp_path / "plate_a.mp4"
    link.symlink_to(clip)
    code = main(
        [
            "farm",
            "run",
            "--nodes",
            three_nodes[0].address,
            "--frames",
            "1-3",
            "--downsample-ratio",
            "0.5",
            "--output-alpha",
            str(tmp_path / "mattes" / "{shot}" / "{shot}_matte.####.png"),
            str(link),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "mattes" / "plate_a").iterdir()) == [
        f"plate_a_matte.{n:04d}.png" for n in (1, 2, 3)
    ]


def test_a_frozen_node_loses_its_shot_to_another_node_within_the_stall_timeout(
    clip: Path, tmp_path: Path
) -> None:
    """SIGSTOP a node mid-shot (a hung driver, a stuck mount, a paused VM look the same): the stream's stall
    timeout treats it as dead, the shot moves to the other node and resumes from its checkpoint, equal to an
    uninterrupted run; the node, continued later, writes nothing."""
    nodes = [Node() for _ in range(2)]
    pool = NodePool([n.address for n in nodes], stall_timeout=3)
    stopped: list[Node] = []
    try:
        shots = load_shot_list(shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"a": "1-60"}))
        started = time.monotonic()
        events = []
        for event in run_shots(shots, pool, backoff=0.05, checkpoint_every=10):
            events.append(event)
            if event.kind == "frame" and event.frame == 20 and not stopped:
                victim = next(n for n in nodes if n.address == event.node)
                victim.process.send_signal(signal.SIGSTOP)
                stopped.append(victim)
        print(f"\nfarm with a frozen node: {time.monotonic() - started:.1f} s (stall timeout 3 s)")
        final = events[-1]
        assert final.kind == "done" and final.result.retries == 1, final
        assert final.result.nodes[0] == stopped[0].address and final.result.nodes[1] != stopped[0].address
        retry = next(e for e in events if e.kind == "retry")
        assert "stall timeout" in retry.message
        written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "a").iterdir()}
        stopped[0].process.send_signal(signal.SIGCONT)
        time.sleep(2)  # the continued node finds its stream cancelled, and nothing of it reaches the files
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "a").iterdir()} == written
    finally:
        pool.close()
        for node in nodes:
            node.process.send_signal(signal.SIGCONT)
            node.kill()
    same_frames(tmp_path / "out" / "a", reference(clip, "1-60", tmp_path / "ref"), "1-60")


def test_a_node_drained_with_a_short_grace_hands_its_shot_to_the_other_node(
    clip: Path, tmp_path: Path
) -> None:
    """`serve --grace 0.5`, SIGTERM mid-shot: the node exits 0, its stream ends NODE_DRAINING, and the farm
    finishes the shot on the other node from its checkpoint, equal to an uninterrupted run on such a node."""
    from rvm_node.client import matte_shot

    nodes = [Node("--backend", "onnxruntime", "--grace", "0.5", "--threads", "1") for _ in range(2)]
    pool = NodePool([n.address for n in nodes])
    drained: list[Node] = []
    try:
        shots = load_shot_list(shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"a": "1-120"}))
        events = []
        for event in run_shots(shots, pool, backoff=0.05, checkpoint_every=10):
            events.append(event)
            if event.kind == "frame" and event.frame == 2 and not drained:  # 118 frames left: far over 0.5 s
                victim = next(n for n in nodes if n.address == event.node)
                victim.process.send_signal(signal.SIGTERM)
                drained.append(victim)
        assert drained[0].process.wait(timeout=60) == 0
        final = events[-1]
        assert final.kind == "done" and final.result.nodes[-1] != drained[0].address, final
        retry = [e for e in events if e.kind == "retry"]
        assert retry and all("shutting down" in e.message for e in retry), [e.message for e in retry]
        survivor = next(n for n in nodes if n is not drained[0])
        with NodeClient(survivor.address) as client:  # one uninterrupted run on the same kind of node
            matte_shot(
                client,
                clip,
                output_alpha=tmp_path / "ref" / "m.####.png",
                frames=parse_frame_range("1-120"),
                downsample_ratio=RATIO,
                progress=False,
            )
    finally:
        pool.close()
        for node in nodes:
            node.kill()
    same_frames(tmp_path / "out" / "a", tmp_path / "ref", "1-120")
