"""Submit to the farm: the operator's shots as a farm job bundle, written and handed to the farm manager.

No bpy here. The shots are the ones "run here" gives ``rvm-node farm run``
(the same shot-list entries, made into shots by the farm layer), planned into a job with
the library and written into a new folder ``<job name>-<YYYYmmdd-HHMMSS>``
under the bundle folder, or under ``<blend dir>/<blend name>_rvm_jobs`` when
none is set. Open Job Description bundles go to the submit command
(``{bundle}``: the folder), OpenCue specs to the Cuebot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .command import RunOptions, shot_entry
from .shots import PluginError, ShotRequest

if TYPE_CHECKING:
    from rvm_node.farm.submit import FarmTarget, SubmittedJob

__all__ = [
    "DEADLINE_CLOUD",
    "FARM_FORMATS",
    "FarmOptions",
    "farm_shots",
    "jobs_folder",
    "submit_requests",
]

DEADLINE_CLOUD = "deadline bundle submit --yes {bundle}"  # rvm_node.farm.submit.DEADLINE_CLOUD
FARM_FORMATS = ("openjd", "opencue")


@dataclass(frozen=True)
class FarmOptions:
    """Where the job goes: the bundle format, folder (empty: beside the .blend), and how it is submitted."""

    format: str = "openjd"
    folder: str = ""
    submit_command: str = DEADLINE_CLOUD
    cuebot: str = ""
    rvm_node: str = "rvm-node"  # the command on the farm's workers

    def __post_init__(self) -> None:
        if self.format not in FARM_FORMATS:
            raise PluginError(f"farm format {self.format!r}: expected openjd or opencue")

    def target(self) -> FarmTarget:
        from rvm_node.farm.submit import FarmTarget

        return FarmTarget(self.format, self.submit_command, self.cuebot, self.rvm_node)

    def submit_to(self) -> dict[str, Any]:
        """``submit_job``'s keywords; raises :class:`PluginError` when nothing is set to submit with."""
        from rvm_node.errors import InvalidInputError

        try:
            return self.target().submit_to()
        except InvalidInputError as exc:
            raise PluginError(f"{exc} (in the add-on's preferences)") from None


def jobs_folder(folder: str, blend_path: str) -> Path:
    """The folder the job's bundle folder goes in: ``folder`` (absolute), else beside the .blend."""
    from rvm_node.errors import InvalidInputError
    from rvm_node.farm.submit import jobs_folder as folder_for

    try:
        return folder_for(folder, blend_path, ".blend file")
    except InvalidInputError as exc:
        raise PluginError(f"{exc} (or // with a saved .blend)" if folder.strip() else str(exc)) from None


def farm_shots(requests: Sequence[ShotRequest], options: RunOptions) -> list[Any]:
    """The ``rvm_node.farm.Shot`` of each request: the shots "run here" gives ``farm run``."""
    from rvm_node.farm import shots_from_entries

    return shots_from_entries([shot_entry(r, options) for r in requests], "farm job")


def submit_requests(
    requests: Sequence[ShotRequest],
    run: RunOptions,
    farm: FarmOptions,
    blend_path: str,
    *,
    before_submit: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> SubmittedJob:
    """Plan the job, write its bundle, run ``before_submit`` (if any), submit it.

    Raises :class:`PluginError` with one line. Before the submit step nothing
    is left behind; after it the bundle stays, and the line says where.
    """
    from rvm_node.errors import RvmNodeError
    from rvm_node.farm.bundle import PoolSettings
    from rvm_node.farm.submit import submit_scene_job

    farm.submit_to()  # what to set, before anything else
    parent = jobs_folder(farm.folder, blend_path)
    pool = PoolSettings(
        nodes=",".join(run.nodes), token_file=run.token_file or None, ca_file=run.ca_file or None
    )
    try:
        shots = farm_shots(requests, run)
        return submit_scene_job(
            shots, pool, farm.target(), parent, blend_path, before_submit=before_submit, now=now
        )
    except RvmNodeError as exc:
        raise PluginError(str(exc)) from None
