"""Shared memory with a node on this host: its local endpoints, the rings handed over to them, spare rings.

A node that takes shared memory names one local endpoint per worker in
GetNodeInfo: a gRPC socket and a ring socket in Linux's abstract namespace,
and the worker's process id. The client reaches them only if it runs on the
node's host (the abstract namespace is the host's, per network namespace);
it checks that the endpoint answers with the node's own ``node_id``, hands
its ring over on the ring socket only to the process the node named
(``SO_PEERCRED``), and opens the stream on that endpoint. Streams take the
endpoints in turn, so they spread over the workers.

A ring of a stream that ended cleanly is kept for the next stream of the
same layout on the same worker (its pages are already there, on both
sides); a cancelled stream's ring is never reused, as the node may still
write into it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from rvm_node.client.ring import NOT_ON_THIS_HOST, ClientRing
from rvm_node.errors import InvalidInputError, NodeError, NodeProtocolError, NodeUnavailableError
from rvm_node.v1.protocol import SlotLayout, rings_supported

__all__ = ["Endpoint", "LocalRings", "NoSharedMemory"]

log = logging.getLogger("rvm_node.client")
_SPARE_RINGS = 4  # enough for the streams a client runs at once, within:
_SPARE_BYTES = 512 << 20


@dataclass(frozen=True)
class Endpoint:
    """One worker's local endpoint, as GetNodeInfo names it."""

    address: str
    ring_socket: str
    pid: int


class NoSharedMemory(Exception):
    """Why a stream cannot use shared memory here. ``remote``: the node is not on this host at all;
    ``stale``: the node's description may be out of date (a worker was replaced), worth asking again."""

    def __init__(self, why: str, remote: bool = False, stale: bool = False) -> None:
        super().__init__(why)
        self.remote = remote
        self.stale = stale


class LocalRings:
    """The shared-memory side of one client: endpoints verified, rings handed over and kept.

    ``make_channel(target)``: a channel to a local endpoint, with the client's
    credentials. ``info(channel)``: GetNodeInfo over ``channel`` (node_id and
    endpoints). ``token``: the node's bearer token, which a hand-over carries.
    """

    def __init__(
        self,
        address: str,
        make_channel: Callable[[str], grpc.Channel] | None,
        method_of: Callable[[grpc.Channel], Any],
        token: str | None,
    ) -> None:
        self._address = address
        self._make_channel = make_channel
        self._method_of = method_of
        self._token = token
        self._channels: dict[str, tuple[grpc.Channel, Any]] = {}  # verified endpoints: their Matte method
        self._spares: list[ClientRing] = []
        self._turn = 0
        self._lock = threading.Lock()  # streams of one client may open from several threads
        self._reached = False  # some local endpoint of the node answered: it is on this host
        self.remote = False  # a node this host cannot reach locally: raw from now on

    def ring_for(
        self,
        node_id: str,
        endpoints: tuple[Endpoint, ...],
        layout: SlotLayout,
        slots: int,
        node_id_of: Callable[[grpc.Channel], str],
    ) -> tuple[ClientRing, Any]:
        """A ring handed over to the next worker's endpoint, and that endpoint's Matte method; raises
        :class:`NoSharedMemory` saying why not."""
        if not rings_supported():
            raise NoSharedMemory("this host has no shared-memory rings (Linux has them)", remote=True)
        if self.remote:
            raise NoSharedMemory(f"node {self._address} is not on this host", remote=True)
        if self._make_channel is None:
            raise NoSharedMemory("the client was given its own channel, which reaches no local endpoint")
        if not endpoints:
            raise NoSharedMemory(f"node {self._address} takes no shared memory (serve --shm off)")
        with self._lock:
            endpoint = endpoints[self._turn % len(endpoints)]
            self._turn += 1
            ring = self._spare(layout, slots, endpoint.ring_socket)
        try:
            if ring is None:
                ring = ClientRing(layout, slots)
                ring.hand_over(endpoint.ring_socket, self._token, endpoint.pid)
            method = self._method(endpoint, node_id, node_id_of)
        except NodeUnavailableError as exc:
            if ring is not None:
                ring.close()
            if exc.reason == NOT_ON_THIS_HOST and not self._reached:
                self.remote = True
                raise NoSharedMemory(f"node {self._address} is not on this host", remote=True) from None
            raise NoSharedMemory(str(exc), stale=exc.reason == NOT_ON_THIS_HOST) from None
        except NodeProtocolError as exc:  # the ring socket's peer is not the worker named: replaced?
            if ring is not None:
                ring.close()
            raise NoSharedMemory(str(exc), stale=True) from None
        except (NodeError, InvalidInputError, OSError) as exc:
            if ring is not None:
                ring.close()
            raise NoSharedMemory(str(exc)) from None
        except NoSharedMemory:
            if ring is not None:
                ring.close()
            raise
        self._reached = True
        return ring, method

    def _method(self, endpoint: Endpoint, node_id: str, node_id_of: Callable[[grpc.Channel], str]) -> Any:
        """The Matte method of ``endpoint``, once its node is known to be ours."""
        with self._lock:
            known = self._channels.get(endpoint.address)
        if known is not None:
            return known[1]
        if self._make_channel is None:
            raise NoSharedMemory("no local channel")
        channel = self._make_channel(endpoint.address)
        try:
            answered = node_id_of(channel)
        except NodeError:
            channel.close()
            raise
        if answered != node_id:
            channel.close()
            raise NoSharedMemory(
                f"the local endpoint {endpoint.address} answers as node {answered or '?'}, not {node_id}",
                stale=True,
            )
        with self._lock:
            known = self._channels.setdefault(endpoint.address, (channel, self._method_of(channel)))
        if known[0] is not channel:  # another thread verified it meanwhile
            channel.close()
        return known[1]

    def _spare(self, layout: SlotLayout, slots: int, ring_socket: str) -> ClientRing | None:
        """A kept ring for this stream (the caller holds the lock)."""
        for ring in self._spares:
            if ring.fits(layout, slots, ring_socket):
                self._spares.remove(ring)
                return ring
        return None

    def done(self, ring: ClientRing, clean: bool) -> None:
        """A stream is done with ``ring``: kept for the next one when every reply arrived, else closed."""
        if not clean or not ring.handed_over:
            ring.close()
            return
        with self._lock:
            self._spares.append(ring)
            while len(self._spares) > _SPARE_RINGS or sum(r.size for r in self._spares) > _SPARE_BYTES:
                self._spares.pop(0).close()  # the oldest goes: shots of a new size replace it

    def close(self) -> None:
        with self._lock:
            spares, self._spares = self._spares, []
            channels, self._channels = list(self._channels.values()), {}
        for ring in spares:
            ring.close()
        for channel, _ in channels:
            channel.close()
