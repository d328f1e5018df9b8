"""What a node accepts: its :class:`Limits` and its shared-memory policy (:class:`ShmPolicy`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rvm_node.errors import InvalidInputError

__all__ = ["Limits", "ShmPolicy", "default_shm_budget"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_streams: int = 4
    max_message_bytes: int = 64 * 1024 * 1024
    max_frame_pixels: int = 8192 * 4320
    max_width: int = 16384
    max_height: int = 16384
    idle_timeout: float = 60.0
    max_chunks_in_flight: int = 4
    max_ring_slots: int = 64

    def check(self) -> Limits:
        """These limits, or an :class:`InvalidInputError` for one a node cannot run with."""
        for name in ("max_streams", "max_frame_pixels", "max_chunks_in_flight"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidInputError(f"{name}: expected 1 or more, got {value}")
        return self


def default_shm_budget() -> int:
    """A quarter of the host's physical memory (1 GiB where the host does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 4
    except (AttributeError, ValueError, OSError):
        return 1 << 30


@dataclass(frozen=True, kw_only=True)
class ShmPolicy:
    """Shared-memory streams (``TRANSPORT_SHM``) for clients on this host.

    ``budget``: the most bytes of rings the node maps at once, over all its
    workers (``serve --shm-budget``; None: :func:`default_shm_budget`).
    """

    enabled: bool = True
    budget: int | None = None

    @property
    def budget_bytes(self) -> int:
        return default_shm_budget() if self.budget is None else self.budget
