"""The inference scheduler: one worker thread per device, batching chunks across streams.

It follows the "oldest" strategy of Triton's sequence batcher. When the
worker is free it takes the oldest pending chunk and every other pending
chunk that can share its forward pass (same backend, frame size, ratio, input
format, chunk length and outputs; see ``batch_key``), never two of one
stream, up to ``max_batch``. If the batch is not full, and more streams are
open than it holds, it waits for more until the oldest chunk has waited
``batch_delay`` seconds; a stream alone is never held at all. Each stream's
state is stacked into the batch and split back out (``process_batch``).

A chunk whose stream is cancelled while it waits leaves the queue; one that
is cancelled while its batch runs is computed and dropped. A forward pass
that fails fails the streams of that batch only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rvm_node.engine.backend import MattingBackend
from rvm_node.engine.batching import batch_key, process_batch
from rvm_node.engine.chunks import MatteChunk
from rvm_node.engine.session import MattingSession
from rvm_node.errors import InvalidInputError
from rvm_node.node.metrics import NodeMetrics
from rvm_node.node.status import StreamRefused

__all__ = ["BatchPolicy", "Scheduler"]


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """``max_batch`` streams per forward pass (1: no batching); the oldest waits at most ``delay`` s."""

    max_batch: int = 1
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise InvalidInputError(f"max_batch: expected 1 or more, got {self.max_batch}")
        if not (0.0 <= self.delay <= 1.0):
            raise InvalidInputError(f"batch_delay_ms: expected 0 to 1000, got {self.delay * 1000:g}")

    @staticmethod
    def default_for(device: str) -> BatchPolicy:
        """Batching where it pays: on a GPU one pass over 4 streams costs far less than 4 passes.

        On a CPU the convolutions already use every core for one stream, and
        a batch of 4 measured no faster than 4 passes in a row (README), so
        batching is off there.
        """
        if device.startswith(("cuda", "mps")):
            return BatchPolicy(max_batch=4, delay=0.002)
        return BatchPolicy(max_batch=1, delay=0.0)


@dataclass
class _Pending:
    session: MattingSession
    frames: np.ndarray
    key: tuple[Any, ...]
    arrived: float
    future: Future[MatteChunk] = field(default_factory=Future)


class Scheduler:
    """Runs every stream's chunks on one worker thread, batched by ``policy``."""

    def __init__(
        self,
        backend: MattingBackend[Any],
        metrics: NodeMetrics | None = None,
        policy: BatchPolicy | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.policy = policy or BatchPolicy()
        self._pending: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Streams that may send a chunk, kept by the service; None: unknown (wait for company as asked).
        self.open_streams: int | None = None
        self.batches = 0
        self.batched_chunks = 0
        self.longest_wait = 0.0  # seconds the oldest chunk of a batch waited before its pass began
        self._thread = threading.Thread(target=self._run, name="rvm-node-infer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def process(self, session: MattingSession, frames: np.ndarray) -> MatteChunk:
        """Matte one ``[T, 3, H, W]`` chunk of ``session``'s stream."""
        item = _Pending(session, frames, batch_key(session, frames), time.monotonic())
        with self._cond:
            if self._closed:  # the stream ends UNAVAILABLE, so its client moves the shot to another node
                raise StreamRefused("NODE_DRAINING", "the node is shutting down; use another node")
            self._pending.append(item)
            self._gauge()
            self._cond.notify()
        return await asyncio.wrap_future(item.future)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))

    def _take(self) -> list[_Pending] | None:
        """The next batch, or None once closed (called with the lock held)."""
        while True:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            while self._pending and self._pending[0].future.cancelled():
                self._pending.popleft()
            if not self._pending:
                continue
            oldest = self._pending[0]
            while True:
                members = self._members(oldest)
                left = oldest.arrived + self.policy.delay - time.monotonic()
                full = self.policy.max_batch
                if self.open_streams is not None:  # no more streams are open than the batch holds
                    full = min(full, max(1, self.open_streams))
                if len(members) >= full or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            for item in members:
                self._pending.remove(item)
            self._gauge()
            self.longest_wait = max(self.longest_wait, time.monotonic() - oldest.arrived)
            return members

    def _members(self, oldest: _Pending) -> list[_Pending]:
        members, sessions = [oldest], {id(oldest.session)}
        for item in self._pending:
            if len(members) >= self.policy.max_batch:
                break
            if item is oldest or item.key != oldest.key or id(item.session) in sessions:
                continue
            if item.future.cancelled():
                continue
            members.append(item)
            sessions.add(id(item.session))
        return members

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
            if batch is None:
                return
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)
            del batch, live  # not held while waiting: frames may view a client's shared memory

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = process_batch([i.session for i in batch], [i.frames for i in batch])
        except BaseException as exc:  # the pass failed: every stream of this batch gets the error
            for item in batch:
                item.future.set_exception(exc)
            return
        self.batches += 1
        self.batched_chunks += len(batch)
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self.metrics is not None:
            elapsed = time.perf_counter() - started
            self.metrics.chunk_seconds.observe(elapsed)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.frames.inc(sum(len(i.frames) for i in batch))

    def close(self, wait: float = 0.0) -> None:
        """Stop the worker; chunks still waiting are cancelled. ``wait``: seconds to let a running pass
        finish, so the process never exits while a backend's own threads are inside it."""
        with self._cond:
            self._closed = True
            for item in self._pending:
                item.future.cancel()
            self._pending.clear()
            self._cond.notify_all()
        if wait > 0 and self._thread is not threading.current_thread():
            self._thread.join(wait)
