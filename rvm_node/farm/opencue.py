"""OpenCue jobs, built with OpenCue's own outline library (``opencue-pyoutline``; the ``opencue`` extra).

The bundle folder holds::

    job.xml        the job spec Cuebot takes (``opencue.api.launchSpec``)
    outline.json   the same job as an outline (``outline.loader.load_json``), to edit or resubmit

One ``Shell`` layer per task (a shot, or a segment of one), with the shot's
frame range as the layer's range and the whole range as one chunk: a shot is
one Cue frame, so its recurrent state is carried through one run, and a
retried frame resumes where the last attempt stopped. OpenCue has no job
parameters, so every value is in each layer's command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rvm_node.errors import InvalidInputError, MissingToolError, SubmitError
from rvm_node.farm.bundle import FarmJob, FarmTask, task_argv, task_values

__all__ = ["layer_specs", "submit_spec", "write_opencue_bundle"]

SHELL = "outline.modules.shell.Shell"
_TOKEN = re.compile(r"[^A-Za-z0-9._-]")


def _outline() -> Any:
    # Keep pyoutline's session folders out of the user's home; ours are removed after use.
    os.environ.setdefault(
        "OUTLINE_OUTLINE_SESSION_DIR", os.path.join(tempfile.gettempdir(), "rvm-node-opencue-sessions")
    )
    try:
        import outline
        import outline.cuerun
        import outline.exception
        import outline.modules.shell
    except ImportError as exc:
        raise MissingToolError(
            "farm bundle --format opencue: opencue-pyoutline is not installed (pip install rvm-node[opencue])"
        ) from exc
    return outline


def layer_specs(job: FarmJob) -> list[dict[str, Any]]:
    """One Shell layer per task, in ``outline.loader.load_json``'s form."""
    layers = []
    for task in job.tasks:
        layers.append(
            {
                "name": task.label,
                "module": SHELL,
                "command": shlex.join(task_argv(job, task_values(job, task))),
                "range": _frame_range(task),
                "chunk": len(task.frames) if task.frames is not None else 1,
                "service": "shell",
            }
        )
    return layers


def _frame_range(task: FarmTask) -> str:
    return f"{task.frames.first}-{task.frames.last}" if task.frames is not None else "1-1"


def outline_document(job: FarmJob) -> dict[str, Any]:
    return {"name": _TOKEN.sub("_", job.name), "layers": layer_specs(job)}


def _spec(document: dict[str, Any], show: str, user: str) -> str:
    outline = _outline()
    ol = outline.Outline(document["name"], show=show, shot=document["layers"][0]["name"], user=user)
    for layer in document["layers"]:
        settings = {k: v for k, v in layer.items() if k not in ("name", "module")}
        ol.add_layer(outline.modules.shell.Shell(layer["name"], **settings))
    launcher = outline.cuerun.OutlineLauncher(ol, pause=False, nomail=True)
    try:
        return str(launcher.serialize(use_pycuerun=False))
    finally:  # serializing set up a session folder of pyoutline's: not needed once the spec is written
        with contextlib.suppress(outline.exception.OutlineException):
            shutil.rmtree(Path(ol.get_session().get_path()).parent, ignore_errors=True)


def write_opencue_bundle(
    job: FarmJob, directory: Path, *, show: str = "rvm", user: str | None = None
) -> list[Path]:
    """Write ``job.xml`` and ``outline.json`` into ``directory``; the files written."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", show):
        raise InvalidInputError(f"show {show!r}: OpenCue names take letters, digits and ._- only")
    document = outline_document(job)
    user = _TOKEN.sub("_", user or os.environ.get("USER") or "render")
    spec = _spec(document, show, user)
    files = [directory / "job.xml", directory / "outline.json"]
    files[0].write_text(spec)
    files[1].write_text(json.dumps(document, indent=2) + "\n")
    return files


def submit_spec(bundle: Path, cuebot: str) -> list[str]:
    """Launch ``bundle``'s ``job.xml`` on ``cuebot`` (HOST or HOST:PORT); the names of the jobs made."""
    _outline()
    import opencue

    try:
        spec = (bundle / "job.xml").read_text()
    except OSError as exc:
        raise InvalidInputError(f"{bundle}: no job.xml to submit ({exc.strerror})") from None
    try:
        opencue.Cuebot.setHosts([cuebot])
        return [str(name) for name in opencue.api.launchSpec(spec)]
    except Exception as exc:  # pycue raises its own tree, and grpc errors beneath it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SubmitError(f"OpenCue at {cuebot}: the job was not submitted ({first})") from None
