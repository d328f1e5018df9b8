"""Configurations measured side by side: each run's rate, device busy, server CPU and stage times, round
after round (A, B, C, A, B, C, ...), so the machine's noise falls on every row alike."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvm_node.bench.common import concurrently

__all__ = ["Measured", "Run", "interleaved"]


@dataclass(frozen=True)
class Run:
    """One configuration of the table: what runs a stream, and the server process it measures."""

    path: str
    work: Callable[[list[np.ndarray]], None]
    pid: int
    busy_file: Path | None = None  # a simulated device's busy seconds
    stages_file: Path | None = None  # the stand-in node's stage times and thread names


@dataclass
class Measured:
    rates: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server process CPU per frame
    stage_ms: list[dict[str, float]] = field(default_factory=list)


def stage_probe(run: Run) -> dict[str, float]:
    """Stage CPU seconds and thread CPU seconds by role, of ``run``'s stand-in node, now."""
    import json

    from rvm_node.node.stages import thread_cpu

    if run.stages_file is None or not run.stages_file.is_file():
        return {}
    saved = json.loads(run.stages_file.read_text())
    roles = {int(tid): ROLES.get(name.rstrip("0123456789_"), name) for tid, name in saved["threads"].items()}
    probe = dict(saved["stages"])
    for tid, seconds in thread_cpu(run.pid).items():
        role = roles.get(tid, "gRPC core threads (C)")
        probe[role] = probe.get(role, 0.0) + seconds
    return probe


ROLES = {
    "MainThread": "event loop thread",
    "rvm-node-infer": "inference worker",
    "rvm-node-codec": "codec pool",
}


def interleaved(runs: list[Run], streams: int, frames: list[np.ndarray], rounds: int) -> list[Measured]:
    """Each run's aggregate frames/s, device busy, server CPU and stage times per round (A, B, C, A, B, ...).

    Each run is warmed up first (connections, the mattes of this size).
    """
    from rvm_node.bench.standins import read_busy
    from rvm_node.node.stages import process_cpu

    for run in runs:
        concurrently(streams, functools.partial(run.work, frames[:2]))
    measured = [Measured() for _ in runs]
    count = streams * len(frames)
    for _ in range(rounds):
        for run, result in zip(runs, measured, strict=True):
            time.sleep(0.12)  # the stand-in saves its stage times every 50 ms
            busy, cpu, stages = (
                read_busy(run.busy_file) if run.busy_file else 0.0,
                process_cpu(run.pid),
                stage_probe(run),
            )
            seconds = concurrently(streams, functools.partial(run.work, frames))
            result.rates.append(count / seconds)
            if run.busy_file is not None:
                result.busy.append((read_busy(run.busy_file) - busy) / seconds)
            time.sleep(0.12)
            result.cpu_ms.append((process_cpu(run.pid) - cpu) * 1000 / count)
            after = stage_probe(run)
            result.stage_ms.append({k: (v - stages.get(k, 0.0)) * 1000 / count for k, v in after.items()})
    return measured
