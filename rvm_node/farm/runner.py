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
from rvm_node.client.shots import node_job_cut
from rvm_node.convert.pipeline import ConvertJob, run_job
from rvm_node.convert.shot import ShotSpec
from rvm_node.errors import (
    InvalidInputError,
    JobCancelledError,
    NodeBusyError,
    NodeError,
    NodeRejectedError,
    OutputError,
    RvmNodeError,
)
from rvm_node.events import ENDS, EventKind, ProgressEvent, eta_of
from rvm_node.farm.pool import FarmNode, NodePool
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
    output_failed: bool = False  # an output could not be written (a full disk, ...): no node is at fault


@dataclass(frozen=True)
class FarmEvent:
    """``kind``: started, frame, retry, done, failed or cancelled; ``result`` is the shot's state after it."""

    kind: EventKind
    shot: str
    node: str | None
    result: ShotResult
    fps: float = 0.0
    message: str = ""
    frame: int | None = None  # the frame just written, on `frame` events

    @property
    def eta(self) -> float | None:
        """Seconds left for this shot at the current rate, when its length is known."""
        return eta_of(self.result.frames, self.result.total, self.fps)

    @property
    def final(self) -> bool:
        """True for the shot's last event (done, failed or cancelled)."""
        return self.kind in ENDS

    def progress(self) -> ProgressEvent:
        """The event in the one progress-event schema (what ``farm run --progress-json`` prints)."""
        return ProgressEvent(
            self.kind,
            shot=self.shot,
            node=self.node,
            frame=self.frame,
            done=self.result.frames,
            total=self.result.total,
            fps=self.fps,
            eta=self.eta,
            retries=self.result.retries,
            message=self.message,
        )


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
    """Run every shot; yield progress events; every shot ends ``done``, ``failed`` or ``cancelled``."""
    if retries < 0 or checkpoint_every < 1:
        raise InvalidInputError("--retries must be >= 0 and --checkpoint-every >= 1")
    pool.refresh()
    if pool.all_down():
        raise NodeError("farm: no node of the pool answered: " + ", ".join(n.address for n in pool.nodes))
    run = _FarmRun(shots, pool, retries, backoff, checkpoint_every, wait_for_node, cancel)
    return run.events()


@dataclass(frozen=True)
class _Attempt:
    shot: Shot
    tries: int
    avoid: frozenset[str]


class _FarmRun:
    """One farm run: a queue of attempts, worker threads taking them, and the events they post."""

    def __init__(
        self,
        shots: list[Shot],
        pool: NodePool,
        retries: int,
        backoff: float,
        checkpoint_every: int,
        wait_for_node: float,
        cancel: threading.Event | None,
    ) -> None:
        self.shots, self.pool = shots, pool
        self.retries, self.backoff = retries, backoff
        self.checkpoint_every, self.wait_for_node = checkpoint_every, wait_for_node
        self.cancel = cancel
        self.results = {shot.name: ShotResult(shot.name) for shot in shots}
        self.work: queue.Queue[_Attempt] = queue.Queue()
        for shot in shots:
            self.work.put(_Attempt(shot, 0, frozenset()))
        self.queue: queue.Queue[Any] = queue.Queue()
        self.remaining = len(shots)
        self._lock = threading.Lock()

    def events(self) -> Iterator[FarmEvent]:
        slots = max(1, sum(n.capacity for n in self.pool.nodes))
        threads = [
            threading.Thread(target=self._worker, name=f"rvm-farm-{i}", daemon=True)
            for i in range(min(slots, len(self.shots)))
        ]
        for thread in threads:
            thread.start()
        while (event := self.queue.get()) is not _END:
            yield event
        for thread in threads:
            thread.join(timeout=5)

    def _worker(self) -> None:
        while True:
            with self._lock:
                if self.remaining == 0:
                    return
            try:
                attempt = self.work.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._attempt(attempt)
            except BaseException as exc:  # a bug: report it as the shot's failure, keep the farm going
                self._end(attempt.shot, "failed", f"{type(exc).__name__}: {exc}", None)

    def _post(self, kind: EventKind, shot: Shot, node: str | None, **extra: Any) -> None:
        self.queue.put(FarmEvent(kind, shot.name, node, self.results[shot.name], **extra))

    def _end(self, shot: Shot, status: EventKind, reason: str, node: str | None, fps: float = 0.0) -> None:
        """The shot's last event: done, failed or cancelled."""
        result = self.results[shot.name]
        result.status, result.reason = status, reason
        self._post(status, shot, node, message=reason, fps=fps)
        with self._lock:
            self.remaining -= 1
            if self.remaining == 0:
                self.queue.put(_END)

    def _attempt(self, attempt: _Attempt) -> None:
        shot = attempt.shot
        if self.cancel is not None and self.cancel.is_set():
            self._end(shot, "cancelled", "cancelled before it started", None)
            return
        node = self.pool.acquire(set(attempt.avoid), timeout=self.wait_for_node)
        if node is None:
            self._end(
                shot, "failed", f"no node had room for another stream within {self.wait_for_node:g} s", None
            )
            return
        result = self.results[shot.name]
        result.status = "running"
        result.nodes.append(node.address)
        self._post("started", shot, node.address)
        started = time.monotonic()
        node_failed = False
        again: _Attempt | None = None
        try:
            report = run_job(self._job(shot, node, started))
        except NodeRejectedError as exc:  # the shot is at fault, not the node: no retry, no blame
            self._end(shot, "failed", str(exc), node.address)
        except NodeError as exc:
            node_failed = not isinstance(exc, NodeBusyError)
            again = self._retry(attempt, node, exc)
        except JobCancelledError as exc:
            self._end(shot, "cancelled", str(exc), node.address)
        except OutputError as exc:  # names the file and the frame; the frames before it stay valid
            result.output_failed = True
            self._end(shot, "failed", str(exc), node.address)
        except RvmNodeError as exc:
            self._end(shot, "failed", str(exc), node.address)
        else:
            result.total = report.frames_written + report.frames_skipped
            fps = report.frames_written / max(time.monotonic() - started, 1e-9)
            self._end(shot, "done", "", node.address, fps=fps)  # this attempt's real rate
        finally:
            result.seconds += time.monotonic() - started
            self.pool.release(node, failed=node_failed)
        if again is not None:  # after the release: the failed node is marked down while the shot waits
            time.sleep(self.backoff * (2**attempt.tries))
            self.work.put(again)

    def _job(self, shot: Shot, node: FarmNode, started: float) -> ConvertJob:
        result = self.results[shot.name]
        if result.total is None and shot.frames is not None:
            result.total = len(shot.frames) - (
                max(0, shot.write_from - shot.frames.first) if shot.write_from is not None else 0
            )
        written = [0]

        def on_total(count: int | None) -> None:  # the shot's length, once its source is open
            if result.total is None and count is not None:
                offset = (
                    shot.write_from - shot.frames.first if shot.write_from is not None and shot.frames else 0
                )
                result.total = count - max(0, offset)

        def on_frame(number: int) -> None:
            written[0] += 1
            result.frames += 1
            fps = written[0] / max(time.monotonic() - started, 1e-9)
            self._post("frame", shot, node.address, fps=fps, frame=number)

        cut = node_job_cut()
        return ConvertJob(
            backend=RemoteBackend(node.client, label=shot.name),
            shot=ShotSpec(
                input_source=shot.input,
                outputs=dict(shot.outputs),  # type: ignore[arg-type]
                downsample_ratio=shot.downsample_ratio,
                frames=shot.frames,
                start_frame=shot.start_frame,
                input_colorspace=shot.input_colorspace,
                allow_gaps=shot.allow_gaps,
                no_autorotate=shot.no_autorotate,
                background=shot.background,
                settings=shot.settings,
            ),
            resume=True,
            seq_chunk=cut.seq_chunk,
            num_workers=cut.num_workers,
            state_every=self.checkpoint_every,
            progress="off",
            on_frame=on_frame,
            on_total=on_total,
            write_from=shot.write_from,
            cancel=self.cancel,
        )

    def _retry(self, attempt: _Attempt, node: FarmNode, exc: NodeError) -> _Attempt | None:
        """After a node failed the shot: the attempt to queue, away from that node, or None (and the shot
        failed) past the retries."""
        shot = attempt.shot
        if attempt.tries >= self.retries:
            self._end(shot, "failed", str(exc), node.address)
            return None
        self.results[shot.name].retries += 1
        self._post("retry", shot, node.address, message=str(exc))
        return _Attempt(shot, attempt.tries + 1, attempt.avoid | {node.address})
