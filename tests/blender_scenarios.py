"""Scenarios run inside real Blender (the bpy module) by tests/test_blender_plugin.py.

    python tests/blender_scenarios.py SCENARIO '{"json": "arguments"}'

Runs with the bpy venv's Python and ``BLENDER_USER_RESOURCES`` pointing at a
temporary folder. The add-on is installed the way a user would: the
extension zip through Blender's extension install, or the legacy folder
under ``scripts/addons``. The last stdout line is ``RESULT:`` and a JSON
object: what the operator reported and what the scene holds afterwards.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time
from typing import Any

import bpy


def install(args: dict[str, Any]) -> str:
    """Install and enable the add-on; return its module name."""
    if "zip" in args:
        bpy.ops.extensions.package_install_files(
            filepath=args["zip"], repo="user_default", enable_on_install=True
        )
        module = "bl_ext.user_default.rvm_blender"
    else:
        import addon_utils

        bpy.utils.refresh_script_paths()
        addon_utils.modules_refresh()
        addon_utils.enable("rvm_blender", default_set=True, handle_error=None)
        module = "rvm_blender"
    if module not in bpy.context.preferences.addons:
        raise SystemExit(f"the add-on {module} did not enable")
    prefs = bpy.context.preferences.addons[module].preferences
    for key, value in args.get("prefs", {}).items():
        setattr(prefs, key, value)
    return module


def _save(args: dict[str, Any]) -> None:
    """With ``blend``, save the scene there first: "submit to the farm" writes its bundles beside it."""
    if "blend" in args:
        os.makedirs(os.path.dirname(args["blend"]), exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=args["blend"])


def snapshot() -> dict[str, Any]:
    scene = bpy.context.scene
    editor = scene.sequence_editor
    strips = []
    if editor is not None:
        everything = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
        for s in everything:
            strip = {
                "name": s.name,
                "type": s.type,
                "channel": s.channel,
                "frame_start": s.frame_start,
                "final_start": s.frame_final_start,
                "final_end": s.frame_final_end,
                "blend_type": s.blend_type,
                "colorspace": s.colorspace_settings.name if hasattr(s, "colorspace_settings") else None,
            }
            if s.type == "IMAGE":
                strip["directory"] = bpy.path.abspath(s.directory)
                strip["files"] = [e.filename for e in s.elements]
            strips.append(strip)
    if bpy.app.version >= (5, 0, 0):  # 5.0: the compositor is a node group of the scene's own
        tree = scene.compositing_node_group
    else:
        tree = scene.node_tree if scene.use_nodes else None
    image_nodes = [] if tree is None else [n for n in tree.nodes if n.bl_idname == "CompositorNodeImage"]
    return {
        "images": [
            {
                "name": i.name,
                "source": i.source,
                "colorspace": i.colorspace_settings.name,
                "filepath": bpy.path.abspath(i.filepath),
                "range": [i.get("rvm_frame_start"), i.get("rvm_frame_duration"), i.get("rvm_frame_offset")],
            }
            for i in bpy.data.images
            if i.source in ("FILE", "SEQUENCE")
        ],
        "clips": [
            {
                "name": c.name,
                "source": c.source,
                "frame_start": c.frame_start,
                "frame_offset": c.frame_offset,
                "duration": c.frame_duration,
                "colorspace": c.colorspace_settings.name,
                "filepath": bpy.path.abspath(c.filepath),
            }
            for c in bpy.data.movieclips
        ],
        "strips": strips,
        "nodes": [] if tree is None else sorted(n.bl_idname for n in tree.nodes),
        "image_nodes": [
            [n.image.name if n.image else None, n.frame_start, n.frame_duration, n.frame_offset]
            for n in image_nodes
        ],
        "links": []
        if tree is None
        else sorted(
            [link.from_node.bl_idname, link.from_socket.name, link.to_node.bl_idname, link.to_socket.name]
            for link in tree.links
        ),
    }


def _call(operator: Any, **kwargs: Any) -> dict[str, Any]:
    """Run an operator; Blender raises RuntimeError carrying the ERROR report."""
    try:
        result = operator(**kwargs)
    except RuntimeError as exc:
        return {"result": "ERROR", "error": str(exc).strip()}
    return {"result": sorted(result)[0], "error": ""}


def _load_clip(spec: dict[str, Any]) -> Any:
    clip = bpy.data.movieclips.load(spec["path"])
    clip.frame_start = spec.get("frame_start", 1)
    clip.frame_offset = spec.get("frame_offset", 0)
    if "colorspace" in spec:
        clip.colorspace_settings.name = spec["colorspace"]
    return clip


def _scene_range(args: dict[str, Any]) -> None:
    if "scene_range" in args:
        bpy.context.scene.frame_start, bpy.context.scene.frame_end = args["scene_range"]


def _files(folder: str | None) -> dict[str, int]:
    """Modification times (ns) of the files under ``folder``."""
    if not folder or not os.path.isdir(folder):
        return {}
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.stat(path).st_mtime_ns
    return found


def _run_op(operator: Any, args: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """The operator with ``args["op"]``; with ``args["again"]``, a second time with those options on top."""
    before = snapshot()
    outcome = {**_call(operator, **fixed, **args["op"]), "before": before, "after": snapshot()}
    if "again" in args:
        files = _files(args.get("watch"))
        again = _call(operator, **fixed, **{**args["op"], **args["again"]})
        outcome["again"] = {
            **again,
            "after": snapshot(),
            "files_before": files,
            "files_after": _files(args.get("watch")),
        }
    return outcome


def matte_clip(args: dict[str, Any]) -> dict[str, Any]:
    install(args)
    _save(args)
    _scene_range(args)
    clip = _load_clip(args["clip"])
    return _run_op(bpy.ops.rvm.matte_clip, args, clip=clip.name)


def this_computer(args: dict[str, Any]) -> dict[str, Any]:
    """Shots on "This computer" with no render node set: the first starts the private node, the second
    reuses it; then it is killed, and the third starts a new one. Each call says the node's process."""
    install(args)
    clip = _load_clip(args["clip"])
    from rvm_node.client.private_node import running_private_node

    shots = []
    for n, options in enumerate(args["shots"]):
        outcome = _call(bpy.ops.rvm.matte_clip, clip=clip.name, **options)
        node = running_private_node()
        pid = node.pid if node is not None else None
        shots.append({**outcome, "pid": pid})
        if n == len(args["shots"]) - 2 and pid is not None:  # a node that dies between shots
            os.kill(pid, 9)
            time.sleep(0.5)
    return {"shots": shots, "full_resolution": _full_resolution_stage()}


def _full_resolution_stage() -> str:
    """Which loops the bundled engine's full-resolution stage runs in Blender's Python, after running
    them once (numba compiles there on first use)."""
    import numpy as np

    from rvm_node.engine import fullres

    fullres.downsample(np.zeros((3, 8, 8), np.uint8), 0.5)
    return fullres.kernels_name()


def _add_strips(specs: list[dict[str, Any]]) -> list[Any]:
    scene = bpy.context.scene
    editor = scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    made = []
    for spec in specs:
        if spec["type"] == "MOVIE":
            strip = strips.new_movie(spec["name"], spec["path"], spec["channel"], spec["frame_start"])
        elif spec["type"] == "COLOR":
            extent = (  # 5.0 takes a length where 4.x took the end frame
                {"length": spec["frame_end"] - spec["frame_start"]}
                if bpy.app.version >= (5, 0, 0)
                else {"frame_end": spec["frame_end"]}
            )
            strip = strips.new_effect(spec["name"], "COLOR", spec["channel"], spec["frame_start"], **extent)
        else:
            files = spec["files"]
            strip = strips.new_image(spec["name"], files[0], spec["channel"], spec["frame_start"])
            for path in files[1:]:
                strip.elements.append(path.rsplit("/", 1)[-1])
        if spec.get("trim_start"):
            strip.frame_offset_start = spec["trim_start"]
        if spec.get("trim_end"):
            strip.frame_offset_end = spec["trim_end"]
        made.append(strip)
    return made


def matte_strips(args: dict[str, Any]) -> dict[str, Any]:
    install(args)
    _save(args)
    _scene_range(args)
    _add_strips(args["strips"])
    for strip in _all_strips():
        strip.select = strip.name in args.get("select", [s["name"] for s in args["strips"]])
    return _run_op(bpy.ops.rvm.matte_strip, args)


def _all_strips() -> Any:
    editor = bpy.context.scene.sequence_editor
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def test_connection(args: dict[str, Any]) -> dict[str, Any]:
    install(args)
    return _call(bpy.ops.rvm.test_connection, **args.get("op", {}))


def cancel_then_resume(args: dict[str, Any]) -> dict[str, Any]:
    """Drive a run as the modal operator does (start, poll, Esc), then run the operator again to resume."""
    module = install(args)
    jobs = importlib.import_module(f"{module}.jobs")
    shots = importlib.import_module(f"{module}.shots")
    clip = _load_clip(args["clip"])
    prefs = bpy.context.preferences.addons[module].preferences
    choices = jobs.Choices(
        output=shots.OutputChoice(args["op"]["output"], "EXR", frozenset({"alpha"})),
        run=prefs.run_options(prefs.ratio(), nodes=args["op"]["node"]),
    )
    run = jobs.MatteRun(bpy.context.scene, jobs.clip_targets([clip], bpy.context.scene, choices), choices)
    process = run.start()
    deadline = time.monotonic() + 120
    while process.poll() and process.done < args["cancel_after"] and time.monotonic() < deadline:
        time.sleep(0.01)
    done_at_cancel = process.done
    process.cancel()
    outcome = run.finish(bpy.context)
    folder = os.path.dirname(args["op"]["output"])
    cancelled = {
        "files": {name: _digest(os.path.join(folder, name)) for name in sorted(os.listdir(folder))},
        "errors": outcome.errors,
        "loaded": outcome.loaded,
        "cancelled": outcome.cancelled,
        "done_at_cancel": done_at_cancel,
        "after": snapshot(),
    }
    resumed = _call(bpy.ops.rvm.matte_clip, clip=clip.name, **args["op"])
    return {"cancel": cancelled, "resume": {**resumed, "after": snapshot()}}


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _raises_attribute_error(*args: Any, **kwargs: Any) -> None:
    raise AttributeError("'CompositorNodeSetAlpha' object has no attribute 'mode'")


def calls(args: dict[str, Any]) -> dict[str, Any]:
    """Several operator calls in one Blender; each says whether the scene is as it was before it.

    A call may carry a setup: ``strips`` made and selected for it alone, ``prefs`` set for it alone.
    """
    module = install(args)
    clip = _load_clip(args["clip"])
    missing = bpy.data.movieclips.load(args["clip"]["path"])
    missing.name = "missing"
    missing.filepath = args["missing_clip"]
    operators = {
        "matte_clip": lambda **kw: bpy.ops.rvm.matte_clip(clip=clip.name, **kw),
        "matte_clip_named": bpy.ops.rvm.matte_clip,
        "matte_missing_clip": lambda **kw: bpy.ops.rvm.matte_clip(clip="missing", **kw),
        "matte_strip": bpy.ops.rvm.matte_strip,
        "test_connection": bpy.ops.rvm.test_connection,
    }
    prefs = bpy.context.preferences.addons[module].preferences
    results = []
    for name, operator, kwargs, *setup in args["calls"]:
        extra = setup[0] if setup else {}
        made = _strips_for_call(extra) if "strips" in extra else []
        saved = {key: getattr(prefs, key) for key in extra.get("prefs", {})}
        for key, value in extra.get("prefs", {}).items():
            setattr(prefs, key, value)
        broken = extra.get("break")  # "module.function": made to raise what Blender raises on an API change
        if broken:
            where, function = broken.rsplit(".", 1)
            target = importlib.import_module(f"{module}.{where}")
            original = getattr(target, function)
            setattr(target, function, _raises_attribute_error)
        folders = set(glob.glob(os.path.join(tempfile.gettempdir(), "rvm-blender-*")))
        before = snapshot()
        outcome = _call(operators[operator], **kwargs)
        left = sorted(set(glob.glob(os.path.join(tempfile.gettempdir(), "rvm-blender-*"))) - folders)
        results.append([name, {**outcome, "unchanged": snapshot() == before, "folders_left": left}])
        if broken:
            setattr(target, function, original)
        for key, value in saved.items():
            setattr(prefs, key, value)
        for strip in made:
            _all_strips().remove(strip)
    return {"calls": results}


def _strips_for_call(setup: dict[str, Any]) -> list[Any]:
    """Strips for one call, selected alone: ``strips`` as in matte_strips, ``set`` attributes, ``retime``."""
    made = _add_strips(setup["strips"])
    for strip in _all_strips():
        strip.select = any(strip == m for m in made)
    for strip in made:
        for attribute, value in setup.get("set", {}).get(strip.name, {}).items():
            setattr(strip, attribute, value)
        if strip.name in setup.get("retime", []):
            bpy.context.scene.sequence_editor.active_strip = strip
            if hasattr(bpy.context.workspace, "sequencer_scene"):  # 5.0: the operators edit this scene
                bpy.context.workspace.sequencer_scene = bpy.context.scene
            bpy.ops.sequencer.retiming_key_add(timeline_frame=int(strip.frame_final_start) + 5)
    return made


SCENARIOS = {
    "calls": calls,
    "matte_clip": matte_clip,
    "matte_strips": matte_strips,
    "this_computer": this_computer,
    "test_connection": test_connection,
    "cancel_then_resume": cancel_then_resume,
}

if __name__ == "__main__":
    name, arguments = sys.argv[1], json.loads(sys.argv[2])
    print("RESULT:" + json.dumps(SCENARIOS[name](arguments)), flush=True)
