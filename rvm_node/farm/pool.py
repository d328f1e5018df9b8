"""A pool of render nodes: a static list, a DNS name with several addresses, or a TOML file.

Why not one channel with gRPC's ``round_robin`` policy: the farm must know
which node a shot runs on, to respect each node's own capacity (read from
``GetNodeInfo``), to move a shot away from a node that died, and to resume it
from a state checkpoint on another node. A round-robin channel hides the
backend a stream lands on, so the farm keeps one channel per node instead and
does the placement itself. A ``dns:///NAME:PORT`` target is resolved with the
system resolver (the one gRPC's native DNS resolver uses) into one address
per node, as a headless Service publishes them. Liveness and capacity come
from each node's ``GetNodeInfo`` rather than ``grpc.health.v1``, because one
call answers both "is it up" and "how many streams does it take now".
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rvm_node.client import NodeClient
from rvm_node.client.node_client import DEFAULT_STALL_TIMEOUT
from rvm_node.errors import InvalidInputError, NodeError
from rvm_node.tomlfile import load_toml

__all__ = ["FarmNode", "NodePool", "parse_nodes"]


def _resolve_dns(target: str) -> list[str]:
    """``dns:///name:port`` (or ``dns:name:port``) to one ``ip:port`` per address, like a headless Service."""
    rest = target.split(":", 1)[1].lstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInputError(f"--nodes: expected dns:///NAME:PORT, got {target!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInputError(f"--nodes: cannot resolve {host} ({exc.strerror})") from None
    addresses = []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if address not in addresses:
            addresses.append(address)
    return addresses


def parse_nodes(spec: str) -> list[str]:
    """Node addresses from ``host:port,host:port``, ``dns:///name:port``, or a ``.toml`` file."""
    spec = spec.strip()
    if spec.endswith(".toml"):
        path = Path(spec)
        table = load_toml(path, "the node list")
        nodes = table.get("nodes")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes) or not nodes:
            raise InvalidInputError(f'{path}: expected nodes = ["host:port", ...]')
        return [a for n in nodes for a in parse_nodes(n)]
    addresses: list[str] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item.startswith("dns:"):
            addresses.extend(_resolve_dns(item))
            continue
        if item.startswith("unix:"):  # a node's Unix socket on this host
            addresses.append(item)
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInputError(f"--nodes: expected HOST:PORT, got {item!r}")
        addresses.append(item)
    if not addresses:
        raise InvalidInputError("--nodes: no node given")
    return list(dict.fromkeys(addresses))


@dataclass
class FarmNode:
    address: str
    client: NodeClient
    capacity: int = 0
    running: int = 0
    down_until: float = 0.0
    runs: str = ""  # "backend precision", as the node last said

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until


class NodePool:
    """The nodes, their capacity, and which are up. Thread-safe."""

    def __init__(
        self,
        addresses: list[str],
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        cooldown: float = 10.0,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.nodes = [
            FarmNode(
                a,
                NodeClient(
                    a,
                    token=token,
                    root_certificates=root_certificates,
                    retries=0,
                    stall_timeout=stall_timeout,
                ),
            )
            for a in addresses
        ]
        self.cooldown = cooldown
        self._lock = threading.Condition()

    def refresh(self) -> None:
        """Read every node's capacity; a node that does not answer is marked down for a while."""
        for node in self.nodes:
            try:
                info = node.client.info(timeout=3)
            except NodeError:
                with self._lock:
                    node.down_until = time.monotonic() + self.cooldown
                continue
            with self._lock:
                node.capacity = max(0, info.max_streams - max(0, info.active_streams - node.running))
                node.down_until = 0.0
                node.runs = f"{info.backend} {info.precision}"
                self._lock.notify_all()

    def mixed_backends(self) -> str | None:
        """Where the nodes that answered run different backends or precisions, a line that says which (a
        shot moved between them may differ by a quantisation step); else None."""
        runs = {node.address: node.runs for node in self.nodes if node.runs}
        if len(set(runs.values())) < 2:
            return None
        listed = ", ".join(f"{address}: {what}" for address, what in runs.items())
        return f"the nodes run different backends or precisions ({listed})"

    def acquire(self, avoid: set[str], timeout: float) -> FarmNode | None:
        """An up node with room for another stream (preferring ones not in ``avoid``), or None after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                free = [n for n in self.nodes if n.up and n.running < n.capacity]
                if free:
                    free.sort(key=lambda n: (n.address in avoid, n.running - n.capacity))
                    chosen = free[0]
                    chosen.running += 1
                    return chosen
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(min(remaining, 1.0))
                if not any(n.up and n.capacity for n in self.nodes):
                    self._lock.release()
                    try:
                        self.refresh()  # nodes coming back after their cooldown
                    finally:
                        self._lock.acquire()

    def release(self, node: FarmNode, failed: bool = False) -> None:
        with self._lock:
            node.running -= 1
            if failed:
                node.down_until = time.monotonic() + self.cooldown
                node.capacity = 0
            self._lock.notify_all()

    def all_down(self) -> bool:
        with self._lock:
            return not any(n.up and n.capacity for n in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.client.close()
