"""``rvm-node bench farm``: nodes pinned to one core each, 1 against 2 nodes, and the cost of a failover."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rvm_node.bench.common import (
    print_table,
    upscaled_clip,
)
from rvm_node.engine.backend import fastest_parity_backend
from rvm_node.node.launch import spawn_node

__all__ = ["run_farm_bench"]


def run_farm_bench(args: argparse.Namespace) -> int:
    """Nodes pinned to one core each: aggregate frames/s for 1 and 2 nodes, and the cost of a failover."""
    import tempfile

    from rvm_node.farm import NodePool, Shot, run_shots
    from rvm_node.io.sequence import FrameRange

    clip = upscaled_clip(352, 288, 120)

    def start(core: int) -> tuple[Any, str]:
        return spawn_node("--backend", "auto", "--threads", "1", "--max-streams", "2", pin_core=core)

    def shots(root: Path, count: int, length: int) -> list[Shot]:
        return [
            Shot(
                name=f"s{i}",
                input=str(clip),
                outputs={"alpha": str(root / f"s{i}" / "m.####.png")},
                frames=FrameRange(1 + i * length, (i + 1) * length),
                downsample_ratio=args.downsample_ratio,
            )
            for i in range(count)
        ]

    nodes = [start(0), start(1)]
    rows: list[tuple[str, str]] = []
    try:
        rates = {}
        for count in (1, 2):
            with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
                pool = NodePool([address for _, address in nodes[:count]])
                work = shots(Path(tmp), 4, args.frames)
                begin = time.perf_counter()
                for _ in run_shots(work, pool):
                    pass
                rates[count] = 4 * args.frames / (time.perf_counter() - begin)
                pool.close()
            rows.append(
                (
                    f"{count} node(s), one core each, 4 shots x {args.frames} frames",
                    f"{rates[count]:.2f} frames/s ({rates[count] / rates[1]:.2f}x one node)",
                )
            )
        with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
            pool = NodePool([address for _, address in nodes], cooldown=600)
            killed_at = resumed_at = None
            frames_before = 0
            for event in run_shots(
                shots(Path(tmp), 1, 90), pool, checkpoint_every=args.checkpoint_every, backoff=0.0
            ):
                if event.kind == "frame" and killed_at is None and event.result.frames >= 40:
                    victim = next(p for p, a in nodes if a == event.node)
                    victim.kill()
                    killed_at, frames_before = time.perf_counter(), event.result.frames
                elif event.kind == "frame" and killed_at is not None and resumed_at is None:
                    resumed_at = time.perf_counter()
            pool.close()
        replayed = frames_before % args.checkpoint_every
        rows.append(
            (
                f"failover: node killed after frame {frames_before}, checkpoint every {args.checkpoint_every}",
                f"{(resumed_at or killed_at or 0) - (killed_at or 0):.2f} s from the kill to the next frame "
                f"written; up to {replayed} frames recomputed",
            )
        )
    finally:
        for process, _ in nodes:
            process.kill()
            process.wait()
    return print_table(
        f"Clip: carphone at 352x288, ratio {args.downsample_ratio}; nodes pinned with taskset, --threads 1, "
        f"--backend auto ({fastest_parity_backend('cpu')})",
        rows,
    )
