"""Write a farm job bundle and hand it to a farm manager: what ``farm bundle`` and the plugins share.

The submit command is configured per studio, ``{bundle}`` standing for the
bundle folder, for instance ``deadline bundle submit --yes {bundle}`` for AWS
Deadline Cloud. Its last line of output is reported (Deadline prints the job
id there); a failure raises :class:`SubmitError` with the command's own last
words, in one line. OpenCue specs go to a Cuebot through pycue instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from rvm_node.errors import InvalidInputError, SubmitError
from rvm_node.farm.bundle import FarmJob, writing_bundle

__all__ = ["DEADLINE_CLOUD", "FORMATS", "run_submit_command", "submit_bundle", "write_bundle"]

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
