"""One node, several processes: ``serve --workers N``.

One Python process is bound by the GIL: its event loop parses, packs and
sends for every stream while its inference worker waits for the device.
Like gRPC's own multiprocessing example, the supervisor starts N worker
processes before it creates any gRPC object (``spawn``, so no gRPC or torch
state is inherited), and every worker binds the same port with
``SO_REUSEPORT``: the kernel spreads client connections over them. Each
worker has its own event loop, scheduler and model on the same device.

The workers share a small table (:class:`StreamTable`) so that the node
behaves as one: ``--max-streams`` is the node's total, and GetNodeInfo
reports the node's active streams from any worker. Metrics are kept with
prometheus_client's multiprocess mode and served, summed, by the
supervisor. SIGTERM or SIGINT to the supervisor drains every worker within
the grace period; a worker that dies takes the node down with a one-line
error (a farm moves its shots to other nodes).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from rvm_node.errors import BackendError, InvalidInputError

__all__ = ["LocalStreams", "StreamTable", "reserve_port", "run_workers"]

log = logging.getLogger("rvm_node.node")
_CONTEXT = multiprocessing.get_context("spawn")
_READY_TIMEOUT = 600.0  # loading a model on a busy machine can be slow


class LocalStreams:
    """The streams open on a node of one process, and the shared-memory rings they map."""

    worker = 0
    workers = 1

    def __init__(self, node_id: str = "") -> None:
        self._open = 0
        self.node_id = node_id or secrets.token_hex(8)
        self._rings: dict[tuple[int, int], int] = {}  # (device, inode) of each mapped ring: its bytes

    def pids(self) -> list[int]:
        """Each worker's process id."""
        return [os.getpid()]

    def reserve_ring(self, key: tuple[int, int], nbytes: int, budget: int) -> str:
        """Count a ring (device, inode) of ``nbytes`` as mapped: "" if done, else "in use" (another stream
        maps it) or "budget" (the node's mapped rings would exceed ``budget`` bytes)."""
        if key in self._rings:
            return "in use"
        if sum(self._rings.values()) + nbytes > budget:
            return "budget"
        self._rings[key] = nbytes
        return ""

    def release_ring(self, key: tuple[int, int]) -> None:
        self._rings.pop(key, None)

    def ring_in_use(self, key: tuple[int, int]) -> bool:
        return key in self._rings

    def try_open(self, limit: int) -> bool:
        """Count one more stream unless ``limit`` streams are open on the node."""
        if self._open >= limit:
            return False
        self._open += 1
        return True

    def close(self) -> None:
        self._open -= 1

    @property
    def mine(self) -> int:
        """Streams open in this process."""
        return self._open

    @property
    def total(self) -> int:
        """Streams open on the whole node."""
        return self._open


class StreamTable(LocalStreams):
    """The streams open on each worker of a node, in memory the workers share."""

    def __init__(self, counts: Any, worker: int) -> None:
        super().__init__()
        self._counts = counts  # a multiprocessing Array of one count per worker, with its lock
        self.worker = worker
        self.workers = len(counts)

    def try_open(self, limit: int) -> bool:
        with self._counts.get_lock():
            if sum(self._counts) >= limit:
                return False
            self._counts[self.worker] += 1
        return True

    def close(self) -> None:
        with self._counts.get_lock():
            self._counts[self.worker] -= 1

    @property
    def mine(self) -> int:
        return int(self._counts[self.worker])

    @property
    def total(self) -> int:
        return int(sum(self._counts))


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` (0: a free port) with SO_REUSEPORT, so workers can bind it and no one else."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InvalidInputError(f"port: cannot bind {host}:{port} ({exc.strerror})") from None
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _worker_entry(target: Callable[..., None], args: Any, counts: Any, index: int, ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    target(args, StreamTable(counts, index), ready)


def run_workers(
    target: Callable[..., None],
    args: Any,
    count: int,
    grace: float,
    on_ready: Callable[[], None],
    env: dict[str, str] | None = None,
) -> int:
    """Run ``target(args, streams, ready)`` in ``count`` worker processes until SIGTERM or SIGINT.

    Each worker calls ``ready.send(None)`` once it serves, or sends
    ``("input" | "backend", line)`` and exits. ``on_ready`` runs once every worker serves. Returns 0
    after a drain in which every worker exited cleanly.
    """
    counts = _CONTEXT.Array("q", count)
    pipes = [_CONTEXT.Pipe(duplex=False) for _ in range(count)]
    workers = [
        _CONTEXT.Process(
            target=_worker_entry,
            args=(target, args, counts, index, pipes[index][1]),
            name=f"rvm-node-worker-{index}",
        )
        for index in range(count)
    ]
    stop = {"signal": 0}

    def request_stop(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    saved = {name: os.environ.get(name) for name in env or {}}
    try:
        os.environ.update(env or {})  # the workers start with it (prometheus_client reads it at import)
        try:
            for worker in workers:
                worker.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        _wait_ready(workers, [receiver for receiver, _ in pipes], stop)
        if not stop["signal"]:
            on_ready()
        while not stop["signal"]:
            dead = [w for w in workers if not w.is_alive()]
            if dead:
                raise BackendError(f"{dead[0].name} exited with {dead[0].exitcode}; the node stops")
            time.sleep(0.2)
        log.info("draining %d workers, grace %.0f s", count, grace)
        return _drain(workers, grace)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_ready(workers: list[Any], receivers: list[Any], stop: dict[str, int]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    waiting = dict(enumerate(receivers))
    while waiting and not stop["signal"]:
        for index, receiver in list(waiting.items()):
            if receiver.poll(0.05):
                message = receiver.recv()
                if message is not None:  # (kind, line): the worker's error, raised here as the same kind
                    kind, line = message
                    raise (InvalidInputError if kind == "input" else BackendError)(line)
                del waiting[index]
            elif not workers[index].is_alive():
                raise BackendError(
                    f"{workers[index].name} exited with {workers[index].exitcode} before serving"
                )
        if time.monotonic() > deadline:
            raise BackendError(f"workers not serving after {_READY_TIMEOUT:.0f} s")


def _drain(workers: list[Any], grace: float) -> int:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 10
    for worker in workers:
        worker.join(max(0.1, deadline - time.monotonic()))
    failed = [w for w in workers if w.exitcode != 0]
    for worker in failed:
        log.error("%s exited with %s while draining", worker.name, worker.exitcode)
    return 1 if failed else 0
