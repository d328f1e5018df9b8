"""The ring hand-over: how a client gives a node its shared-memory ring as a file descriptor.

A node never opens memory by a name a client gives. A client that wants a
shared-memory stream creates a memfd, seals it against shrinking and
growing, and passes the descriptor itself over a worker's ring socket
(``SCM_RIGHTS`` on a Unix socket in Linux's abstract namespace, named by
GetNodeInfo's ``local_endpoints``). The node answers with an unguessable
handle, which the stream's settings name. Possession of the descriptor is
the proof of the right to use the memory, as with Wayland's ``wl_shm`` and
DRM's buffer passing.

Both messages (``RingOffer`` from the client, ``RingReceipt`` from the node)
are framed as their length (4 bytes, little endian) then their bytes; the
offer carries exactly one descriptor. One ring per connection: the handle is
valid while the connection that handed the ring over stays open.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message

from rvm_node.errors import InvalidInputError

__all__ = [
    "HANDLE_BYTES",
    "MAX_MESSAGE_BYTES",
    "RingFile",
    "frame",
    "inspect_ring_fd",
    "message_length",
    "parse",
    "ring_seals",
]

HANDLE_BYTES = 16  # 128 random bits: never guessed, never enumerated
MAX_MESSAGE_BYTES = 4096
_LENGTH = struct.Struct("<I")


def ring_seals() -> tuple[Any, int, int]:
    """(fcntl, the seals a ring must have, the seals it must not have), on Linux, where rings are.

    A ring stays as large as it was handed over (touching a mapping beyond a
    file's end would kill the node with SIGBUS) and stays writable for the
    planes; ``F_SEAL_SEAL`` lets its creator make that final.
    """
    import fcntl

    required = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    return fcntl, required, fcntl.F_SEAL_WRITE | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)


def frame(message: Message) -> bytes:
    """``message`` framed for the ring socket: its length, then its bytes."""
    body = message.SerializeToString()
    return _LENGTH.pack(len(body)) + body


def parse(data: bytes, message: Message, where: str) -> Message:
    """Fill ``message`` from one framed message that makes up all of ``data``."""
    if len(data) < _LENGTH.size:
        raise InvalidInputError(f"{where}: the message ends before its length")
    (length,) = _LENGTH.unpack_from(data)
    if length > MAX_MESSAGE_BYTES or len(data) != _LENGTH.size + length:
        raise InvalidInputError(
            f"{where}: a message of {len(data) - _LENGTH.size} bytes declares {length} "
            f"(at most {MAX_MESSAGE_BYTES})"
        )
    try:
        message.ParseFromString(data[_LENGTH.size :])
    except DecodeError as exc:
        raise InvalidInputError(f"{where}: not a {type(message).__name__} ({exc})") from None
    return message


def message_length(head: bytes) -> int | None:
    """The whole framed size of a message whose first bytes are ``head``; None until the length is in."""
    if len(head) < _LENGTH.size:
        return None
    return _LENGTH.size + int(_LENGTH.unpack_from(head)[0])


@dataclass(frozen=True)
class RingFile:
    """What a handed-over descriptor is: its size and identity (device, inode)."""

    size: int
    key: tuple[int, int]


def inspect_ring_fd(fd: int, where: str) -> RingFile:
    """Check that ``fd`` is memory a ring can be: a regular memfd, open read-write, sealed against
    shrinking and growing and not against writing. One line naming what is wrong otherwise."""
    fcntl, required, forbidden = ring_seals()
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError(f"{where}: the descriptor is not a memfd (not a regular file)")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDWR:
        raise InvalidInputError(f"{where}: the memfd must be open for reading and writing")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:  # files that are not memfds take no seals
        raise InvalidInputError(f"{where}: the descriptor is not a memfd (it takes no seals)") from None
    if seals & required != required:
        raise InvalidInputError(f"{where}: the memfd is not sealed against shrinking and growing")
    if seals & forbidden:
        raise InvalidInputError(
            f"{where}: the memfd is sealed against writing; the node writes planes into it"
        )
    if info.st_size < 1:
        raise InvalidInputError(f"{where}: the memfd is empty")
    return RingFile(int(info.st_size), (int(info.st_dev), int(info.st_ino)))
