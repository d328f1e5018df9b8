"""The node's side of a shared-memory ring (``TRANSPORT_SHM``): open it safely, read frames, write planes.

A ring is a file the client created on the node's host, named in the
stream's settings. The node opens only two kinds of name, and checks the
file before it uses a byte of it:

* ``/proc/PID/fd/FD``: a memfd sealed against shrinking and growing
  (``F_SEAL_SHRINK | F_SEAL_GROW``). Only the memfd's user (or root) can open
  that path, and the seals guarantee the memory stays as large as declared,
  so the node maps it and reads frames **in place** and writes planes into
  it directly.
* ``/dev/shm/rvm-node-*``: a plain shared-memory file, for a node that runs
  as another user than its clients and shares a group with them. Such a file
  could be truncated while the node uses it, and touching a mapping beyond
  its end kills a process (SIGBUS), so the node never maps it: it reads and
  writes with ``pread``/``pwrite`` (one kernel copy), and a ring that shrank
  ends the stream with a clear error.

Either way the file must belong to the node's user, or to the group the node
names (``serve --shm-group``), and give no access to other users; it must
hold ``slots * slot_bytes`` bytes. Every slot reference is checked against
the ring before any memory is touched (:meth:`NodeRing.check_frame`).
"""

from __future__ import annotations

import asyncio
import gc
import mmap
import os
import re
import stat
from typing import Any

import numpy as np

from rvm_node import filelocks
from rvm_node.errors import InvalidInputError
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import RING_DIRECTORY, RING_PREFIX, wire_bytes

__all__ = ["NodeRing", "open_ring"]

_MEMFD_NAME = re.compile(r"/proc/[0-9]{1,10}/fd/[0-9]{1,10}")
_FILE_NAME = re.compile(re.escape(f"{RING_DIRECTORY}/{RING_PREFIX}") + r"[A-Za-z0-9_-]{8,64}")
_SEALS = 0x0002 | 0x0004  # F_SEAL_SHRINK | F_SEAL_GROW (Linux; memfds exist nowhere else)
_F_GET_SEALS = 1034
_MAX_RING_BYTES = 1 << 40
_FIELD = "open.settings.ring"


def _refuse(message: str, field: str = _FIELD) -> InvalidInputError:
    return InvalidInputError(f"{field}: {message}", reason="RING_INVALID", field=field)


class NodeRing:
    """An open ring: ``slots`` slots of ``slot_bytes``, read in place where it is sealed."""

    def __init__(self, fd: int, slots: int, slot_bytes: int, mapped: mmap.mmap | None) -> None:
        self._fd = fd
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._map = mapped
        self._busy: set[int] = set()

    @property
    def in_place(self) -> bool:
        """True when frames are read where they lie (a sealed memfd)."""
        return self._map is not None

    def check_frame(self, index: int, ref: pb.SlotRef | None, data_bytes: int, frame_bytes: int) -> int:
        """The slot of a frame part, after checking every field against the ring; marks the slot busy."""
        where = f"chunk.parts[{index}].shm"
        if ref is None:
            raise InvalidInputError(
                f"{where}: a shared-memory stream's frames name their slot",
                reason="FRAME_PARTS_INVALID",
                field=where,
            )
        if data_bytes:
            raise InvalidInputError(
                f"chunk.parts[{index}].data: must be empty in a shared-memory stream",
                reason="FRAME_PARTS_INVALID",
                field=f"chunk.parts[{index}].data",
            )
        if ref.slot >= self.slots:
            raise InvalidInputError(
                f"{where}.slot: {ref.slot} is outside the ring's {self.slots} slots",
                reason="FRAME_PARTS_INVALID",
                field=f"{where}.slot",
            )
        start = ref.slot * self.slot_bytes
        if ref.offset != start:
            raise InvalidInputError(
                f"{where}.offset: {ref.offset}, expected {start}, the start of slot {ref.slot}",
                reason="FRAME_PARTS_INVALID",
                field=f"{where}.offset",
            )
        if ref.size != frame_bytes:
            raise InvalidInputError(
                f"{where}.size: {ref.size}, expected the frame's {frame_bytes} bytes",
                reason="FRAME_SIZE_MISMATCH",
                field=f"{where}.size",
            )
        if ref.slot in self._busy:
            raise InvalidInputError(
                f"{where}.slot: slot {ref.slot} still holds a frame in flight",
                reason="FRAME_PARTS_INVALID",
                field=f"{where}.slot",
            )
        self._busy.add(ref.slot)
        return int(ref.slot)

    def release(self, slot: int) -> None:
        """The slot's frame has been answered: the client may reuse it."""
        self._busy.discard(slot)

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Samples at ``offset`` (checked by :meth:`check_frame`): a view of a sealed ring, else a copy."""
        count = int(np.prod(shape))
        if self._map is not None:
            return np.frombuffer(self._map, dtype, count, offset).reshape(shape)
        out = np.empty(shape, dtype)
        got = os.preadv(self._fd, [out.data.cast("B")], offset)
        if got != out.nbytes:
            raise _refuse(f"the ring holds fewer bytes than declared (it shrank at {offset + got})")
        return out

    def write(self, offset: int, values: np.ndarray) -> None:
        """Write a plane's samples at ``offset`` (within a slot checked by :meth:`check_frame`)."""
        if self._map is not None:
            target = np.frombuffer(self._map, values.dtype.newbyteorder("<"), values.size, offset)
            np.copyto(target.reshape(values.shape), values)
            return
        data = wire_bytes(values)
        if os.pwritev(self._fd, [data], offset) != len(data):
            raise _refuse(f"the ring took fewer bytes than written at {offset}")

    def close(self) -> None:
        """Let go of the ring (a mapping is unmapped once no frame views it, see :func:`_unmap`)."""
        mapped, self._map = self._map, None
        if mapped is not None:
            _unmap(mapped)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_UNMAPPED_LATER: list[mmap.mmap] = []


def _unmap(mapped: mmap.mmap) -> None:
    """Unmap a ring as soon as no frame views it any more.

    Frames read in place view the mapping. When a stream ends abruptly (its
    client killed, a pass failed) the ring is let go while the stream's
    failure, and the frames in its traceback, are still being handled; they
    become garbage a moment later, often in reference cycles. So a ring that
    is still viewed is retried on the event loop, with a collection first,
    until it is unmapped: a node never keeps a dead client's memory for long.
    """
    _UNMAPPED_LATER.append(mapped)
    if _close_unviewed():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # not on a node's loop: the next ring closed retries it
    loop.call_later(0.1, _retry, loop, 0.1)


def _retry(loop: asyncio.AbstractEventLoop, delay: float) -> None:
    gc.collect()
    if not _close_unviewed():
        loop.call_later(min(2 * delay, 2.0), _retry, loop, min(2 * delay, 2.0))


def _close_unviewed() -> bool:
    """Close every pending mapping nothing views; True when none is left."""
    for pending in list(_UNMAPPED_LATER):
        try:
            pending.close()
        except BufferError:
            continue
        _UNMAPPED_LATER.remove(pending)
    return not _UNMAPPED_LATER


def _open_fd(name: str) -> tuple[int, bool]:
    """(an fd of the ring, whether it is a memfd), for the two kinds of name a node opens."""
    memfd = _MEMFD_NAME.fullmatch(name) is not None
    if not memfd and _FILE_NAME.fullmatch(name) is None:
        raise _refuse(
            f"{name[:200]!r} is not a ring name; expected /proc/PID/fd/FD of a sealed memfd "
            f"or {RING_DIRECTORY}/{RING_PREFIX}*",
            f"{_FIELD}.name",
        )
    flags = os.O_RDWR | filelocks.OPEN_FLAGS | (0 if memfd else getattr(os, "O_NOFOLLOW", 0))
    try:
        return os.open(name, flags), memfd
    except FileNotFoundError:
        raise _refuse(f"{name} does not exist", f"{_FIELD}.name") from None
    except OSError as exc:
        raise _refuse(
            f"{name} cannot be opened by the node's user ({exc.strerror})", f"{_FIELD}.name"
        ) from None


def _check_owner(info: os.stat_result, name: str, group: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(f"{name} is not a regular file", f"{_FIELD}.name")
    if info.st_uid != os.geteuid() and (group is None or info.st_gid != group):
        raise _refuse(f"{name} belongs to another user", f"{_FIELD}.name")
    if info.st_mode & 0o007:
        raise _refuse(
            f"{name} is open to other users (mode {stat.S_IMODE(info.st_mode):o})", f"{_FIELD}.name"
        )


def open_ring(ring: pb.SharedMemoryRing, need_slot_bytes: int, group: int | None) -> NodeRing:
    """Open and check the ring of a stream whose frame and planes take ``need_slot_bytes`` per slot."""
    if ring.slots < 1:
        raise _refuse("slots: expected 1 or more", f"{_FIELD}.slots")
    if ring.slot_bytes < need_slot_bytes:
        raise _refuse(
            f"slot_bytes: {ring.slot_bytes} is too small for one frame and its planes ({need_slot_bytes})",
            f"{_FIELD}.slot_bytes",
        )
    size = ring.slots * ring.slot_bytes
    if size > _MAX_RING_BYTES:
        raise _refuse(f"slots x slot_bytes: {size} bytes is beyond {_MAX_RING_BYTES}", f"{_FIELD}.slot_bytes")
    fd, memfd = _open_fd(ring.name)
    try:
        info = os.fstat(fd)
        _check_owner(info, ring.name, group)
        if info.st_size < size:
            raise _refuse(f"{ring.name} holds {info.st_size} bytes, the ring needs {size}", f"{_FIELD}.name")
        mapped: Any = None
        if memfd:
            import fcntl  # POSIX, as are the names that reach here

            try:
                seals = fcntl.fcntl(fd, _F_GET_SEALS)
            except OSError:  # not a memfd at all
                seals = 0
            if seals & _SEALS != _SEALS:
                raise _refuse(f"{ring.name} is not sealed against shrinking and growing", f"{_FIELD}.name")
            # Mapped with its pages at once: one call instead of a fault per page on the first frames.
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        return NodeRing(fd, int(ring.slots), int(ring.slot_bytes), mapped)
    except BaseException:
        os.close(fd)
        raise
