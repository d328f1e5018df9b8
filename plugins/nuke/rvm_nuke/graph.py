"""Node-graph changes: a raw Read of the matte, a Copy of its alpha into the plate, and a Premult.

Called on Nuke's main thread only. Re-running on the same Read updates the
existing matte Read instead of stacking new nodes. A matte the farm is still
writing gets ``on_error`` black: its missing frames show as black, not as
errors, and each frame shows once it is there.
"""

from __future__ import annotations

from typing import Any

import nuke

SOURCE_KNOB = "rvm_source"
_STEP = 60


def _knob(node: Any, name: str, value: Any) -> None:
    node[name].setValue(value)


def _find(kind: str, source_name: str) -> Any:
    for node in nuke.allNodes(kind):
        knob = node.knob(SOURCE_KNOB)
        if knob is not None and knob.value() == source_name:
            return node
    return None


def wire_matte(
    source: Any, pattern: str, first: int, last: int, label: str, on_error: str = "error"
) -> list[Any]:
    """Create or update the matte Read, Copy and Premult below ``source``; return them, selected.

    ``on_error``: what the matte Read does for a missing frame (Nuke's ``error``, or ``black``).
    """
    x, y = source.xpos(), source.ypos()
    matte = _find("Read", source.name())
    if matte is None:
        matte = nuke.nodes.Read()
        _knob(matte, SOURCE_KNOB, source.name())
        matte.setXYpos(x + 110, y)
    for name, value in (
        ("file", pattern),
        ("first", first),
        ("last", last),
        ("origfirst", first),
        ("origlast", last),
        ("raw", True),
        ("on_error", on_error),
        ("label", label),
    ):
        _knob(matte, name, value)
    for name in ("frame_mode", "frame"):  # the same frame offset as the plate, so they line up
        knob = source.knob(name)
        if knob is not None:
            _knob(matte, name, knob.value())
    copy = _find("Copy", source.name())
    if copy is None:
        copy = nuke.nodes.Copy()
        _knob(copy, SOURCE_KNOB, source.name())
        _knob(copy, "from0", "rgba.alpha")
        _knob(copy, "to0", "rgba.alpha")
        copy.setXYpos(x, y + _STEP)
    copy.setInput(0, source)
    copy.setInput(1, matte)
    _knob(copy, "label", label)
    premult = _find("Premult", source.name())
    if premult is None:
        premult = nuke.nodes.Premult()
        _knob(premult, SOURCE_KNOB, source.name())
        premult.setXYpos(x, y + 2 * _STEP)
    premult.setInput(0, copy)
    for node in nuke.allNodes():
        node.setSelected(False)
    for node in (matte, copy, premult):
        node.setSelected(True)
    return [matte, copy, premult]
