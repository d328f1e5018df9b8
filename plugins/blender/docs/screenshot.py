"""Screenshot of the add-on's Clip Editor panel, taken in a real Blender GUI.

    xvfb-run -a -s "-screen 0 1600x900x24" blender --factory-startup \\
        --python plugins/blender/docs/screenshot.py -- CLIP OUT.png

Enables the add-on from this checkout, shows CLIP in a Clip Editor with the
sidebar open, switches the sidebar to the RVM tab the way a user would
(Ctrl+Tab over the sidebar, sent with xdotool), saves a screenshot of the
window to OUT.png and quits. Needs xdotool on the virtual display.
"""

from __future__ import annotations

import os
import subprocess
import sys

import addon_utils
import bpy

ARGS = sys.argv[sys.argv.index("--") + 1 :]
CLIP, OUT = ARGS[0], ARGS[1]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def setup() -> None:
    bpy.context.preferences.view.show_splash = False
    addon_utils.enable("rvm_blender", default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons["rvm_blender"].preferences
    prefs.nodes = "render01:50051, render02:50051"
    clip = bpy.data.movieclips.load(CLIP)
    window = bpy.context.window_manager.windows[0]
    area = max(window.screen.areas, key=lambda a: a.width * a.height)
    area.type = "CLIP_EDITOR"
    space = area.spaces.active
    space.clip = clip
    space.show_region_ui = True


def open_rvm_tab() -> None:
    """Hover the Clip Editor's sidebar and Ctrl+Tab through its tabs (Footage, Track, Stabilization, View) to RVM."""
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "CLIP_EDITOR")
    region = next(r for r in area.regions if r.type == "UI")
    xdotool("mousemove", region.x + region.width // 2, window.height - (region.y + region.height // 2))
    for _ in range(4):
        xdotool("key", "ctrl+Tab")


def xdotool(*args: object) -> None:
    subprocess.run(["xdotool", *map(str, args)], check=True)
    subprocess.run(["xdotool", "sleep", "0.2"], check=True)


def shoot() -> None:
    """Save the window, cropped to the Clip Editor (clip and RVM panel), then quit."""
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "CLIP_EDITOR")
    with bpy.context.temp_override(window=window):
        bpy.ops.screen.screenshot(filepath=OUT)
    image = bpy.data.images.load(OUT)
    width = image.size[0]
    pixels = list(image.pixels)
    image.scale(area.width, area.height)  # the same number of pixels as the crop, filled below
    crop = []
    for row in range(area.y, area.y + area.height):
        start = (row * width + area.x) * 4
        crop.extend(pixels[start : start + area.width * 4])
    image.pixels = crop
    image.filepath_raw = OUT
    image.file_format = "PNG"
    image.save()
    bpy.ops.wm.quit_blender()


setup()
bpy.app.timers.register(open_rvm_tab, first_interval=2.0)  # timers that return None run once
bpy.app.timers.register(shoot, first_interval=4.0)
