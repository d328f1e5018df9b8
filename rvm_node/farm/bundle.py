"""A farm job: the shots of ``farm run`` as tasks a render farm manager runs.

Each task is one shot (or, with ``split``, one segment of a shot), so a
shot's recurrent state is carried through one contiguous run. A task runs
``rvm-node farm run`` for its shot against the node pool, always resuming:
a retried task continues from its verified frames and state checkpoint, as
failover does within ``farm run``, and gives the same frames.

Settings every shot shares (the output patterns, still holding ``{shot}``,
and the downsample ratio) become job parameters, which a wrangler can change
at submission; settings that differ between shots travel with each task.
Inputs and outputs are absolute paths, so the farm manager's path mapping
can rewrite them for workers that mount the storage elsewhere.

The formats that write a job from this plan: :mod:`rvm_node.farm.openjd`
and :mod:`rvm_node.farm.opencue`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvm_node.errors import InvalidInputError
from rvm_node.farm.shots import Shot, shot_settings, split_shot
from rvm_node.fsutil import TEMPORARY_MARK
from rvm_node.io.sequence import FrameRange
from rvm_node.shot_settings import OUTPUT_KEYS, SHOT_SETTINGS

__all__ = [
    "JOB_PARAMETERS",
    "FarmJob",
    "FarmTask",
    "PoolSettings",
    "plan_job",
    "task_argv",
    "task_values",
    "writing_bundle",
]

JOB_PARAMETERS = {  # shot key -> job (or task) parameter name
    "output_alpha": "OutputAlpha",
    "output_foreground": "OutputForeground",
    "output_composition": "OutputComposition",
    "downsample_ratio": "DownsampleRatio",
}
_LABEL = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """How every task reaches the render nodes (the options of ``farm run``)."""

    nodes: str
    token_file: str | None = None  # paths on the workers
    ca_file: str | None = None
    retries: int = 3
    checkpoint_every: int = 25
    wait_for_node: float = 60.0

    def __post_init__(self) -> None:
        if not self.nodes.strip():
            raise InvalidInputError("--nodes: no node given")
        if self.retries < 0 or self.checkpoint_every < 1 or self.wait_for_node < 0:
            raise InvalidInputError("--retries and --wait-for-node must be >= 0 and --checkpoint-every >= 1")


@dataclass(frozen=True, kw_only=True)
class FarmTask:
    shot: str  # the shot's name
    label: str  # unique in the job, letters, digits and ._- only: sh010, sh010-part2of4
    input: str  # absolute
    outputs: dict[str, str]  # the output keys not shared, as absolute paths for this shot
    settings: dict[str, Any]  # the shot keys not shared, as ``--shot-settings`` takes them
    segment: int | None = None  # 1-based, with ``split``
    frames: FrameRange | None = None  # the frames this task writes, where known


@dataclass(frozen=True, kw_only=True)
class FarmJob:
    name: str
    tasks: tuple[FarmTask, ...]
    shared: dict[str, Any]  # shared shot keys -> value (output patterns absolute, with {shot})
    pool: PoolSettings
    rvm_node: str = "rvm-node"  # the command on the workers
    split: int = 1
    preroll: int = 0
    outputs: tuple[str, ...] = field(default=())  # every output key the shots write

    @property
    def task_outputs(self) -> tuple[str, ...]:
        return tuple(k for k in self.outputs if k not in self.shared)


def _farm_path(path: str, what: str, roots: Sequence[Path]) -> str:
    """``path`` made absolute, checked to be a path the workers can open."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path):
        raise InvalidInputError(f"{what} {path}: a URL, not a path on the farm's storage")
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    if roots and not any(absolute.is_relative_to(root) for root in roots):
        raise InvalidInputError(
            f"{what} {absolute} is outside the shared storage ({', '.join(map(str, roots))}): "
            "farm workers cannot reach it"
        )
    return str(absolute)


def _output_template(shot: Shot, key: str) -> str:
    """The shot's output as a pattern with ``{shot}`` where it came from one, else its path."""
    path = shot.outputs[key.removeprefix("output_")]
    template = shot.output_templates.get(key)
    return template if template is not None and template.replace("{shot}", shot.name) == path else path


def _shared_values(shots: Sequence[Shot]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The shared shot keys with their value, and every output key the shots write."""
    outputs = tuple(k for k in OUTPUT_KEYS if any(k.removeprefix("output_") in s.outputs for s in shots))
    for key in outputs:
        missing = [s.name for s in shots if key.removeprefix("output_") not in s.outputs]
        if missing:
            raise InvalidInputError(
                f"farm bundle: shots {', '.join(missing)} have no {key} but others do; "
                "every task of a job writes the same outputs"
            )
    shared: dict[str, Any] = {}
    for key in outputs:
        templates = {_output_template(s, key) for s in shots}
        if len(templates) == 1:
            shared[key] = templates.pop()
    ratios = {s.downsample_ratio for s in shots}
    if len(ratios) == 1:
        ratio = ratios.pop()
        shared["downsample_ratio"] = "auto" if ratio is None else ratio
    return shared, outputs


def _frames_of(shot: Shot) -> FrameRange | None:
    """The frames a shot writes: its range, else the source's first to last frame."""
    if shot.frames is not None:
        return shot.frames
    from rvm_node.io.sources import open_source

    numbers = open_source(shot.input, start_frame=shot.start_frame, allow_gaps=shot.allow_gaps).frame_numbers
    return FrameRange(numbers[0], numbers[-1]) if numbers else None


def _labels(names: Sequence[str]) -> list[str]:
    labels: list[str] = []
    for name in names:
        label = _LABEL.sub("_", name) or "shot"
        candidate, n = label, 1
        while candidate in labels:
            n += 1
            candidate = f"{label}_{n}"
        labels.append(candidate)
    return labels


def plan_job(
    shots: Sequence[Shot],
    pool: PoolSettings,
    *,
    name: str,
    rvm_node: str = "rvm-node",
    split: int = 1,
    preroll: int = 0,
    shared_roots: Sequence[Path] = (),
) -> FarmJob:
    """The job for ``shots``: one task per shot, or per segment with ``split`` (as ``farm run`` splits)."""
    if not shots:
        raise InvalidInputError("farm bundle: no shots")
    roots = [Path(os.path.abspath(r)) for r in shared_roots]
    shared, outputs = _shared_values(shots)
    for key in outputs:
        if key in shared:
            shared[key] = _farm_path(str(shared[key]), key, roots)
    tasks: list[tuple[Shot, int | None, FrameRange | None]] = []
    for shot in shots:
        if split == 1:
            tasks.append((shot, None, _frames_of(shot)))
            continue
        for index, part in enumerate(split_shot(shot, split, preroll)):
            frames = part.frames
            if frames is not None and part.write_from is not None:
                frames = FrameRange(part.write_from, frames.last)
            tasks.append((shot, index + 1, frames))
    labels = _labels(
        [
            shot.name if segment is None else f"{shot.name}-part{segment}of{split}"
            for shot, segment, _ in tasks
        ]
    )
    planned = []
    for (shot, segment, frames), label in zip(tasks, labels, strict=True):
        settings = {k: v for k, v in shot_settings(shot).items() if k not in shared}
        text = json.dumps(settings, sort_keys=True)
        if len(text) > 1024:
            raise InvalidInputError(
                f"shot {shot.name}: its settings take {len(text)} characters; 1024 fit in a task"
            )
        planned.append(
            FarmTask(
                shot=shot.name,
                label=label,
                input=_farm_path(shot.input, f"shot {shot.name}: input", roots),
                outputs={
                    k: _farm_path(shot.outputs[k.removeprefix("output_")], f"shot {shot.name}: {k}", roots)
                    for k in outputs
                    if k not in shared
                },
                settings=settings,
                segment=segment,
                frames=frames,
            )
        )
    return FarmJob(
        name=name,
        tasks=tuple(planned),
        shared=shared,
        pool=pool,
        rvm_node=rvm_node,
        split=split,
        preroll=preroll,
        outputs=outputs,
    )


def task_argv(job: FarmJob, values: Mapping[str, str | None], *, progress: str | None = None) -> list[str]:
    """The command a task runs, from a value for each parameter name (a template placeholder or the
    value itself). A value of None leaves its option out."""

    def option(flag: str, name: str) -> list[str]:
        value = values[name]
        return [] if value is None else [flag, value]

    argv = [
        values["RvmNode"] or job.rvm_node,
        "farm",
        "run",
        values["Input"] or "",
        "--name",
        values["Shot"] or "",
    ]
    argv += option("--nodes", "Nodes") + option("--token-file", "TokenFile") + option("--ca-file", "CaFile")
    argv += option("--retries", "Retries") + option("--checkpoint-every", "CheckpointEvery")
    argv += option("--wait-for-node", "WaitForNode") + option("--shot-settings", "Settings")
    for key in dict.fromkeys((*job.outputs, *job.shared)):  # flags of the one shot-settings definition
        argv += option(SHOT_SETTINGS[key].flag, JOB_PARAMETERS[key])
    if job.split > 1:
        argv += ["--split", str(job.split), "--preroll", str(job.preroll), *option("--segment", "Segment")]
    if progress is not None:
        argv.append(progress)
    return argv


def task_values(job: FarmJob, task: FarmTask) -> dict[str, str | None]:
    """Every parameter's value for one task, as a farm manager without job parameters needs them."""
    values: dict[str, str | None] = {
        "RvmNode": job.rvm_node,
        "Nodes": job.pool.nodes,
        "TokenFile": job.pool.token_file,
        "CaFile": job.pool.ca_file,
        "Retries": str(job.pool.retries),
        "CheckpointEvery": str(job.pool.checkpoint_every),
        "WaitForNode": str(job.pool.wait_for_node),
        "Shot": task.shot,
        "Input": task.input,
        "Settings": json.dumps(task.settings, sort_keys=True),
        "Segment": None if task.segment is None else str(task.segment),
    }
    for key, value in job.shared.items():
        values[JOB_PARAMETERS[key]] = str(value)
    for key, value in task.outputs.items():
        values[JOB_PARAMETERS[key]] = value
    return values


@contextmanager
def writing_bundle(directory: Path, *, overwrite: bool) -> Iterator[Path]:
    """A new folder beside ``directory`` to write the bundle into. At the end it takes ``directory``'s
    place; if writing fails it is removed and nothing changed. An existing ``directory`` is kept unless
    ``overwrite``."""
    directory = Path(os.path.abspath(directory))
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{directory}: exists and is not a folder")
    if directory.exists() and not overwrite:
        raise InvalidInputError(f"{directory}: already exists (give --overwrite to replace it)")
    if not directory.parent.is_dir():
        raise InvalidInputError(f"{directory}: its folder {directory.parent} does not exist")
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=TEMPORARY_MARK, dir=directory.parent)
        )
    except OSError as exc:
        raise InvalidInputError(f"{directory}: cannot write the bundle there ({exc.strerror})") from None
    try:
        yield staging
        staging.chmod(0o755)
        if directory.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=TEMPORARY_MARK, dir=directory.parent)
            )
            os.replace(directory, old / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
