"""Write a farm job bundle and hand it to a farm manager: what ``farm bundle`` and the plugins share.

The submit command is configured per studio, ``{bundle}`` standing for the
bundle folder, for instance ``deadline bundle submit --yes {bundle}`` for AWS
Deadline Cloud. Its last line of output is reported (Deadline prints the job
id there); a failure raises :class:`SubmitError` with the command's own last
words, in one line. OpenCue specs go to a Cuebot through pycue instead.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rvm_node.errors import InvalidInputError, RvmNodeError, SubmitError
from rvm_node.farm.bundle import FarmJob, PoolSettings, plan_job, writing_bundle
from rvm_node.farm.shots import Shot

__all__ = [
    "DEADLINE_CLOUD",
    "FORMATS",
    "FarmTarget",
    "SubmittedJob",
    "job_name",
    "jobs_folder",
    "new_bundle_folder",
    "run_submit_command",
    "submit_bundle",
    "submit_job",
    "submit_scene_job",
    "write_bundle",
]

DEADLINE_CLOUD = "deadline bundle submit --yes {bundle}"
FORMATS = ("openjd", "opencue")


def write_bundle(
    job: FarmJob, directory: Path, *, format: str = "openjd", overwrite: bool = False, show: str = "rvm"
) -> Path:
    """Write ``job`` as a bundle folder (atomically: all of it or nothing); its absolute path."""
    if format not in FORMATS:
        raise InvalidInputError(f"--format: expected openjd or opencue, got {format!r}")
    with writing_bundle(directory, overwrite=overwrite) as staging:
        if format == "openjd":
            from rvm_node.farm.openjd import write_openjd_bundle

            write_openjd_bundle(job, staging)
        else:
            from rvm_node.farm.opencue import write_opencue_bundle

            write_opencue_bundle(job, staging, show=show)
    return Path(os.path.abspath(directory))


def submit_bundle(bundle: Path, *, command: str | None = None, cuebot: str | None = None) -> str:
    """Submit a written bundle with ``command`` or, for an OpenCue spec, to ``cuebot``; one line saying
    what was submitted."""
    if cuebot:
        from rvm_node.farm.opencue import submit_spec

        return f"submitted OpenCue job {', '.join(submit_spec(bundle, cuebot))}"
    if command:
        return run_submit_command(command, bundle)
    raise InvalidInputError("submit: no submit command (or Cuebot) is configured")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_submit_command(command: str, bundle: Path, *, timeout: float = 600.0) -> str:
    """Run ``command`` with ``{bundle}`` replaced; one line saying what was submitted."""
    try:
        template = shlex.split(command)
    except ValueError as exc:
        raise InvalidInputError(f"submit command {command!r}: {exc}") from None
    if not template:
        raise InvalidInputError("submit command: empty")
    argv = [part.replace("{bundle}", str(bundle)) for part in template]
    if argv == template:
        argv.append(str(bundle))  # a command without {bundle} takes the folder last
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SubmitError(
            f"submit command {argv[0]}: not found (is the farm manager's client installed?)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SubmitError(f"submit command {argv[0]}: no answer in {timeout:.0f} s") from None
    if done.returncode != 0:
        reason = _last_line(done.stderr) or _last_line(done.stdout) or "no output"
        raise SubmitError(f"submit command {argv[0]} failed (exit {done.returncode}): {reason}")
    said = _last_line(done.stdout) or _last_line(done.stderr)
    return f"submitted {bundle.name}" + (f": {said}" if said else "")


@dataclass(frozen=True)
class SubmittedJob:
    """A submitted job: its name, its bundle folder, and what the submit step said (one line)."""

    job: str
    bundle: Path
    said: str


def job_name(stem: str, shots: Sequence[str]) -> str:
    """``<stem>_<shot>_<shot>...`` (three shots, then a count) in letters, digits and ``._-``: a folder
    name and a farm job name."""
    names = [*shots[:3], *([f"{len(shots) - 3}_more"] if len(shots) > 3 else [])]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join([stem or "untitled", *names])).strip("._")[:80] or "rvm"


def new_bundle_folder(parent: Path, name: str, now: datetime | None = None) -> Path:
    """A folder under ``parent`` no job has used: ``<name>-<YYYYmmdd-HHMMSS>`` (then ``-2``, ``-3``...)."""
    base = f"{name}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    candidate, n = parent / base, 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{base}-{n}"
    return candidate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def submit_job(
    shots: Sequence[Shot],
    pool: PoolSettings,
    parent: Path,
    *,
    name: str,
    format: str = "openjd",
    command: str | None = None,
    cuebot: str | None = None,
    rvm_node: str = "rvm-node",
    before_submit: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> SubmittedJob:
    """Plan the job of ``shots``, write its bundle in a new folder under ``parent``, run ``before_submit``
    (if given), then submit it: what the plugins' *submit to the farm* does.

    Errors are one line. Until the submit step nothing is left behind (folders made for the bundle are
    removed again); a failed submit raises :class:`SubmitError` saying where the bundle is.
    """
    if not (command or cuebot):
        raise InvalidInputError("submit: no submit command (or Cuebot) is configured")
    job = plan_job(shots, pool, name=name, rvm_node=rvm_node)
    missing = [folder for folder in (parent, *parent.parents) if not folder.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        bundle = write_bundle(job, new_bundle_folder(parent, name, now), format=format)
    except (RvmNodeError, OSError) as exc:
        for folder in missing:  # innermost first; one something else wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise SubmitError(f"cannot write the job bundle in {parent} ({exc.strerror or exc})") from None
        raise SubmitError(f"the job bundle was not written in {parent}: {_first_line(exc)}") from None
    try:
        if before_submit is not None:
            before_submit()
        said = submit_bundle(bundle, command=command, cuebot=cuebot)
    except (RvmNodeError, OSError) as exc:
        raise SubmitError(f"{_first_line(exc)}; the job bundle is in {bundle}") from None
    return SubmittedJob(job=name, bundle=bundle, said=said)


@dataclass(frozen=True)
class FarmTarget:
    """Where a plugin's job goes, as its settings say: the bundle format, how it is submitted (a command
    with ``{bundle}``, or a Cuebot for OpenCue), and the command that runs rvm-node on the workers."""

    format: str = "openjd"
    submit_command: str = DEADLINE_CLOUD
    cuebot: str = ""
    rvm_node: str = "rvm-node"

    def submit_to(self) -> dict[str, str | None]:
        """:func:`submit_job`'s ``command`` and ``cuebot``; an :class:`InvalidInputError` saying what to set
        where nothing is set to submit with."""
        if self.format not in FORMATS:
            raise InvalidInputError(f"farm format {self.format!r}: expected openjd or opencue")
        if self.format == "opencue":
            if not self.cuebot.strip():
                raise InvalidInputError("set the Cuebot address (HOST:PORT) to submit OpenCue jobs")
            return {"command": None, "cuebot": self.cuebot.strip()}
        if not self.submit_command.strip():
            raise InvalidInputError(f"set the submit command, e.g. {DEADLINE_CLOUD}")
        return {"command": self.submit_command.strip(), "cuebot": None}


def jobs_folder(folder: str, scene: str, scene_kind: str) -> Path:
    """Where a plugin's bundle folders go: ``folder`` (absolute), else ``<scene dir>/<scene name>_rvm_jobs``
    beside the saved ``scene`` file (a ``scene_kind``: "Nuke script", ".blend file")."""
    if not folder.strip():
        if not scene:
            raise InvalidInputError(
                f"save the {scene_kind} first, or set a bundle folder: the job bundle is written beside it"
            )
        return Path(os.path.dirname(os.path.abspath(scene))) / f"{Path(scene).stem}_rvm_jobs"
    path = os.path.expanduser(folder.strip())
    if not os.path.isabs(path):
        raise InvalidInputError(f"bundle folder {folder}: expected an absolute path")
    return Path(path)


def submit_scene_job(
    shots: Sequence[Shot],
    pool: PoolSettings,
    target: FarmTarget,
    parent: Path,
    scene: str,
    *,
    before_submit: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> SubmittedJob:
    """What a plugin's *submit to the farm* does: the job named after the ``scene`` file and its shots,
    planned, written under ``parent`` (:func:`jobs_folder`) and submitted to ``target``."""
    name = job_name(Path(scene).stem if scene else "", [shot.name for shot in shots])
    return submit_job(
        shots,
        pool,
        parent,
        name=name,
        format=target.format,
        rvm_node=target.rvm_node.strip() or "rvm-node",
        before_submit=before_submit,
        now=now,
        **target.submit_to(),
    )
