"""A node's shared token and a CA bundle, read from their files the one way every command and plugin does."""

from __future__ import annotations

from pathlib import Path

from rvm_node.errors import InvalidInputError

__all__ = ["read_ca", "read_token"]


def read_token(path: Path | str | None) -> str | None:
    """The token in ``path`` (surrounding whitespace dropped), or None without a path; an
    :class:`InvalidInputError` naming the file where it cannot be read or holds no token."""
    if path is None or str(path) == "":
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the token file ({exc.strerror})") from None
    if not token:
        raise InvalidInputError(f"{path}: the token file is empty")
    return token


def read_ca(path: Path | str | None) -> bytes | None:
    """The PEM bundle in ``path``, or None without a path; an :class:`InvalidInputError` naming the file
    where it cannot be read."""
    if path is None or str(path) == "":
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the CA file ({exc.strerror})") from None
