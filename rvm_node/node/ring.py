"""The node's side of a shared-memory ring (``TRANSPORT_SHM``): take it, map it, read frames, write planes.

A stream names a ring by the handle its client got when it handed the ring
over as a descriptor (:mod:`rvm_node.node.handover`); the node never opens
memory by a name. Before it maps a byte, :func:`open_ring` checks the ring
against what the stream needs: the slots no more than ``max_ring_slots``,
each slot one frame and its planes (:class:`~rvm_node.v1.protocol.SlotLayout`)
plus at most 4 KiB, the memfd itself no larger than the slots plus a page,
and the mapping within the node's shared-memory budget (across its
workers). The memfd is sealed against shrinking, so the node maps it and
reads frames **in place** and writes planes into it directly; mapping, with
its pages populated at once, runs beside the event loop, never on it.

Every slot reference is checked against the ring before any memory is
touched (:meth:`NodeRing.check_frame`).
"""

from __future__ import annotations

import asyncio
import gc
import mmap
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from rvm_node.errors import InvalidInputError
from rvm_node.node.handover import HandedRing, RingDesk
from rvm_node.node.status import StreamRefused
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import SlotLayout

__all__ = ["FILE_SLACK", "SLOT_SLACK", "NodeRing", "RingBudget", "RingTable", "open_ring"]

SLOT_SLACK = 4096  # bytes a slot may hold beyond its frame and planes (alignment)
FILE_SLACK = 4096  # bytes a memfd may hold beyond its slots (a page, for page rounding)
_FIELD = "open.settings.ring"


def _refuse(message: str, field: str = _FIELD) -> InvalidInputError:
    return InvalidInputError(f"{field}: {message}", reason="RING_INVALID", field=field)


class RingTable(Protocol):
    """The node's table of mapped rings, shared by its workers (:mod:`rvm_node.node.workers`)."""

    def reserve_ring(self, key: tuple[int, int], nbytes: int, budget: int) -> str: ...

    def release_ring(self, key: tuple[int, int]) -> None: ...


@dataclass(frozen=True)
class RingBudget:
    """The node's shared-memory budget: at most ``total`` bytes of rings mapped at once, across its workers,
    each ring (device, inode) by one stream at a time."""

    table: RingTable
    total: int

    def reserve(self, key: tuple[int, int], nbytes: int) -> str:
        """Count the ring as mapped: "" if done, else why not ("in use", "budget")."""
        return self.table.reserve_ring(key, nbytes, self.total)

    def release(self, key: tuple[int, int]) -> None:
        self.table.release_ring(key)


class NodeRing:
    """A stream's ring, mapped: ``layout.slot_bytes`` per slot, frames read where they lie."""

    def __init__(
        self,
        handed: HandedRing,
        layout: SlotLayout,
        slots: int,
        mapped: mmap.mmap,
        on_close: Callable[[], None],
    ) -> None:
        self.handed = handed
        self.layout = layout
        self.slots = slots
        self._map: mmap.mmap | None = mapped
        self._on_close: Callable[[], None] | None = on_close
        self._busy: set[int] = set()

    def check_frame(self, index: int, ref: pb.SlotRef | None, data_bytes: int) -> int:
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
        start = self.layout.frame_at(ref.slot)
        if ref.offset != start:
            raise InvalidInputError(
                f"{where}.offset: {ref.offset}, expected {start}, the start of slot {ref.slot}",
                reason="FRAME_PARTS_INVALID",
                field=f"{where}.offset",
            )
        if ref.size != self.layout.frame_bytes:
            raise InvalidInputError(
                f"{where}.size: {ref.size}, expected the frame's {self.layout.frame_bytes} bytes",
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

    def frame(self, slot: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The frame in ``slot`` (checked by :meth:`check_frame`), in place."""
        return self._view(self.layout.frame_at(slot), dtype, shape)

    def write_plane(self, slot: int, index: int, values: np.ndarray) -> None:
        """Write the stream's ``index``-th plane of the frame in ``slot``."""
        target = self._view(self.layout.plane_at(slot, index), values.dtype.newbyteorder("<"), values.shape)
        np.copyto(target, values)

    def _view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if self._map is None:
            raise InvalidInputError("shared-memory ring: the stream is over")
        return np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)

    def close(self) -> None:
        """Let go of the ring: unmapped once no frame views it (see :func:`_unmap`), and given back."""
        mapped, self._map = self._map, None
        if mapped is not None:
            _unmap(mapped)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


async def open_ring(
    message: pb.SharedMemoryRing,
    need: SlotLayout,
    *,
    desk: RingDesk,
    budget: RingBudget,
    max_slots: int,
    stream_id: str,
    executor: Executor,
) -> NodeRing:
    """Take the ring ``message`` names for ``stream_id``, check it against what the stream ``need`` s, and
    map it (beside the event loop). RING_INVALID names the field at fault; SHM_BUDGET_EXHAUSTED when the
    node's budget is spent."""
    if message.name:  # a deprecated field: memory is never opened by a name
        raise _refuse(
            "rings are named by the handle the node gave when the ring was handed over as a descriptor, "
            "never by a name",
            f"{_FIELD}.name",
        )
    if not 1 <= message.slots <= max_slots:
        raise _refuse(f"{message.slots} slots; expected 1 to {max_slots}", f"{_FIELD}.slots")
    if not need.needed_bytes <= message.slot_bytes <= need.needed_bytes + SLOT_SLACK:
        raise _refuse(
            f"{message.slot_bytes} bytes a slot; one frame and its planes take {need.needed_bytes} "
            f"(at most {need.needed_bytes + SLOT_SLACK} with alignment)",
            f"{_FIELD}.slot_bytes",
        )
    layout = replace(need, slot_bytes=int(message.slot_bytes))
    length = int(message.slots) * layout.slot_bytes
    handed = desk.take(message.handle, stream_id)
    try:
        size = handed.file.size
        if not length <= size <= length + FILE_SLACK:
            raise _refuse(
                f"the ring holds {size} bytes; the stream's {message.slots} slots of {layout.slot_bytes} bytes "
                f"take {length} (at most {length + FILE_SLACK})"
            )
        why = budget.reserve(handed.file.key, length)
        if why == "in use":
            raise _refuse(
                "the ring serves another stream; a ring serves one stream at a time", f"{_FIELD}.handle"
            )
        if why:
            raise StreamRefused(
                "SHM_BUDGET_EXHAUSTED",
                f"{_FIELD}: {length} more bytes of shared memory would take the node beyond its budget of "
                f"{budget.total}; send raw frames or retry later",
            )
    except BaseException:
        desk.give_back(handed)
        raise
    key = handed.file.key

    def on_close() -> None:
        budget.release(key)
        desk.give_back(handed)

    try:
        # Mapped with its pages at once (a fault per page would slow the first frames), off the event loop.
        mapped = await asyncio.get_running_loop().run_in_executor(executor, _map, handed.fd, length)
    except BaseException:
        on_close()
        raise
    return NodeRing(handed, layout, int(message.slots), mapped, on_close)


def _map(fd: int, length: int) -> mmap.mmap:
    try:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    except (OSError, ValueError) as exc:
        raise _refuse(f"the ring cannot be mapped ({exc})") from None


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
