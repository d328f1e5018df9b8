"""``run_shots``: spread shots over a pool of nodes, with failover and restart.

Each shot runs as a converter job on a node (``RemoteBackend``), always with
``resume``: frames already on disk are verified and skipped, and every
``checkpoint_every`` frames the stream's recurrent state is saved beside the
shot's first output. If a node dies (connection lost, UNAVAILABLE, deadline),
the shot goes back in the queue and continues on another node from that
checkpoint, replaying only the frames after it, so the result equals an
uninterrupted run; with no checkpoint yet it replays from the verified frames
with a warm-up. A rerun of the same job after the farm client itself was
killed does the same, and finished shots are verified and left alone.

Cost of checkpoints: one ``snapshot`` round trip and one small file write
every ``checkpoint_every`` frames (the four state tensors: about 3 MB at
1920x1080 and ratio 0.25); a failover recomputes at most that many frames.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rvm_node.client import RemoteBackend
from rvm_node.convert.pipeline import ConvertJob, encoder_threads, run_job
from rvm_node.errors import (
    InvalidInputError,
    JobCancelledError,
    NodeBusyError,
    NodeError,
    NodeRejectedError,
    RvmNodeError,
)
from rvm_node.farm.pool import NodePool
from rvm_node.farm.shots import Shot

__all__ = ["FarmEvent", "ShotResult", "run_shots"]


@dataclass
class ShotResult:
    shot: str
    status: str = "pending"  # pending, running, done, failed, cancelled
    frames: int = 0
    total: int | None = None
    nodes: list[str] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class FarmEvent:
    """``kind``: started, frame, retry, done, failed or cancelled; ``result`` is the shot's state after it."""

    kind: str
    shot: str
    node: str | None
    result: ShotResult
    fps: float = 0.0
    message: str = ""

    @property
    def eta(self) -> float | None:
        """Seconds left for this shot at the current rate, when its length is known."""
        if self.result.total is None or self.fps <= 0:
            return None
        return max(0.0, (self.result.total - self.result.frames) / self.fps)


_END = object()


def run_shots(
    shots: list[Shot],
    pool: NodePool,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    checkpoint_every: int = 25,
    wait_for_node: float = 60.0,
    cancel: threading.Event | None = None,
) -> Iterator[FarmEvent]:
    """Run every shot; yield progress events; every shot ends ``done`` or ``failed`` with a reason."""
    if retries < 0 or checkpoint_every < 1:
        raise InvalidInputError("--retries must be >= 0 and --checkpoint-every >= 1")
    pool.refresh()
    if pool.all_down():
        raise NodeError("farm: no node of the pool answered: " + ", ".join(n.address for n in pool.nodes))
    results = {shot.name: ShotResult(shot.name) for shot in shots}
    work: queue.Queue[tuple[Shot, int, set[str]]] = queue.Queue()
    for shot in shots:
        work.put((shot, 0, set()))
    events: queue.Queue[Any] = queue.Queue()
    remaining = [len(shots)]
    lock = threading.Lock()

    def finish_one() -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                events.put(_END)

    def end(shot: Shot, status: str, reason: str, node: str | None) -> None:
        """The shot's last event: done, failed or cancelled."""
        result = results[shot.name]
        result.status, result.reason = status, reason
        events.put(FarmEvent(status, shot.name, node, result, message=reason))
        finish_one()

    def attempt(shot: Shot, tries: int, avoid: set[str]) -> None:
        result = results[shot.name]
        if cancel is not None and cancel.is_set():
            end(shot, "cancelled", "cancelled before it started", None)
            return
        node = pool.acquire(avoid, timeout=wait_for_node)
        if node is None:
            end(shot, "failed", f"no node had a free slot within {wait_for_node:g} s", None)
            return
        started = time.monotonic()
        if result.total is None and shot.frames is not None:
            result.total = len(shot.frames) - (
                max(0, shot.write_from - shot.frames.first) if shot.write_from is not None else 0
            )
        result.status = "running"
        result.nodes.append(node.address)
        events.put(FarmEvent("started", shot.name, node.address, result))
        counted = [0]

        def on_frame(_number: int) -> None:
            counted[0] += 1
            result.frames += 1
            elapsed = max(time.monotonic() - started, 1e-9)
            events.put(FarmEvent("frame", shot.name, node.address, result, fps=counted[0] / elapsed))

        try:
            backend = RemoteBackend(node.client, label=shot.name)
            job = ConvertJob(
                backend=backend,
                input_source=shot.input,
                outputs=dict(shot.outputs),  # type: ignore[arg-type]
                downsample_ratio=shot.downsample_ratio,
                frames=shot.frames,
                start_frame=shot.start_frame,
                input_colorspace=shot.input_colorspace,
                allow_gaps=shot.allow_gaps,
                background=shot.background,
                settings=shot.settings,
                resume=True,
                seq_chunk=8,
                num_workers=encoder_threads(),
                state_every=checkpoint_every,
                progress="off",
                on_frame=on_frame,
                write_from=shot.write_from,
                cancel=cancel,
            )
            report = run_job(job)
        except NodeRejectedError as exc:  # the shot is at fault, not the node: no retry, no blame
            pool.release(node)
            result.seconds += time.monotonic() - started
            end(shot, "failed", str(exc), node.address)
            return
        except NodeError as exc:
            pool.release(node, failed=not isinstance(exc, NodeBusyError))
            result.seconds += time.monotonic() - started
            if tries >= retries:
                end(shot, "failed", str(exc), node.address)
                return
            result.retries += 1
            events.put(FarmEvent("retry", shot.name, node.address, result, message=str(exc)))
            time.sleep(backoff * (2**tries))
            work.put((shot, tries + 1, avoid | {node.address}))
            return
        except JobCancelledError as exc:
            pool.release(node)
            result.seconds += time.monotonic() - started
            end(shot, "cancelled", str(exc), node.address)
            return
        except RvmNodeError as exc:
            pool.release(node)
            result.seconds += time.monotonic() - started
            end(shot, "failed", str(exc), node.address)
            return
        pool.release(node)
        result.seconds += time.monotonic() - started
        result.total = report.frames_written + report.frames_skipped
        end(shot, "done", "", node.address)

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
            try:
                shot, tries, avoid = work.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                attempt(shot, tries, avoid)
            except BaseException as exc:  # a bug: report it as the shot's failure, keep the farm going
                end(shot, "failed", f"{type(exc).__name__}: {exc}", None)

    slots = max(1, sum(n.capacity for n in pool.nodes))
    threads = [
        threading.Thread(target=worker, name=f"rvm-farm-{i}", daemon=True)
        for i in range(min(slots, len(shots)))
    ]
    for thread in threads:
        thread.start()
    while True:
        event = events.get()
        if event is _END:
            break
        yield event
    for thread in threads:
        thread.join(timeout=5)
