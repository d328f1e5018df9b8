"""``rvm-node serve``'s settings: one typed definition (:class:`ServeSettings`), layered once from
defaults, the ``--config`` file, ``RVM_NODE_*`` and flags, then resolved."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from rvm_node.cli import common
from rvm_node.cli.settings import layer, setting, settings_of
from rvm_node.engine.backend import BACKENDS, PRECISIONS
from rvm_node.engine.states import VARIANTS
from rvm_node.errors import InvalidInputError
from rvm_node.v1 import DEFAULT_PORT

__all__ = ["SETTINGS", "ServeSettings", "layer_settings", "resolve"]


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``rvm-node serve`` is told, typed: the one definition of its options. Each field is also
    ``--FIELD`` (dashes), ``RVM_NODE_FIELD`` and ``FIELD`` in the config file's ``[node]`` table."""

    host: str = setting("127.0.0.1", "address to bind; 0.0.0.0 serves the network")
    port: int = setting(DEFAULT_PORT, "port to serve on; 0 picks a free one (printed on stdout)")
    device: str = setting(
        "cpu", "device the model runs on: cpu, cuda, cuda:N, or auto (cuda where rvm-node[gpu] can use one)"
    )
    backend: str = setting(
        "auto",
        "engine that runs the model; auto: the fastest one that matches the official model here (OpenVINO on a "
        "CPU where it is installed, else onnxruntime)",
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
        "on",
        "shared-memory streams for clients on this host: rings handed over as descriptors on the node's own "
        "Unix sockets (Linux)",
        choices=("on", "off"),
    )
    shm_budget: str | None = setting(
        None,
        "the most shared memory the node maps for streams' rings at once, over all its workers, such as 8G or "
        "512M; none: a quarter of this host's memory",
        metavar="SIZE",
    )
    max_ring_slots: int = setting(
        64, "the most slots (frames in flight) a stream's shared-memory ring may have"
    )
    unix: Path | None = setting(
        None,
        "also serve on this Unix domain socket (clients: --node unix:///PATH); owner-only, or the --unix-group's; "
        "removed as the node stops serving (a killed node's is replaced by the next)",
    )
    unix_group: str | None = setting(
        None,
        "a group whose members may use the --unix socket too (mode 0660); shared memory needs no group",
        old_name="shm_group",
    )
    exit_with_pid: int | None = setting(
        None, "stop (draining) once process PID has exited: a node private to one application", metavar="PID"
    )
    exit_when_idle: float | None = setting(
        None, "stop once no stream has been open for SECONDS", metavar="SECONDS"
    )
    lock_file: Path | None = setting(
        None,
        "hold an exclusive lock on this file while the node runs; a node given a file that another holds "
        "refuses to start (one node per file; how a private node is known to be alive). Removed when the node "
        "exits (a killed node's is taken over by the next): a node that locks it checks that the path still "
        "names the file it locked, so one removed under it is never taken",
    )
    private_folder: Path | None = setting(
        None,
        "a folder of this node's alone, holding its --lock-file (and its socket, token, log): the node removes "
        "it, with everything in it, when it exits, on an error too; a killed node leaves it (the plugins' "
        "private node: removed at the next start)",
    )
    metrics_port: int | None = setting(None, "serve Prometheus metrics on this port")
    log_format: str = setting("text", "log lines as text or JSON objects", choices=("text", "json"))

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise InvalidInputError(f"{name}: expected a port from 0 to 65535, got {value}")


SETTINGS = settings_of(ServeSettings)


def layer_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """The settings from their layers: defaults, then --config (or RVM_NODE_CONFIG), then RVM_NODE_*, then
    flags. Nothing is resolved yet (see :func:`resolve`)."""
    config = args.config if args.config is not None else environ.get("RVM_NODE_CONFIG") or None
    return ServeSettings(**layer(SETTINGS, args, environ, None if config is None else Path(config)))


def resolve(settings: ServeSettings) -> ServeSettings:
    """Derived values, once every layer is in: ``device = "auto"`` becomes a device, then ``backend = "auto"``
    a backend for it."""
    device = common.resolved_device(settings.device)
    return replace(settings, device=device, backend=common.resolved_backend(settings.backend, device))
