"""Frame sources: a video file, an image sequence with a frame pattern, or a directory of images.

Every source yields :class:`SourceFrame` objects carrying the frame's own
number and display-referred RGB pixels (uint8, uint16, or float32 in 0..1)
ready for the model. Video frames are numbered from ``start_frame`` (1 by
default, as Blender and Nuke number a movie); sequences keep their numbers;
a plain directory (the official converter's form) is numbered from 0 in
natural order.

A video is matted as it is displayed: frames are turned upright by the
stream's display matrix (as ffmpeg does unless told ``-noautorotate``), so
its width and height are the displayed ones; ``autorotate=False`` keeps them
as stored. Video frames carry their presentation time, so video outputs of a
variable-frame-rate source can keep every frame's own time.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from rvm_node.errors import InvalidInputError
from rvm_node.fsutil import is_temporary
from rvm_node.io.colour import ColourTransform
from rvm_node.io.frame_times import VariableRate, scan_frame_times, variable_rate
from rvm_node.io.images import IMAGE_EXTS, read_image
from rvm_node.io.orientation import DisplayMatrix
from rvm_node.io.resize import resize_image
from rvm_node.io.sequence import FramePattern, FrameRange, natural_key

__all__ = ["FrameSource", "ImageSequenceSource", "SourceFrame", "VideoSource", "open_source"]


@dataclass(frozen=True)
class SourceFrame:
    number: int
    pixels: np.ndarray  # HxWx3: uint8, uint16, or float32 0..1
    time: Fraction | None = None  # a video frame's presentation time in seconds, as the file gives it


class FrameSource(abc.ABC):
    """Frames of one shot, in order, each with its number."""

    path: Path
    width: int
    height: int
    rate: Fraction | None = None
    display: DisplayMatrix | None = None  # how a video is meant to be shown (None: as stored)
    upright: bool = False  # True when frames are turned upright by ``display`` before they are yielded

    @property
    @abc.abstractmethod
    def frame_numbers(self) -> list[int] | None:
        """The numbers this source will yield, when known before decoding."""

    @abc.abstractmethod
    def frames(self, start: int | None = None) -> Iterator[SourceFrame]:
        """Yield frames in order, from frame number ``start`` when given."""

    @property
    def has_audio(self) -> bool:
        return False

    def variable_rate(self) -> VariableRate | None:
        """How the frames' times stray from a constant rate; None when they keep one (or have no times)."""
        return None


def _resize(pixels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return pixels if size is None else resize_image(pixels, size)


def _time(pts: int | None, time_base: Fraction | None) -> Fraction | None:
    """A frame's presentation time in seconds, exact; None when the file gives none."""
    return None if pts is None or time_base is None else pts * Fraction(time_base)


def _check_resize(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise InvalidInputError(f"input_resize: expected two positive integers W H, got {size}")
    return None if size is None else (int(size[0]), int(size[1]))


class VideoSource(FrameSource):
    """A video decoded with PyAV, on a thread pool."""

    def __init__(
        self,
        path: Path,
        *,
        frame_range: FrameRange | None = None,
        start_frame: int = 1,
        colour: ColourTransform | None = None,
        resize: tuple[int, int] | None = None,
        autorotate: bool = True,
    ) -> None:
        import av

        self.path = path
        self.start_frame = start_frame
        self.frame_range = frame_range
        self.colour = colour
        self.resize = _check_resize(resize)
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise InvalidInputError(f"{path}: no video stream")
                stream = container.streams.video[0]
                self.rate = Fraction(stream.average_rate) if stream.average_rate else None
                self._count = stream.frames or None
                self._audio = bool(container.streams.audio)
                width, height = stream.codec_context.width, stream.codec_context.height
                first = next(container.decode(stream), None)  # the display matrix comes with the frames
        except av.error.FFmpegError as exc:
            raise InvalidInputError(f"{path}: not a readable video ({exc})") from exc
        self.display = DisplayMatrix.of_frame(first) if first is not None else None
        self.upright = autorotate and self.display is not None and self.display.steps is not None
        if self.upright and self.display is not None and self.display.turns_sideways:
            width, height = height, width
        self._variable: VariableRate | None = None
        self._scanned = False
        self.width, self.height = self.resize or (width, height)
        if self.width < 1 or self.height < 1:
            raise InvalidInputError(f"{path}: the video stream has no picture size")

    @property
    def has_audio(self) -> bool:
        return self._audio

    def variable_rate(self) -> VariableRate | None:
        if not self._scanned:  # the packets' timestamps: demuxed once, never decoded
            self._variable = variable_rate(*scan_frame_times(self.path))
            self._scanned = True
        return self._variable

    @property
    def frame_numbers(self) -> list[int] | None:
        if self._count is None:
            return None
        numbers = range(self.start_frame, self.start_frame + self._count)
        return [n for n in numbers if self.frame_range is None or n in self.frame_range]

    def frames(self, start: int | None = None) -> Iterator[SourceFrame]:
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for index, frame in enumerate(container.decode(stream)):
                    number = self.start_frame + index
                    if self.frame_range is not None and number > self.frame_range.last:
                        break
                    if (start is not None and number < start) or (
                        self.frame_range is not None and number < self.frame_range.first
                    ):
                        continue
                    deep = max((c.bits for c in frame.format.components), default=8) > 8
                    pixels = frame.to_ndarray(format="rgb48le" if deep else "rgb24")
                    yield SourceFrame(number, self._prepare(pixels), _time(frame.pts, frame.time_base))
        except av.error.FFmpegError as exc:
            raise InvalidInputError(f"{self.path}: decoding failed ({exc})") from exc

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        if self.upright and self.display is not None:
            pixels = self.display.upright(pixels)
        pixels = _resize(pixels, self.resize)
        if self.colour is not None:
            top = np.iinfo(pixels.dtype).max
            return self.colour.apply(pixels.astype(np.float32) / top)
        return pixels


class ImageSequenceSource(FrameSource):
    """Numbered images from a frame pattern, or every image of a directory in natural order."""

    def __init__(
        self,
        files: dict[int, Path],
        *,
        label: Path,
        frame_range: FrameRange | None = None,
        allow_gaps: bool = False,
        colourspace: str | None = None,
        resize: tuple[int, int] | None = None,
    ) -> None:
        self.path = label
        self.resize = _check_resize(resize)
        selected = {n: p for n, p in files.items() if frame_range is None or n in frame_range}
        if not selected:
            where = f" in {frame_range.first}-{frame_range.last}" if frame_range else ""
            raise InvalidInputError(f"{label}: no frames{where}")
        numbers = sorted(selected)
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if missing and not allow_gaps:
            shown = ", ".join(str(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise InvalidInputError(
                f"{label}: frames missing in the middle of the sequence: {shown} (pass --allow-gaps to skip them)"
            )
        self.files = selected
        self._numbers = numbers
        first = read_image(selected[numbers[0]])
        self.native_size = first.size
        self.width, self.height = self.resize or first.size
        self.colour: ColourTransform | None = None
        if first.scene_linear or colourspace is not None:
            self.colour = ColourTransform(colourspace)

    @property
    def frame_numbers(self) -> list[int]:
        return list(self._numbers)

    def frames(self, start: int | None = None) -> Iterator[SourceFrame]:
        for number in self._numbers:
            if start is not None and number < start:
                continue
            path = self.files[number]
            image = read_image(path)
            if image.size != self.native_size:
                raise InvalidInputError(
                    f"{path}: frame {number} is {image.size[0]}x{image.size[1]}, expected "
                    f"{self.native_size[0]}x{self.native_size[1]} like the first frame"
                )
            pixels = _resize(image.pixels, self.resize)
            if self.colour is not None:
                if pixels.dtype.kind == "u":
                    pixels = pixels.astype(np.float32) / np.iinfo(pixels.dtype).max
                pixels = self.colour.apply(pixels)
            yield SourceFrame(number, pixels)


def open_source(
    input_source: str | Path,
    *,
    frame_range: FrameRange | None = None,
    start_frame: int = 1,
    colourspace: str | None = None,
    resize: tuple[int, int] | None = None,
    allow_gaps: bool = False,
    autorotate: bool = True,
) -> FrameSource:
    """Open a video file, a frame pattern or a directory of images (a video turned upright unless
    ``autorotate`` is False)."""
    text = str(input_source)
    pattern = FramePattern.detect(text)
    if pattern is not None:
        if pattern.suffix_ext not in IMAGE_EXTS:
            raise InvalidInputError(f"{text}: unsupported image type {pattern.suffix_ext or '(none)'}")
        files = pattern.existing()
        if not files:
            raise InvalidInputError(f"{pattern}: no frames found")
        return ImageSequenceSource(
            files,
            label=Path(str(pattern)),
            frame_range=frame_range,
            allow_gaps=allow_gaps,
            colourspace=colourspace,
            resize=resize,
        )
    path = Path(text)
    if path.is_dir():
        images = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and not is_temporary(p)),
            key=lambda p: natural_key(p.name),
        )
        if not images:
            raise InvalidInputError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this directory")
        return ImageSequenceSource(
            dict(enumerate(images)),
            label=path,
            frame_range=frame_range,
            allow_gaps=allow_gaps,
            colourspace=colourspace,
            resize=resize,
        )
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or directory")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageSequenceSource(
            {start_frame: path}, label=path, frame_range=frame_range, colourspace=colourspace, resize=resize
        )
    colour = ColourTransform(colourspace) if colourspace is not None else None
    return VideoSource(
        path,
        frame_range=frame_range,
        start_frame=start_frame,
        colour=colour,
        resize=resize,
        autorotate=autorotate,
    )
