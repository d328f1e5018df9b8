"""Matte writers: image sequences (EXR, PNG, TIFF) and videos (h264, ProRes 4444).

Three kinds of output, as in the official converter:

* ``alpha``: the matte. EXR half ZIP, RGBA with R=G=B=A=matte by default
  (Blender misreads single-channel EXR) or ``A`` only; 16- or 8-bit PNG; 16-bit TIFF.
* ``foreground``: RGBA, straight or premultiplied.
* ``composition``: RGB over a background (colour, image or video).

Every image is written atomically. Videos are written to a temporary file and
renamed when complete, with the source's audio copied in. A video of a
variable-frame-rate source keeps each frame's own time; one of a source kept
as stored (``--no-autorotate``) carries the source's display matrix, so it is
shown as the source is.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rvm_node.engine.samples import SampleFormat, to_samples, to_unit_float
from rvm_node.errors import InvalidInputError, OutputError
from rvm_node.fsutil import make_directory, new_file_mode, remove_temporaries, temporary_path
from rvm_node.io.frame_times import VariableRate
from rvm_node.io.images import read_image, write_exr, write_image
from rvm_node.io.sequence import FramePattern

__all__ = [
    "OFFICIAL_GREEN",
    "Background",
    "FrameWriter",
    "OutputKind",
    "SequenceWriter",
    "VideoWriter",
    "WriterSettings",
    "display_matrix_writable",
    "verify_frame",
]

log = logging.getLogger("rvm_node.io")

OutputKind = Literal["alpha", "foreground", "composition"]
OFFICIAL_GREEN = (120, 255, 155)
SEQUENCE_EXTS = (".exr", ".png", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mov", ".mkv")


@dataclass(frozen=True, kw_only=True)
class WriterSettings:
    """How mattes are encoded."""

    exr_channels: Literal["RGBA", "A"] = "RGBA"
    bit_depth: Literal[8, 16] = 16
    premultiplied: bool = False
    video_mbps: float | None = None
    video_codec: Literal["h264", "prores4444"] | None = None
    official_png_composition: bool = False  # the official png_sequence writes RGBA compositions
    group_writable: bool = False  # files and the folders made for them get group read and write


class Background:
    """What a composition goes over: a flat colour, an image, or a video (looped)."""

    def __init__(self, spec: str | None, size: tuple[int, int]) -> None:
        from rvm_node.io.sources import open_source

        self._colour: np.ndarray | None = None
        self._still: np.ndarray | None = None
        self._video: Iterator[np.ndarray] | None = None
        self._size = size
        if spec is None:
            self._colour = np.array(OFFICIAL_GREEN, np.float32) / 255
            return
        parts = spec.split(",")
        if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
            values = [int(p) for p in parts]
            if any(v > 255 for v in values):
                raise InvalidInputError(f"background: expected R,G,B in 0..255, got {spec}")
            self._colour = np.array(values, np.float32) / 255
            return
        source = open_source(spec, resize=size)
        numbers = source.frame_numbers
        if numbers is not None and len(numbers) == 1:
            self._still = self._as_float(next(source.frames()).pixels)
        else:
            self._source = source
            self._video = self._cycle()

    @staticmethod
    def _as_float(pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype.kind == "u":
            return pixels.astype(np.float32) / np.iinfo(pixels.dtype).max
        return pixels.astype(np.float32)

    def _cycle(self) -> Iterator[np.ndarray]:
        while True:
            empty = True
            for frame in self._source.frames():
                empty = False
                yield self._as_float(frame.pixels)
            if empty:
                raise InvalidInputError(f"{self._source.path}: background has no frames")

    def next(self) -> np.ndarray:
        """The background for the next frame: ``HxWx3`` float32, or a 3-vector colour."""
        if self._video is not None:
            return next(self._video)
        if self._still is not None:
            return self._still
        return self._colour if self._colour is not None else np.zeros(3, np.float32)


def render(
    kind: OutputKind,
    settings: WriterSettings,
    fgr: np.ndarray | None,
    pha: np.ndarray,
    background: np.ndarray | None,
) -> np.ndarray:
    """The image to write: ``HxW`` for alpha, ``HxWx4`` foreground, ``HxWx3`` composition.

    Alpha and a straight foreground keep their sample format (see
    :meth:`FrameWriter.sample_format`); anything computed is float32.
    """
    if kind == "alpha":
        return pha
    if fgr is None:
        raise InvalidInputError(f"{kind}: the foreground is needed but was not computed")
    if kind == "foreground":
        if settings.premultiplied:
            fgr, pha = to_unit_float(fgr), to_unit_float(pha)
            return np.concatenate([fgr * pha[..., None], pha[..., None]], axis=-1)
        return np.concatenate([fgr, pha[..., None]], axis=-1)
    fgr, pha = to_unit_float(fgr), to_unit_float(pha)
    if settings.official_png_composition:
        return np.concatenate([fgr * (pha[..., None] > 0), pha[..., None]], axis=-1)
    if background is None:
        raise InvalidInputError("composition: a background is needed")
    alpha = pha[..., None]
    return fgr * alpha + background * (1 - alpha)


class FrameWriter(abc.ABC):
    kind: OutputKind
    target: str
    settings: WriterSettings

    @property
    def sample_format(self) -> SampleFormat:
        """The sample format the mattes must arrive in for this output to be exact to the bit."""
        if self.kind == "composition" or (self.kind == "foreground" and self.settings.premultiplied):
            return "float32"  # computed from the mattes (see render)
        return self._stored_format()

    @abc.abstractmethod
    def _stored_format(self) -> SampleFormat:
        """The sample format the file stores."""

    @abc.abstractmethod
    def write(self, number: int, image: np.ndarray, time: Fraction | None = None) -> None:
        """Write one rendered frame (see :func:`render`); ``time`` is the source frame's, in seconds."""

    def close(self) -> None:  # noqa: B027 - image sequences have nothing to finish
        """Finish the output (a video is moved into place here)."""

    def abort(self) -> None:  # noqa: B027 - complete frames of a sequence stay
        """Drop an unfinished output; complete frames already written stay."""


class SequenceWriter(FrameWriter):
    """One image per frame at ``pattern``'s path for the frame number."""

    def __init__(self, kind: OutputKind, pattern: FramePattern, settings: WriterSettings) -> None:
        ext = pattern.suffix_ext
        if ext not in SEQUENCE_EXTS:
            raise InvalidInputError(
                f"{pattern}: unsupported image type {ext or '(none)'}; expected {', '.join(SEQUENCE_EXTS)}"
            )
        self.kind = kind
        self.pattern = pattern
        self.target = str(pattern)
        self.settings = settings
        self.ext = ext

    def path(self, number: int) -> Path:
        return self.pattern.path(number)

    def _stored_format(self) -> SampleFormat:
        if self.ext == ".exr":
            return "float16"
        if self.ext in (".tif", ".tiff") or self.settings.bit_depth == 16:
            return "uint16"
        return "uint8"

    def write(self, number: int, image: np.ndarray, time: Fraction | None = None) -> None:  # noqa: ARG002 - a file per frame has no time
        path = self.path(number)
        try:
            self._write(path, image)
        except OSError as exc:  # a full disk, a read-only folder, a quota: one line naming file and frame
            raise OutputError.of(path, exc, f"frame {number}") from exc

    def _write(self, path: Path, image: np.ndarray) -> None:
        shared = self.settings.group_writable
        if self.ext == ".exr":
            if self.kind == "alpha":  # RGBA: R = G = B = A = matte
                write_exr(path, image, self.settings.exr_channels, group_writable=shared)
            else:
                write_exr(path, image, "RGBA" if image.shape[-1] == 4 else "RGB", group_writable=shared)
        else:
            bits = 16 if self.ext in (".tif", ".tiff") else self.settings.bit_depth
            write_image(path, to_samples(image, "uint16" if bits == 16 else "uint8"), group_writable=shared)

    def remove_stale_temporaries(self, numbers: list[int]) -> None:
        """Delete temporary files a killed run left for these frames (others may be in flight elsewhere)."""
        names = {self.path(n).name for n in numbers}
        remove_temporaries(self.pattern.directory, names.__contains__)


def display_matrix_writable(stream: Any) -> bool:
    """True when this PyAV can record a display matrix on an output stream (PyAV 18.1 and later)."""
    return hasattr(stream, "set_display_matrix")


def verify_frame(path: Path, size: tuple[int, int]) -> bool:
    """True when ``path`` decodes and has ``size`` (width, height)."""
    try:
        return read_image(path).size == size
    except InvalidInputError:
        return False


class VideoWriter(FrameWriter):
    """A video file, written to a temporary name and renamed when closed."""

    def __init__(
        self,
        kind: OutputKind,
        path: Path,
        *,
        rate: Fraction,
        size: tuple[int, int],
        settings: WriterSettings,
        audio_from: Path | None = None,
        timing: VariableRate | None = None,
        display_matrix: Sequence[int] | None = None,
    ) -> None:
        """``timing``: frames keep the times given to :meth:`write`, counted in its time base (else they
        come at ``rate``); ``display_matrix``: how the video is to be shown, recorded in the file."""
        import av

        ext = path.suffix.lower()
        if ext not in VIDEO_EXTS:
            raise InvalidInputError(
                f"{path}: unsupported video type {ext or '(none)'}; expected {', '.join(VIDEO_EXTS)}"
            )
        codec = settings.video_codec or ("prores4444" if kind == "foreground" and ext == ".mov" else "h264")
        if codec == "prores4444" and ext == ".mp4":
            raise InvalidInputError(f"{path}: ProRes 4444 needs a .mov or .mkv file")
        self.kind, self.path, self.target, self.settings = kind, path, str(path), settings
        self.codec = codec
        self.size = size
        self._tmp = temporary_path(path, "video")
        make_directory(path.parent, group_writable=settings.group_writable)
        self._container: Any = av.open(str(self._tmp), "w")
        if codec == "prores4444":
            stream = self._container.add_stream("prores_ks", rate=rate)
            stream.pix_fmt = "yuva444p10le" if kind == "foreground" else "yuv444p10le"
            stream.options = {"profile": "4"}
            self._alpha = kind == "foreground"
        else:
            if size[0] % 2 or size[1] % 2:
                raise InvalidInputError(
                    f"{path}: h264 needs an even frame size, got {size[0]}x{size[1]}; use a .mov with --video-codec prores4444 or an image sequence"
                )
            stream = self._container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            self._alpha = False
        stream.width, stream.height = size
        if settings.video_mbps is not None:
            stream.bit_rate = int(settings.video_mbps * 1_000_000)
        self._time_base = timing.time_base if timing is not None else None
        self._last_pts: int | None = None
        if self._time_base is not None:
            stream.codec_context.time_base = self._time_base
        if display_matrix is not None:
            if display_matrix_writable(stream):
                stream.set_display_matrix(list(display_matrix))
            else:
                log.warning(
                    "%s: PyAV %s cannot record a display matrix (18.1 can); the video is written as "
                    "stored, without the source's rotation",
                    path,
                    av.__version__,
                )
        self._stream = stream
        # Streams must all exist before the first packet: add the audio copy now, fill it at close().
        self._audio_source: Any = None
        self._audio_pair: tuple[Any, Any] | None = None
        if audio_from is not None:
            source = av.open(str(audio_from))
            if source.streams.audio:
                audio_in = source.streams.audio[0]
                self._audio_pair = (audio_in, self._container.add_stream_from_template(audio_in))
                self._audio_source = source
            else:
                source.close()

    def _stored_format(self) -> SampleFormat:
        return "uint16" if self._alpha else "uint8"

    def write(self, number: int, image: np.ndarray, time: Fraction | None = None) -> None:
        try:
            self._encode(image, time)
        except OSError as exc:  # PyAV's errors are OSErrors too
            raise OutputError.of(self.path, exc, f"frame {number}") from exc

    def _pts(self, time: Fraction | None, time_base: Fraction) -> int:
        """A frame's timestamp in ``time_base``: its own time, and never at or before the last frame's
        (a frame without a time, or with a repeated one, comes one tick after it)."""
        pts = None if time is None else round(time / time_base)
        if self._last_pts is not None and (pts is None or pts <= self._last_pts):
            pts = self._last_pts + 1
        self._last_pts = 0 if pts is None else pts
        return self._last_pts

    def _encode(self, image: np.ndarray, time: Fraction | None = None) -> None:
        import av

        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if not self._alpha and image.shape[-1] == 4:
            image = image[..., :3]
        if self._alpha:
            frame = av.VideoFrame.from_ndarray(to_samples(image, "uint16"), format="rgba64le")
        else:
            frame = av.VideoFrame.from_ndarray(to_samples(image, "uint8"), format="rgb24")
        if self._time_base is not None:
            frame.pts, frame.time_base = self._pts(time, self._time_base), self._time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _copy_audio(self) -> None:
        if self._audio_pair is None:
            return
        audio_in, audio_out = self._audio_pair
        try:
            for packet in self._audio_source.demux(audio_in):
                if packet.dts is None:
                    continue
                packet.stream = audio_out
                self._container.mux(packet)
        finally:
            self._audio_source.close()

    def close(self) -> None:
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._copy_audio()
            self._container.close()
            self._tmp.chmod(new_file_mode(group_writable=self.settings.group_writable))
            self._tmp.replace(self.path)
        except OSError as exc:
            raise OutputError.of(self.path, exc, "finishing the video") from exc

    def abort(self) -> None:
        if not self._tmp.exists():
            return  # closed (moved into place) or already aborted
        try:
            if self._audio_source is not None:
                self._audio_source.close()
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)
