"""A worker's ring socket: shared-memory rings handed over as descriptors, each named by a handle.

The node never opens memory by a name a client gives (see
:mod:`rvm_node.v1.handover`). A client connects to the worker's ring socket
(a Unix socket in Linux's abstract namespace, so nothing is left in a file
system), sends a ``RingOffer`` with the ring's descriptor attached, and gets
a ``RingReceipt`` with a 128-bit random handle. The descriptor must be a
memfd open read-write and sealed against shrinking and growing; the node
checks that before it answers, records the memfd's device and inode, and
knows the peer by its credentials (``SO_PEERCRED``), which it logs.

A handle is valid while the connection that handed the ring over stays
open, on this worker only, and for one stream at a time
(:meth:`RingDesk.take`); the same memory (device and inode) is refused for a
second hand-over, and for a second stream anywhere on the node. When the
connection closes (the client let go of the ring, or died) the handle is
withdrawn, and the descriptor is closed as soon as no stream uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from rvm_node.errors import InvalidInputError
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.handover import (
    HANDLE_BYTES,
    MAX_MESSAGE_BYTES,
    RingFile,
    frame,
    inspect_ring_fd,
    message_length,
    parse,
)

__all__ = ["HandedRing", "RingDesk"]

log = logging.getLogger("rvm_node.node")
_PEER = struct.Struct("3i")  # struct ucred: pid, uid, gid
_OFFER_TIMEOUT = 10.0  # seconds a connection may take to make its offer
_FIELD = "open.settings.ring.handle"


@dataclass(eq=False)
class HandedRing:
    """A ring a client handed over: its descriptor, what it is, who gave it, and who uses it."""

    handle: bytes
    fd: int
    file: RingFile
    peer: tuple[int, int, int]  # pid, uid, gid
    stream: str = ""  # the stream that uses it now
    withdrawn: bool = False  # its connection has closed: no stream may take it any more

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RingDesk:
    """One worker's ring socket and the rings handed over on it.

    ``token``: the bearer token the node requires, which an offer must carry.
    ``max_bytes``: the largest ring taken (the node's shared-memory budget).
    ``max_rings``: connections with a ring at once; beyond, offers are refused.
    ``in_use``: whether memory of this (device, inode) serves a stream anywhere on the node (a hand-over of
    it is refused).
    """

    def __init__(
        self,
        *,
        token: str | None,
        max_bytes: int,
        max_rings: int = 256,
        in_use: Callable[[tuple[int, int]], bool] = lambda _key: False,
    ) -> None:
        self._token = (token or "").encode()
        self._max_bytes = max_bytes
        self._max_rings = max_rings
        self._in_use = in_use
        self._rings: dict[bytes, HandedRing] = {}
        self._keys: dict[tuple[int, int], HandedRing] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._server: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.name = ""

    async def start(self, name: str) -> None:
        """Listen on the abstract socket ``name`` (without its leading NUL)."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            server.bind("\0" + name)
        except OSError as exc:
            server.close()
            raise InvalidInputError(f"ring socket @{name}: cannot bind ({exc.strerror})") from None
        server.listen(64)
        server.setblocking(False)
        self._server, self.name = server, name
        self._accepting = asyncio.ensure_future(self._accept(server))

    async def close(self) -> None:
        """Stop taking rings and close every connection (streams still running keep their mappings)."""
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def rings(self) -> int:
        """Rings handed over and not withdrawn."""
        return len(self._rings)

    def take(self, handle: bytes, stream_id: str) -> HandedRing:
        """The ring ``handle`` names, now used by ``stream_id``; RING_INVALID if there is none, or it
        serves another stream."""
        ring = self._rings.get(bytes(handle)) if len(handle) == HANDLE_BYTES else None
        if ring is None:
            raise InvalidInputError(
                f"{_FIELD}: no ring was handed over to this worker with this handle, or the connection "
                "that handed it over has closed; hand the ring over on the worker's ring socket first",
                reason="RING_INVALID",
                field=_FIELD,
            )
        if ring.stream:
            raise InvalidInputError(
                f"{_FIELD}: the ring serves another stream ({ring.stream}); a ring serves one stream at a time",
                reason="RING_INVALID",
                field=_FIELD,
            )
        ring.stream = stream_id
        return ring

    def give_back(self, ring: HandedRing) -> None:
        """The stream using ``ring`` is over: the ring may serve the next stream, or is closed if withdrawn."""
        ring.stream = ""
        if ring.withdrawn:
            ring.close()

    async def _accept(self, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(server)
            task = asyncio.ensure_future(self._serve(connection))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, connection: socket.socket) -> None:
        """One connection: its offer, the receipt, then nothing until it closes (the handle goes with it)."""
        loop = asyncio.get_running_loop()
        ring: HandedRing | None = None
        fds: list[int] = []
        try:
            connection.setblocking(False)
            peer = _PEER.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))
            try:
                data = await asyncio.wait_for(_receive_offer(loop, connection, fds), _OFFER_TIMEOUT)
                ring = self._register(data, fds, peer)
                fds.clear()  # the ring's now
                receipt = pb.RingReceipt(handle=ring.handle)
            except _Refusal as exc:
                log.info("ring refused from process %d (uid %d): %s", peer[0], peer[1], exc)
                receipt = pb.RingReceipt(reason=exc.reason, message=str(exc))
            except asyncio.TimeoutError:
                return
            await loop.sock_sendall(connection, frame(receipt))
            while ring is not None and await loop.sock_recv(connection, 4096):
                pass  # nothing more is expected; the connection's end withdraws the handle
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
            if ring is not None:
                self._withdraw(ring)
            connection.close()

    def _register(self, data: bytes, fds: list[int], peer: tuple[int, int, int]) -> HandedRing:
        if len(fds) != 1:
            raise _Refusal("RING_INVALID", f"ring offer: expected one descriptor, got {len(fds)}")
        try:
            offer = parse(data, pb.RingOffer(), "ring offer")
        except InvalidInputError as exc:
            raise _Refusal("MESSAGE_INVALID", str(exc)) from None
        if self._token and not hmac.compare_digest(offer.token.encode(), self._token):
            raise _Refusal("TOKEN_INVALID", "ring offer: missing or wrong bearer token")
        if len(self._rings) >= self._max_rings:
            raise _Refusal("RING_INVALID", f"ring offer: this worker holds {self._max_rings} rings already")
        try:
            file = inspect_ring_fd(fds[0], "ring offer")
        except InvalidInputError as exc:
            raise _Refusal("RING_INVALID", str(exc)) from None
        if file.size > self._max_bytes:
            raise _Refusal(
                "SHM_BUDGET_EXHAUSTED",
                f"ring offer: the memfd holds {file.size} bytes, beyond the node's shared-memory budget "
                f"of {self._max_bytes}",
            )
        if file.key in self._keys or self._in_use(file.key):
            raise _Refusal("RING_INVALID", "ring offer: this memory was handed over already")
        ring = HandedRing(secrets.token_bytes(HANDLE_BYTES), fds[0], file, peer)
        self._rings[ring.handle] = ring
        self._keys[file.key] = ring
        log.debug("ring of %d bytes handed over by process %d (uid %d)", file.size, peer[0], peer[1])
        return ring

    def _withdraw(self, ring: HandedRing) -> None:
        self._rings.pop(ring.handle, None)
        self._keys.pop(ring.file.key, None)
        ring.withdrawn = True
        if not ring.stream:
            ring.close()


async def _receive_offer(loop: asyncio.AbstractEventLoop, connection: socket.socket, fds: list[int]) -> bytes:
    """One framed message; the descriptors that came with it go into ``fds`` (the caller closes them)."""
    data = b""
    while True:
        needed = message_length(data)
        if needed is not None and (len(data) >= needed or needed > 4 + MAX_MESSAGE_BYTES):
            return data
        await _readable(loop, connection)
        try:
            piece, got, _, _ = socket.recv_fds(connection, 8192, 4)
        except BlockingIOError:
            continue
        fds.extend(got)
        if not piece:
            raise _Refusal("MESSAGE_INVALID", "ring offer: the connection closed before the offer")
        data += piece


async def _readable(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(connection.fileno(), wake)
    try:
        await ready
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(connection.fileno())
