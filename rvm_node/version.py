"""rvm-node's version, read once from the installed package's metadata; any layer may import it."""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]


def _installed_version() -> str:
    try:
        return metadata.version("rvm-node")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()
