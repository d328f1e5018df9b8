"""The rvm-node command line the add-on runs, and the environment it runs in (no bpy here).

One shot on one node runs ``rvm-node matte``; several shots, or several
nodes, run ``rvm-node farm run`` on a shot list, so the farm layer spreads
them and fails over. Both always resume: frames already on disk are
verified and kept, which is what makes a cancelled run continue later.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .shots import PluginError, ShotRequest, frame_path

__all__ = [
    "RunOptions",
    "build_command",
    "clear_outputs",
    "environment",
    "info_command",
    "last_error",
    "parse_nodes",
    "program",
    "shot_entry",
    "start_private_node",
]

FORMATS = ("EXR", "PNG16")


@dataclass(frozen=True)
class RunOptions:
    """How to reach the nodes and what to write."""

    nodes: tuple[str, ...]
    file_format: str = "EXR"
    downsample_ratio: float | None = None
    token_file: str = ""
    ca_file: str = ""
    executable: str = ""  # an external rvm-node; empty: this Python with ``-m rvm_node``

    def __post_init__(self) -> None:
        if not self.nodes:
            raise PluginError("no render node: set one in the add-on preferences or pass node=")
        if self.file_format not in FORMATS:
            raise PluginError(f"format {self.file_format!r}: expected one of {', '.join(FORMATS)}")
        _checked({"downsample_ratio": self.downsample_ratio}, "preferences")  # before any shot is planned
        for what, path in (("token file", self.token_file), ("CA file", self.ca_file)):
            if path and not os.path.isfile(path):
                raise PluginError(f"{what} {path}: not found")


def parse_nodes(text: str) -> tuple[str, ...]:
    """``"a:1, b:2"`` -> ``("a:1", "b:2")``; each needs a port."""
    nodes = tuple(part.strip() for part in text.replace(";", ",").split(",") if part.strip())
    for node in nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            raise PluginError(f"node {node!r}: expected HOST:PORT")
    return nodes


def _program(options: RunOptions) -> list[str]:
    return program(options.executable)


def program(executable: str) -> list[str]:
    """The rvm-node command: the one the preferences name, else this Python with ``-m rvm_node``."""
    return [executable] if executable else [sys.executable, "-m", "rvm_node"]


def start_private_node(executable: str, env: Mapping[str, str]) -> Any:
    """This application's private node ("This computer"), started on first use in ``env`` (see
    :func:`environment`: the bundled engine's import path); it stops when the application exits
    (rvm_node.client.private_node). It runs the fastest engine it has: OpenVINO on a CPU where the zip
    bundles it (``build.py --openvino``), else onnxruntime. Raises :class:`PluginError` in one line."""
    from rvm_node.client.private_node import private_node
    from rvm_node.errors import RvmNodeError

    try:
        return private_node(program(executable), env=env, serve_options=("--backend", "auto"))
    except RvmNodeError as exc:
        raise PluginError(f"This computer: {exc}") from None


def _connection(options: RunOptions) -> list[str]:
    args = []
    if options.token_file:
        args += ["--token-file", options.token_file]
    if options.ca_file:
        args += ["--ca-file", options.ca_file]
    return args


def _shot_settings(shot: ShotRequest, options: RunOptions) -> dict[str, Any]:
    """The shot's settings, checked by rvm-node's one definition of them (``rvm_node.shot_settings``);
    a value it refuses is a :class:`PluginError`."""
    given: dict[str, Any] = {
        "frames": f"{shot.frames.first}-{shot.frames.last}",
        **{f"output_{kind}": pattern for kind, pattern in shot.outputs.items()},
        "downsample_ratio": options.downsample_ratio,
        "input_colorspace": shot.input_colorspace or None,
        **({"exr_channels": "RGBA"} if options.file_format == "EXR" else {"bit_depth": 16}),
    }
    checked = _checked(given, f"shot {shot.name}")
    return {key: checked[key] for key in given}


def _checked(given: dict[str, Any], where: str) -> dict[str, Any]:
    """``given`` checked by rvm-node's one definition of a shot's settings; a refusal is a :class:`PluginError`."""
    from rvm_node.errors import RvmNodeError
    from rvm_node.shot_settings import check_settings

    try:
        return check_settings(given, where)
    except RvmNodeError as exc:
        raise PluginError(str(exc)) from None


def shot_entry(shot: ShotRequest, options: RunOptions) -> dict[str, object]:
    from rvm_node.shot_settings import setting_entries

    return {"name": shot.name, "input": shot.input, **setting_entries(_shot_settings(shot, options))}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_shot_list(shots: Sequence[ShotRequest], options: RunOptions, path: Path) -> Path:
    lines = ["# written by the rvm-node Blender add-on"]
    for shot in shots:
        lines.append("\n[[shot]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in shot_entry(shot, options).items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_command(shots: Sequence[ShotRequest], options: RunOptions, workdir: Path) -> list[str]:
    """The command that mattes ``shots`` and prints JSON progress lines on stdout."""
    if not shots:
        raise PluginError("nothing to matte")
    if len(shots) == 1 and len(options.nodes) == 1:
        from rvm_node.shot_settings import setting_flags

        shot = shots[0]
        args = [*_program(options), "matte", "--input-source", shot.input, "--node", options.nodes[0]]
        args += [*_connection(options), *setting_flags(_shot_settings(shot, options))]
        return [*args, "--resume", "--progress-json"]
    shot_list = write_shot_list(shots, options, workdir / "shots.toml")
    args = [*_program(options), "farm", "run", str(shot_list), "--nodes", ",".join(options.nodes)]
    return [*args, *_connection(options), "--progress-json"]


def info_command(options: RunOptions) -> list[str]:
    """``rvm-node info`` for every configured node, as JSON lines."""
    return [*_program(options), "info", "--nodes", ",".join(options.nodes), *_connection(options), "--json"]


def environment(
    base: Mapping[str, str], python_path: Sequence[str], ocio_config: str | None
) -> dict[str, str]:
    """The subprocess environment: this interpreter's import path (the bundled wheels), and Blender's OCIO config.

    ``ocio_config`` names the colour spaces Blender's clips are tagged with;
    it is used unless the user set ``$OCIO`` for a studio config.
    """
    env = dict(base)
    paths = [p for p in python_path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if ocio_config and not env.get("OCIO"):
        env["OCIO"] = ocio_config
    return env


def last_error(stderr: str, returncode: int | None) -> str:
    """The line of rvm-node's stderr that says what went wrong: its own error line, else the last one."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [
        line.removeprefix("rvm-node: error:").strip() for line in lines if line.startswith("rvm-node: error:")
    ]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"rvm-node exited with status {returncode}"


def check_writable(directory: str) -> None:
    """Make the output folder and prove a file can be created in it, before anything starts."""
    existing = directory
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PluginError(f"output folder {directory}: {existing} is a file, not a folder")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise PluginError(f"output folder {directory}: cannot write there ({exc.strerror or exc})") from None


def clear_outputs(shot: ShotRequest) -> int:
    """Remove the shot's existing output frames in its range (asked for by "overwrite"); return how many."""
    removed = 0
    for pattern in shot.outputs.values():
        for number in range(shot.frames.first, shot.frames.last + 1):
            path = frame_path(pattern, number)
            if os.path.isfile(path):
                os.remove(path)
                removed += 1
    return removed
