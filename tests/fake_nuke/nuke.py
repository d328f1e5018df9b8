"""A small fake of Nuke's ``nuke`` module: exactly the API the rvm-node plugin calls.

It is a stand-in for a proprietary program that cannot be installed here.
The list of what it fakes is in plugins/nuke/README.md; keep the two in step.
"""

from __future__ import annotations

import threading
from typing import Any

GUI = False
_messages: list[str] = []
_nodes: list[Node] = []
_main_thread_calls: list[str] = []
_plugin_paths: list[str] = []
_menus: dict[str, Menu] = {}


class Knob:
    def __init__(self, name: str, value: Any = "", label: str = "") -> None:
        self._name, self._value, self.label = name, value, label

    def name(self) -> str:
        return self._name

    def value(self) -> Any:
        return self._value

    def getValue(self) -> Any:
        return self._value

    def setValue(self, value: Any) -> None:
        self._value = value


class String_Knob(Knob):
    def __init__(self, name: str, label: str = "", value: Any = "") -> None:
        super().__init__(name, value, label)


class File_Knob(String_Knob):
    pass


class Double_Knob(Knob):
    def __init__(self, name: str, label: str = "", value: float = 0.0) -> None:
        super().__init__(name, value, label)


class Enumeration_Knob(Knob):
    def __init__(self, name: str, label: str, values: list[str]) -> None:
        super().__init__(name, values[0], label)
        self.values = values


class Node:
    def __init__(self, node_class: str, **knobs: Any) -> None:
        self._class = node_class
        self._knobs = {name: Knob(name, value) for name, value in knobs.items()}
        self._inputs: dict[int, Node] = {}
        self._x = self._y = 0
        self._selected = False
        if "name" not in self._knobs:
            count = sum(n.Class() == node_class for n in _nodes) + 1
            self._knobs["name"] = Knob("name", f"{node_class}{count}")
        _nodes.append(self)

    def Class(self) -> str:
        return self._class

    def name(self) -> str:
        return str(self._knobs["name"].value())

    def knob(self, name: str) -> Knob | None:
        return self._knobs.get(name)

    def knobs(self) -> dict[str, Knob]:
        return dict(self._knobs)

    def addKnob(self, knob: Knob) -> None:
        self._knobs[knob.name()] = knob

    def __getitem__(self, name: str) -> Knob:
        if name not in self._knobs:
            self._knobs[name] = Knob(name)
        return self._knobs[name]

    def setInput(self, index: int, node: Node | None) -> None:
        if node is None:
            self._inputs.pop(index, None)
        else:
            self._inputs[index] = node

    def input(self, index: int) -> Node | None:
        return self._inputs.get(index)

    def xpos(self) -> int:
        return self._x

    def ypos(self) -> int:
        return self._y

    def setXYpos(self, x: int, y: int) -> None:
        self._x, self._y = x, y

    def setSelected(self, selected: bool) -> None:
        self._selected = selected

    def isSelected(self) -> bool:
        return self._selected


class _NodeFactory:
    def __getattr__(self, node_class: str) -> Any:
        return lambda **knobs: Node(node_class, **knobs)


nodes = _NodeFactory()
_root = Node("Root", name="", first_frame=1, last_frame=100)
_nodes.remove(_root)


def root() -> Node:
    return _root


def allNodes(filter: str | None = None) -> list[Node]:
    return [n for n in _nodes if filter is None or n.Class() == filter]


def selectedNodes() -> list[Node]:
    return [n for n in _nodes if n.isSelected()]


def toNode(name: str) -> Node | None:
    return next((n for n in _nodes if n.name() == name), None)


def delete(node: Node) -> None:
    if node in _nodes:
        _nodes.remove(node)


def execute(write: Node, first: int, last: int) -> None:
    """Render a Write: the fake 'renders' by copying the frames of the first Read upstream."""
    import shutil

    source = write.input(0)
    while source is not None and source.Class() != "Read":
        source = source.input(0)
    if source is None:
        raise RuntimeError(f"{write.name()}: nothing to render")

    def frame_path(pattern: str, frame: int) -> str:
        return pattern.replace("####", f"{frame:04d}")

    for frame in range(first, last + 1):
        shutil.copyfile(
            frame_path(str(source["file"].value()), frame), frame_path(str(write["file"].value()), frame)
        )


def message(text: str) -> None:
    _messages.append(text)


def executeInMainThread(call: Any, args: tuple[Any, ...] = ()) -> None:
    if threading.current_thread() is threading.main_thread():
        raise RuntimeError("executeInMainThread must not be called from the main thread")
    _main_thread_calls.append(getattr(call, "__name__", "call"))
    call(*args)


def pluginAddPath(path: str) -> None:
    _plugin_paths.append(path)


class ProgressTask:
    cancel_after: int | None = None  # tests: report cancelled after this many progress updates

    def __init__(self, title: str) -> None:
        self.title, self.progress, self.messages, self._updates = title, 0, [], 0

    def setMessage(self, text: str) -> None:
        self.messages.append(text)

    def setProgress(self, percent: int) -> None:
        self.progress = percent
        self._updates += 1

    def isCancelled(self) -> bool:
        return ProgressTask.cancel_after is not None and self._updates >= ProgressTask.cancel_after


class Menu:
    def __init__(self, name: str) -> None:
        self.name, self.items, self.submenus = name, {}, {}

    def addMenu(self, name: str) -> Menu:
        return self.submenus.setdefault(name, Menu(name))

    def addCommand(self, name: str, command: Any, shortcut: str = "") -> None:
        self.items[name] = command


def menu(name: str) -> Menu:
    return _menus.setdefault(name, Menu(name))


def reset() -> None:
    """Test helper: an empty script."""
    _nodes.clear()
    _messages.clear()
    _main_thread_calls.clear()
    _menus.clear()
    _root._knobs = {
        "name": Knob("name", ""),
        "first_frame": Knob("first_frame", 1),
        "last_frame": Knob("last_frame", 100),
    }
    ProgressTask.cancel_after = None
