"""The serving path against its ceiling, with benchmark-only stand-ins (:mod:`rvm_node.bench.standins`).

(a) a bare gRPC echo, (b) the node over a stand-in that returns a constant
matte, (c) the same with a simulated device, (e) both over shared memory,
(f) 4 streams on the simulated device behind 1 and 2 worker processes, and
(g) one co-located shot over shared memory, decoded into the ring or copied
in. Each table is a list of cases, measured by :func:`interleaved` and
formatted row by row.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.bench.common import parse_frame_sizes, spread, upscaled_clip
from rvm_node.bench.node.measure import Measured, Run, interleaved
from rvm_node.bench.node.streams import (
    MB,
    MIN_STREAM_FRAMES,
    SIMULATED_BATCH,
    WINDOW,
    Wire,
    echo_stream,
    node_stream,
    spawn_standin,
    wire_frames,
)
from rvm_node.node.launch import stop_process

__all__ = ["TABLE_HEADER", "ring_shot_rows", "stage_header", "standin_tables"]

TABLE_HEADER = [
    "size",
    "streams",
    "transport",
    "path",
    "frames/s",
    "node CPU ms/frame",
    "vs (a) raw",
    "MB/frame in / out",
    "device busy",
]
_THREADS = ["event loop thread", "inference worker", "codec pool", "gRPC core threads (C)"]


def _stage_keys() -> list[str]:
    from rvm_node.node.stages import STAGES

    return [*STAGES, *_THREADS]


def stage_header() -> list[str]:
    """The stage table's columns."""
    return ["size", "streams", *(f"{k} ms" for k in _stage_keys()), "process ms/frame"]


@dataclass(frozen=True)
class _Servers:
    """The stand-in servers, their clients and what they record."""

    echo: Any  # a gRPC channel
    node: Any  # NodeClient of the constant stand-in
    sim: Any  # of the simulated device, one worker
    sim2: Any  # of the same device behind two workers
    pids: tuple[int, int, int, int]  # echo, node, sim, sim2
    busy_file: Path
    stages_file: Path
    simulated: str  # the simulated device, in words


@contextlib.contextmanager
def _standin_servers(device_ms: str) -> Iterator[_Servers]:
    import grpc

    from rvm_node.bench.standins import parse_device_ms
    from rvm_node.client import NodeClient

    fixed, per_stream = parse_device_ms(device_ms)
    limit = 64 * 1024 * 1024
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    device = ("--device-ms", device_ms)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rvm-bench-")))
        busy_file, stages_file = folder / "busy", folder / "stages.json"
        busy = ("--busy-file", str(busy_file))
        servers = [
            spawn_standin("--standin", "echo"),
            spawn_standin("--standin", "constant", "--stages-file", str(stages_file)),
            spawn_standin("--standin", "constant", *device, *busy, *SIMULATED_BATCH),
            # the same device (the same busy file and its lock) behind two worker processes
            spawn_standin("--standin", "constant", *device, *busy, "--workers", "2", *SIMULATED_BATCH),
        ]
        for process, _ in servers:
            stack.callback(stop_process, process)
        echo = stack.enter_context(grpc.insecure_channel(servers[0][1], options=options))
        node, sim, sim2 = (stack.enter_context(NodeClient(address)) for _, address in servers[1:])
        pids = tuple(process.pid for process, _ in servers)
        simulated = f"simulated device ({fixed:g} + {per_stream:g}·N ms a pass of N ≤ 4 streams)"
        yield _Servers(echo, node, sim, sim2, pids, busy_file, stages_file, simulated)  # type: ignore[arg-type]


def _cases(servers: _Servers, wire: Wire, shm: Wire) -> list[Run]:
    """(a), (b), (c) over ``wire``; (e) over shared memory where ``wire`` is raw."""
    from rvm_node.bench.standins import STANDIN_NAME

    echo_pid, node_pid, sim_pid, _ = servers.pids
    sim = servers.simulated
    cases = [
        Run("(a) bare gRPC echo (ceiling)", functools.partial(echo_stream, servers.echo, wire), echo_pid),
        Run(
            f"(b) node, {STANDIN_NAME}",
            functools.partial(node_stream, servers.node, wire),
            node_pid,
            stages_file=servers.stages_file,
        ),
        Run(
            f"(c) node, {STANDIN_NAME}; {sim}",
            functools.partial(node_stream, servers.sim, wire),
            sim_pid,
            servers.busy_file,
        ),
    ]
    if wire.transport == "raw":
        cases += [
            Run(
                f"(e) node over shared memory, {STANDIN_NAME}",
                functools.partial(node_stream, servers.node, shm),
                node_pid,
            ),
            Run(
                f"(e) node over shared memory, {STANDIN_NAME}; {sim}",
                functools.partial(node_stream, servers.sim, shm),
                sim_pid,
                servers.busy_file,
            ),
        ]
    return cases


def _row(
    size: tuple[int, int], streams: int, wire: Wire, run: Run, result: Measured, echo: float
) -> list[str]:
    """One row of the table; ``echo``: (a)'s rate in the same group."""
    width, height = size
    shm = "shared memory" in run.path
    moved = "shm" if shm else wire.transport
    packed = wire.window / WINDOW  # a frame, as sent
    if shm:
        sizes = f"{width * height * 3 / MB:.2f} / {width * height * 2 / MB:.2f} in the ring"
    else:
        from rvm_node.bench.standins import echo_reply

        sizes = f"{packed / MB:.2f} / {len(echo_reply(height, width, wire.transport)) / MB:.2f}"
    return [
        f"{width}x{height}",
        str(streams),
        moved,
        run.path,
        spread(result.rates),
        f"{statistics.median(result.cpu_ms):.2f}",
        f"{statistics.median(result.rates) / echo:.2f}x",
        sizes,
        f"{statistics.median(result.busy):.0%}" if result.busy else "",
    ]


def _stage_row(size: tuple[int, int], streams: int, result: Measured) -> list[str]:
    """Where (b)'s CPU went, stage by stage, ms a frame."""
    stages = result.stage_ms
    return [
        f"{size[0]}x{size[1]}",
        str(streams),
        *(f"{statistics.median(s.get(k, 0.0) for s in stages):.2f}" for k in _stage_keys()),
        f"{statistics.median(result.cpu_ms):.2f}",
    ]


def standin_tables(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    """The serving table ((a), (b), (c), (e) and (f) rows) and the stage table, at each of ``--sizes``."""
    from rvm_node.v1.protocol import TRANSPORTS, pack

    rows: list[list[str]] = []
    stage_rows: list[list[str]] = []
    with _standin_servers(args.device_ms) as servers:
        for size in parse_frame_sizes(args.sizes):
            width, height = size
            count = max(MIN_STREAM_FRAMES, round(args.stream_frames * 1920 * 1080 / (width * height)))
            frames = wire_frames(width, height, count)
            for streams in (1, 4):
                for transport in ("raw", "zstd"):
                    packed = statistics.mean(len(pack(f, TRANSPORTS[transport])) for f in frames)
                    wire = Wire(width, height, transport, int(WINDOW * packed))
                    runs = _cases(servers, wire, Wire(width, height, "shm", wire.window))
                    measured = interleaved(runs, streams, frames, args.rounds)
                    echo = statistics.median(measured[0].rates)
                    rows += [
                        _row(size, streams, wire, r, m, echo) for r, m in zip(runs, measured, strict=True)
                    ]
                    if transport == "raw":
                        stage_rows.append(_stage_row(size, streams, measured[1]))
                    _said(f"{width}x{height} {streams} stream(s) {transport}", measured)
            rows += _worker_rows(args, size, frames, servers)
    return rows, stage_rows


def _worker_rows(
    args: argparse.Namespace, size: tuple[int, int], frames: list[np.ndarray], servers: _Servers
) -> list[list[str]]:
    """(f) 4 streams on the simulated device behind 1 and 2 worker processes (`--workers`), raw and shm."""
    from rvm_node.bench.standins import STANDIN_NAME

    width, height = size
    _, _, one_pid, two_pid = servers.pids
    runs = []
    for transport in ("raw", "shm"):
        wire = Wire(width, height, transport, WINDOW * width * height * 3)
        for label, client, pid in (("1 worker", servers.sim, one_pid), ("2 workers", servers.sim2, two_pid)):
            path = f"(f) node, {label}, {STANDIN_NAME}; {servers.simulated}"
            runs.append(Run(path, functools.partial(node_stream, client, wire), pid, servers.busy_file))
    measured = interleaved(runs, 4, frames, args.rounds)
    rows = []
    for index, (run, result) in enumerate(zip(runs, measured, strict=True)):
        base = statistics.median(measured[index - index % 2].rates)
        rows.append(
            [
                f"{width}x{height}",
                "4",
                "raw" if index < 2 else "shm",
                run.path,
                spread(result.rates),
                f"{statistics.median(result.cpu_ms):.2f}",
                f"{statistics.median(result.rates) / base:.2f}x of 1 worker",
                "",
                f"{statistics.median(result.busy):.0%}",
            ]
        )
    _said(f"{width}x{height} 4 streams, workers 1/2 raw, 1/2 shm", measured)
    return rows


def _said(group: str, measured: list[Measured]) -> None:
    """A group's rates on stderr as they are measured."""
    rates = ", ".join(f"{statistics.median(m.rates):.1f}" for m in measured)
    print(f"  {group}: {rates} frames/s", file=sys.stderr, flush=True)


def _ring_shot_rate(address: str, clip: Path, frames: int, decode_into_ring: bool) -> tuple[float, float]:
    """Frames/s and this process's CPU ms/frame of one co-located shot on the constant stand-in node."""
    from rvm_node.client import NodeClient, RemoteBackend
    from rvm_node.client.shots import node_job_cut
    from rvm_node.convert import ConvertJob, ShotSpec, run_job
    from rvm_node.io.writers import WriterSettings

    cut = node_job_cut()
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp, NodeClient(address) as client:
        job = ConvertJob(
            backend=RemoteBackend(client, transport="shm", decode_into_ring=decode_into_ring),
            shot=ShotSpec(
                input_source=str(clip),
                downsample_ratio=0.25,
                outputs={"alpha": str(Path(tmp) / "m.####.png")},
                settings=WriterSettings(bit_depth=8),
            ),
            seq_chunk=cut.seq_chunk,
            state_every=0,  # the stand-in keeps no state to save
            num_workers=cut.num_workers,
            progress="off",
        )
        start, cpu = time.perf_counter(), time.process_time()
        run_job(job)
        return frames / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / frames


def ring_shot_rows(args: argparse.Namespace) -> list[list[str]]:
    """(g) one co-located shot end to end over shared memory: frames decoded into the ring vs copied in."""
    from rvm_node.bench.standins import STANDIN_NAME
    from rvm_node.io.sources import open_source

    process, address = spawn_standin("--standin", "constant")
    rows: list[list[str]] = []
    try:
        for width, height in parse_frame_sizes(args.sizes):
            count = max(2 * MIN_STREAM_FRAMES, round(args.stream_frames * 1920 * 1080 / (width * height)))
            clip = upscaled_clip(width, height, count)
            frames = len(open_source(clip).frame_numbers or []) or count
            results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(args.rounds):
                for into_ring in (True, False):
                    results[into_ring].append(_ring_shot_rate(address, clip, frames, into_ring))
            base = statistics.median(rate for rate, _ in results[False])
            for into_ring in (True, False):
                rates = [rate for rate, _ in results[into_ring]]
                cpu = statistics.median(ms for _, ms in results[into_ring])
                rows.append(
                    [
                        f"{width}x{height}",
                        f"{STANDIN_NAME}: {'decoded into ring slots' if into_ring else 'copied into ring slots'}",
                        spread(rates, 1),
                        f"{cpu:.1f}",
                        f"{statistics.median(rates) / base:.2f}x",
                    ]
                )
    finally:
        stop_process(process)
    return rows
