"""The client's side of a shared-memory ring (``transport="shm"``): create it, fill slots, read planes.

The ring is created by the client, readable and writable by its own user
only:

* by default a memfd sealed against shrinking and growing, which the node
  opens as ``/proc/PID/fd/FD`` and reads in place (only the same user, or
  root, can open that path);
* where the node names a group (it runs as another user), a file
  ``/dev/shm/rvm-node-*`` of mode 0660 in that group. Its name is removed as
  soon as the node has opened it, so a client that dies leaves nothing behind
  in /dev/shm.

The memory is freed when both the client and the node have let go of it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets

import numpy as np

from rvm_node.errors import InvalidInputError
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import RING_DIRECTORY, RING_PREFIX, rings_supported

__all__ = ["ClientRing"]

_SEALS = 0x0002 | 0x0004 | 0x0001  # F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL (Linux, as are memfds)


class ClientRing:
    """``slots`` slots of ``slot_bytes`` in shared memory; ``group``: a /dev/shm file in that group."""

    def __init__(self, slots: int, slot_bytes: int, group: str = "") -> None:
        if slots < 1:
            raise InvalidInputError(f"ring_slots: expected 1 or more, got {slots}")
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.size = size = slots * slot_bytes
        self._path: str | None = None
        self._map: mmap.mmap | None = None
        if not rings_supported():
            raise InvalidInputError(f"shared-memory rings: this host has neither memfds nor {RING_DIRECTORY}")
        if group or not hasattr(os, "memfd_create"):
            self._path = f"{RING_DIRECTORY}/{RING_PREFIX}{secrets.token_hex(12)}"
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self._path, flags, 0o600)
            try:
                if group:
                    import grp  # POSIX: /dev/shm exists

                    os.fchown(self._fd, -1, grp.getgrnam(group).gr_gid)
                    os.fchmod(self._fd, 0o660)
                os.ftruncate(self._fd, size)
            except (OSError, KeyError) as exc:
                self.close()
                raise InvalidInputError(f"shared-memory ring for group {group!r}: {exc}") from exc
            self.name = self._path
        else:
            self._fd = os.memfd_create("rvm-node-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.fchmod(self._fd, 0o600)  # memfds start as 0777; only /proc/PID/fd reaches them, but say it
            os.ftruncate(self._fd, size)
            import fcntl  # Linux: memfds exist

            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, _SEALS)
            self.name = f"/proc/{os.getpid()}/fd/{self._fd}"
        self._map = mmap.mmap(self._fd, size)
        self._base = np.frombuffer(self._map, np.uint8, 1).ctypes.data  # the address slots are found by

    @property
    def reusable(self) -> bool:
        """True for a memfd ring, which the node can open again for the client's next stream."""
        return self._path is None and self.name.startswith("/proc/") and self._map is not None

    def fits(self, slots: int, slot_bytes: int, group: str) -> bool:
        return self.reusable and (self.slots, self.slot_bytes, group) == (slots, slot_bytes, "")

    def message(self) -> pb.SharedMemoryRing:
        return pb.SharedMemoryRing(name=self.name, slots=self.slots, slot_bytes=self.slot_bytes)

    def unlink(self) -> None:
        """Remove the ring's /dev/shm name (the node holds it open by now); memfds have none."""
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Samples of ``shape`` at ``offset``, in place."""
        if self._map is None:
            raise InvalidInputError("shared-memory ring: already closed")
        return np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)

    def slot_of(self, frame: np.ndarray) -> int | None:
        """The slot whose start ``frame`` views as one contiguous block (as :meth:`view` made it), else None."""
        if self._map is None or not frame.flags.c_contiguous or frame.nbytes > self.slot_bytes:
            return None
        offset = frame.__array_interface__["data"][0] - self._base
        if not 0 <= offset < self.size or offset % self.slot_bytes:
            return None
        return offset // self.slot_bytes

    def frames(self, first_slot: int, count: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """``count`` frames of ``shape`` from ``first_slot`` on, as one ``[count, *shape]`` array, in place."""
        if self._map is None:
            raise InvalidInputError("shared-memory ring: already closed")
        if not 0 <= first_slot <= self.slots - count:
            raise InvalidInputError(
                f"shared-memory ring: slots {first_slot}+{count} are outside its {self.slots}"
            )
        frame = self.view(first_slot * self.slot_bytes, dtype, shape)
        return np.lib.stride_tricks.as_strided(frame, (count, *shape), (self.slot_bytes, *frame.strides))

    def close(self) -> None:
        self.unlink()
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a frame still views it: unmapped when that is gone
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
