"""Bring finished mattes into the scene: an image sequence, a matte clip or strip, a compositor setup.

Mattes are data, so everything loaded here is tagged Non-Color: Blender
would otherwise linearise a 16-bit PNG tagged sRGB. Matting the same shot
again updates what an earlier run loaded instead of stacking copies.

Mattes the farm is still writing (``arriving``) load before their first
frame exists: an image sequence and an image strip read each frame when it
is shown, so frames appear as they are written. A movie clip reads its
length once, from the files there, so for those the image sequence stands
in, and the compositor setup reads it through an Image node.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpy

from . import compat
from .shots import FrameMap, PluginError, frame_path

__all__ = [
    "add_compositor",
    "add_matte_clip",
    "add_matte_strip",
    "all_or_nothing",
    "load_image_sequence",
    "matte_channel",
]

NON_COLOR = "Non-Color"
_PLATE_LABEL, _MATTE_LABEL = "Plate", "Matte"


class _SceneBefore:
    """What loading may add to a scene and to ``bpy.data``, as it was, so a failed load can be taken back."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.images = {i.as_pointer() for i in bpy.data.images}
        self.clips = {c.as_pointer() for c in bpy.data.movieclips}
        self.groups = {g.as_pointer() for g in bpy.data.node_groups}
        editor = scene.sequence_editor
        self.strips = set() if editor is None else {s.as_pointer() for s in compat.sequence_strips(editor)}
        tree = compat.existing_compositor_tree(scene)
        self.nodes = set() if tree is None else {n.as_pointer() for n in tree.nodes}
        self.compositor = compat.compositor_setting(scene)

    def restore(self) -> None:
        """Remove what was added since; the scene's compositor setting goes back to what it was."""
        scene = self.scene
        if scene.sequence_editor is not None:
            strips = compat.sequence_strips(scene.sequence_editor)
            for strip in [s for s in strips if s.as_pointer() not in self.strips]:
                strips.remove(strip)
        tree = compat.existing_compositor_tree(scene)
        if tree is not None:
            for node in [n for n in tree.nodes if n.as_pointer() not in self.nodes]:
                tree.nodes.remove(node)
        compat.restore_compositor_setting(scene, self.compositor)
        for datablocks, before in (
            (bpy.data.node_groups, self.groups),
            (bpy.data.images, self.images),
            (bpy.data.movieclips, self.clips),
        ):
            for block in [b for b in datablocks if b.as_pointer() not in before]:
                datablocks.remove(block)


@contextmanager
def all_or_nothing(scene: Any) -> Iterator[None]:
    """What the block adds to ``scene`` (strips, compositor nodes, images, clips) is taken back if it raises."""
    before = _SceneBefore(scene)
    try:
        yield
    except BaseException:
        before.restore()
        raise


def _same_file(path: str, absolute: str) -> bool:
    return os.path.normpath(bpy.path.abspath(path)) == os.path.normpath(absolute)


def _load_once(datablocks: Any, path: str, name: str) -> Any:
    """The image or clip already reading ``path`` (reloaded: its frames were written again), else a new one."""
    earlier = next((d for d in datablocks if _same_file(d.filepath, path)), None)
    if earlier is not None:
        earlier.filepath = path  # setting the path reloads it
        return earlier
    block = datablocks.load(path, check_existing=False)
    block.name = name
    return block


def _image_of_frames_to_come(path: str, name: str) -> Any:
    """An image sequence datablock reading ``path``, which need not exist yet."""
    earlier = next((d for d in bpy.data.images if _same_file(d.filepath, path)), None)
    if earlier is not None:
        earlier.source = "SEQUENCE"
        earlier.filepath = path  # setting the path reloads it: the frames there now
        return earlier
    image = bpy.data.images.new(name, 1, 1)
    image.source = "SEQUENCE"
    image.filepath = path
    return image


def load_image_sequence(pattern: str, frames: FrameMap, name: str, arriving: bool = False) -> Any:
    """An image datablock of the matte sequence, with its frame range recorded on it.

    ``arriving``: the frames are still being written (by the farm); the first need not exist yet.
    """
    first = frame_path(pattern, frames.first)
    if arriving and not os.path.isfile(first):
        image = _image_of_frames_to_come(first, name)
    else:
        image = _load_once(bpy.data.images, first, name)
    image.source = "SEQUENCE"
    image.colorspace_settings.name = NON_COLOR
    # An image has no frame range of its own (its users have); these are what
    # an Image node or texture needs: frame_duration, frame_start, frame_offset.
    image["rvm_frame_duration"] = len(frames)
    image["rvm_frame_start"] = frames.scene_first
    image["rvm_frame_offset"] = frames.first - 1
    return image


def add_matte_clip(pattern: str, frames: FrameMap, name: str) -> Any:
    """A movie clip of the matte sequence, starting at the plate's scene frame."""
    clip = _load_once(bpy.data.movieclips, frame_path(pattern, frames.first), name)
    clip.frame_start = frames.scene_first
    clip.frame_offset = 0
    clip.colorspace_settings.name = NON_COLOR
    return clip


def matte_channel(scene: Any, plate: Any, name: str, frames: FrameMap) -> int:
    """The first channel above ``plate`` (normally the next) free for the matte's frames.

    The strip ``name`` an earlier run made there does not count: it is replaced.
    """
    first, end = frames.scene_first, frames.scene_first + len(frames)
    for channel in range(plate.channel + 1, 129):
        if not any(
            s.channel == channel
            and s.frame_final_start < end
            and first < s.frame_final_end
            and s.name != name
            for s in compat.sequence_strips(scene.sequence_editor)
        ):
            return channel
    raise PluginError(f"no free channel above {plate.channel} for frames {first}-{end - 1}")


def add_matte_strip(scene: Any, channel: int, pattern: str, frames: FrameMap, name: str) -> Any:
    """An image strip of the matte in ``channel``, alpha-over, frame for frame with its plate.

    A strip an earlier run made for these mattes (same name, same folder) is replaced.
    """
    strips = compat.sequence_strips(scene.sequence_editor)
    first = frame_path(pattern, frames.first)
    earlier = strips.get(name)
    if (
        earlier is not None
        and earlier.type == "IMAGE"
        and _same_file(earlier.directory, os.path.dirname(first) + os.sep)
    ):
        strips.remove(earlier)
    strip = strips.new_image(name=name, filepath=first, channel=channel, frame_start=frames.scene_first)
    for number in range(frames.first + 1, frames.last + 1):
        strip.elements.append(os.path.basename(frame_path(pattern, number)))
    strip.colorspace_settings.name = NON_COLOR
    strip.blend_type = "ALPHA_OVER"
    strip.select = False  # the selection stays the plates', ready for another run
    return strip


def _matte_kind(matte: Any) -> str:
    return "CompositorNodeImage" if isinstance(matte, bpy.types.Image) else "CompositorNodeMovieClip"


def _set_matte(node: Any, matte: Any, frames: FrameMap | None) -> None:
    """Point a matte node at ``matte``: an image sequence with the matte's frame range, refreshed as the
    frame changes, or a clip."""
    if node.bl_idname == "CompositorNodeImage":
        node.image = matte
        if frames is not None:
            node.frame_duration = len(frames)
            node.frame_start = frames.scene_first
            node.frame_offset = frames.first - 1
        node.use_auto_refresh = True
    else:
        node.clip = matte


def _matte_node(tree: Any, frame: Any, matte: Any, frames: FrameMap | None) -> Any:
    """A new node that reads ``matte``: an Image node for an image sequence, a Movie Clip node for a clip."""
    node = tree.nodes.new(_matte_kind(matte))
    _set_matte(node, matte, frames)
    node.label = _MATTE_LABEL
    node.parent = frame
    return node


def add_compositor(scene: Any, plate: Any, matte: Any, frames: FrameMap | None = None) -> Any:
    """Plate and matte into Set Alpha, shown in a Viewer; the nodes sit in a labelled frame.

    ``matte`` is a movie clip, or an image sequence with its ``frames`` (a
    matte the farm is still writing). Nothing already in the tree is
    relinked. A setup an earlier run made for this plate (the frame
    ``RVM matte: <plate>``) gets the new matte instead.
    """
    tree = compat.compositor_tree(scene)
    label = f"RVM matte: {plate.name}"
    frame = next((n for n in tree.nodes if n.bl_idname == "NodeFrame" and n.label == label), None)
    if frame is not None:
        for node in list(tree.nodes):
            if node.parent != frame:
                continue
            if node.label != _MATTE_LABEL and node.bl_idname == "CompositorNodeMovieClip":
                node.clip = plate
            elif node.label == _MATTE_LABEL and node.bl_idname == _matte_kind(matte):
                _set_matte(node, matte, frames)
            elif node.label == _MATTE_LABEL:  # a clip's node for an image sequence, or the other way round
                targets = [link.to_socket for link in node.outputs["Image"].links]
                location = node.location.copy()
                tree.nodes.remove(node)
                new = _matte_node(tree, frame, matte, frames)
                new.location = location
                for socket in targets:
                    tree.links.new(new.outputs["Image"], socket)
        return frame
    frame = tree.nodes.new("NodeFrame")
    frame.label = label
    plate_node = tree.nodes.new("CompositorNodeMovieClip")
    plate_node.clip, plate_node.label = plate, _PLATE_LABEL
    matte_node = _matte_node(tree, frame, matte, frames)
    set_alpha = tree.nodes.new("CompositorNodeSetAlpha")
    compat.set_replace_alpha(set_alpha)
    viewer = tree.nodes.new("CompositorNodeViewer")
    tree.links.new(plate_node.outputs["Image"], set_alpha.inputs["Image"])
    # the matte's RGB carries the alpha in every channel (RGBA EXR and grey PNG alike)
    tree.links.new(matte_node.outputs["Image"], set_alpha.inputs["Alpha"])
    tree.links.new(set_alpha.outputs["Image"], viewer.inputs["Image"])
    for x, node in enumerate((plate_node, matte_node, set_alpha, viewer)):
        node.parent = frame
        node.location = (-600 + 250 * x, -400 - (200 if node is matte_node else 0))
    return frame
