"""``rvm-node bench convert``: the converter end to end against the engine's tensor rate, on real frames."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rvm_node.bench.common import (
    machine,
    parse_one_size,
    tensor_rate,
    upscaled_clip,
)

__all__ = ["run_convert_bench"]


def run_convert_bench(args: argparse.Namespace) -> int:
    """End-to-end convert vs tensor throughput vs a sequential loop, on the same real frames."""
    import tempfile

    from rvm_node.convert import ConvertJob, run_job
    from rvm_node.engine.loader import load_model, shared_cpu_options
    from rvm_node.engine.samples import OutputSpec
    from rvm_node.io.sequence import FramePattern
    from rvm_node.io.sources import open_source
    from rvm_node.io.writers import SequenceWriter, WriterSettings, render

    width, height = parse_one_size(args.size, "--size")
    clip = upscaled_clip(width, height, args.frames)
    backend = load_model(backend=args.backend, options=shared_cpu_options(args.backend))
    ratio = args.downsample_ratio
    source = open_source(clip)
    frames = [f.pixels for f in source.frames()]
    rows: list[tuple[str, float]] = []

    tensor = tensor_rate(backend, frames, ratio, OutputSpec(foreground=False, sample_format="uint16"))
    rows.append(("engine tensor throughput (decoded frames in memory, uint16 alpha)", tensor))

    for ext in args.formats.split(","):
        with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
            pattern = FramePattern(Path(tmp) / "seq", "m.", 4, f".{ext}")
            writer = SequenceWriter("alpha", pattern, WriterSettings())
            session = backend.new_session(ratio)
            start = time.perf_counter()
            for frame in open_source(clip).frames():  # decode -> run -> encode, one thread
                out = session.process(frame.pixels.transpose(2, 0, 1)[None])
                writer.write(
                    frame.number, render("alpha", WriterSettings(), out.pha[0, 0], out.pha[0, 0], None)
                )
            rows.append((f"sequential loop, alpha {ext}", len(frames) / (time.perf_counter() - start)))
            for chunk in (1, 4):
                job = ConvertJob(
                    backend=backend,
                    input_source=str(clip),
                    downsample_ratio=ratio,
                    outputs={"alpha": str(Path(tmp) / f"run{chunk}" / f"m.####.{ext}")},
                    seq_chunk=chunk,
                    num_workers=args.num_workers,
                    progress="off",
                )
                start = time.perf_counter()
                run_job(job)
                rows.append(
                    (
                        f"rvm-node convert, alpha {ext}, seq_chunk {chunk}",
                        len(frames) / (time.perf_counter() - start),
                    )
                )
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
        job = ConvertJob(
            backend=backend,
            input_source=str(clip),
            downsample_ratio=ratio,
            outputs={"composition": str(Path(tmp) / "comp.mp4")},
            progress="off",
        )
        start = time.perf_counter()
        run_job(job)
        rows.append(("rvm-node convert, composition h264 video", len(frames) / (time.perf_counter() - start)))

    print(f"Machine: {machine()}")
    print(
        f"Clip: carphone re-encoded at {width}x{height}, {len(frames)} frames, ratio {ratio}, backend {backend.name}"
    )
    print("| path | frames/s | vs tensor |")
    print("|---|---|---|")
    for name, fps in rows:
        print(f"| {name} | {fps:.2f} | {fps / tensor:.2f}x |")
    return 0
