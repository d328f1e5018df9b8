"""What the benchmarks share: the machine line, the example clip at a size, tensor rates, tables."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.errors import InvalidInputError

__all__ = [
    "concurrently",
    "machine",
    "markdown",
    "parse_frame_sizes",
    "parse_one_size",
    "print_table",
    "rss_mb",
    "spread",
    "tensor_rate",
    "upscaled_clip",
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    versions = [
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"onnxruntime {onnxruntime.__version__}",
    ]
    for package in ("openvino", "numba"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"no {package}")
    return f"{cpu}, {os.cpu_count()} logical cores; " + ", ".join(versions)


def upscaled_clip(width: int, height: int, limit: int) -> Path:
    """The example clip re-encoded at ``width``x``height`` (cached), a real clip at a realistic size, with
    ``limit`` frames: the clip played forwards, then backwards, and so on where it has fewer."""
    import av

    from rvm_node.engine.weights import cache_dir
    from rvm_node.example import example_clip, read_video_frames
    from rvm_node.fsutil import atomic_write

    target = cache_dir() / f"carphone_{width}x{height}_{limit}_frames.mp4"
    if target.is_file():
        return target
    frames, rate = read_video_frames(example_clip(), limit=limit)
    if len(frames) < limit:
        there_and_back = np.concatenate([frames, frames[::-1]])
        frames = np.resize(there_and_back, (limit, *frames.shape[1:]))

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "12"}
            for frame in frames:
                picture = av.VideoFrame.from_ndarray(frame.transpose(1, 2, 0).copy(), format="rgb24")
                for packet in stream.encode(picture.reformat(width=width, height=height)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    atomic_write(target, write)
    return target


def tensor_rate(backend: Any, frames: list[np.ndarray], ratio: float, outputs: Any = None) -> float:
    """Frames/s of a session over ``HxWx3`` frames already in memory (after one warm-up frame),
    returning ``outputs`` (an ``OutputSpec``; default both planes, float32)."""
    session = backend.new_session(ratio, outputs)
    session.process(frames[0].transpose(2, 0, 1)[None])
    session.reset()
    start = time.perf_counter()
    for pixels in frames:
        session.process(pixels.transpose(2, 0, 1)[None])
    return len(frames) / (time.perf_counter() - start)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def markdown(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_table(clip: str, rows: list[tuple[str, str]]) -> int:
    print(f"Machine: {machine()}")
    print(clip)
    markdown(["measurement", "result"], [list(row) for row in rows])
    return 0


def parse_frame_sizes(text: str, where: str = "--sizes") -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        try:
            width, height = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise InvalidInputError(f"{where}: expected WxH, got {part.strip()!r}") from None
        if width < 1 or height < 1:
            raise InvalidInputError(f"{where}: expected a positive size, got {part.strip()!r}")
        sizes.append((width, height))
    return sizes


def parse_one_size(text: str, where: str) -> tuple[int, int]:
    sizes = parse_frame_sizes(text, where)
    if len(sizes) != 1:
        raise InvalidInputError(f"{where}: expected one WxH, got {text!r}")
    return sizes[0]


def spread(values: list[float], digits: int = 1) -> str:
    """The median, and the range when there are several values."""
    median = statistics.median(values)
    if len(values) < 2:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def concurrently(count: int, work: Callable[[], None]) -> float:
    """Seconds for ``count`` threads each running ``work`` once; the first error is raised."""
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed
