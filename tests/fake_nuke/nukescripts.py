"""Fake of Nuke's ``nukescripts``: only ``PythonPanel`` (see plugins/nuke/README.md)."""

from __future__ import annotations

from typing import Any


class PythonPanel:
    answer = True  # tests: what showModalDialog returns

    def __init__(self, title: str = "") -> None:
        self.title = title
        self.knobs: list[Any] = []

    def addKnob(self, knob: Any) -> None:
        self.knobs.append(knob)

    def showModalDialog(self) -> bool:
        return PythonPanel.answer
