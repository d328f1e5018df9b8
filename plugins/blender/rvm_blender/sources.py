"""Read a movie clip or a Sequencer strip into a :class:`ShotRequest`."""

from __future__ import annotations

import os
from typing import Any

import bpy

from .shots import (
    FrameMap,
    OutputChoice,
    PluginError,
    ShotRequest,
    clip_frame_map,
    frame_pattern,
    strip_frame_map,
)

__all__ = ["clip_request", "strip_request"]

# Float images are scene-linear in Blender: they are converted to sRGB with
# OCIO, as the converter does. Video and 8/16-bit images go as they are.
_FLOAT_IMAGES = (".exr", ".hdr")


def _readable(path: str, what: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise PluginError(f"{what}: cannot read {path}")


def _colourspace(path: str, name: str) -> str | None:
    return name if os.path.splitext(path)[1].lower() in _FLOAT_IMAGES else None


def _finish(
    name: str, source: str, frames: FrameMap, colourspace: str | None, is_movie: bool, output: OutputChoice
) -> ShotRequest:
    return ShotRequest(
        name=name,
        input=source,
        frames=frames,
        outputs=output.patterns(name, bpy.data.filepath),
        input_colorspace=colourspace,
        is_movie=is_movie,
    )


def clip_request(clip: Any, scene: Any, scene_range: bool, output: OutputChoice, name: str) -> ShotRequest:
    """``name``: the shot's name in output paths (see :func:`shot_name`)."""
    what = f"clip {clip.name}"
    path = os.path.normpath(bpy.path.abspath(clip.filepath))
    _readable(path, what)
    is_movie = clip.source == "MOVIE"
    source, first_file = (path, 1) if is_movie else frame_pattern(path)
    try:
        frames = clip_frame_map(
            is_movie=is_movie,
            first_file=first_file,
            frame_start=int(clip.frame_start),
            frame_offset=int(clip.frame_offset),
            duration=int(clip.frame_duration),
        )
    except PluginError as exc:
        raise PluginError(f"{what}: {exc}") from None
    if scene_range:
        frames = frames.clamp_to_scene(scene.frame_start, scene.frame_end, what)
    colourspace = _colourspace(path, clip.colorspace_settings.name)
    return _finish(name, source, frames, colourspace, is_movie, output)


def _check_timing(strip: Any, what: str) -> None:
    if getattr(strip, "use_reverse_frames", False) or getattr(strip, "strobe", 1.0) > 1.0:
        raise PluginError(f"{what}: reversed or strobed strips cannot be matted frame for frame")
    # Blender exposes retiming keys but not their speeds: any key may change the mapping, so refuse.
    if len(getattr(strip, "retiming_keys", ())) > 0:
        raise PluginError(
            f"{what}: retimed strips cannot be matted frame for frame; reset the retiming (Strip > Retiming)"
        )


def strip_request(strip: Any, scene: Any, scene_range: bool, output: OutputChoice, name: str) -> ShotRequest:
    what = f"strip {strip.name}"
    _check_timing(strip, what)
    numbers: list[int] | None
    if strip.type == "MOVIE":
        source = os.path.normpath(bpy.path.abspath(strip.filepath))
        _readable(source, what)
        numbers, is_movie, first_path = None, True, source
    elif strip.type == "IMAGE":
        directory = bpy.path.abspath(strip.directory)
        files = [os.path.normpath(os.path.join(directory, e.filename)) for e in strip.elements]
        if not files:
            raise PluginError(f"{what}: has no images")
        _readable(files[0], what)
        patterns = [frame_pattern(f) for f in files]
        source = patterns[0][0]
        if any(p != source for p, _ in patterns):
            raise PluginError(f"{what}: its images do not share one name pattern ({source})")
        numbers, is_movie, first_path = [n for _, n in patterns], False, files[0]
    else:
        raise PluginError(f"{what}: only movie and image strips can be matted, not {strip.type.lower()}")
    try:
        frames = strip_frame_map(
            frame_start=int(strip.frame_start),
            final_start=int(strip.frame_final_start),
            final_end=int(strip.frame_final_end),
            numbers=numbers,
            animation_offset=int(getattr(strip, "animation_offset_start", 0)),
        )
    except PluginError as exc:
        raise PluginError(f"{what}: {exc}") from None
    if scene_range:
        frames = frames.clamp_to_scene(scene.frame_start, scene.frame_end, what)
    colourspace = _colourspace(first_path, strip.colorspace_settings.name)
    return _finish(name, source, frames, colourspace, is_movie, output)
