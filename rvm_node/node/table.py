"""The node's table: its open streams, the shared-memory rings they map and its worker processes.

A node of one process keeps it in memory (:class:`NodeTable`). A node of
several worker processes (``serve --workers N``) keeps it in memory the
workers share (:class:`SharedTable`, made by the supervisor before any
worker starts), and each worker sees it through a :class:`WorkerTable`, so
the node behaves as one: ``--max-streams`` and ``--shm-budget`` are the
node's totals, a ring (device, inode) maps for one stream on the whole node,
and GetNodeInfo from any worker names every worker's local endpoint. When a
worker dies, the supervisor forgets what it held (:meth:`SharedTable.forget`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["RING_ENTRIES", "NodeTable", "SharedTable", "WorkerTable"]

RING_ENTRIES = 256  # rings mapped at once on a node of several workers (at most one per stream)
_FIELDS = 4  # a ring entry: worker + 1 (0: free), device, inode, bytes


class NodeTable:
    """The table of a node of one process."""

    worker = 0
    workers = 1

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id or secrets.token_hex(8)
        self._open = 0
        self._rings: dict[tuple[int, int], int] = {}  # (device, inode) of each mapped ring: its bytes

    def try_open(self, limit: int) -> bool:
        """Count one more stream unless ``limit`` streams are open on the node."""
        if self._open >= limit:
            return False
        self._open += 1
        return True

    def close(self) -> None:
        self._open -= 1

    @property
    def mine(self) -> int:
        """Streams open in this process."""
        return self._open

    @property
    def total(self) -> int:
        """Streams open on the whole node."""
        return self._open

    def pids(self) -> list[int]:
        """Each serving worker's process id (0 for one not serving yet, or being replaced)."""
        return [os.getpid()]

    def serving(self) -> None:
        """This process serves now: its endpoints are bound (a worker's are named from now on)."""

    def reserve_ring(self, key: tuple[int, int], nbytes: int, budget: int) -> str:
        """Count a ring (device, inode) of ``nbytes`` as mapped: "" if done, else "in use" (another stream
        maps it) or "budget" (the node's mapped rings would exceed ``budget`` bytes)."""
        if key in self._rings:
            return "in use"
        if sum(self._rings.values()) + nbytes > budget:
            return "budget"
        self._rings[key] = nbytes
        return ""

    def release_ring(self, key: tuple[int, int]) -> None:
        self._rings.pop(key, None)

    def ring_in_use(self, key: tuple[int, int]) -> bool:
        return key in self._rings


@dataclass(frozen=True)
class SharedTable:
    """The table of a node of ``workers`` processes, in shared memory: made by the supervisor, handed to each
    worker as it starts. One lock (the counts') guards it all."""

    node_id: str
    counts: Any  # streams open, per worker
    pids: Any  # each worker's process id, once it serves; 0 while it starts or is being replaced
    rings: Any  # RING_ENTRIES entries of (worker + 1, device, inode, bytes)

    @classmethod
    def create(cls, workers: int, context: Any) -> SharedTable:
        """A table for ``workers`` processes, with ``context``'s (a multiprocessing context) shared arrays."""
        return cls(
            secrets.token_hex(8),
            context.Array("q", workers),
            context.Array("q", workers, lock=False),
            context.Array("Q", RING_ENTRIES * _FIELDS, lock=False),
        )

    def forget(self, worker: int) -> None:
        """``worker`` died, with its streams and their rings: the table holds none of them any more."""
        with self.counts.get_lock():
            self.counts[worker] = 0
            self.pids[worker] = 0
            for entry in range(0, len(self.rings), _FIELDS):
                if self.rings[entry] == worker + 1:
                    self.rings[entry : entry + _FIELDS] = [0] * _FIELDS


class WorkerTable(NodeTable):
    """One worker's view of its node's :class:`SharedTable`."""

    def __init__(self, shared: SharedTable, worker: int) -> None:
        super().__init__(shared.node_id)
        self._shared = shared
        self.worker = worker
        self.workers = len(shared.counts)

    def serving(self) -> None:
        with self._shared.counts.get_lock():
            self._shared.pids[self.worker] = os.getpid()

    def try_open(self, limit: int) -> bool:
        counts = self._shared.counts
        with counts.get_lock():
            if sum(counts) >= limit:
                return False
            counts[self.worker] += 1
        return True

    def close(self) -> None:
        counts = self._shared.counts
        with counts.get_lock():
            counts[self.worker] -= 1

    @property
    def mine(self) -> int:
        return int(self._shared.counts[self.worker])

    @property
    def total(self) -> int:
        return int(sum(self._shared.counts))

    def pids(self) -> list[int]:
        with self._shared.counts.get_lock():
            return [int(pid) for pid in self._shared.pids]

    def reserve_ring(self, key: tuple[int, int], nbytes: int, budget: int) -> str:
        rings = self._shared.rings
        with self._shared.counts.get_lock():
            entries = [rings[i : i + _FIELDS] for i in range(0, len(rings), _FIELDS)]
            if any(owner and (dev, ino) == key for owner, dev, ino, _ in entries):
                return "in use"
            free = [i for i, (owner, *_) in enumerate(entries) if not owner]
            if not free or sum(size for owner, *_, size in entries if owner) + nbytes > budget:
                return "budget"
            start = free[0] * _FIELDS
            rings[start : start + _FIELDS] = [self.worker + 1, key[0], key[1], nbytes]
        return ""

    def release_ring(self, key: tuple[int, int]) -> None:
        rings = self._shared.rings
        with self._shared.counts.get_lock():
            for start in range(0, len(rings), _FIELDS):
                if rings[start] == self.worker + 1 and (rings[start + 1], rings[start + 2]) == key:
                    rings[start : start + _FIELDS] = [0] * _FIELDS

    def ring_in_use(self, key: tuple[int, int]) -> bool:
        rings = self._shared.rings
        with self._shared.counts.get_lock():
            return any(
                rings[start] and (rings[start + 1], rings[start + 2]) == key
                for start in range(0, len(rings), _FIELDS)
            )
