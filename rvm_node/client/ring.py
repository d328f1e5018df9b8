"""The client's side of a shared-memory ring (``transport="shm"``): its memory, its hand-over, its slots.

The ring is a memfd the client creates, sealed against shrinking and
growing (and against further seals), and maps. The client hands it to one
worker of the node as a descriptor (:mod:`rvm_node.v1.handover`) over that
worker's ring socket, after checking that the socket's peer is the worker
process the node named; it keeps that connection open while it uses the
ring, and the node's handle for the ring lives as long as the connection.
Nothing ever has a name in a file system, so nothing is left behind
however the client ends.

A stream uses the ring's slots (:class:`~rvm_node.v1.protocol.SlotLayout`)
one frame each: :meth:`ClientRing.place` puts a chunk's frames in free slots
and gives their references; the planes the node writes after each frame are
read back with :meth:`ClientRing.plane`, and :meth:`ClientRing.answered`
frees the oldest frame's slot. A reader thread may decode a chunk's frames
straight into a block of adjacent free slots the ring lends it
(:meth:`ClientRing.lend`, the converter's :class:`~rvm_node.engine.backend.FrameMemory`);
:meth:`ClientRing.chunk_of` then gives the chunk in place.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from rvm_node.engine.samples import holds_samples
from rvm_node.errors import InvalidInputError, NodeProtocolError, NodeRejectedError, NodeUnavailableError
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.handover import frame, message_length, parse, ring_seals
from rvm_node.v1.protocol import SlotLayout, rings_supported

__all__ = ["NOT_ON_THIS_HOST", "ClientRing"]

NOT_ON_THIS_HOST = "NOT_ON_THIS_HOST"  # the reason of a ring socket this host does not have
_PEER = struct.Struct("3i")  # struct ucred: pid, uid, gid
_HAND_OVER_TIMEOUT = 10.0


class ClientRing:
    """``slots`` slots of ``layout`` in a sealed memfd; used by one stream at a time."""

    def __init__(self, layout: SlotLayout, slots: int) -> None:
        if slots < 1:
            raise InvalidInputError(f"ring_slots: expected 1 or more, got {slots}")
        if not rings_supported():
            raise InvalidInputError(
                "shared-memory rings: this host has no memfds handed over on Unix sockets"
            )
        self.layout = layout
        self.slots = slots
        self.size = slots * layout.slot_bytes
        self.handle = b""  # the node's name for the ring, once handed over
        self.endpoint = ""  # the ring socket it was handed over on
        self._connection: socket.socket | None = None
        self._map: mmap.mmap | None = None
        self._fd = os.memfd_create("rvm-node-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self._fd, self.size)
            fcntl, required, _ = ring_seals()
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, required | fcntl.F_SEAL_SEAL)
            self._map = mmap.mmap(self._fd, self.size)
        except BaseException:
            self.close()
            raise
        self._base = np.frombuffer(self._map, np.uint8, 1).ctypes.data  # the address slots are found by
        self._change = threading.Condition()  # guards the slots against a reader thread
        self._free: deque[int] = deque()
        self._in_flight: deque[int] = deque()  # the slot of each frame sent and not yet answered
        self._lent: set[int] = set()  # the block lent to a reader, not yet sent
        self._block = 0  # the most slots a lent block may have (0: no lending)
        self._frame_shape: tuple[int, ...] = ()
        self._dtype = np.dtype(np.uint8)
        self._in_use = False
        self.frames_in_place = 0  # frames sent from the slot a reader decoded them into

    # -- the hand-over --------------------------------------------------------------------------------

    def hand_over(self, ring_socket: str, token: str | None, worker_pid: int) -> None:
        """Give the ring to the worker whose ring socket is ``ring_socket`` (an abstract name), after
        checking that the process on the other end is ``worker_pid``; keep the connection open."""
        where = f"ring socket {ring_socket}"
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        connection.settimeout(_HAND_OVER_TIMEOUT)
        try:
            try:
                connection.connect("\0" + ring_socket)
            except (
                ConnectionRefusedError,
                FileNotFoundError,
            ) as exc:  # not in this host's abstract namespace
                raise NodeUnavailableError(
                    f"{where}: not on this host ({exc.strerror})", reason=NOT_ON_THIS_HOST
                ) from None
            pid, _, _ = _PEER.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))
            if pid != worker_pid:
                raise NodeProtocolError(
                    f"{where}: served by process {pid}, not the node's worker {worker_pid}; "
                    "no memory is handed over"
                )
            socket.send_fds(connection, [frame(pb.RingOffer(token=token or ""))], [self._fd])
            receipt = parse(_receive_message(connection, where), pb.RingReceipt(), where)
        except OSError as exc:
            connection.close()
            raise NodeUnavailableError(
                f"{where}: cannot hand the ring over ({exc.strerror or exc})"
            ) from None
        except InvalidInputError as exc:
            connection.close()
            raise NodeProtocolError(str(exc)) from None
        except BaseException:
            connection.close()
            raise
        if not receipt.handle:
            connection.close()
            raise NodeRejectedError(f"{where}: {receipt.message}", reason=receipt.reason)
        connection.setblocking(False)
        self._connection, self.handle, self.endpoint = connection, bytes(receipt.handle), ring_socket

    @property
    def handed_over(self) -> bool:
        """True while the node holds the ring: handed over, and the connection that did it still open."""
        connection = self._connection
        if connection is None or self._map is None:
            return False
        try:
            return connection.recv(1, socket.MSG_PEEK) != b""  # the node never sends after its receipt
        except BlockingIOError:
            return True
        except OSError:
            return False

    def message(self) -> pb.SharedMemoryRing:
        return pb.SharedMemoryRing(handle=self.handle, slots=self.slots, slot_bytes=self.layout.slot_bytes)

    def fits(self, layout: SlotLayout, slots: int, ring_socket: str) -> bool:
        """Whether a stream of ``layout`` and ``slots`` on the worker at ``ring_socket`` can use this ring."""
        return (self.layout, self.slots, self.endpoint) == (layout, slots, ring_socket) and self.handed_over

    # -- a stream's use of the slots ---------------------------------------------------------------------

    def start(self, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        """A stream of ``HxWx3`` frames of ``dtype`` starts using the ring: every slot is free."""
        with self._change:
            self._free = deque(range(self.slots))
            self._in_flight.clear()
            self._lent.clear()
            self._block = 0
            self._frame_shape, self._dtype = tuple(frame_shape), np.dtype(dtype)
            self._in_use = True
            self.frames_in_place = 0

    def stop(self) -> bool:
        """The stream is over: a reader waiting for slots gets none. True when every frame was answered
        (the node writes nothing more into the ring, so another stream may use it)."""
        with self._change:
            self._in_use = False
            self._lent.clear()
            self._change.notify_all()
            return not self._in_flight

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def allow_lending(self, block: int) -> None:
        """Let :meth:`lend` lend blocks of up to ``block`` adjacent slots, one at a time; at most half
        the ring, so the frames sent before a lent block always find slots."""
        with self._change:
            self._block = max(0, min(block, self.slots // 2))

    def lend(self, count: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
        """``count`` adjacent free slots as one ``[count, H, W, 3]`` array of the stream's samples, for a
        reader thread to decode one chunk's frames into. Waits while the last block lent is not yet sent
        or no such slots are free. None where lending is off, for frames of another shape or kind of
        sample, or once the stream is over. Safe from one thread besides the stream's own."""
        if tuple(shape) != self._frame_shape or not 0 < count <= self._block:
            return None
        if not holds_samples(self._dtype, dtype):
            return None
        with self._change:
            while self._in_use and (self._lent or self._free_block(count) is None):
                self._change.wait(0.5)
            first = self._free_block(count)
            if not self._in_use or first is None:
                return None
            for slot in range(first, first + count):
                self._free.remove(slot)
                self._lent.add(slot)
        return self._frames(first, count)

    def reader_waits(self) -> bool:
        """True while a reader of lent blocks has none and none is free for it."""
        with self._change:
            return bool(self._block) and not self._lent and self._free_block(self._block) is None

    def chunk_of(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The chunk ``[T, 3, H, W]`` over ``frames``: in place where they are the lent block's slots in
        order; otherwise a copy. A block some of the frames were decoded into is then given back (the
        reader is done with it); a block lent for a later chunk stays with the reader."""
        slots = [self._lent_slot(f) for f in frames]
        first = slots[0] if slots else None
        if first is not None and slots == list(range(first, first + len(frames))):
            return self._frames(first, len(frames)).transpose(0, 3, 1, 2)
        chunk = np.stack(frames).transpose(0, 3, 1, 2)
        if any(s is not None for s in slots):
            with self._change:
                self._give_back_lent()
        return chunk

    def slots_needed(self, frames: Sequence[np.ndarray]) -> int:
        """The free slots a chunk of ``frames`` takes: one for each frame not in a lent slot."""
        return sum(self._lent_slot(f) is None for f in frames)

    def place(self, frames: Sequence[np.ndarray]) -> list[pb.SlotRef]:
        """Put a chunk's frames in slots, marked in flight: frames in the lent block stay where they are,
        the others are copied into free slots. Their references, in order."""
        with self._change:
            lent: list[int | None] = []
            for f in frames:
                slot = self._lent_slot(f)
                lent.append(None if slot in lent else slot)  # a frame sent twice is copied the second time
            if lent.count(None) > len(self._free):
                raise InvalidInputError(
                    f"a chunk of {len(frames)} frames needs as many ring slots; the ring has "
                    f"{self.slots} (ring_slots)"
                )
            copied = iter(self._take(lent.count(None)))
            slots = [next(copied) if s is None else s for s in lent]
            if any(s is not None for s in lent):
                self._lent.difference_update(slots)
                self._give_back_lent()  # slots no frame used (a short last chunk)
        refs = []
        for f, slot, in_place in zip(frames, slots, lent, strict=True):
            offset = self.layout.frame_at(slot)
            if in_place is None:
                np.copyto(self._view(offset, self._dtype, self._frame_shape), f, casting="unsafe")
            else:
                self.frames_in_place += 1
            self._in_flight.append(slot)
            refs.append(pb.SlotRef(slot=slot, offset=offset, size=self.layout.frame_bytes))
        return refs

    def plane(
        self, number: int, index: int, ref: pb.SlotRef, shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        """A copy of the ``index``-th plane the node wrote for the oldest frame in flight, after checking
        that ``ref`` is exactly where the layout puts it."""
        if not self._in_flight:
            raise NodeProtocolError(f"frame {number}: a plane arrived for no frame in flight")
        slot = self._in_flight[0]
        offset, size = self.layout.plane_at(slot, index), self.layout.plane_bytes[index]
        if (ref.slot, ref.offset, ref.size) != (slot, offset, size):
            raise NodeProtocolError(
                f"frame {number}: plane at slot {ref.slot}, offset {ref.offset}, {ref.size} bytes; expected "
                f"slot {slot}, offset {offset}, {size} bytes"
            )
        return self._view(offset, dtype, shape).copy()

    def answered(self) -> None:
        """Every plane of the oldest frame in flight has arrived: its slot is free again."""
        with self._change:
            self._free.append(self._in_flight.popleft())
            self._change.notify_all()

    def close(self) -> None:
        """Let go of the ring: the node's handle goes with the connection, the memory with the last user."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.handle = b""
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a frame still views it: unmapped when that is gone
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- inside ------------------------------------------------------------------------------------------

    def _view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if self._map is None:
            raise InvalidInputError("shared-memory ring: already closed")
        return np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)

    def _frames(self, first: int, count: int) -> np.ndarray:
        """``count`` frames from ``first`` on, as one ``[count, H, W, 3]`` array over their slots."""
        frame_view = self._view(self.layout.frame_at(first), self._dtype, self._frame_shape)
        return np.lib.stride_tricks.as_strided(
            frame_view, (count, *self._frame_shape), (self.layout.slot_bytes, *frame_view.strides)
        )

    def _lent_slot(self, frame_array: np.ndarray) -> int | None:
        """The lent slot ``frame_array`` views from its start (as :meth:`lend` gave it); else None."""
        if self._map is None or not frame_array.flags.c_contiguous or frame_array.dtype != self._dtype:
            return None
        offset = frame_array.__array_interface__["data"][0] - self._base
        if not 0 <= offset < self.size or offset % self.layout.slot_bytes:
            return None
        slot = offset // self.layout.slot_bytes
        return slot if slot in self._lent and frame_array.nbytes == self.layout.frame_bytes else None

    def _free_block(self, count: int) -> int | None:
        """The first slot of ``count`` free adjacent slots starting at a multiple of ``count``, if any."""
        if count < 1:
            return None
        free = set(self._free)
        for first in range(0, self.slots - count + 1, count):
            if free.issuperset(range(first, first + count)):
                return first
        return None

    def _take(self, count: int) -> list[int]:
        """``count`` free slots for frames copied in: a block where one is free, so blocks stay whole."""
        first = self._free_block(count) if count > 1 else None
        if first is None:
            return [self._free.popleft() for _ in range(count)]
        for slot in range(first, first + count):
            self._free.remove(slot)
        return list(range(first, first + count))

    def _give_back_lent(self) -> None:
        """The lent block's slots not sent go back to the free ones (the caller holds the lock)."""
        self._free.extend(sorted(self._lent))
        self._lent.clear()
        self._change.notify_all()


def _receive_message(connection: socket.socket, where: str) -> bytes:
    """One framed message from ``connection``."""
    data = b""
    while True:
        needed = message_length(data)
        if needed is not None and len(data) >= needed:
            return data
        piece = connection.recv(4096)
        if not piece:
            raise InvalidInputError(f"{where}: the node closed the connection before its receipt")
        data += piece
