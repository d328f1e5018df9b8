"""``convert_video``: the official converter's Python API, with real validation and VFX extras."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rvm_node.convert.pipeline import ConvertJob, ConvertReport, run_job
from rvm_node.convert.shot import ShotSpec
from rvm_node.engine.backend import MattingBackend
from rvm_node.errors import InvalidInputError
from rvm_node.io.sequence import FrameRange
from rvm_node.io.writers import OutputKind, WriterSettings

__all__ = ["convert_video"]


def _backend_for(model: Any, device: str | None, dtype: Any) -> MattingBackend[Any]:
    """Accept one of our backends, or a torch module with the official call contract."""
    if isinstance(model, MattingBackend):
        if device is not None or dtype is not None:
            raise InvalidInputError(
                "device/dtype: set them when loading the model, not for an engine backend"
            )
        return model
    import torch

    from rvm_node.engine.torch_backend import TorchBackend

    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(
            f"model: expected an rvm_node backend or a torch module, got {type(model).__name__}"
        )
    precisions = {None: "fp32", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in precisions:
        raise InvalidInputError(f"dtype: expected torch.float32, float16 or bfloat16, got {dtype}")
    variant = str(getattr(model, "variant", "mobilenetv3"))
    return TorchBackend(model, variant=variant, device=device or "cpu", precision=precisions[dtype])


def convert_video(
    model: Any,
    input_source: str | Path,
    input_resize: tuple[int, int] | None = None,
    downsample_ratio: float | None = None,
    output_type: str = "video",
    output_composition: str | Path | None = None,
    output_alpha: str | Path | None = None,
    output_foreground: str | Path | None = None,
    output_video_mbps: float | None = None,
    seq_chunk: int = 1,
    num_workers: int = 0,
    progress: bool = True,
    device: str | None = None,
    dtype: Any = None,
    *,
    frames: FrameRange | None = None,
    start_frame: int = 1,
    input_colorspace: str | None = None,
    allow_gaps: bool = False,
    no_autorotate: bool = False,
    background: str | None = None,
    settings: WriterSettings | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress_json: bool = False,
) -> ConvertReport:
    """Matte ``input_source`` (a video, a frame pattern such as ``plate.####.exr``, or a directory).

    The first thirteen parameters have the official ``convert_video`` meanings;
    ``model`` may be one of our backends (``rvm_node.load_model(...)``) or a
    torch module with the official call contract (then ``device``/``dtype``
    apply). Outputs with a frame field are image sequences that keep the
    source's frame numbers; ``output_type="png_sequence"`` with a plain
    directory writes the official ``0000.png ...``. A video is matted as it is
    displayed, turned upright by its display matrix (``no_autorotate=True``
    keeps it as stored), and video outputs of a variable-frame-rate source keep
    each frame's own time.
    """
    outputs: dict[OutputKind, str] = {}
    for kind, target in (
        ("composition", output_composition),
        ("alpha", output_alpha),
        ("foreground", output_foreground),
    ):
        if target is not None:
            outputs[kind] = str(target)  # type: ignore[index]
    base = settings or WriterSettings()
    if output_video_mbps is not None:
        base = dataclasses.replace(base, video_mbps=float(output_video_mbps))
    job = ConvertJob(
        backend=_backend_for(model, device, dtype),
        shot=ShotSpec(
            input_source=str(input_source),
            outputs=outputs,
            output_type=output_type,
            downsample_ratio=downsample_ratio,
            input_resize=None if input_resize is None else (int(input_resize[0]), int(input_resize[1])),
            frames=frames,
            start_frame=start_frame,
            input_colorspace=input_colorspace,
            allow_gaps=allow_gaps,
            no_autorotate=no_autorotate,
            background=background,
            settings=base,
        ),
        seq_chunk=seq_chunk,
        num_workers=num_workers,
        resume=resume,
        overwrite=overwrite,
        progress="json" if progress_json else ("bar" if progress else "off"),
    )
    return run_job(job)
