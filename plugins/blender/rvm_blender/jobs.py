"""One matte run: the shots, the rvm-node subprocess, and loading what it made.

The modal operator and the ``blocking=True`` path drive the same
:class:`MatteRun`: ``start()``, then ``poll()`` until it ends (or
``cancel()``), then ``finish()``, which loads the finished shots and says
what failed. Nothing in the scene changes before ``finish()``, and only for
shots whose every frame was written.

:func:`submit_to_farm` sends the same shots to the farm as one job bundle
instead (:mod:`.farm`), and loads each matte at once, as frames to come;
nothing in the scene changes unless the job was submitted.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from . import compat, loading
from .command import RunOptions, build_command, check_writable, clear_outputs, environment
from .farm import FarmOptions, submit_requests
from .process import MatteProcess, remove_temporaries
from .shots import OutputChoice, PluginError, ShotRequest, shot_name, unique_names
from .sources import clip_request, strip_request

__all__ = [
    "Choices",
    "MatteRun",
    "Outcome",
    "Target",
    "blender_ocio_config",
    "load_matte",
    "submit_to_farm",
]


@dataclass(frozen=True)
class Choices:
    """What the user asked for, preferences filled in."""

    output: OutputChoice
    run: RunOptions
    scene_range: bool = False
    overwrite: bool = False
    compositor: bool = False


@dataclass(frozen=True)
class Target:
    """A shot and what it came from: ``kind`` is ``clip`` or ``strip``, found again by name when loading."""

    kind: str
    source: str
    request: ShotRequest


@dataclass
class Outcome:
    loaded: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False
    submitted: str = ""  # submitted to the farm: what the submit step said, and where the bundle is

    def error_line(self) -> str:
        return "RVM: " + (f"{self.submitted}, but " if self.submitted else "") + "; ".join(self.errors)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (its type where it has none), never a traceback."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def blender_ocio_config() -> str | None:
    """Blender's own OCIO config: it names the colour spaces clips and strips are tagged with."""
    path = os.path.join(bpy.utils.system_resource("DATAFILES"), "colormanagement", "config.ocio")
    return path if os.path.isfile(path) else None


def clip_targets(clips: list[Any], scene: Any, choices: Choices) -> list[Target]:
    names = unique_names([shot_name(c.name) for c in clips])
    return [
        Target("clip", c.name, clip_request(c, scene, choices.scene_range, choices.output, name))
        for c, name in zip(clips, names, strict=True)
    ]


def strip_targets(strips: list[Any], scene: Any, choices: Choices) -> list[Target]:
    names = unique_names([shot_name(s.name) for s in strips])
    return [
        Target("strip", s.name, strip_request(s, scene, choices.scene_range, choices.output, name))
        for s, name in zip(strips, names, strict=True)
    ]


class MatteRun:
    def __init__(self, scene: Any, targets: list[Target], choices: Choices) -> None:
        if not targets:
            raise PluginError("nothing to matte")
        self.scene_name = scene.name
        self.targets = targets
        self.choices = choices
        self.workdir = Path(tempfile.mkdtemp(prefix="rvm-blender-"))
        self.process: MatteProcess | None = None

    @property
    def patterns(self) -> list[str]:
        return [p for t in self.targets for p in t.request.outputs.values()]

    def start(self) -> MatteProcess:
        """Check the outputs, then start rvm-node. Raises :class:`PluginError` with nothing started."""
        try:
            for directory in sorted({os.path.dirname(p) for p in self.patterns}):
                check_writable(directory)
            requests = [t.request for t in self.targets]
            argv = build_command(requests, self.choices.run, self.workdir)
            env = environment(os.environ, sys.path, blender_ocio_config())
            if self.choices.overwrite:
                for request in requests:
                    clear_outputs(request)
            process = MatteProcess(argv, env, self.workdir, {r.name: len(r.frames) for r in requests})
            process.start()
        except Exception as exc:  # nothing started; the temporary folder goes
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise PluginError(one_line(exc)) from None
        self.process = process
        return process

    def finish(self, context: Any) -> Outcome:
        """Load every finished shot; say what did not finish and why."""
        process = self.process
        outcome = Outcome(cancelled=process is not None and process.cancelled)
        if process is None:
            return outcome
        try:
            self._finish(context, process, outcome)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return outcome

    def _finish(self, context: Any, process: MatteProcess, outcome: Outcome) -> None:
        remove_temporaries(self.patterns)
        scene = bpy.data.scenes.get(self.scene_name) or context.scene
        for target in self.targets:
            shot = process.shots[target.request.name]
            if shot.state == "done":
                try:
                    with loading.all_or_nothing(scene):
                        self._load(scene, target)
                    outcome.loaded.append(target.request.name)
                except Exception as exc:  # whatever Blender raises: one line, and the scene as it was
                    outcome.errors.append(
                        f"{target.request.name}: mattes written but not loaded: {one_line(exc)}"
                    )
            elif process.cancelled:
                outcome.errors.append(
                    f"{target.request.name}: cancelled; {shot.done} complete frames kept, run again to resume"
                )
            else:
                reason = shot.message.splitlines()[0] if shot.message else process.error_line()
                outcome.errors.append(f"{target.request.name}: {reason}")

    def _load(self, scene: Any, target: Target) -> None:
        load_matte(scene, target, self.choices.compositor)


def _plate_strip(scene: Any, name: str) -> Any:
    return compat.all_strips(scene.sequence_editor)[name]


def load_matte(scene: Any, target: Target, compositor: bool, arriving: bool = False) -> None:
    """Load a target's matte. Everything that can fail is looked up first, so a failed load changes nothing.

    ``arriving``: the farm is still writing the frames; what shows them as they arrive is loaded
    (for a clip, the image sequence, in the compositor through an Image node).
    """
    request = target.request
    alpha = request.outputs.get("alpha")
    if alpha is None:
        return  # only foreground or composite was asked for: they stay on disk
    label = f"{request.name}_matte"
    if target.kind == "clip":
        plate = bpy.data.movieclips[target.source]
        image = loading.load_image_sequence(alpha, request.frames, label, arriving=arriving)
        if arriving:
            if compositor:
                loading.add_compositor(scene, plate, image, request.frames)
            return
        matte = loading.add_matte_clip(alpha, request.frames, label)
        if compositor:
            loading.add_compositor(scene, plate, matte)
    else:
        channel = loading.matte_channel(scene, _plate_strip(scene, target.source), label, request.frames)
        loading.load_image_sequence(alpha, request.frames, label, arriving=arriving)
        loading.add_matte_strip(scene, channel, alpha, request.frames, label)


def _check_loadable(scene: Any, targets: list[Target]) -> None:
    """What loading a matte needs, looked up before a job is submitted: the plate, a free channel."""
    for target in targets:
        try:
            if target.kind == "clip":
                bpy.data.movieclips[target.source]
            elif "alpha" in target.request.outputs:
                plate = _plate_strip(scene, target.source)
                loading.matte_channel(scene, plate, f"{target.request.name}_matte", target.request.frames)
        except KeyError:
            raise PluginError(f"{target.kind} {target.source} is gone") from None
        except PluginError as exc:
            raise PluginError(f"{target.request.name}: the matte could not be loaded: {exc}") from None


def submit_to_farm(
    scene: Any, targets: list[Target], choices: Choices, farm: FarmOptions, blend_path: str
) -> Outcome:
    """Submit ``targets`` as one farm job, then load each matte as frames to come.

    Raises :class:`PluginError` (one line) with the scene unchanged when the job was not submitted.
    """
    if not targets:
        raise PluginError("nothing to matte")
    _check_loadable(scene, targets)
    requests = [t.request for t in targets]

    def clear() -> None:  # "overwrite": the farm resumes from frames on disk, so these go first
        for request in requests:
            clear_outputs(request)

    submitted = submit_requests(
        requests, choices.run, farm, blend_path, before_submit=clear if choices.overwrite else None
    )
    outcome = Outcome(submitted=f"{submitted.said} (bundle {submitted.bundle})")
    for target in targets:
        try:
            with loading.all_or_nothing(scene):
                load_matte(scene, target, choices.compositor, arriving=True)
            outcome.loaded.append(target.request.name)
        except Exception as exc:  # the job is submitted whatever happens here: said as such
            outcome.errors.append(f"{target.request.name}: matte not loaded: {one_line(exc)}")
    return outcome


def selected_strips(scene: Any) -> list[Any]:
    editor = scene.sequence_editor
    if editor is None:
        return []
    return [s for s in compat.sequence_strips(editor) if s.select and s.type in ("MOVIE", "IMAGE")]
