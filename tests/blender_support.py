"""The Blender releases the add-on's tests run on, and the ones a run could run on here (said at its end by
``tests/conftest.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["BLENDERS_RUN", "BLENDER_VERSIONS", "NEEDS_PYTHON_313", "python_313"]

ROOT = Path(__file__).resolve().parents[1]
BLENDER_VERSIONS = ("4.2", "4.5", "5.0", "5.2")
NEEDS_PYTHON_313 = ("5.2",)
BLENDERS_RUN: dict[str, str] = {}  # Blender release -> the Python its tests ran on, filled in as they run


def python_313() -> str | None:
    """A Python 3.13 on this machine, found as scripts/setup-blender-venv finds it, or None."""
    done = subprocess.run(
        [str(ROOT / "scripts/setup-blender-venv"), "--find-python-3.13"], capture_output=True, text=True
    )
    return done.stdout.strip() or None
