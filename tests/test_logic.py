"""Converter, client and farm logic on the stand-in model (``tests/standin.py``): no weights, no inference.

The real example clip, real PyAV decoding, real writers and real nodes on 127.0.0.1; only the network is
a stand-in, so these run in seconds. What they check is bookkeeping: frame order and numbering, the state
carried from chunk to chunk and across a resume, a shot moved between nodes, a rejected shot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from rvm_node.client import NodeClient, RemoteBackend, matte_shot
from rvm_node.convert import ConvertJob, ShotSpec, convert_video, run_job
from rvm_node.engine.samples import to_samples
from rvm_node.errors import InvalidInputError, JobCancelledError
from rvm_node.farm import NodePool, load_shot_list, run_shots
from rvm_node.io.images import read_image
from rvm_node.io.sequence import FrameRange
from rvm_node.node.limits import Limits
from tests.node_support import NodeThread
from tests.standin import StandInBackend, expected_alpha


@pytest.fixture(scope="module")
def clip(weights_cache: Path) -> Path:
    from rvm_node.example import example_clip

    return example_clip()


@pytest.fixture(scope="module")
def nodes(standin: StandInBackend) -> Iterator[list[NodeThread]]:
    servers = [NodeThread(standin, limits=Limits(max_streams=2)) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def _pngs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.png"))}


def _cancelled_at(stop_at: int, **job: Any) -> ConvertJob:
    """Run a ConvertJob that is cancelled once frame ``stop_at`` is written (its checkpoints stay)."""
    cancel = threading.Event()
    options = {"progress": "off", **job}
    cancelled = ConvertJob(
        cancel=cancel, on_frame=lambda n: cancel.set() if n == stop_at else None, **options
    )
    with pytest.raises(JobCancelledError):
        run_job(cancelled)
    return ConvertJob(**options)


def test_the_converter_writes_every_frame_in_order_with_the_state_carried(
    standin: StandInBackend, clip: Path, clip_frames: np.ndarray, tmp_path: Path
) -> None:
    convert_video(
        standin,
        clip,
        output_alpha=tmp_path / "m.####.png",
        frames=FrameRange(1, 12),
        seq_chunk=5,
        progress=False,
    )
    frames = clip_frames[:12].astype(np.float32) * np.float32(1 / 255)  # frames 1..12: the clip counts from 1
    expected = to_samples(expected_alpha(frames), "uint16")[:, 0]
    written = np.stack([read_image(tmp_path / f"m.{n:04d}.png").pixels for n in range(1, 13)])
    assert written.shape == (12, 144, 176, 3)  # alpha PNGs are RGB
    assert np.array_equal(written[..., 0], expected)


def test_a_cancelled_convert_resumed_from_its_checkpoint_equals_one_run(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    options: dict[str, Any] = {"frames": FrameRange(1, 30), "seq_chunk": 4, "progress": False}
    convert_video(standin, clip, output_alpha=tmp_path / "one" / "m.####.png", **options)
    _cancelled_at(
        17,
        shot=ShotSpec(
            input_source=str(clip),
            outputs={"alpha": str(tmp_path / "two" / "m.####.png")},
            frames=FrameRange(1, 30),
        ),
        backend=standin,
        seq_chunk=4,
        state_every=5,
    )
    assert 17 <= len(_pngs(tmp_path / "two")) < 30
    report = convert_video(
        standin, clip, output_alpha=tmp_path / "two" / "m.####.png", resume=True, **options
    )
    assert report.resumed_from_checkpoint  # continued from the checkpoint, not from a warm-up
    assert _pngs(tmp_path / "two") == _pngs(tmp_path / "one")


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_frames_and_checkpoints_get_the_mode_the_umask_gives(
    standin: StandInBackend, clip: Path, tmp_path: Path, mask: int
) -> None:
    """Artists and Nuke under other accounts read what the converter and the farm wrote."""
    previous = os.umask(mask)
    try:
        outputs = {"output_alpha": tmp_path / "a.####.exr", "output_foreground": tmp_path / "f.####.tif"}
        convert_video(standin, clip, frames=FrameRange(1, 6), seq_chunk=2, progress=False, **outputs)
        _cancelled_at(  # stopped mid-shot, so its checkpoint stays
            6,
            shot=ShotSpec(
                input_source=str(clip),
                outputs={"alpha": str(tmp_path / "p.####.png")},
                frames=FrameRange(1, 12),
            ),
            backend=standin,
            seq_chunk=2,
            state_every=2,
        )
    finally:
        os.umask(previous)
    written = sorted(p for p in tmp_path.iterdir() if p.is_file())
    assert {p.suffix for p in written} == {".exr", ".tif", ".png", ".npz"}  # .npz: the checkpoints
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o666 & ~mask}


def test_a_run_killed_before_its_first_checkpoint_resumes_exactly(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    """Frames 1..32 on disk and no checkpoint (a kill between a chunk's frames and its checkpoint):
    resume replays from the first frame, so frame 33 on equals one run."""
    options: dict[str, Any] = {"frames": FrameRange(1, 40), "seq_chunk": 8, "progress": False}
    convert_video(standin, clip, output_alpha=tmp_path / "one" / "m.####.png", **options)
    (tmp_path / "two").mkdir()
    for n in range(1, 33):
        name = f"m.{n:04d}.png"
        (tmp_path / "two" / name).write_bytes((tmp_path / "one" / name).read_bytes())
    report = convert_video(
        standin, clip, output_alpha=tmp_path / "two" / "m.####.png", resume=True, **options
    )
    assert report.frames_written == 8 and not report.resumed_from_checkpoint
    assert _pngs(tmp_path / "two") == _pngs(tmp_path / "one")


def test_a_shot_on_a_node_equals_the_local_convert(
    nodes: list[NodeThread], standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    options: dict[str, Any] = {"frames": FrameRange(3, 20), "seq_chunk": 3, "progress": False}
    convert_video(standin, clip, output_alpha=tmp_path / "local" / "m.####.exr", **options)
    with NodeClient(nodes[0].address) as client:
        used: list[str] = []
        open_stream = client.open_stream

        def noting(**kwargs: Any) -> Any:
            stream = open_stream(**kwargs)
            used.append(stream.transport)
            return stream

        client.open_stream = noting  # type: ignore[method-assign]
        matte_shot(client, clip, output_alpha=tmp_path / "node" / "m.####.exr", **options)
    assert used == ["shm"]  # a node on this host gets the frames through shared memory by itself
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    assert local and local == {p.name: p.read_bytes() for p in (tmp_path / "node").iterdir()}


class _Recorder(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Notes every call that goes through the channel it is installed on."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.methods.append(details.method)
        return continuation(details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.methods.append(details.method)
        return continuation(details, requests)


def test_the_client_uses_the_channel_it_is_given(nodes: list[NodeThread], clip_frames: np.ndarray) -> None:
    recorder = _Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(nodes[0].address), recorder)
    with NodeClient("the-node", channel=channel) as client:
        assert client.info().backend == "stand-in"
        backend = RemoteBackend(client)
        out = backend.new_session(0.5).process(clip_frames[:2])
    assert out.pha.shape == (2, 1, 144, 176)
    assert recorder.methods[0] == "/rvm_node.v1.MattingService/GetNodeInfo"
    assert recorder.methods.count("/rvm_node.v1.MattingService/Matte") == 1  # the stream went through it too


def _shot_list(path: Path, clip: Path, out: Path, shots: dict[str, str]) -> Path:
    lines = [
        "[defaults]",
        f'input = "{clip}"',
        "downsample_ratio = 0.5",
        f'output_alpha = "{out}/{{shot}}/m.####.png"',
    ]
    for name, frames in shots.items():
        lines += ["[[shot]]", f'name = "{name}"', f'frames = "{frames}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_shots_spread_over_nodes_and_one_moved_off_a_dying_node_has_no_seam(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    shots = {"a": "1-36", "b": "37-48", "c": "49-60"}
    servers = [NodeThread(standin, limits=Limits(max_streams=1)) for _ in range(2)]
    pool = NodePool([s.address for s in servers], cooldown=60)
    killed: list[str] = []
    try:
        events = []
        for event in run_shots(
            load_shot_list(_shot_list(tmp_path / "s.toml", clip, tmp_path / "out", shots)),
            pool,
            backoff=0.05,
            checkpoint_every=5,
        ):
            events.append(event)
            if event.shot == "a" and event.kind == "frame" and event.result.frames == 12 and not killed:
                victim = next(s for s in servers if s.address == event.node)
                victim.kill()
                killed.append(victim.address)
    finally:
        pool.close()
        for server in servers:
            server.stop()
    finals = {e.shot: e for e in events if e.final}
    assert {name: e.kind for name, e in finals.items()} == dict.fromkeys(shots, "done")
    assert finals["a"].result.retries == 1 and finals["a"].result.nodes[0] == killed[0]
    kinds = [e.kind for e in events if e.shot == "a"]
    assert kinds[0] == "started" and "retry" in kinds and kinds[-1] == "done"
    for name, frames in shots.items():
        first, last = (int(x) for x in frames.split("-"))
        convert_video(
            standin,
            clip,
            output_alpha=tmp_path / "ref" / name / "m.####.png",
            frames=FrameRange(first, last),
            downsample_ratio=0.5,
            progress=False,
        )
        assert _pngs(tmp_path / "out" / name) == _pngs(tmp_path / "ref" / name), name


def test_a_shot_the_nodes_refuse_fails_once_and_the_nodes_stay_up(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    servers = [
        NodeThread(standin, limits=Limits(max_frame_pixels=20_000)) for _ in range(2)
    ]  # 176x144 > 20,000
    pool = NodePool([s.address for s in servers])
    try:
        finals = [
            e
            for e in run_shots(
                load_shot_list(_shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"big": "1-4"})), pool
            )
            if e.final
        ]
        assert all(node.down_until == 0.0 for node in pool.nodes)
    finally:
        pool.close()
        for server in servers:
            server.stop()
    assert [(e.kind, e.result.retries, len(e.result.nodes)) for e in finals] == [("failed", 0, 1)]
    assert "exceeds this node's limits" in finals[0].message


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that fills up for real (mounting needs root)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def test_a_full_disk_is_one_line_naming_file_and_frame_and_resume_finishes(
    standin_node: NodeThread, standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    """`rvm-node matte` into a disk that fills up: exit 3, one line, frames before it valid; `--resume`
    after freeing space gives the same mattes as one uninterrupted run."""
    from tests.helpers import run_rvm_node

    frames = {"frames": FrameRange(1, 90), "downsample_ratio": 0.5, "progress": False}
    convert_video(standin, clip, output_alpha=tmp_path / "ref" / "m.####.png", **frames)
    with _small_disk(tmp_path / "disk", "160k") as disk:
        command = ["matte", "--node", standin_node.address, "--input-source", str(clip), "--frames", "1-90"]
        command += [
            "--downsample-ratio",
            "0.5",
            "--output-alpha",
            str(disk / "m.####.png"),
            "--disable-progress",
        ]
        full = run_rvm_node(*command, check=False)
        assert full.returncode == 3, full.stderr
        lines = full.stderr.strip().splitlines()
        assert len(lines) == 1 and re.fullmatch(
            rf"rvm-node: error: {re.escape(str(disk))}/(m\.\d{{4}}\.png|\.m\.rvmstate\.1\.npz): "
            r"no space left on device \((frame \d+|the checkpoint after frame \d+)\)",
            lines[0],
        ), lines
        kept = _pngs(disk)
        assert 0 < len(kept) < 90 and all(kept[name] == _pngs(tmp_path / "ref")[name] for name in kept)
        _grow(disk, "20m")
        resumed = run_rvm_node(*command, "--resume", check=False)
        assert resumed.returncode == 0, resumed.stderr
        assert _pngs(disk) == _pngs(tmp_path / "ref")


def test_a_farm_shot_on_a_full_disk_fails_naming_file_and_frame(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    servers = [NodeThread(standin)]
    pool = NodePool([s.address for s in servers])
    try:
        with _small_disk(tmp_path / "disk", "120k") as disk:
            shots = load_shot_list(_shot_list(tmp_path / "s.toml", clip, disk, {"a": "1-90"}))
            finals = [e for e in run_shots(shots, pool, backoff=0.05) if e.final]
    finally:
        pool.close()
        for server in servers:
            server.stop()
    (final,) = finals
    assert final.kind == "failed" and final.result.output_failed and final.result.retries == 0
    assert "no space left on device" in final.result.reason and str(disk) in final.result.reason


def test_matte_keeps_the_frames_before_a_corrupt_plate_frame(
    standin_node: NodeThread, standin: StandInBackend, clip_frames: np.ndarray, tmp_path: Path
) -> None:
    """As `convert` does: the frames before the bad one are written (and match), then one line, exit 3."""
    from rvm_node.io.images import write_image
    from tests.helpers import run_rvm_node

    plate = tmp_path / "plate"
    for n in range(1, 31):
        write_image(plate / f"p.{n:04d}.png", np.ascontiguousarray(clip_frames[n - 1].transpose(1, 2, 0)))
    (plate / "p.0021.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    command = ["--input-source", str(plate / "p.####.png"), "--seq-chunk", "4", "--disable-progress"]
    result = run_rvm_node(
        "matte",
        "--node",
        standin_node.address,
        *command,
        "--output-alpha",
        str(tmp_path / "n" / "m.####.png"),
        check=False,
    )
    assert result.returncode == 3 and "p.0021.png" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    convert_video(
        standin,
        plate / "p.####.png",
        output_alpha=tmp_path / "l" / "m.####.png",
        frames=FrameRange(1, 20),
        progress=False,
    )
    assert sorted(_pngs(tmp_path / "n")) == [f"m.{n:04d}.png" for n in range(1, 21)]
    assert _pngs(tmp_path / "n") == _pngs(tmp_path / "l")


def test_farm_events_carry_the_frame_the_total_and_the_real_rate(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    shot_list = tmp_path / "s.toml"
    shot_list.write_text(
        f'[[shot]]\nname = "whole"\ninput = "{clip}"\noutput_alpha = "{tmp_path}/o/m.####.png"\n'
        f'[[shot]]\nname = "part"\ninput = "{clip}"\nframes = "5-16"\noutput_alpha = "{tmp_path}/p/m.####.png"\n'
    )
    server = NodeThread(standin)
    pool = NodePool([server.address])
    try:
        events = [e.progress() for e in run_shots(load_shot_list(shot_list), pool)]
    finally:
        pool.close()
        server.stop()
    clip_length = len(list((tmp_path / "o").glob("m.*.png")))
    for shot, total, first in (("whole", clip_length, 1), ("part", 12, 5)):
        frames = [e for e in events if e.shot == shot and e.kind == "frame"]
        assert [e.frame for e in frames] == list(range(first, first + total)), shot
        assert {e.total for e in frames} == {total}, shot
        (done,) = [e for e in events if e.shot == shot and e.kind == "done"]
        assert done.total == total and done.done == total and done.fps > 0, shot


def test_two_runs_on_one_output_one_refuses_naming_the_other(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    """Started together with different ratios: one refuses, and the sequence is all of the other."""
    from rvm_node.errors import OutputInUseError

    target = tmp_path / "shared" / "m.####.png"
    outcomes: dict[float, BaseException | None] = {}
    ended = {ratio: threading.Event() for ratio in (0.5, 1.0)}
    started = threading.Barrier(2)

    def run(ratio: float, other: threading.Event) -> None:
        def hold(number: int) -> None:  # the run that writes keeps writing until the other has tried
            if number == 2:
                other.wait(10)

        started.wait()
        job = ConvertJob(
            backend=standin,
            shot=ShotSpec(
                input_source=str(clip),
                outputs={"alpha": str(target)},
                frames=FrameRange(1, 40),
                downsample_ratio=ratio,
            ),
            progress="off",
            on_frame=hold,
        )
        try:
            run_job(job)
            outcomes[ratio] = None
        except BaseException as exc:
            outcomes[ratio] = exc
        finally:
            ended[ratio].set()

    threads = [
        threading.Thread(target=run, args=(0.5, ended[1.0])),
        threading.Thread(target=run, args=(1.0, ended[0.5])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused = [r for r, exc in outcomes.items() if exc is not None]
    assert len(refused) == 1 and isinstance(outcomes[refused[0]], OutputInUseError), outcomes
    message = str(outcomes[refused[0]])
    assert (
        str(target) in message and f"pid {os.getpid()}" in message and "another run is writing it" in message
    )
    winner = next(r for r, exc in outcomes.items() if exc is None)
    convert_video(
        standin,
        clip,
        output_alpha=tmp_path / "ref" / "m.####.png",
        frames=FrameRange(1, 40),
        downsample_ratio=winner,
        progress=False,
    )
    assert _pngs(target.parent) == _pngs(tmp_path / "ref")
    assert not list(target.parent.glob(".*rvmlock"))  # released and removed


def test_a_stale_lock_is_taken_over_and_a_live_one_from_another_host_is_not(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    import json
    import socket

    from rvm_node.errors import OutputInUseError
    from rvm_node.io.outlock import STALE_SECONDS, lock_path

    target = tmp_path / "o" / "m.####.png"
    lock = lock_path(target.parent, "m.")
    lock.parent.mkdir()
    records = {
        "a killed run on this host (its flock went with it)": {
            "host": socket.gethostname(),
            "pid": 1,
            "since": 0.0,
        },
        "another host, silent for long": {"host": "farm-07", "pid": 4242, "since": 0.0},
    }
    for what, record in records.items():
        lock.write_text(json.dumps(record))
        if what.startswith("another host"):
            os.utime(lock, (time.time() - STALE_SECONDS - 5,) * 2)
        convert_video(
            standin, clip, output_alpha=target, frames=FrameRange(1, 4), progress=False, overwrite=True
        )
        assert not lock.exists(), what
    lock.write_text(json.dumps({"host": "farm-07", "pid": 4242, "since": time.time()}))
    with pytest.raises(OutputInUseError, match=r"host farm-07, pid 4242.*locks are not exclusive"):
        convert_video(
            standin, clip, output_alpha=target, frames=FrameRange(1, 4), progress=False, overwrite=True
        )


def test_group_writable_outputs_for_studios_that_share_them(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    from rvm_node.io.writers import WriterSettings

    previous = os.umask(0o022)
    try:
        job = _cancelled_at(
            6,
            shot=ShotSpec(
                input_source=str(clip),
                outputs={"alpha": str(tmp_path / "new" / "deep" / "m.####.exr")},
                frames=FrameRange(1, 12),
                settings=WriterSettings(group_writable=True),
            ),
            backend=standin,
            seq_chunk=2,
            state_every=2,
        )
        run_job(
            dataclasses.replace(
                job, shot=dataclasses.replace(job.shot, outputs={"foreground": str(tmp_path / "g.mp4")})
            )
        )
    finally:
        os.umask(previous)
    frames = tmp_path / "new" / "deep"
    assert {stat.S_IMODE(p.stat().st_mode) for p in frames.iterdir()} == {0o664}  # frames and the checkpoint
    assert {p.suffix for p in frames.iterdir()} == {".exr", ".npz"}
    assert stat.S_IMODE(frames.stat().st_mode) == stat.S_IMODE(frames.parent.stat().st_mode) == 0o775
    assert stat.S_IMODE((tmp_path / "g.mp4").stat().st_mode) == 0o664
    shot_list = tmp_path / "s.toml"
    shot_list.write_text(
        f'[[shot]]\ninput = "{clip}"\ngroup_writable = true\noutput_alpha = "o/m.####.png"\n'
    )
    assert load_shot_list(shot_list)[0].settings.group_writable


class _OtherStandIn(StandInBackend):
    """The stand-in under another backend name, as a node running another backend reports itself."""

    name = "other stand-in"


def test_a_pool_of_mixed_backends_warns_once_and_can_be_refused(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rvm_node.cli import EXIT_INPUT, main

    servers = [NodeThread(StandInBackend()), NodeThread(_OtherStandIn())]
    try:
        shots = _shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"a": "1-6"})
        nodes = ",".join(s.address for s in servers)
        assert main(["farm", "run", str(shots), "--nodes", nodes, "--require-same-backend"]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert "--require-same-backend: the nodes run different backends or precisions" in err
        assert "other stand-in fp32" in err and not (tmp_path / "out").exists()
        assert main(["farm", "run", str(shots), "--nodes", nodes]) == 0
        err = capsys.readouterr().err
        assert err.count("warning: the nodes run different backends or precisions") == 1
        assert main(["farm", "run", str(shots), "--nodes", servers[0].address]) == 0
        assert "warning" not in capsys.readouterr().err
    finally:
        for server in servers:
            server.stop()


def test_farm_run_on_a_full_disk_is_one_line_and_exit_3(
    standin_node: NodeThread, clip: Path, tmp_path: Path
) -> None:
    from tests.helpers import run_rvm_node

    with _small_disk(tmp_path / "disk", "120k") as disk:
        shots = _shot_list(tmp_path / "s.toml", clip, disk, {"a": "1-90"})
        result = run_rvm_node("farm", "run", str(shots), "--nodes", standin_node.address, check=False)
    assert result.returncode == 3, result.stderr
    assert re.search(rf"{re.escape(str(disk))}/a/\S+: no space left on device \(", result.stderr), (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_read_only_folder_is_refused_before_anything_is_written(
    standin: StandInBackend, clip: Path, tmp_path: Path
) -> None:
    """A read-only mount (a snapshot, a published folder): one line naming the folder, nothing written."""
    with _small_disk(tmp_path / "disk", "1m") as disk:
        (disk / "shot").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(
            InvalidInputError, match=rf"{re.escape(str(disk))}/shot is not a writable directory"
        ):
            convert_video(
                standin,
                clip,
                output_alpha=disk / "shot" / "m.####.exr",
                frames=FrameRange(1, 3),
                progress=False,
            )
        assert list((disk / "shot").iterdir()) == []
