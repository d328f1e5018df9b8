"""(d) real inference: `rvm-node serve` with batching off and on, one shot end to end against the in-process
tensor rate, and the node's memory over many streams and one long one."""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.bench.common import concurrently, parse_one_size, rss_mb, spread, tensor_rate, upscaled_clip
from rvm_node.bench.node.streams import WINDOW, Wire, node_stream
from rvm_node.errors import RvmNodeError
from rvm_node.node.launch import spawn_node, stop_process

__all__ = ["inference_rows"]


def _shot_rate(client: Any, clip: Path, ratio: float, frames: int) -> float:
    """Frames/s of one shot as `rvm-node matte` runs it: decode here, matte on the node, 16-bit PNG alpha."""
    from rvm_node.client import RemoteBackend
    from rvm_node.client.shots import node_job_cut
    from rvm_node.convert import ConvertJob, ShotSpec, run_job

    cut = node_job_cut()
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
        job = ConvertJob(
            backend=RemoteBackend(client),
            shot=ShotSpec(
                input_source=str(clip),
                downsample_ratio=ratio,
                outputs={"alpha": str(Path(tmp) / "m.####.png")},
            ),
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


@dataclass
class _Nodes:
    """The real nodes measured, by their `serve` flags; the first runs with batching off."""

    clients: dict[str, Any] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)  # flags this `serve` does not take


def _start_nodes(stack: contextlib.ExitStack, model: tuple[str, ...]) -> _Nodes:
    from rvm_node.client import NodeClient

    nodes = _Nodes()
    for flags in ("--batch off", "--batch 4 --batch-delay-ms 2"):
        try:
            process, address = spawn_node("--max-streams", "8", *model, *flags.split())
        except RvmNodeError:
            nodes.notes.append((f"`serve {flags}`", "not measured: this `rvm-node serve` does not take it"))
            continue
        stack.callback(stop_process, process)
        nodes.clients[flags], nodes.pids[flags] = stack.enter_context(NodeClient(address)), process.pid
    if not nodes.clients:  # a serve without batch flags: batching is off on a CPU
        process, address = spawn_node("--max-streams", "8", *model)
        stack.callback(stop_process, process)
        nodes.clients["(no flags)"], nodes.pids["(no flags)"] = (
            stack.enter_context(NodeClient(address)),
            process.pid,
        )
    return nodes


def _rate_rows(args: argparse.Namespace, backend: Any, nodes: _Nodes) -> list[tuple[str, str]]:
    """The tensor rate, one shot end to end, and 1 and 4 streams on each node, interleaved."""
    from rvm_node.engine.samples import OutputSpec
    from rvm_node.io.sources import open_source

    width, height = parse_one_size(args.size, "--size")
    clip = upscaled_clip(width, height, args.frames)
    frames = [f.pixels for f in open_source(clip).frames()]
    ratio = args.downsample_ratio
    wire = Wire(width, height, "raw", WINDOW * width * height * 3)
    shot_outputs = OutputSpec(foreground=False, sample_format="uint16")  # what the shot's 16-bit PNGs need
    first = next(iter(nodes.clients))
    tensor: list[float] = []
    shot: list[float] = []
    streams: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        tensor.append(tensor_rate(backend, frames, ratio, shot_outputs))
        shot.append(_shot_rate(nodes.clients[first], clip, ratio, len(frames)))
        for flags, client in nodes.clients.items():
            for count in (1, 4):
                seconds = concurrently(count, functools.partial(node_stream, client, wire, frames, ratio))
                streams.setdefault((flags, count), []).append(count * len(frames) / seconds)
    reference = statistics.median(tensor)
    end_to_end = statistics.median(shot) / reference
    verdict = "met" if end_to_end >= 0.85 else "not met"
    rows = [
        (
            f"engine tensor throughput, in process ({backend.name} on {args.device}, the node's options, "
            "uint16 alpha)",
            f"{spread(tensor, 2)} frames/s (1.00x)",
        ),
        *nodes.notes,
        (
            "one shot end to end (`rvm-node matte`): decode, node, 16-bit PNG alpha, seq_chunk 8",
            f"{spread(shot, 2)} frames/s ({end_to_end:.2f}x; goal ≥ 0.85x: {verdict})",
        ),
    ]
    policies = {flags: client.info().max_batch for flags, client in nodes.clients.items()}
    for (flags, count), rates in streams.items():
        rows.append(
            (
                f"{count} stream(s), `serve {flags}` (node reports max batch {policies[flags]}), aggregate",
                f"{spread(rates, 2)} frames/s ({statistics.median(rates) / reference:.2f}x)",
            )
        )
    return rows


def _memory_rows(args: argparse.Namespace, nodes: _Nodes) -> list[tuple[str, str]]:
    """The node's RSS after 1 and 100 short streams, and over one long stream with batching on."""
    first = next(iter(nodes.clients))
    small = [(i, np.zeros((144, 176, 3), np.uint8)) for i in range(3)]

    def short_stream() -> None:
        with nodes.clients[first].open_stream(width=176, height=144) as stream:
            for _ in stream.process(small):
                pass

    short_stream()
    after_one = rss_mb(nodes.pids[first])
    for _ in range(99):
        short_stream()
    rows = [
        (
            f"node RSS (`serve {first}`) after 1 stream / after 100 streams",
            f"{after_one:.0f} MB / {rss_mb(nodes.pids[first]):.0f} MB",
        )
    ]
    if args.long_stream_frames > 0:
        batching = list(nodes.clients)[-1]
        early, late = _long_stream(nodes.clients[batching], nodes.pids[batching], args.long_stream_frames)
        rows.append(
            (
                f"node RSS (`serve {batching}`) over one {args.long_stream_frames}-frame 176x144 stream: "
                "after its first tenth / at its end",
                f"{early:.0f} MB / {late:.0f} MB",
            )
        )
    return rows


def inference_rows(args: argparse.Namespace, backend: Any) -> list[tuple[str, str]]:
    """(d) `rvm-node serve`, batching off and on, the end-to-end shot, and memory; ``backend`` is the
    in-process model of the same kind the nodes load."""
    with contextlib.ExitStack() as stack:
        nodes = _start_nodes(stack, ("--backend", args.backend, "--device", args.device))
        return _rate_rows(args, backend, nodes) + _memory_rows(args, nodes)
