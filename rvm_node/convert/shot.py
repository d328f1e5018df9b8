"""One shot's settings, checked once: where its frames come from and how they are read, at which ratio,
and what is written. A :class:`ShotSpec` travels whole from the command line, ``convert_video``, a farm's shot
list or a plugin into :class:`~rvm_node.convert.pipeline.ConvertJob`."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from rvm_node.engine.ratio import check_downsample_ratio
from rvm_node.errors import InvalidInputError
from rvm_node.io.sequence import FrameRange
from rvm_node.io.writers import OutputKind, WriterSettings

__all__ = ["ShotSpec"]

OUTPUT_TYPES = ("video", "png_sequence")


@dataclass(frozen=True, kw_only=True)
class ShotSpec:
    """A shot to matte. ``outputs``: where each plane goes (a video or a frame pattern); ``output_type``
    ``png_sequence`` writes a plain folder the official way. ``no_autorotate``: keep a video's frames as
    stored instead of turning them upright. ``frame_rate``: of video outputs from image sequences."""

    input_source: str
    outputs: dict[OutputKind, str]
    output_type: str = "video"
    downsample_ratio: float | None = None
    input_resize: tuple[int, int] | None = None
    frames: FrameRange | None = None
    start_frame: int = 1
    input_colorspace: str | None = None
    allow_gaps: bool = False
    no_autorotate: bool = False
    background: str | None = None
    settings: WriterSettings = field(default_factory=WriterSettings)
    frame_rate: Fraction | None = None

    def __post_init__(self) -> None:
        if not self.outputs:
            raise InvalidInputError(
                "outputs: give at least one of --output-composition, --output-alpha, --output-foreground"
            )
        if self.output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type: expected video or png_sequence, got {self.output_type!r}")
        if self.settings.video_mbps is not None and self.settings.video_mbps <= 0:
            raise InvalidInputError(f"video_mbps: expected a positive number, got {self.settings.video_mbps}")
        check_downsample_ratio(self.downsample_ratio, "--downsample-ratio")
        targets = list(self.outputs.values())
        if len(set(targets)) != len(targets):
            raise InvalidInputError("outputs: two outputs point at the same path")
