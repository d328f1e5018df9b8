"""Submit to the farm: the shots as a farm job bundle, written and handed to the farm manager.

No ``nuke`` here: ``job.py`` builds the shots from the Reads and wires the
mattes once :func:`submit_shots` has returned. The bundle goes into a new
folder ``<job name>-<YYYYmmdd-HHMMSS>`` under the configured bundle folder,
or under ``<script dir>/<script name>_rvm_jobs`` when none is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvm_nuke.settings import Settings, SettingsError

if TYPE_CHECKING:
    from rvm_node.farm.submit import SubmittedJob

__all__ = ["FarmError", "jobs_folder", "report_line", "submit_shots"]


class FarmError(Exception):
    """Writing or submitting the job failed; the message says why, in one line."""


def jobs_folder(settings: Settings, script: str) -> Path:
    """Where the job's bundle folder goes: the bundle folder setting, else beside the script."""
    folder = settings.bundle_folder.strip()
    if not folder or "[script dir]" in folder:
        if not script:
            raise SettingsError(
                "RVM: save the Nuke script first, or set a bundle folder: the job bundle is written beside it"
            )
        script_dir = os.path.dirname(os.path.abspath(script))
        if not folder:
            return Path(script_dir) / f"{Path(script).stem}_rvm_jobs"
        folder = folder.replace("[script dir]", script_dir)
    path = os.path.expanduser(folder)
    if not os.path.isabs(path):
        raise SettingsError(f"RVM settings: the bundle folder {folder} must be an absolute path")
    return Path(path)


def _submit_to(settings: Settings) -> dict[str, Any]:
    if settings.farm_format == "opencue":
        if not settings.cuebot.strip():
            raise SettingsError("RVM settings: set the Cuebot address (HOST:PORT) to submit OpenCue jobs")
        return {"command": None, "cuebot": settings.cuebot.strip()}
    if not settings.submit_command.strip():
        raise SettingsError(
            "RVM settings: set the submit command, e.g. deadline bundle submit --yes {bundle}"
        )
    return {"command": settings.submit_command.strip(), "cuebot": None}


def submit_shots(
    shots: Sequence[Any], settings: Settings, script: str, *, now: datetime | None = None
) -> SubmittedJob:
    """Plan the job for ``shots`` (``rvm_node.farm.Shot``), write its bundle, submit it.

    Raises :class:`SettingsError` or :class:`FarmError` with one line. Before the
    submit step nothing is left behind; after it the bundle stays, and the line says where.
    """
    from rvm_node.errors import RvmNodeError
    from rvm_node.farm.bundle import PoolSettings
    from rvm_node.farm.submit import job_name, submit_job

    target = _submit_to(settings)
    name = job_name(Path(script).stem if script else "", [shot.name for shot in shots])
    parent = jobs_folder(settings, script)
    try:
        pool = PoolSettings(
            nodes=",".join(settings.nodes),
            token_file=settings.token_file or None,  # paths on the workers
            ca_file=settings.ca_file or None,
        )
        done = submit_job(
            shots,
            pool,
            parent,
            name=name,
            format=settings.farm_format,
            rvm_node=settings.farm_rvm_node.strip() or "rvm-node",
            now=now,
            **target,
        )
    except RvmNodeError as exc:
        raise FarmError(f"RVM: {exc}") from None
    return done


def report_line(done: SubmittedJob) -> str:
    """The one line that reports a submitted job."""
    return f"RVM: {done.said} (bundle {done.bundle})"
