"""``rvm-node bench node``: the render node's serving path against a bare gRPC echo, and real inference.

Rows (b) and (c) use benchmark-only stand-ins (:mod:`rvm_node.bench.standins`), never reachable from
``rvm-node serve``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.bench.common import (
    concurrently,
    machine,
    markdown,
    parse_frame_sizes,
    parse_one_size,
    rss_mb,
    spread,
    tensor_rate,
    upscaled_clip,
)
from rvm_node.errors import InvalidInputError, RvmNodeError
from rvm_node.node.launch import spawn_node, spawn_server, stop_process

__all__ = ["run_node_bench"]


def _spawn_standin(*options: str) -> tuple[Any, str]:
    """A benchmark stand-in server (``python -m rvm_node.bench.standins``) and its address."""
    return spawn_server(
        [sys.executable, "-m", "rvm_node.bench.standins", "--port", "0", *options], "a stand-in"
    )


_WINDOW = 3  # packed frames a stream keeps in flight (the window in bytes MatteStream.process_chunks takes)


_SIMULATED_BATCH = ("--max-batch", "4", "--batch-delay-ms", "2")
_MIN_STREAM_FRAMES = 30  # a stream's opening is a small part of it, as in a shot


_MB = 1e6


@dataclass(frozen=True)
class _Wire:
    """Frames of one size, packed with one transport in both directions; a window of ``window`` bytes."""

    width: int
    height: int
    transport: str
    window: int


def _wire_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` frames of the example clip scaled to ``width`` x ``height``: ``HxWx3`` uint8 pictures."""
    import av

    from rvm_node.example import example_clip, read_video_frames

    frames, _ = read_video_frames(example_clip(), limit=count)
    return [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.transpose(1, 2, 0)), format="rgb24")
        .reformat(width=width, height=height)
        .to_ndarray()
        for frame in frames
    ]


def _echo_stream(channel: Any, wire: _Wire, frames: list[np.ndarray]) -> None:
    """One echo stream, driven as MatteStream.process_chunks drives a node stream: a queue, a window of bytes."""
    import queue
    from collections import deque

    from rvm_node.bench.standins import ECHO_METHOD
    from rvm_node.v1.protocol import TRANSPORTS, pack, unpack

    transport = TRANSPORTS[wire.transport]
    requests: queue.Queue[bytes | None] = queue.Queue()

    def outgoing() -> Iterator[bytes]:
        while (item := requests.get()) is not None:
            yield item

    settings = (("width", str(wire.width)), ("height", str(wire.height)), ("transport", wire.transport))
    replies = iter(channel.stream_stream(ECHO_METHOD)(outgoing(), metadata=settings))
    pending: deque[int] = deque()
    in_flight = 0

    def receive() -> None:
        nonlocal in_flight
        unpack(next(replies), transport, np.dtype("<u2"), (wire.height, wire.width), "echo reply")
        in_flight -= pending.popleft()

    for frame in frames:
        data = pack(frame, transport)
        requests.put(data)
        pending.append(len(data))
        in_flight += len(data)
        while len(pending) > 1 and in_flight > wire.window:
            receive()
    while pending:
        receive()
    requests.put(None)
    for _ in replies:
        pass


def _node_stream(client: Any, wire: _Wire, frames: list[np.ndarray], ratio: float = 0.25) -> None:
    """One stream through a node: uint8 RGB in, uint16 alpha back, one frame per chunk."""
    from rvm_node.client import StreamChunk

    with client.open_stream(
        width=wire.width,
        height=wire.height,
        input_format="uint8",
        output_format="uint16",
        planes=("alpha",),
        downsample_ratio=ratio,
        transport=wire.transport,
        return_transport=wire.transport,
        ring_slots=_WINDOW,
    ) as stream:
        chunks = (StreamChunk([(number, frame)]) for number, frame in enumerate(frames))
        for _ in stream.process_chunks(chunks, window_bytes=wire.window):
            pass


@dataclass(frozen=True)
class _Run:
    """One configuration of the table: what runs a stream, and the server process it measures."""

    path: str
    work: Callable[[list[np.ndarray]], None]
    pid: int
    busy_file: Path | None = None  # a simulated device's busy seconds
    stages_file: Path | None = None  # the stand-in node's stage times and thread names


@dataclass
class _Measured:
    rates: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server process CPU per frame
    stage_ms: list[dict[str, float]] = field(default_factory=list)


def _stage_probe(run: _Run) -> dict[str, float]:
    """Stage CPU seconds and thread CPU seconds by role, of ``run``'s stand-in node, now."""
    import json

    from rvm_node.node.stages import thread_cpu

    if run.stages_file is None or not run.stages_file.is_file():
        return {}
    saved = json.loads(run.stages_file.read_text())
    roles = {int(tid): _ROLES.get(name.rstrip("0123456789_"), name) for tid, name in saved["threads"].items()}
    probe = dict(saved["stages"])
    for tid, seconds in thread_cpu(run.pid).items():
        role = roles.get(tid, "gRPC core threads (C)")
        probe[role] = probe.get(role, 0.0) + seconds
    return probe


_ROLES = {
    "MainThread": "event loop thread",
    "rvm-node-infer": "inference worker",
    "rvm-node-codec": "codec pool",
}


def _interleaved(runs: list[_Run], streams: int, frames: list[np.ndarray], rounds: int) -> list[_Measured]:
    """Each run's aggregate frames/s, device busy, server CPU and stage times per round (A, B, C, A, B, ...).

    Each run is warmed up first (connections, the mattes of this size).
    """
    from rvm_node.bench.standins import read_busy
    from rvm_node.node.stages import process_cpu

    for run in runs:
        concurrently(streams, functools.partial(run.work, frames[:2]))
    measured = [_Measured() for _ in runs]
    count = streams * len(frames)
    for _ in range(rounds):
        for run, result in zip(runs, measured, strict=True):
            time.sleep(0.12)  # the stand-in saves its stage times every 50 ms
            busy, cpu, stages = (
                read_busy(run.busy_file) if run.busy_file else 0.0,
                process_cpu(run.pid),
                _stage_probe(run),
            )
            seconds = concurrently(streams, functools.partial(run.work, frames))
            result.rates.append(count / seconds)
            if run.busy_file is not None:
                result.busy.append((read_busy(run.busy_file) - busy) / seconds)
            time.sleep(0.12)
            result.cpu_ms.append((process_cpu(run.pid) - cpu) * 1000 / count)
            after = _stage_probe(run)
            result.stage_ms.append({k: (v - stages.get(k, 0.0)) * 1000 / count for k, v in after.items()})
    return measured


def _standin_table(args: argparse.Namespace) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(a) echo, (b) node over the constant stand-in, (c) the same with a simulated device, (e) both over shared
    memory; interleaved. Also where (b)'s CPU goes, stage by stage."""
    import contextlib
    import tempfile

    import grpc

    from rvm_node.bench.standins import STANDIN_NAME, echo_reply, parse_device_ms
    from rvm_node.client import NodeClient
    from rvm_node.node.stages import STAGES
    from rvm_node.v1.protocol import TRANSPORTS, pack

    sizes = parse_frame_sizes(args.sizes)
    fixed, per_stream = parse_device_ms(args.device_ms)
    simulated = f"simulated device ({fixed:g} + {per_stream:g}·N ms a pass of N ≤ 4 streams)"
    header = [
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
    rows: list[list[str]] = []
    stage_keys = [*STAGES, "event loop thread", "inference worker", "codec pool", "gRPC core threads (C)"]
    stage_header = ["size", "streams", *(f"{k} ms" for k in stage_keys), "process ms/frame"]
    stage_rows: list[list[str]] = []
    limit = 64 * 1024 * 1024
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rvm-bench-")))
        busy_file, stages_file = folder / "busy", folder / "stages.json"
        servers = [
            _spawn_standin("--standin", "echo"),
            _spawn_standin("--standin", "constant", "--stages-file", str(stages_file)),
            _spawn_standin(
                "--standin",
                "constant",
                "--device-ms",
                args.device_ms,
                "--busy-file",
                str(busy_file),
                *_SIMULATED_BATCH,
            ),
            _spawn_standin(  # the same device (the same busy file and its lock) behind two worker processes
                "--standin",
                "constant",
                "--device-ms",
                args.device_ms,
                "--busy-file",
                str(busy_file),
                "--workers",
                "2",
                *_SIMULATED_BATCH,
            ),
        ]
        for process, _ in servers:
            stack.callback(stop_process, process)
        (echo_pid, node_pid, sim_pid, sim2_pid) = (process.pid for process, _ in servers)
        channel = stack.enter_context(grpc.insecure_channel(servers[0][1], options=options))
        node, sim, sim2 = (stack.enter_context(NodeClient(address)) for _, address in servers[1:])
        for width, height in sizes:
            count = max(_MIN_STREAM_FRAMES, round(args.stream_frames * 1920 * 1080 / (width * height)))
            frames = _wire_frames(width, height, count)
            in_mb = width * height * 3 / _MB
            for streams in (1, 4):
                for transport in ("raw", "zstd"):
                    packed = statistics.mean(len(pack(f, TRANSPORTS[transport])) for f in frames)
                    wire = _Wire(width, height, transport, int(_WINDOW * packed))
                    shm = _Wire(width, height, "shm", int(_WINDOW * packed))
                    out_mb = len(echo_reply(height, width, transport)) / _MB
                    runs = [
                        _Run(
                            "(a) bare gRPC echo (ceiling)",
                            functools.partial(_echo_stream, channel, wire),
                            echo_pid,
                        ),
                        _Run(
                            f"(b) node, {STANDIN_NAME}",
                            functools.partial(_node_stream, node, wire),
                            node_pid,
                            None,
                            stages_file,
                        ),
                        _Run(
                            f"(c) node, {STANDIN_NAME}; {simulated}",
                            functools.partial(_node_stream, sim, wire),
                            sim_pid,
                            busy_file,
                        ),
                    ]
                    if transport == "raw":
                        runs += [
                            _Run(
                                f"(e) node over shared memory, {STANDIN_NAME}",
                                functools.partial(_node_stream, node, shm),
                                node_pid,
                            ),
                            _Run(
                                f"(e) node over shared memory, {STANDIN_NAME}; {simulated}",
                                functools.partial(_node_stream, sim, shm),
                                sim_pid,
                                busy_file,
                            ),
                        ]
                    measured = _interleaved(runs, streams, frames, args.rounds)
                    echo = statistics.median(measured[0].rates)
                    for index, (run, result) in enumerate(zip(runs, measured, strict=True)):
                        rate = statistics.median(result.rates)
                        moved = "shm" if "shared memory" in run.path else transport
                        rows.append(
                            [
                                f"{width}x{height}",
                                str(streams),
                                moved,
                                run.path,
                                spread(result.rates),
                                f"{statistics.median(result.cpu_ms):.2f}",
                                f"{rate / echo:.2f}x" if index else "1.00x",
                                f"{packed / _MB:.2f} / {out_mb:.2f}"
                                if moved != "shm"
                                else f"{in_mb:.2f} / {width * height * 2 / _MB:.2f} in the ring",
                                f"{statistics.median(result.busy):.0%}" if result.busy else "",
                            ]
                        )
                    if transport == "raw":
                        stages = measured[1].stage_ms
                        stage_rows.append(
                            [
                                f"{width}x{height}",
                                str(streams),
                                *(
                                    f"{statistics.median(s.get(k, 0.0) for s in stages):.2f}"
                                    for k in stage_keys
                                ),
                                f"{statistics.median(measured[1].cpu_ms):.2f}",
                            ]
                        )
                    print(
                        f"  {width}x{height} {streams} stream(s) {transport}: "
                        + ", ".join(f"{statistics.median(m.rates):.1f}" for m in measured)
                        + " frames/s",
                        file=sys.stderr,
                        flush=True,
                    )
            rows += _worker_rows(
                args, (width, height), frames, (sim, sim_pid), (sim2, sim2_pid), busy_file, simulated
            )
    return header, rows, stage_header, stage_rows


def _worker_rows(
    args: argparse.Namespace,
    size: tuple[int, int],
    frames: list[np.ndarray],
    one: tuple[Any, int],
    two: tuple[Any, int],
    busy_file: Path,
    simulated: str,
) -> list[list[str]]:
    """(f) 4 streams on the simulated device behind 1 and 2 worker processes (`--workers`), raw and shm."""
    from rvm_node.bench.standins import STANDIN_NAME

    width, height = size
    runs = []
    for transport in ("raw", "shm"):
        wire = _Wire(width, height, transport, _WINDOW * width * height * 3)
        for label, (client, pid) in (("1 worker", one), ("2 workers", two)):
            path = f"(f) node, {label}, {STANDIN_NAME}; {simulated}"
            runs.append(_Run(path, functools.partial(_node_stream, client, wire), pid, busy_file))
    measured = _interleaved(runs, 4, frames, args.rounds)
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
    print(
        f"  {width}x{height} 4 streams, workers 1/2 raw, 1/2 shm: "
        + ", ".join(f"{statistics.median(m.rates):.1f}" for m in measured),
        file=sys.stderr,
        flush=True,
    )
    return rows


def _shot_rate(client: Any, clip: Path, ratio: float, frames: int) -> float:
    """Frames/s of one shot as `rvm-node matte` runs it: decode here, matte on the node, 16-bit PNG alpha."""
    import tempfile

    from rvm_node.client import RemoteBackend
    from rvm_node.client.shots import node_job_cut
    from rvm_node.convert import ConvertJob, run_job

    cut = node_job_cut()
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
        job = ConvertJob(
            backend=RemoteBackend(client),
            input_source=str(clip),
            downsample_ratio=ratio,
            outputs={"alpha": str(Path(tmp) / "m.####.png")},
            seq_chunk=cut.seq_chunk,
            num_workers=cut.num_workers,
            progress="off",
        )
        start = time.perf_counter()
        run_job(job)
        return frames / (time.perf_counter() - start)


def _long_stream(client: Any, pid: int, frames: int) -> tuple[float, float]:
    """The node's RSS (MB) after the first tenth of one ``frames``-long 176x144 stream and at its end."""
    from rvm_node.client import StreamChunk

    pixels = np.zeros((144, 176, 3), np.uint8)
    early = 0.0
    with client.open_stream(width=176, height=144, output_format="uint16", planes=("alpha",)) as stream:
        chunks = (
            StreamChunk([(i, pixels) for i in range(n, min(n + 8, frames))]) for n in range(0, frames, 8)
        )
        for reply in stream.process_chunks(chunks, window_bytes=4 * 8 * pixels.nbytes):
            if not early and reply.results[-1].number >= frames // 10:
                early = rss_mb(pid)
    return early, rss_mb(pid)


def _ring_shot_rate(address: str, clip: Path, frames: int, decode_into_ring: bool) -> tuple[float, float]:
    """Frames/s and this process's CPU ms/frame of one co-located shot on the constant stand-in node."""
    import tempfile

    from rvm_node.client import NodeClient, RemoteBackend
    from rvm_node.client.shots import node_job_cut
    from rvm_node.convert import ConvertJob, run_job
    from rvm_node.io.writers import WriterSettings

    cut = node_job_cut()
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp, NodeClient(address) as client:
        job = ConvertJob(
            backend=RemoteBackend(client, transport="shm", decode_into_ring=decode_into_ring),
            input_source=str(clip),
            downsample_ratio=0.25,
            outputs={"alpha": str(Path(tmp) / "m.####.png")},
            settings=WriterSettings(bit_depth=8),
            seq_chunk=cut.seq_chunk,
            state_every=0,  # the stand-in keeps no state to save
            num_workers=cut.num_workers,
            progress="off",
        )
        start, cpu = time.perf_counter(), time.process_time()
        run_job(job)
        return frames / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / frames


def _ring_shot_rows(args: argparse.Namespace) -> list[list[str]]:
    """(g) one co-located shot end to end over shared memory: frames decoded into the ring vs copied in."""
    from rvm_node.bench.standins import STANDIN_NAME
    from rvm_node.io.sources import open_source

    process, address = _spawn_standin("--standin", "constant")
    rows: list[list[str]] = []
    try:
        for width, height in parse_frame_sizes(args.sizes):
            count = max(2 * _MIN_STREAM_FRAMES, round(args.stream_frames * 1920 * 1080 / (width * height)))
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


def _inference_rows(args: argparse.Namespace, backend: Any) -> list[tuple[str, str]]:
    """(d) `rvm-node serve`, batching off and on, the end-to-end shot, and memory; ``backend`` is the
    in-process model of the same kind the nodes load."""
    import contextlib

    from rvm_node.client import NodeClient
    from rvm_node.engine.samples import OutputSpec
    from rvm_node.io.sources import open_source

    width, height = parse_one_size(args.size, "--size")
    clip = upscaled_clip(width, height, args.frames)
    frames = [f.pixels for f in open_source(clip).frames()]
    ratio = args.downsample_ratio
    wire = _Wire(width, height, "raw", _WINDOW * width * height * 3)
    model = ("--backend", args.backend, "--device", args.device)
    shot_outputs = OutputSpec(foreground=False, sample_format="uint16")  # what the shot's 16-bit PNGs need
    notes: list[tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        clients: dict[str, Any] = {}
        pids: dict[str, int] = {}
        for flags in ("--batch off", "--batch 4 --batch-delay-ms 2"):
            try:
                process, address = spawn_node("--max-streams", "8", *model, *flags.split())
            except RvmNodeError:
                notes.append((f"`serve {flags}`", "not measured: this `rvm-node serve` does not take it"))
                continue
            stack.callback(stop_process, process)
            clients[flags], pids[flags] = stack.enter_context(NodeClient(address)), process.pid
        if not clients:  # a serve without batch flags: batching is off on a CPU
            process, address = spawn_node("--max-streams", "8", *model)
            stack.callback(stop_process, process)
            clients["(no flags)"], pids["(no flags)"] = stack.enter_context(NodeClient(address)), process.pid
        first = next(iter(clients))  # batching off: the shot and the memory rows
        policies = {flags: client.info().max_batch for flags, client in clients.items()}
        tensor: list[float] = []
        shot: list[float] = []
        streams: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            tensor.append(tensor_rate(backend, frames, ratio, shot_outputs))
            shot.append(_shot_rate(clients[first], clip, ratio, len(frames)))
            for flags, client in clients.items():
                for count in (1, 4):
                    seconds = concurrently(
                        count, functools.partial(_node_stream, client, wire, frames, ratio)
                    )
                    streams.setdefault((flags, count), []).append(count * len(frames) / seconds)
        reference = statistics.median(tensor)
        rows = [
            (
                f"engine tensor throughput, in process ({backend.name} on {args.device}, the node's options, "
                "uint16 alpha)",
                f"{spread(tensor, 2)} frames/s (1.00x)",
            ),
            *notes,
        ]
        end_to_end = statistics.median(shot) / reference
        verdict = "met" if end_to_end >= 0.85 else "not met"
        rows.append(
            (
                "one shot end to end (`rvm-node matte`): decode, node, 16-bit PNG alpha, seq_chunk 8",
                f"{spread(shot, 2)} frames/s ({end_to_end:.2f}x; goal ≥ 0.85x: {verdict})",
            )
        )
        for (flags, count), rates in streams.items():
            rate = statistics.median(rates)
            rows.append(
                (
                    f"{count} stream(s), `serve {flags}` (node reports max batch {policies[flags]}), aggregate",
                    f"{spread(rates, 2)} frames/s ({rate / reference:.2f}x)",
                )
            )
        small = [(i, np.zeros((144, 176, 3), np.uint8)) for i in range(3)]

        def short_stream() -> None:
            with clients[first].open_stream(width=176, height=144) as stream:
                for _ in stream.process(small):
                    pass

        short_stream()
        after_one = rss_mb(pids[first])
        for _ in range(99):
            short_stream()
        after_hundred = rss_mb(pids[first])
        rows.append(
            (
                f"node RSS (`serve {first}`) after 1 stream / after 100 streams",
                f"{after_one:.0f} MB / {after_hundred:.0f} MB",
            )
        )
        if args.long_stream_frames > 0:
            batching = list(clients)[-1]
            early, late = _long_stream(clients[batching], pids[batching], args.long_stream_frames)
            rows.append(
                (
                    f"node RSS (`serve {batching}`) over one {args.long_stream_frames}-frame 176x144 stream: "
                    "after its first tenth / at its end",
                    f"{early:.0f} MB / {late:.0f} MB",
                )
            )
    return rows


def run_node_bench(args: argparse.Namespace) -> int:
    """The serving path against its ceiling and against real inference, in one run.

    (a) a bare gRPC echo, (b) the node over a stand-in that returns a constant
    matte, (c) the same stand-in with a simulated device, at each of
    ``--sizes``, for 1 and 4 streams, raw and zstd; configurations interleaved
    round by round, medians reported. (d) `rvm-node serve` with ``--backend`` at
    ``--size``: streams with batching off and on, one shot end to end against
    the in-process tensor rate, and the node's memory after many streams.
    """
    from rvm_node.bench.standins import parse_device_ms
    from rvm_node.engine.ratio import check_downsample_ratio

    if args.rounds < 1 or args.stream_frames < 1 or args.frames < 1:
        raise InvalidInputError("--rounds, --stream-frames and --frames must be >= 1")
    if args.long_stream_frames < 0:
        raise InvalidInputError(f"--long-stream-frames: expected 0 or more, got {args.long_stream_frames}")
    parse_frame_sizes(args.sizes)  # every option is checked before the first measurement
    parse_one_size(args.size, "--size")
    parse_device_ms(args.device_ms)
    check_downsample_ratio(args.downsample_ratio, "--downsample-ratio")
    from rvm_node.engine.loader import load_model, shared_cpu_options

    backend = load_model(  # an unusable device is refused here, before the first measurement
        backend=args.backend,
        device=args.device,
        options=shared_cpu_options(args.backend) if args.device == "cpu" else None,
    )
    started = time.perf_counter()
    header, standin_rows, stage_header, stage_rows = _standin_table(args)
    ring_rows = _ring_shot_rows(args)
    inference_rows = [] if args.serving_only else _inference_rows(args, backend)
    print(f"Machine: {machine()}")
    print(
        f"Node and client on loopback, the client's streams on threads of one process. The example clip scaled "
        f"to each size, uint8 RGB in, uint16 alpha back; {args.stream_frames} frames per stream at 1920x1080 "
        f"(fewer at larger sizes, at least {_MIN_STREAM_FRAMES}); a window of {_WINDOW} frames per stream (a ring of {_WINDOW} "
        f"slots over shared memory); median (min–max) of {args.rounds} rounds, the rows of each group "
        "interleaved; MB = 10^6 bytes; node CPU = user + system time of the server process over the run. "
        "Rows (b), (c) and (e) are stand-ins: the real node and client, but a backend that runs no network; "
        "the simulated device sleeps with the GIL released."
    )
    markdown(header, standin_rows)
    print()
    print(
        "Where (b)'s CPU goes, ms per frame, raw: the stages as timed inside the stand-in node (CPU time of the "
        "thread that ran them), then every thread's CPU from /proc (the event loop thread's includes the timed "
        "stages that ran on it)."
    )
    markdown(stage_header, stage_rows)
    print()
    print(
        "(g) One co-located shot end to end over shared memory (`rvm-node matte`: decode, node, 8-bit PNG alpha, "
        "seq_chunk 8), the example clip scaled to each size: the reader decodes each chunk straight into ring "
        "slots, or each frame is copied in; client CPU = this process's user + system time; interleaved, "
        f"median (min–max) of {args.rounds} rounds."
    )
    markdown(["size", "path", "frames/s", "client CPU ms/frame", "vs copied in"], ring_rows)
    if not inference_rows:
        print(f"\n({time.perf_counter() - started:.0f} s)")
        return 0
    print()
    print(
        f"(d) real inference on this CPU: the example clip re-encoded at {args.size}, {args.frames} frames, "
        f"ratio {args.downsample_ratio}; `rvm-node serve --backend {args.backend}`; median (min–max) of {args.rounds} rounds."
    )
    markdown(["measurement", "result"], [list(row) for row in inference_rows])
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0
