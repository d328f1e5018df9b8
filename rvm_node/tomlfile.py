"""Reading TOML settings files with one-line errors that name the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rvm_node.errors import InvalidInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_toml"]


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file; ``what`` names it in errors ("the shot list", "the node list", ...)."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML ({exc})") from None
