"""The render node server: one model per device, gRPC aio, health, reflection, auth, TLS."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rvm_node.engine.backend import MattingBackend
from rvm_node.errors import InvalidInputError
from rvm_node.node.handover import RingDesk
from rvm_node.node.limits import Limits, ShmPolicy
from rvm_node.node.metrics import NodeMetrics
from rvm_node.node.scheduler import BatchPolicy, Scheduler
from rvm_node.node.service import MattingServicer, add_matting_service, endpoint_names
from rvm_node.node.stages import StageClock
from rvm_node.node.status import abort, failure
from rvm_node.node.table import NodeTable
from rvm_node.processes import on_stop_signals, process_exists
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import rings_supported

__all__ = ["NodeServer", "StopWhen", "TlsFiles", "TokenAuthInterceptor", "serve_forever", "start_node"]

log = logging.getLogger("rvm_node.node")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MattingService"].full_name
_EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_PASS_WAIT = 60.0  # seconds a drain waits for the forward pass under way
# The node pings a silent client every 30 s (a client that vanished frees its place among the streams), and
# permits the clients' own keepalive pings (every 20 s, rvm_node.client.node_client) at any time.
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """Server certificate and key; ``client_ca`` turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def load(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, certificate chain, client CA) as PEM, each file checked first: one line naming the file
        that is missing, unreadable or not what it should be (gRPC itself would only fail to bind)."""
        import ssl

        for where, path in (
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
            ("--tls-client-ca", self.client_ca),
        ):
            if path is not None and not path.is_file():
                raise InvalidInputError(f"{where}: {path} does not exist or is not a file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInputError(
                f"tls_cert/tls_key: {self.cert} and {self.key} are not a PEM certificate chain and its "
                f"private key ({exc.strerror or exc})"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError) as exc:
                raise InvalidInputError(
                    f"tls_client_ca: {self.client_ca} is not a PEM CA certificate ({exc.strerror or exc})"
                ) from None
        return (
            self.key.read_bytes(),
            self.cert.read_bytes(),
            self.client_ca.read_bytes() if self.client_ca is not None else None,
        )


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires ``authorization: Bearer <token>`` on every call except health and reflection."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_EXEMPT):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        return _refusal(handler)


def _refusal(handler: Any) -> Any:
    async def deny(_request: Any, context: Any) -> None:
        await abort(context, failure("TOKEN_INVALID", "missing or wrong bearer token"))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _add_reflection(server: Any, services: tuple[str, ...]) -> None:
    """Server reflection as grpc.reflection.v1alpha and grpc.reflection.v1.

    grpcio-reflection ships only v1alpha; v1 is the same protocol (the same
    messages, field for field) under a new name, so the one servicer answers
    both.
    """
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servicer = reflection.aio.ReflectionServicer((*services, reflection.SERVICE_NAME, _REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        _REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


@dataclass(kw_only=True)
class NodeServer:
    server: Any
    servicer: MattingServicer
    health: Any
    port: int
    address: str
    scheduler: Scheduler
    metrics_port: int | None = None

    async def drain(self, grace: float) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new streams, let running ones finish within ``grace``.

        Streams still running when the grace runs out end with UNAVAILABLE
        ``NODE_DRAINING``, so their clients move them to another node.
        """
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.servicer.active_streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.servicer.end_streams():
            log.info("grace ran out: %d streams ended as NODE_DRAINING", self.servicer.active_streams)
            for _ in range(100):  # their statuses go out
                if not self.servicer.active_streams:
                    break
                await asyncio.sleep(0.02)
        await self.server.stop(1.0)
        # The pass under way finishes before the process goes on to exit: a backend's thread pools torn
        # down under a running pass abort the process ("terminate called without an active exception").
        await loop.run_in_executor(None, self.scheduler.close, _PASS_WAIT)
        if self.servicer.rings is not None:
            await self.servicer.rings.close()
        self.servicer.close()
        if self.scheduler.metrics is not None:
            self.scheduler.metrics.close()


async def start_node(
    backend: MattingBackend[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: Limits | None = None,
    token: str | None = None,
    tls: TlsFiles | None = None,
    metrics_port: int | None = None,
    batch: BatchPolicy | None = None,
    shm: ShmPolicy | None = None,
    unix_socket: Path | None = None,
    unix_group: int | None = None,
    stages: StageClock | None = None,
    streams: NodeTable | None = None,
    collect_metrics: bool = False,
) -> NodeServer:
    """Start a node on ``host:port`` (0 picks a free port) and return it once SERVING.

    ``batch`` defaults to the device's policy (:meth:`BatchPolicy.default_for`).
    ``shm``: shared-memory streams for clients on this host (on by default
    where the host has rings): the worker serves a gRPC socket and a ring
    socket in the abstract namespace, named in GetNodeInfo's local endpoints.
    ``unix_socket``: also serve on this Unix domain socket (owner-only, or
    read/write for ``unix_group``). ``stages``: time the
    serving path's stages (``bench node`` only). ``streams``: the node's
    stream table when this is one of its ``--workers``. ``collect_metrics``:
    keep metrics without serving them (a worker's, served by its supervisor).
    """
    from rvm_node.version import __version__

    limits = (limits or Limits()).check()
    options = [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        *_KEEPALIVE,
    ]
    server = grpc.aio.server(options=options, interceptors=[TokenAuthInterceptor(token)] if token else [])
    described = backend.describe()
    build = {
        "version": __version__,
        **{k: str(described[k]) for k in ("backend", "device", "precision", "variant")},
    }
    metrics = NodeMetrics(build) if metrics_port is not None or collect_metrics else None
    scheduler = Scheduler(backend, metrics, batch or BatchPolicy.default_for(str(backend.device)))
    shm = shm or ShmPolicy()
    streams = streams or NodeTable()
    rings = None
    if shm.enabled and rings_supported():
        rings = RingDesk(token=token, max_bytes=shm.budget_bytes, in_use=streams.ring_in_use)
    servicer = MattingServicer(scheduler, limits, __version__, rings, stages, streams, shm.budget_bytes)
    add_matting_service(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    bind = _binder(server, tls)
    bound = bind(f"{host}:{port}")
    if bound == 0:
        raise InvalidInputError(f"port: cannot bind {host}:{port}")
    if unix_socket is not None:
        _bind_unix(server, unix_socket)
    if (
        rings is not None
    ):  # the local endpoint: the same credentials as the port, so TLS and mTLS hold there too
        grpc_name, ring_name = endpoint_names(streams.node_id, streams.worker)
        if bind(f"unix-abstract:{grpc_name}") == 0:
            raise InvalidInputError(f"shm: cannot bind the local socket @{grpc_name}")
        await rings.start(ring_name)
    await server.start()
    streams.serving()
    if unix_socket is not None:
        _share_unix_socket(unix_socket, unix_group)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_bound = (
        metrics.serve(metrics_port, host) if metrics is not None and metrics_port is not None else None
    )
    host_shown = f"[{host}]" if ":" in host else host
    return NodeServer(
        server=server,
        servicer=servicer,
        health=health_servicer,
        port=bound,
        address=f"{host_shown}:{bound}",
        scheduler=scheduler,
        metrics_port=metrics_bound,
    )


def _binder(server: Any, tls: TlsFiles | None) -> Callable[[str], int]:
    """How ``server`` binds an address: with ``tls``'s credentials where given; 0 where it cannot."""
    credentials = None
    if tls is not None:
        key, chain, client_ca = tls.load()
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    def bind(where: str) -> int:
        try:
            if credentials is None:
                return int(server.add_insecure_port(where))
            return int(server.add_secure_port(where, credentials))
        except RuntimeError:  # gRPC's "Failed to bind": the port is taken, or the address is not this host's
            return 0

    return bind


def _share_unix_socket(path: Path, group: int | None) -> None:
    """The Unix socket owner-only, or read/write for ``group``."""
    os.chmod(path, 0o600 if group is None else 0o660)
    if group is not None:
        os.chown(path, -1, group)


def _bind_unix(server: Any, path: Path) -> None:
    """Serve on a Unix socket at ``path``; a stale socket file (no node behind it) is replaced."""
    import socket
    import stat

    if not hasattr(socket, "AF_UNIX"):
        raise InvalidInputError(f"unix_socket: {path}: this system has no Unix domain sockets (Windows)")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise InvalidInputError(f"unix_socket: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left by a node that died
        else:
            raise InvalidInputError(f"unix_socket: {path} is in use by a running node")
        finally:
            probe.close()
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise InvalidInputError(f"unix_socket: cannot bind {path}")


@dataclass(frozen=True)
class StopWhen:
    """When a node stops by itself (a private node): ``owner_pid`` has exited, or it has served no stream
    for ``idle`` seconds. None: never."""

    owner_pid: int | None = None
    idle: float | None = None

    def __post_init__(self) -> None:
        if self.idle is not None and not self.idle > 0:
            raise InvalidInputError(f"exit_when_idle: expected seconds > 0, got {self.idle}")
        if self.owner_pid is not None and not process_exists(self.owner_pid):
            raise InvalidInputError(f"exit_with_pid: no process {self.owner_pid}")


async def _watch(node: NodeServer, when: StopWhen, stop: asyncio.Event, poll: float = 0.5) -> None:
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    while not stop.is_set():
        await asyncio.sleep(poll)
        if node.servicer.active_streams:
            idle_since = loop.time()
        if when.owner_pid is not None and not process_exists(when.owner_pid):
            log.info("stopping: the process %d this node serves has exited", when.owner_pid)
            stop.set()
        elif when.idle is not None and loop.time() - idle_since >= when.idle:
            log.info("stopping: no stream for %.0f s", when.idle)
            stop.set()


async def serve_forever(
    node: NodeServer, grace: float, on_ready: Callable[[NodeServer], None], stop_when: StopWhen | None = None
) -> None:
    """Serve until SIGTERM or SIGINT (or what ``stop_when`` says), then drain within ``grace`` seconds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    on_stop_signals(loop, stop.set)
    watcher = None if stop_when is None else asyncio.ensure_future(_watch(node, stop_when, stop))
    on_ready(node)
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("draining: %d active streams, grace %.0f s", node.servicer.active_streams, grace)
    await node.drain(grace)
