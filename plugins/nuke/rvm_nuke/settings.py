"""Plugin settings: per user (a TOML file in the user's Nuke directory), overridden per script.

Script overrides are knobs on the script's root: ``rvm_nodes``, ``rvm_output``,
``rvm_format`` and ``rvm_ratio``; an empty knob does not override.

``target`` says what *Matte selected* does: ``here`` streams the shots to the
render nodes now (with no node set, to this computer's private node),
``local`` ("This computer") to a private node this Nuke starts on first use,
runs with ``rvm_node_command`` and stops when it quits (see
``rvm_node.client.private_node``), ``farm`` writes a farm job bundle (``farm_format``) into
``bundle_folder`` (empty: beside the script) and submits it with
``submit_command`` (Open Job Description) or to ``cuebot`` (OpenCue).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Nuke 15: Python 3.10, tomli comes with the bundled wheels
    import tomli as tomllib

FORMATS = ("EXR RGBA", "EXR A", "PNG 16-bit")
DEFAULT_OUTPUT = "[script dir]/mattes/{read}/{read}_matte.####.exr"
SETTINGS_FILE = "rvm_node.toml"
TARGETS = ("here", "local", "farm")
FARM_FORMATS = ("openjd", "opencue")
DEADLINE_CLOUD = "deadline bundle submit --yes {bundle}"  # rvm_node.farm.submit.DEADLINE_CLOUD


def _is_ratio(value: object) -> bool:
    """rvm-node's one ratio check (the same values every other place takes)."""
    from rvm_node.engine.ratio import is_ratio

    return is_ratio(value)


class SettingsError(ValueError):
    """A setting the plugin cannot use; the message names it."""


@dataclass
class Settings:
    nodes: list[str] = field(default_factory=list)  # none: "here" runs on this computer's private node
    token_file: str = ""
    ca_file: str = ""
    output: str = DEFAULT_OUTPUT
    format: str = "EXR RGBA"
    ratio: float | None = None  # None: auto
    target: str = "here"  # here: run on the nodes now; farm: submit a job bundle
    farm_format: str = "openjd"
    bundle_folder: str = ""  # empty: <script dir>/<script name>_rvm_jobs
    submit_command: str = DEADLINE_CLOUD  # {bundle}: the bundle folder
    cuebot: str = ""  # HOST:PORT of OpenCue's Cuebot
    farm_rvm_node: str = "rvm-node"  # the rvm-node command on the farm's workers
    rvm_node_command: str = "rvm-node"  # what runs this computer's private node (an rvm-node with its engine)

    def check(self) -> Settings:
        if not self.rvm_node_command.strip():
            raise SettingsError("RVM settings: the rvm-node command is empty")
        if self.format not in FORMATS:
            raise SettingsError(
                f"RVM settings: format must be one of {', '.join(FORMATS)}, not {self.format!r}"
            )
        if self.ratio is not None and not _is_ratio(self.ratio):
            raise SettingsError(
                f"RVM settings: the downsample ratio must be in (0, 1] or auto, not {self.ratio}"
            )
        if self.target not in TARGETS:
            raise SettingsError(f"RVM settings: target must be here, local or farm, not {self.target!r}")
        if self.farm_format not in FARM_FORMATS:
            raise SettingsError(
                f"RVM settings: farm format must be openjd or opencue, not {self.farm_format!r}"
            )
        if "####" not in self.output and "%0" not in self.output:
            raise SettingsError(f"RVM settings: the output {self.output!r} needs a frame field such as ####")
        return self


def runs_here_on(settings: Settings) -> str:
    """Where *Matte selected* runs: ``local`` (this computer's private node), ``here`` (the nodes) or ``farm``."""
    if settings.target == "here" and not settings.nodes:
        return "local"
    return settings.target


def user_dir() -> Path:
    return Path(os.environ.get("NUKE_USER_DIR", str(Path.home() / ".nuke")))


def load(directory: Path | None = None) -> Settings:
    path = (directory or user_dir()) / SETTINGS_FILE
    if not path.is_file():
        return Settings()
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the RVM settings ({exc})") from None
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown RVM settings {', '.join(unknown)}")
    values: dict[str, Any] = dict(table)
    if values.get("ratio") == "auto":
        values["ratio"] = None
    return Settings(**values).check()


def save(settings: Settings, directory: Path | None = None) -> Path:
    """Write the settings atomically (TOML; strings and lists are JSON-compatible TOML)."""
    settings.check()
    path = (directory or user_dir()) / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in fields(Settings):
        value = getattr(settings, item.name)
        lines.append(f"{item.name} = {json.dumps('auto' if value is None else value)}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def for_script(settings: Settings, root: Any) -> Settings:
    """The user's settings with the script's root-knob overrides applied."""

    def knob(name: str) -> str:
        k = root.knob(name)
        return str(k.value()).strip() if k is not None and k.value() is not None else ""

    changes: dict[str, Any] = {}
    if knob("rvm_nodes"):
        changes["nodes"] = [a.strip() for a in knob("rvm_nodes").split(",") if a.strip()]
    if knob("rvm_output"):
        changes["output"] = knob("rvm_output")
    if knob("rvm_format"):
        changes["format"] = knob("rvm_format")
    if knob("rvm_ratio"):
        text = knob("rvm_ratio")
        try:
            changes["ratio"] = None if text == "auto" else float(text)
        except ValueError:
            raise SettingsError(f"script knob rvm_ratio: expected a number or auto, got {text!r}") from None
    return replace(settings, **changes).check()
