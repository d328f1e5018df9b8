"""The Settings panel (a nukescripts.PythonPanel); saved per user."""

from __future__ import annotations

import nuke
import nukescripts

from rvm_nuke import settings as settings_module

TARGET_LABELS = {"here": "run here", "local": "this computer", "farm": "submit to the farm"}


class SettingsPanel(nukescripts.PythonPanel):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("RVM Settings")
        current = settings_module.load()
        self.nodes = nuke.String_Knob("nodes", "Nodes (host:port, ...)", ", ".join(current.nodes))
        self.token = nuke.File_Knob("token_file", "Token file")
        self.token.setValue(current.token_file)
        self.ca = nuke.File_Knob("ca_file", "CA file")
        self.ca.setValue(current.ca_file)
        self.output = nuke.String_Knob("output", "Output", current.output)
        self.format = nuke.Enumeration_Knob("format", "Format", list(settings_module.FORMATS))
        self.format.setValue(current.format)
        self.ratio = nuke.String_Knob(
            "ratio", "Downsample ratio", "auto" if current.ratio is None else str(current.ratio)
        )
        self.target = nuke.Enumeration_Knob("target", "Matte selected", list(TARGET_LABELS.values()))
        self.target.setValue(TARGET_LABELS[current.target])
        self.farm_format = nuke.Enumeration_Knob(
            "farm_format", "Farm format", list(settings_module.FARM_FORMATS)
        )
        self.farm_format.setValue(current.farm_format)
        self.bundle_folder = nuke.File_Knob("bundle_folder", "Bundle folder (empty: beside the script)")
        self.bundle_folder.setValue(current.bundle_folder)
        self.submit_command = nuke.String_Knob(
            "submit_command", "Submit command ({bundle})", current.submit_command
        )
        self.cuebot = nuke.String_Knob("cuebot", "Cuebot (OpenCue, host:port)", current.cuebot)
        self.farm_rvm_node = nuke.String_Knob(
            "farm_rvm_node", "rvm-node on the workers", current.farm_rvm_node
        )
        self.rvm_node_command = nuke.String_Knob(
            "rvm_node_command", "rvm-node command (this computer)", current.rvm_node_command
        )
        for knob in (
            self.nodes,
            self.token,
            self.ca,
            self.output,
            self.format,
            self.ratio,
            self.target,
            self.farm_format,
            self.bundle_folder,
            self.submit_command,
            self.cuebot,
            self.farm_rvm_node,
            self.rvm_node_command,
        ):
            self.addKnob(knob)

    def to_settings(self) -> settings_module.Settings:
        ratio = self.ratio.value().strip()
        try:
            parsed = None if ratio in ("", "auto") else float(ratio)
        except ValueError:
            raise settings_module.SettingsError(
                f"RVM settings: ratio must be a number or auto, not {ratio!r}"
            ) from None
        return settings_module.Settings(
            nodes=[a.strip() for a in self.nodes.value().split(",") if a.strip()],
            token_file=self.token.value(),
            ca_file=self.ca.value(),
            output=self.output.value(),
            format=self.format.value(),
            ratio=parsed,
            target={label: key for key, label in TARGET_LABELS.items()}.get(self.target.value(), "here"),
            farm_format=self.farm_format.value(),
            bundle_folder=self.bundle_folder.value().strip(),
            submit_command=self.submit_command.value().strip(),
            cuebot=self.cuebot.value().strip(),
            farm_rvm_node=self.farm_rvm_node.value().strip() or "rvm-node",
            rvm_node_command=self.rvm_node_command.value().strip() or "rvm-node",
        ).check()


def show_settings() -> None:
    panel = SettingsPanel()
    if panel.showModalDialog():
        try:
            settings_module.save(panel.to_settings())
        except settings_module.SettingsError as exc:
            nuke.message(str(exc))
