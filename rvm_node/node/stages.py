"""Where a node's CPU time goes: timed stages of the serving path, and each thread's CPU from /proc.

``rvm-node bench node`` turns this on in its stand-in node (never in
``serve``): :class:`StageClock` adds the CPU time (``time.thread_time``) the
event loop spends parsing requests, unpacking frames, packing planes and
serializing responses; :func:`thread_cpu` reads every thread's user + system
time from ``/proc``, so the rest of the event loop's time (queue hops, the
loop itself, gRPC's work on it) and the other threads' (inference, codec
pool, gRPC's own) are measured too, not estimated.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["STAGES", "StageClock", "process_cpu", "thread_cpu", "timed"]

STAGES = ("receive/parse", "unpack", "pack", "send/serialize")
_R = TypeVar("_R")


class StageClock:
    """CPU seconds spent in each of :data:`STAGES`, on whatever thread ran them."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def timed(self, stage: str, work: Callable[..., _R]) -> Callable[..., _R]:
        """``work`` with its CPU time added to ``stage``."""
        seconds = self.seconds

        def run(*args: Any) -> _R:
            started = time.thread_time()
            try:
                return work(*args)
            finally:
                seconds[stage] += time.thread_time() - started

        return run

    def save(self, path: Path) -> None:
        """Write the totals, and the names of this process's Python threads by their OS thread id, to
        ``path`` as JSON (atomically: a reader never sees half a file)."""
        threads = {str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"stages": self.seconds, "threads": threads}))
        os.replace(tmp, path)


def timed(clock: StageClock | None, stage: str, work: Callable[..., _R]) -> Callable[..., _R]:
    """``work`` timed into ``clock``'s ``stage``; ``work`` itself when there is no clock."""
    return work if clock is None else clock.timed(stage, work)


def _cpu_of(stat_text: str) -> tuple[str, float]:
    """(the name, user + system CPU seconds) from a /proc ``stat`` line."""
    name = stat_text[stat_text.index("(") + 1 : stat_text.rindex(")")]
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its running children (a node's workers) so far."""
    total = _cpu_of(Path(f"/proc/{pid}/stat").read_text())[1]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(OSError, ValueError):
            total += process_cpu(int(child))
    return total


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid``, by OS thread id."""
    totals: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            totals[int(task.name)] = _cpu_of((task / "stat").read_text())[1]
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return totals
