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
    """Where the job's bundle folder goes: the bundle folder setting (``[script dir]`` expanded), else
    beside the script."""
    from rvm_node.errors import InvalidInputError
    from rvm_node.farm.submit import jobs_folder as folder_for

    folder = settings.bundle_folder.strip()
    if "[script dir]" in folder and script:
        folder = folder.replace("[script dir]", os.path.dirname(os.path.abspath(script)))
    elif "[script dir]" in folder:
        folder = ""  # no script to put it beside: the same line as with no folder set
    try:
        return folder_for(folder, script, "Nuke script")
    except InvalidInputError as exc:
        raise SettingsError(f"RVM settings: {exc}") from None


def submit_shots(
    shots: Sequence[Any], settings: Settings, script: str, *, now: datetime | None = None
) -> SubmittedJob:
    """Plan the job for ``shots`` (``rvm_node.farm.Shot``), write its bundle, submit it.

    Raises :class:`SettingsError` or :class:`FarmError` with one line. Before the
    submit step nothing is left behind; after it the bundle stays, and the line says where.
    """
    from rvm_node.errors import InvalidInputError, RvmNodeError
    from rvm_node.farm.bundle import PoolSettings
    from rvm_node.farm.submit import FarmTarget, submit_scene_job

    target = FarmTarget(
        settings.farm_format, settings.submit_command, settings.cuebot, settings.farm_rvm_node
    )
    try:
        target.submit_to()
    except InvalidInputError as exc:
        raise SettingsError(f"RVM settings: {exc}") from None
    parent = jobs_folder(settings, script)
    pool = PoolSettings(
        nodes=",".join(settings.nodes),
        token_file=settings.token_file or None,  # paths on the workers
        ca_file=settings.ca_file or None,
    )
    try:
        return submit_scene_job(shots, pool, target, parent, script, now=now)
    except RvmNodeError as exc:
        raise FarmError(f"RVM: {exc}") from None


def report_line(done: SubmittedJob) -> str:
    """The one line that reports a submitted job."""
    return f"RVM: {done.said} (bundle {done.bundle})"
