"""Add-on preferences: the render nodes, TLS and token, the defaults every operator starts from, and the farm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from .command import RunOptions, environment, info_command, last_error, parse_nodes
from .farm import DEADLINE_CLOUD, FarmOptions
from .shots import PluginError

__all__ = ["RVM_OT_test_connection", "RvmPreferences", "addon_preferences"]

ADDON = __package__ or "rvm_blender"
DEFAULT_OUTPUT = "//mattes/{shot}/{shot}_matte.####.exr"

FORMAT_ITEMS = [
    ("EXR", "OpenEXR (RGBA half)", "16-bit half float, ZIP, R=G=B=A=matte"),
    ("PNG16", "PNG (16-bit)", "16-bit grey PNG, loaded as Non-Color"),
]
TARGET_ITEMS = [
    ("HERE", "Run here", "Matte on the render nodes now and load the mattes when they are done"),
    (
        "LOCAL",
        "This computer",
        "Matte on a private rvm-node on this computer, started on first use and stopped when Blender quits "
        "(also what Run here does when no render node is set)",
    ),
    ("FARM", "Submit to the farm", "Submit a farm job bundle and load the mattes at once, as frames to come"),
]
FARM_FORMAT_ITEMS = [
    (
        "OPENJD",
        "Open Job Description",
        "A job bundle (template.yaml) for the submit command, e.g. Deadline Cloud",
    ),
    ("OPENCUE", "OpenCue", "A job spec (job.xml) sent to the Cuebot; needs opencue-pyoutline in Blender"),
]
OUTPUT_ITEMS = [
    ("alpha", "Alpha", "The matte"),
    ("foreground", "Foreground", "The predicted foreground colour"),
    ("composition", "Composite", "The foreground over a green background"),
]


def addon_preferences(context: Any) -> Any:
    """This add-on's preferences (it is enabled: its operators are registered only then)."""
    return context.preferences.addons[ADDON].preferences


class RvmPreferences(bpy.types.AddonPreferences):  # type: ignore[misc]
    bl_idname = ADDON

    nodes: StringProperty(  # type: ignore[valid-type]
        name="Render nodes",
        description="HOST:PORT of one or more rvm-node render nodes, comma-separated; "
        "none: Run here mattes on This computer",
        default="",
    )
    token_file: StringProperty(  # type: ignore[valid-type]
        name="Token file", description="File holding the bearer token the nodes expect", subtype="FILE_PATH"
    )
    ca_file: StringProperty(  # type: ignore[valid-type]
        name="CA file", description="CA certificate of the nodes: connect with TLS", subtype="FILE_PATH"
    )
    output_pattern: StringProperty(  # type: ignore[valid-type]
        name="Output",
        description="Alpha output; // is the .blend's folder, {shot} the clip or strip name, #### the frame",
        default=DEFAULT_OUTPUT,
    )
    file_format: EnumProperty(name="Format", items=FORMAT_ITEMS, default="EXR")  # type: ignore[valid-type]
    outputs: EnumProperty(  # type: ignore[valid-type]
        name="Outputs", items=OUTPUT_ITEMS, options={"ENUM_FLAG"}, default={"alpha"}
    )
    auto_ratio: BoolProperty(  # type: ignore[valid-type]
        name="Auto downsample",
        description="Internal resolution 256-512 px, from the plate size",
        default=True,
    )
    downsample_ratio: FloatProperty(  # type: ignore[valid-type]
        name="Downsample ratio", min=0.05, max=1.0, default=0.5
    )
    executable: StringProperty(  # type: ignore[valid-type]
        name="rvm-node program",
        description="An installed rvm-node to run instead of the bundled client (optional)",
        subtype="FILE_PATH",
    )
    target: EnumProperty(name="Target", items=TARGET_ITEMS, default="HERE")  # type: ignore[valid-type]
    farm_format: EnumProperty(name="Farm format", items=FARM_FORMAT_ITEMS, default="OPENJD")  # type: ignore[valid-type]
    bundle_folder: StringProperty(  # type: ignore[valid-type]
        name="Bundle folder",
        description="Where job bundles go (// is the .blend's folder); empty: <blend name>_rvm_jobs beside the .blend",
        subtype="DIR_PATH",
    )
    submit_command: StringProperty(  # type: ignore[valid-type]
        name="Submit command",
        description="Runs once the bundle is written; {bundle} is its folder (Open Job Description bundles)",
        default=DEADLINE_CLOUD,
    )
    cuebot: StringProperty(  # type: ignore[valid-type]
        name="Cuebot", description="HOST:PORT of OpenCue's Cuebot (OpenCue jobs)"
    )
    farm_rvm_node: StringProperty(  # type: ignore[valid-type]
        name="rvm-node on the workers",
        description="The rvm-node command the farm's workers run (a name on their PATH or a full path)",
        default="rvm-node",
    )

    def ratio(self) -> float | None:
        """The preferred downsample ratio; None for auto."""
        return None if self.auto_ratio else float(self.downsample_ratio)

    def run_options(
        self, ratio: float | None, nodes: str = "", file_format: str = "", local: Any = None
    ) -> RunOptions:
        """RunOptions from these preferences; ``nodes`` and ``file_format`` override them when given;
        ``local``: a private node (rvm_node's PrivateNode) instead of the render nodes."""
        token_file = bpy.path.abspath(self.token_file) if self.token_file else ""
        return RunOptions(
            nodes=(local.address,) if local is not None else parse_nodes(nodes or self.nodes),
            file_format=file_format or self.file_format,
            downsample_ratio=ratio,
            token_file=str(local.token_file) if local is not None else token_file,
            ca_file=bpy.path.abspath(self.ca_file) if self.ca_file and local is None else "",
            executable=self.executable_path(),
        )

    def executable_path(self) -> str:
        """The rvm-node command the preferences name (absolute), or "" for the bundled one."""
        return bpy.path.abspath(self.executable) if self.executable else ""

    def target_for(self, target: str, nodes: str = "") -> str:
        """``target`` as it runs: Run here with no render node set (here or in the call) is This computer."""
        if target == "HERE" and not (nodes or self.nodes).strip():
            return "LOCAL"
        return target

    def farm_options(self) -> FarmOptions:
        """Where and how to submit, from these preferences."""
        return FarmOptions(
            format=str(self.farm_format).lower(),
            folder=bpy.path.abspath(self.bundle_folder) if self.bundle_folder.strip() else "",
            submit_command=self.submit_command,
            cuebot=self.cuebot,
            rvm_node=self.farm_rvm_node,
        )

    def draw(self, context: Any) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "nodes")
        col.prop(self, "token_file")
        col.prop(self, "ca_file")
        col.operator(RVM_OT_test_connection.bl_idname, icon="LINKED")
        col.separator()
        col.prop(self, "output_pattern")
        col.prop(self, "file_format")
        row = col.row(heading="Outputs")
        row.prop(self, "outputs")
        row = col.row(heading="Downsample")
        row.prop(self, "auto_ratio", text="Auto")
        sub = row.row()
        sub.enabled = not self.auto_ratio
        sub.prop(self, "downsample_ratio", text="Ratio")
        col.separator()
        col.prop(self, "executable")
        col.separator()
        col.prop(self, "target")
        col.prop(self, "farm_format")
        col.prop(self, "bundle_folder")
        sub = col.column()
        sub.enabled = self.farm_format == "OPENJD"
        sub.prop(self, "submit_command")
        sub = col.column()
        sub.enabled = self.farm_format == "OPENCUE"
        sub.prop(self, "cuebot")
        col.prop(self, "farm_rvm_node")


def node_info(options: RunOptions, timeout: float = 30.0) -> list[str]:
    """Ask each node for its info in a subprocess; one line per node. Raises PluginError when any failed."""
    from .jobs import blender_ocio_config

    env = environment(os.environ, sys.path, blender_ocio_config())
    try:
        done = subprocess.run(
            info_command(options), env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PluginError(f"cannot run rvm-node info: {exc}") from None
    lines, failures = [], []
    for line in done.stdout.splitlines():
        try:
            info = json.loads(line)
        except ValueError:
            continue
        if info.get("ok"):
            lines.append(
                f"{info['node']}: rvm-node {info['version']}, {info['backend']} {info['precision']} "
                f"on {info['device']}, {info['active_streams']}/{info['max_streams']} streams"
            )
        else:
            failures.append(str(info.get("error", "no answer")))
    if failures or done.returncode != 0:
        raise PluginError("; ".join(failures) or last_error(done.stderr, done.returncode))
    return lines


class RVM_OT_test_connection(bpy.types.Operator):  # type: ignore[misc]
    """Ask every configured render node for its version, device and load"""

    bl_idname = "rvm.test_connection"
    bl_label = "Test Connection"

    node: StringProperty(name="Node", description="Nodes to ask instead of the preferences'")  # type: ignore[valid-type]

    def execute(self, context: Any) -> set[str]:
        try:
            prefs = addon_preferences(context)
            lines = node_info(prefs.run_options(prefs.ratio(), nodes=self.node))
        except PluginError as exc:
            self.report({"ERROR"}, f"RVM: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, "RVM: " + " | ".join(lines))
        return {"FINISHED"}
