"""Sidebar panels ("RVM" tab) in the Clip Editor and the Sequencer."""

from __future__ import annotations

from typing import Any

import bpy

from .preferences import ADDON

__all__ = ["RVM_PT_clip", "RVM_PT_sequencer"]


def _draw_settings(layout: Any, context: Any) -> None:
    addon = context.preferences.addons.get(ADDON)
    if addon is None:
        return
    prefs = addon.preferences
    box = layout.box()
    box.prop(prefs, "target", text="")
    box.prop(prefs, "nodes", text="", icon="NETWORK_DRIVE")
    box.prop(prefs, "output_pattern", text="", icon="FILE_FOLDER")
    box.prop(prefs, "file_format", text="")
    box.prop(prefs, "outputs")
    row = box.row()
    row.prop(prefs, "auto_ratio", text="Auto")
    sub = row.row()
    sub.enabled = not prefs.auto_ratio
    sub.prop(prefs, "downsample_ratio", text="")
    box.operator("rvm.test_connection", icon="LINKED")


class RVM_PT_clip(bpy.types.Panel):  # type: ignore[misc]
    bl_label = "RVM Matte"
    bl_space_type = "CLIP_EDITOR"
    bl_region_type = "UI"
    bl_category = "RVM"

    def draw(self, context: Any) -> None:
        layout = self.layout
        clip = getattr(context.space_data, "clip", None)
        layout.label(text=clip.name if clip else "No clip", icon="SEQUENCE")
        row = layout.row()
        row.enabled = clip is not None
        row.operator("rvm.matte_clip", icon="IMAGE_ALPHA")
        _draw_settings(layout, context)


class RVM_PT_sequencer(bpy.types.Panel):  # type: ignore[misc]
    bl_label = "RVM Matte"
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "RVM"

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.operator("rvm.matte_strip", icon="IMAGE_ALPHA")
        _draw_settings(layout, context)
