"""The modal operator in a real Blender GUI (under Xvfb), run by tests/test_blender_gui.py.

    xvfb-run blender --factory-startup --python tests/blender_gui_scenario.py -- '{"json": "arguments"}'

The bpy module has no event loop, so timers and modal operators only run in
Blender with a window. This scenario invokes ``rvm.matte_clip`` as the
panel's button does, watches it from a timer while the UI keeps running,
presses Esc with xdotool, then invokes it again to resume, and writes what
it saw to ``args["result"]`` as JSON. The sidebar's RVM tab is open
throughout, so the panel draws while the operator runs.

The Blender with a UI that installs here is Debian's (3.4, Python 3.10), so
the add-on runs the installed ``rvm-node`` program named in its preferences
(``args["program"]``) instead of its bundled cp311 wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import addon_utils
import bpy

ARGS: dict[str, Any] = json.loads(sys.argv[sys.argv.index("--") + 1])
OUT = os.path.dirname(ARGS["output"])
sys.path.insert(0, ARGS["plugins"])
seen: dict[str, Any] = {"ticks_while_running": 0}


def frames() -> list[str]:
    return sorted(f for f in os.listdir(OUT) if f.endswith(".exr")) if os.path.isdir(OUT) else []


def scene_state() -> dict[str, Any]:
    return {
        "images": [
            [i.name, i.source, i.colorspace_settings.name] for i in bpy.data.images if i.source != "VIEWER"
        ],
        "clips": [[c.name, c.frame_start] for c in bpy.data.movieclips],
    }


def setup() -> tuple[Any, Any]:
    bpy.context.preferences.view.show_splash = False
    addon_utils.enable("rvm_blender", default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons["rvm_blender"].preferences
    prefs.nodes = ARGS["node"]
    prefs.executable = ARGS["program"]
    prefs.auto_ratio, prefs.downsample_ratio = False, 1.0
    clip = bpy.data.movieclips.load(ARGS["clip"])
    window = bpy.context.window_manager.windows[0]
    area = max(window.screen.areas, key=lambda a: a.width * a.height)
    area.type = "CLIP_EDITOR"
    area.spaces.active.clip = clip
    area.spaces.active.show_region_ui = True
    return window, area


WINDOW, AREA = setup()


def invoke() -> None:
    with bpy.context.temp_override(window=WINDOW, area=AREA):
        result = bpy.ops.rvm.matte_clip("INVOKE_DEFAULT", output=ARGS["output"])
    seen.setdefault("invoked", []).append(sorted(result))


def finish() -> None:
    with open(ARGS["result"], "w") as handle:
        json.dump(seen, handle)
    bpy.ops.wm.quit_blender()


def step() -> float | None:
    """A timer: it keeps firing only if the UI is not blocked by the running operator."""
    phase = seen.setdefault("phase", "running")
    now = time.monotonic()
    if phase == "running":
        seen["ticks_while_running"] += 1
        if len(frames()) >= ARGS["cancel_after"]:
            subprocess.run(["xdotool", "mousemove", "400", "400", "key", "Escape"], check=True)
            seen.update(phase="cancelling", at=now, frames_at_escape=len(frames()))
    elif phase == "cancelling" and now - seen["at"] > 3.0:
        seen["after_cancel"] = {
            "frames": frames(),
            "hidden": sorted(f for f in os.listdir(OUT) if f.startswith(".")),
            **scene_state(),
        }
        seen.update(phase="resuming", at=now)
        invoke()
    elif phase == "resuming":
        loaded = any(i.name == "carphone_matte" for i in bpy.data.images)
        if loaded or now - seen["at"] > 120:
            seen["after_resume"] = {"frames": frames(), **scene_state()}
            finish()
            return None
    if now - seen.setdefault("started", now) > 240:
        finish()
        return None
    return 0.05


def show_panel() -> None:
    """Open the sidebar's RVM tab (Ctrl+Tab over it: Footage, Track, Stabilization, View, RVM), so it draws."""
    region = next(r for r in AREA.regions if r.type == "UI")
    x, y = region.x + region.width // 2, WINDOW.height - (region.y + region.height // 2)
    subprocess.run(["xdotool", "mousemove", str(x), str(y)], check=True)
    for _ in range(4):
        subprocess.run(["xdotool", "key", "ctrl+Tab", "sleep", "0.2"], check=True)


def begin() -> None:
    show_panel()
    invoke()
    bpy.app.timers.register(step, first_interval=0.05)


bpy.app.timers.register(begin, first_interval=1.0)
