"""What changed between the Blender releases the add-on supports (4.2 LTS to 5.x), chosen by the running
version rather than by catching the errors of the other one.

* 5.0 moved the scene's compositor from ``scene.node_tree`` (switched on
  with ``scene.use_nodes``) to ``scene.compositing_node_group``, a node
  group of its own that starts out empty (None);
* 5.0 turned Set Alpha's ``mode`` property into a menu input socket,
  ``inputs["Type"]``;
* 4.4 renamed the Sequencer's ``sequences`` and ``sequences_all`` to
  ``strips`` and ``strips_all``.
"""

from __future__ import annotations

from typing import Any

import bpy

__all__ = [
    "all_strips",
    "compositor_setting",
    "compositor_tree",
    "existing_compositor_tree",
    "restore_compositor_setting",
    "sequence_strips",
    "set_replace_alpha",
]


def _at_least(major: int, minor: int) -> bool:
    return tuple(bpy.app.version[:2]) >= (major, minor)


def sequence_strips(editor: Any) -> Any:
    """The Sequencer editor's top-level strips."""
    return editor.strips if _at_least(4, 4) else editor.sequences


def all_strips(editor: Any) -> Any:
    """Every strip of the Sequencer editor, those inside meta strips too."""
    return editor.strips_all if _at_least(4, 4) else editor.sequences_all


def compositor_tree(scene: Any) -> Any:
    """The scene's compositor node tree, made (and switched on) where it has none."""
    if _at_least(5, 0):
        if scene.compositing_node_group is None:
            scene.compositing_node_group = bpy.data.node_groups.new(
                f"{scene.name} Compositing", "CompositorNodeTree"
            )
        return scene.compositing_node_group
    scene.use_nodes = True
    return scene.node_tree


def existing_compositor_tree(scene: Any) -> Any:
    """The scene's compositor node tree where it has one in use, else None; changes nothing."""
    if _at_least(5, 0):
        return scene.compositing_node_group
    return scene.node_tree if scene.use_nodes else None


def compositor_setting(scene: Any) -> Any:
    """What :func:`compositor_tree` may change, for :func:`restore_compositor_setting`."""
    return scene.compositing_node_group if _at_least(5, 0) else scene.use_nodes


def restore_compositor_setting(scene: Any, setting: Any) -> None:
    if _at_least(5, 0):
        scene.compositing_node_group = setting
    else:
        scene.use_nodes = setting


def set_replace_alpha(node: Any) -> None:
    """Set Alpha replaces the image's alpha with its Alpha input (not multiplies by it)."""
    if _at_least(5, 0):
        node.inputs["Type"].default_value = "Replace Alpha"
    else:
        node.mode = "REPLACE_ALPHA"
