"""``rvm.matte_clip`` and ``rvm.matte_strip``: modal with progress and Esc, or ``blocking=True`` for scripts.

Options left unset come from the add-on preferences. ``node`` (one or more
addresses, comma-separated) and ``output`` (the alpha pattern) override them:

    bpy.ops.rvm.matte_clip(clip="plate", node="127.0.0.1:50051",
                           output="/tmp/m/matte.####.exr", blocking=True)

``target="FARM"`` (or the preferences' target) submits the shots to the
farm as one job bundle instead, and loads the mattes at once, as frames to come.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from .command import environment, start_private_node
from .jobs import (
    Choices,
    MatteRun,
    Outcome,
    Target,
    blender_ocio_config,
    clip_targets,
    one_line,
    selected_strips,
    strip_targets,
    submit_to_farm,
)
from .preferences import FORMAT_ITEMS, OUTPUT_ITEMS, TARGET_ITEMS, addon_preferences
from .shots import OutputChoice, PluginError

__all__ = ["RVM_OT_matte_clip", "RVM_OT_matte_strip"]


class _MatteOperator:
    """Shared options and the run loop; subclasses say which shots."""

    outputs: EnumProperty(name="Outputs", items=OUTPUT_ITEMS, options={"ENUM_FLAG"})  # type: ignore[valid-type]
    file_format: EnumProperty(name="Format", items=FORMAT_ITEMS)  # type: ignore[valid-type]
    frame_range: EnumProperty(  # type: ignore[valid-type]
        name="Frames",
        items=[
            ("SOURCE", "Source", "Every frame of the clip or strip"),
            ("SCENE", "Scene", "Only the frames inside the scene's frame range"),
        ],
        default="SOURCE",
    )
    auto_ratio: BoolProperty(name="Auto downsample", default=True)  # type: ignore[valid-type]
    downsample_ratio: FloatProperty(name="Downsample ratio", min=0.05, max=1.0, default=0.5)  # type: ignore[valid-type]
    existing: EnumProperty(  # type: ignore[valid-type]
        name="Existing frames",
        items=[
            ("RESUME", "Resume", "Keep verified frames already written and matte the rest"),
            ("OVERWRITE", "Overwrite", "Delete the shot's frames in the range and matte them again"),
        ],
        default="RESUME",
    )
    node: StringProperty(name="Node", description="HOST:PORT of the render node(s), comma-separated")  # type: ignore[valid-type]
    output: StringProperty(name="Output", description="Alpha output pattern, e.g. //mattes/{shot}.####.exr")  # type: ignore[valid-type]
    blocking: BoolProperty(  # type: ignore[valid-type]
        name="Blocking", description="Wait for the mattes (scripts); no progress bar or Esc", default=False
    )
    target: EnumProperty(name="Target", items=TARGET_ITEMS)  # type: ignore[valid-type]

    _run: MatteRun | None = None
    _timer: Any = None

    # -- what subclasses provide ------------------------------------------------
    def targets(self, context: Any, choices: Choices) -> list[Target]:
        raise NotImplementedError

    def wants_compositor(self) -> bool:
        return False

    # -- choices ---------------------------------------------------------------
    def _given(self, name: str) -> bool:
        return bool(self.properties.is_property_set(name))  # type: ignore[attr-defined]

    def _target(self, prefs: Any) -> str:
        return str(prefs.target_for(self.target if self._given("target") else prefs.target, self.node))

    def choices(self, context: Any) -> Choices:
        prefs = addon_preferences(context)
        ratio = prefs.ratio()
        if self._given("auto_ratio") or self._given("downsample_ratio"):
            ratio = None if self.auto_ratio else float(self.downsample_ratio)
        file_format = self.file_format if self._given("file_format") else prefs.file_format
        kinds = set(self.outputs) if self._given("outputs") else set(prefs.outputs)
        local = None
        if self._target(prefs) == "LOCAL":
            env = environment(os.environ, sys.path, blender_ocio_config())
            local = start_private_node(prefs.executable_path(), env)
        run = prefs.run_options(ratio, nodes=self.node, file_format=file_format, local=local)
        return Choices(
            output=OutputChoice(self.output or prefs.output_pattern, file_format, frozenset(kinds)),
            run=run,
            scene_range=self.frame_range == "SCENE",
            overwrite=self.existing == "OVERWRITE",
            compositor=self.wants_compositor(),
        )

    # -- running ---------------------------------------------------------------
    def execute(self, context: Any) -> set[str]:
        try:
            choices = self.choices(context)
            targets = self.targets(context, choices)
            prefs = addon_preferences(context)
            if self._target(prefs) == "FARM":
                return self._report(
                    submit_to_farm(context.scene, targets, choices, prefs.farm_options(), bpy.data.filepath)
                )
            run = MatteRun(context.scene, targets, choices)
            process = run.start()
        except Exception as exc:  # whatever went wrong: one line, nothing started, the scene as it was
            self.report({"ERROR"}, f"RVM: {one_line(exc)}")  # type: ignore[attr-defined]
            return {"CANCELLED"}
        wm = context.window_manager
        if self.blocking or context.window is None:
            wm.progress_begin(0, max(process.total, 1))
            try:
                process.wait(lambda p: wm.progress_update(p.done))
            except Exception as exc:
                process.cancel()
                self.report({"ERROR"}, f"RVM: {one_line(exc)}")  # type: ignore[attr-defined]
            finally:
                wm.progress_end()
            return self._finish(run, context)
        self._run = run
        wm.progress_begin(0, max(process.total, 1))
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def invoke(self, context: Any, event: Any) -> set[str]:
        return self.execute(context)

    def modal(self, context: Any, event: Any) -> set[str]:
        run = self._run
        if run is None or run.process is None:
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            run.process.cancel()
        elif event.type != "TIMER" or run.process.poll():
            if event.type == "TIMER":
                context.window_manager.progress_update(run.process.done)
                context.workspace.status_text_set(run.process.status_text())
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        context.workspace.status_text_set(None)
        self._run = None
        return self._finish(run, context)

    def _finish(self, run: MatteRun, context: Any) -> set[str]:
        try:
            return self._report(run.finish(context))
        except (
            Exception
        ) as exc:  # finish takes back what it loaded and removes its folder; say it in one line
            self.report({"ERROR"}, f"RVM: {one_line(exc)}")  # type: ignore[attr-defined]
            return {"CANCELLED"}

    def _report(self, outcome: Outcome) -> set[str]:
        if outcome.errors:
            level = "WARNING" if outcome.cancelled or outcome.submitted else "ERROR"
            self.report({level}, outcome.error_line())  # type: ignore[attr-defined]
            if outcome.submitted:
                return {"FINISHED"}  # the job is on the farm: a matte not loaded does not undo that
        if outcome.submitted and not outcome.errors:
            loaded = f"; mattes load as frames arrive: {', '.join(outcome.loaded)}" if outcome.loaded else ""
            self.report({"INFO"}, f"RVM: {outcome.submitted}{loaded}")  # type: ignore[attr-defined]
            return {"FINISHED"}
        if outcome.loaded:
            self.report({"INFO"}, f"RVM: mattes loaded for {', '.join(outcome.loaded)}")  # type: ignore[attr-defined]
            return {"FINISHED"}
        return {"CANCELLED"}


class RVM_OT_matte_clip(_MatteOperator, bpy.types.Operator):  # type: ignore[misc]
    """Matte the movie clip on a render node and load the matte as a clip and an image sequence"""

    bl_idname = "rvm.matte_clip"
    bl_label = "Matte Clip"
    bl_options = {"REGISTER"}

    clip: StringProperty(name="Clip", description="Movie clip to matte (default: the Clip Editor's)")  # type: ignore[valid-type]
    compositor: BoolProperty(  # type: ignore[valid-type]
        name="Compositor setup", description="Add plate + matte -> Set Alpha nodes to the compositor"
    )

    def wants_compositor(self) -> bool:
        return bool(self.compositor)

    def targets(self, context: Any, choices: Choices) -> list[Target]:
        if self.clip:
            clip = bpy.data.movieclips.get(self.clip)
            if clip is None:
                raise PluginError(f"no movie clip named {self.clip!r}")
        else:
            space = context.space_data
            clip = getattr(space, "clip", None) if getattr(space, "type", "") == "CLIP_EDITOR" else None
            if clip is None:
                raise PluginError("open a clip in the Clip Editor, or name one with clip=")
        return clip_targets([clip], context.scene, choices)


class RVM_OT_matte_strip(_MatteOperator, bpy.types.Operator):  # type: ignore[misc]
    """Matte the selected movie and image strips on the render nodes; add each matte one channel up"""

    bl_idname = "rvm.matte_strip"
    bl_label = "Matte Strips"
    bl_options = {"REGISTER"}

    def targets(self, context: Any, choices: Choices) -> list[Target]:
        strips = selected_strips(context.scene)
        if not strips:
            raise PluginError("select one or more movie or image strips in the Sequencer")
        return strip_targets(strips, context.scene, choices)
