"""One node, several processes: ``serve --workers N``.

One Python process is bound by the GIL: its event loop parses, packs and
sends for every stream while its inference worker waits for the device.
Like gRPC's own multiprocessing example, the supervisor starts N worker
processes before it creates any gRPC object (``spawn``, so no gRPC or torch
state is inherited), and every worker binds the same port with
``SO_REUSEPORT``: the kernel spreads client connections over them. Each
worker has its own event loop, scheduler and model on the same device, and
logs one line when it serves (``worker 1 serving (pid 1234)``).

The workers share the node's table (:mod:`rvm_node.node.table`) so that
the node behaves as one: ``--max-streams`` and ``--shm-budget`` are the
node's totals, and GetNodeInfo reports the node's active streams and every
worker's local endpoint from any worker. Metrics are kept with
prometheus_client's multiprocess mode and served, summed, by the
supervisor, with its own ``rvm_node_worker_restarts_total{worker}``.

The supervisor (:class:`Supervisor`) keeps N workers alive, as gunicorn's
arbiter does. A worker that dies while the node is not draining is replaced
by a new process with the same index: its own streams end (their clients
move them), the table forgets them, its gauges are marked dead, and the
other workers' streams go on untouched. The replacement starts after a
backoff of 0.5 s, doubled (up to 30 s) for each death in a row that came
before the worker served or within 10 s of it; it logs each death and
restart in one line. The node stops by itself only when a worker cannot
start at all the first time (at once, with the worker's own error line and
its exit code, as for a bad setting), or when a worker dies 5 times in a row
before it serves (after the others drain; one line, the worker's own when
it sent one). SIGTERM or SIGINT to the supervisor drains every worker within
the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rvm_node.errors import BackendError, InvalidInputError, RvmNodeError
from rvm_node.node.table import SharedTable, WorkerTable

__all__ = ["Supervisor", "reserve_port", "restart_delay", "serve_workers"]

log = logging.getLogger("rvm_node.node")
_CONTEXT = multiprocessing.get_context("spawn")
_READY_TIMEOUT = 600.0  # loading a model on a busy machine can be slow
_BACKOFF_FIRST = 0.5  # seconds before the first restart of a worker
_BACKOFF_CAP = 30.0
_STABLE_AFTER = 10.0  # a worker that served this long before it died starts its backoff over
_START_FAILURES = 5  # a worker that dies this many times in a row before serving stops the node
_POLL = 0.1


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


def restart_delay(quick_deaths: int) -> float:
    """Seconds before a worker restarts after its ``quick_deaths``-th death in a row (1 or more) that came
    before it served or within ``_STABLE_AFTER`` seconds of it: 0.5, 1, 2, 4, ... at most 30."""
    return float(min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** min(quick_deaths - 1, 16)))


class _ReadyPipe:
    """A worker's end of its ready pipe: ``send(None)`` once it serves (logged), or ``(kind, line)``."""

    def __init__(self, pipe: Any, index: int) -> None:
        self._pipe = pipe
        self._index = index

    def send(self, message: tuple[str, str] | None) -> None:
        if message is None:
            log.info("worker %d serving (pid %d)", self._index, os.getpid())
        self._pipe.send(message)


def _worker_entry(target: Callable[..., None], args: Any, table: SharedTable, index: int, ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    target(args, WorkerTable(table, index), _ReadyPipe(ready, index))


@dataclass
class _Worker:
    """One worker index: its process (None while a replacement waits for its backoff) and its record."""

    index: int
    process: Any = None
    ready: Any = None  # the supervisor's end of the process's ready pipe
    serving_since: float | None = None
    error: tuple[str, str] | None = None  # (kind, line) the process sent before it exited
    quick_deaths: int = 0  # deaths in a row, each before the worker served or soon after
    start_failures: int = 0  # deaths in a row before serving
    restart_at: float = 0.0

    @property
    def name(self) -> str:
        return f"rvm-node-worker-{self.index}"

    def read(self, now: float) -> None:
        """Take what the process sent: that it serves, or its error line."""
        while self.ready is not None and self.ready.poll():
            try:
                message = self.ready.recv()
            except (EOFError, OSError):  # the process has gone
                self.ready.close()
                self.ready = None
                return
            if message is None:
                self.serving_since = now
                self.start_failures = 0
            else:
                kind, line = message
                self.error = (str(kind), str(line))


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"exited with {code} (killed by {signal.Signals(-code).name})"
    return f"exited with {code}"


def _error_of(kind: str, line: str) -> RvmNodeError:
    """A worker's error line, raised in the supervisor as the same kind (and so the same exit code)."""
    return InvalidInputError(line) if kind == "input" else BackendError(line)


class Supervisor:
    """Runs ``target(args, streams, ready)`` in ``count`` worker processes and keeps them alive.

    Each worker calls ``ready.send(None)`` once it serves, or sends
    ``("input" | "backend", line)`` and exits. ``env`` is added to the
    environment the workers start with (prometheus_client reads
    ``PROMETHEUS_MULTIPROC_DIR`` at import); the gauges of a worker that dies
    are marked dead in that folder.
    """

    def __init__(
        self, target: Callable[..., None], args: Any, count: int, env: dict[str, str] | None = None
    ) -> None:
        self._target = target
        self._args = args
        self._env = dict(env or {})
        self._table = SharedTable.create(count, _CONTEXT)
        self._workers = [_Worker(index) for index in range(count)]
        self._stop = 0
        self._restarts = [0] * count  # replacements started, per worker index

    def restart_counts(self) -> list[int]:
        """Replacements started so far, per worker index (read by the metrics thread)."""
        return list(self._restarts)

    def run(self, grace: float, on_ready: Callable[[], None]) -> int:
        """Serve until SIGTERM or SIGINT, then drain; returns 0 when every worker exited cleanly.

        ``on_ready`` runs once every worker serves. A worker that cannot start the first time, or that keeps
        dying before it serves, raises its error here (after the others drained, in the second case).
        """

        def request_stop(signum: int, _frame: Any) -> None:
            self._stop = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self._workers:
                self._start(worker)
            self._wait_ready()
            if not self._stop:
                on_ready()
            failure = None
            while not self._stop and failure is None:
                failure = self._watch()
            log.info("draining %d workers, grace %.0f s", len(self._workers), grace)
            drained = self._drain(grace)
            if failure is not None:
                raise failure
            return drained
        finally:
            for worker in self._workers:
                if worker.process is not None and worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(5)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, worker: _Worker) -> None:
        receiver, sender = _CONTEXT.Pipe(duplex=False)
        process = _CONTEXT.Process(
            target=_worker_entry,
            args=(self._target, self._args, self._table, worker.index, sender),
            name=worker.name,
        )
        saved = {name: os.environ.get(name) for name in self._env}
        os.environ.update(self._env)
        try:
            process.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        sender.close()  # the process holds its own end: the pipe reads as closed once it exits
        worker.process, worker.ready, worker.serving_since, worker.error = process, receiver, None, None

    def _wait_ready(self) -> None:
        """The first start: every worker serves, or the first that fails stops the node with its line."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._stop and any(w.serving_since is None for w in self._workers):
            for worker in self._workers:
                worker.read(time.monotonic())
                if worker.error is not None:
                    raise _error_of(*worker.error)
                if worker.serving_since is None and not worker.process.is_alive():
                    worker.read(time.monotonic())  # a line sent just before it exited
                    if worker.error is not None:
                        raise _error_of(*worker.error)
                    raise BackendError(f"{worker.name} {_exit_text(worker.process.exitcode)} before serving")
            if time.monotonic() > deadline:
                raise BackendError(f"workers not serving after {_READY_TIMEOUT:.0f} s")
            self._wait(_POLL)

    def _wait(self, timeout: float) -> None:
        """Until a worker sends or exits, or ``timeout`` seconds (a stop signal is seen after the timeout)."""
        handles = [w.process.sentinel for w in self._workers if w.process is not None]
        handles += [w.ready for w in self._workers if w.ready is not None]
        multiprocessing.connection.wait(handles, timeout)

    def _watch(self) -> RvmNodeError | None:
        """One look at the workers: replace the dead, start those whose backoff is over."""
        now = time.monotonic()
        for worker in self._workers:
            if worker.process is None:
                if now >= worker.restart_at:
                    self._restarts[worker.index] += 1
                    self._start(worker)
                continue
            worker.read(now)
            if not worker.process.is_alive():
                failure = self._bury(worker, now)
                if failure is not None:
                    return failure
        waiting = [w.restart_at - now for w in self._workers if w.process is None]
        self._wait(max(0.0, min([_POLL, *waiting])))
        return None

    def _bury(self, worker: _Worker, now: float) -> RvmNodeError | None:
        """A worker died: forget its streams and gauges, then schedule its replacement (or stop the node)."""
        process = worker.process
        process.join()
        worker.read(now)  # a line it sent just before it exited
        code, pid = process.exitcode, process.pid
        process.close()
        if worker.ready is not None:
            worker.ready.close()
        worker.process, worker.ready = None, None
        self._table.forget(worker.index)
        folder = self._env.get("PROMETHEUS_MULTIPROC_DIR")
        if folder is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, folder)
        served = worker.serving_since is not None
        stable = served and now - (worker.serving_since or now) >= _STABLE_AFTER
        worker.quick_deaths = 1 if stable else worker.quick_deaths + 1
        how = _exit_text(code) + ("" if served else " before serving")
        if worker.error is not None:
            how += f" ({worker.error[1]})"
        if not served:
            worker.start_failures += 1
        if worker.start_failures >= _START_FAILURES:
            log.error("%s %s; it failed %d times in a row, the node stops", worker.name, how, _START_FAILURES)
            if worker.error is not None:  # its own line first: a setting's name becomes its flag
                kind, line = worker.error
                return _error_of(
                    kind, f"{line} ({worker.name} failed to start {_START_FAILURES} times in a row)"
                )
            return BackendError(
                f"{worker.name} failed to start {_START_FAILURES} times in a row; the last time it {_exit_text(code)}"
            )
        delay = restart_delay(worker.quick_deaths)
        worker.restart_at = now + delay
        log.warning(
            "%s %s; restarting it in %.1f s (restart %d)",
            worker.name,
            how,
            delay,
            self._restarts[worker.index] + 1,
        )
        return None

    def _drain(self, grace: float) -> int:
        running = [w for w in self._workers if w.process is not None]
        for worker in running:
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 10
        failed = 0
        for worker in running:
            worker.process.join(max(0.1, deadline - time.monotonic()))
            code = worker.process.exitcode
            if code == -signal.SIGTERM and worker.serving_since is None:
                continue  # stopped while it started: nothing to drain
            if code != 0:
                log.error("%s %s while draining", worker.name, _exit_text(code))
                failed += 1
        return 1 if failed else 0


def serve_workers(
    target: Callable[..., None],
    worker_args: Callable[[int], Any],
    *,
    host: str,
    port: int,
    count: int,
    grace: float,
    metrics_port: int | None,
    on_ready: Callable[[int, int | None], None],
) -> int:
    """A node of ``count`` workers on ``host:port`` (0: a free port) until SIGTERM or SIGINT.

    Each worker runs ``target(worker_args(bound_port), streams, ready)``.
    With ``metrics_port`` the supervisor serves the workers' summed metrics
    and its restart counter there. ``on_ready(port, metrics_port)`` runs once
    every worker serves, with the bound ports. Returns :meth:`Supervisor.run`'s code.
    """
    import tempfile

    from rvm_node.node.metrics import serve_multiprocess

    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        bound = stack.enter_context(reserve_port(host, port))
        if metrics_port is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="rvm-node-metrics-")
            )
        supervisor = Supervisor(target, worker_args(bound), count, env)

        def ready() -> None:
            served = None
            if metrics_port is not None:
                server = serve_multiprocess(
                    env["PROMETHEUS_MULTIPROC_DIR"], metrics_port, host, supervisor.restart_counts
                )
                stack.callback(server.close)
                served = server.port
            on_ready(bound, served)

        return supervisor.run(grace, ready)
