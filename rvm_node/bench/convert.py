"""``rvm-node bench convert``: the converter end to end against the official model's tensor rate, on real frames.

The rows take turns, round after round, and the medians are reported:

* the official ONNX file in a plain onnxruntime session, on float frames made
  before the clock starts: the official model's raw tensor rate, the
  reference;
* our engine's tensor rate on decoded frames in memory (16-bit alpha);
* ``rvm-node convert`` as a user runs it, a new process each time, start-up
  included (decode, inference, 16-bit PNG alpha written atomically);
* ``rvm-node matte`` through a node on this host (shared memory), the
  client's start-up included; the node is started once, before the rounds;
* the stages alone, per frame: decoding, the engine, writing, so the
  breakdown shows what bounds the end-to-end rate.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.bench.common import machine, markdown, parse_one_size, tensor_rate, upscaled_clip

__all__ = ["run_convert_bench"]


def _official_rate(frames: list[np.ndarray], ratio: float) -> float:
    import onnxruntime as ort

    from rvm_node.engine.weights import official_path

    session = ort.InferenceSession(str(official_path()), providers=["CPUExecutionProvider"])
    units = [np.ascontiguousarray(f.transpose(2, 0, 1)[None], np.float32) / np.float32(255) for f in frames]
    rec = [np.zeros([1, 1, 1, 1], np.float32)] * 4
    scale = np.asarray([ratio], np.float32)

    def run(src: np.ndarray) -> list[Any]:
        feed = {"src": src, "downsample_ratio": scale, **{f"r{i + 1}i": r for i, r in enumerate(rec)}}
        return list(session.run(None, feed))[2:]

    rec = run(units[0])
    start = time.perf_counter()
    for src in units:
        rec = run(src)
    return len(units) / (time.perf_counter() - start)


def _command_rate(command: list[str], frames: int) -> float:
    """Frames a second of an ``rvm-node`` command run to completion as a process of its own."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise RuntimeError(f"{' '.join(command[2:4])} exited {done.returncode}: {last}")
    return frames / seconds


def _stage_rows(clip: Path, backend: Any, ratio: float) -> list[list[str]]:
    """Each stage alone, ms a frame: decoding, the engine, writing 16-bit PNG alpha."""
    from rvm_node.engine.samples import OutputSpec
    from rvm_node.io.sequence import FramePattern
    from rvm_node.io.sources import open_source
    from rvm_node.io.writers import SequenceWriter, WriterSettings, render

    start = time.perf_counter()
    frames = [f.pixels for f in open_source(clip).frames()]
    decode = (time.perf_counter() - start) / len(frames)
    session = backend.new_session(ratio, OutputSpec(False, "uint16"))
    session.process(frames[0].transpose(2, 0, 1)[None])
    start = time.perf_counter()
    alphas = [session.process(f.transpose(2, 0, 1)[None]).pha[0, 0] for f in frames]
    engine = (time.perf_counter() - start) / len(frames)
    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
        writer = SequenceWriter("alpha", FramePattern(Path(tmp), "m.", 4, ".png"), WriterSettings())
        start = time.perf_counter()
        for number, alpha in enumerate(alphas, 1):
            writer.write(number, render("alpha", WriterSettings(), alpha, alpha, None))
        write = (time.perf_counter() - start) / len(frames)
    return [
        ["decode (PyAV, one thread)", f"{decode * 1000:.1f}"],
        [f"engine ({backend.name}, 16-bit alpha)", f"{engine * 1000:.1f}"],
        ["write 16-bit PNG alpha (atomic)", f"{write * 1000:.1f}"],
    ]


def run_convert_bench(args: argparse.Namespace) -> int:
    """End to end against the official model's raw tensor rate, interleaved; then the stages alone."""
    from rvm_node.engine.loader import load_model, shared_cpu_options
    from rvm_node.io.sources import open_source
    from rvm_node.node.launch import rvm_node_command, spawn_node, stop_process

    width, height = parse_one_size(args.size, "--size")
    clip = upscaled_clip(width, height, args.frames)
    ratio = args.downsample_ratio
    frames = [f.pixels for f in open_source(clip).frames()]
    backend = load_model(backend=args.backend, options=shared_cpu_options(args.backend))
    node, address = spawn_node("--backend", args.backend)
    try:
        with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
            common = [
                "--input-source",
                str(clip),
                "--downsample-ratio",
                f"{ratio:g}",
                "--quiet",
                "--overwrite",
            ]
            rows: dict[str, Callable[[], float]] = {
                "official ONNX, onnxruntime: raw tensor rate (reference)": lambda: _official_rate(frames, ratio),
                f"engine tensor rate ({backend.name}, 16-bit alpha)": lambda: tensor_rate(
                    backend, frames, ratio, _alpha_spec()
                ),
                "rvm-node convert, 16-bit PNG alpha (start-up included)": lambda: _command_rate(
                    rvm_node_command("convert", *common, "--backend", args.backend,
                                     "--output-alpha", f"{tmp}/c/m.####.png"),
                    len(frames),
                ),
                "rvm-node matte, a node on this host (shared memory; the client's start-up included)": lambda: (
                    _command_rate(
                        rvm_node_command("matte", *common, "--node", address, "--output-alpha", f"{tmp}/m/m.####.png"),
                        len(frames),
                    )
                ),
            }  # fmt: skip
            rates: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.rounds):  # A, B, C, D, A, B, C, D: the machine's noise falls on every row
                for name, run in rows.items():
                    rates[name].append(run())
    finally:
        stop_process(node)
    reference = statistics.median(next(iter(rates.values())))
    print(f"Machine: {machine()}")
    print(
        f"Clip: carphone re-encoded at {width}x{height}, {len(frames)} frames, ratio {ratio:g}, "
        f"--backend {args.backend} ({backend.name}); median of {args.rounds} interleaved rounds"
    )
    table = [
        [name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / reference:.2f}x"]
        for name, v in rates.items()
    ]
    markdown(["path", "frames/s", "vs the official raw tensor rate"], table)
    print()
    print("The stages alone, one after another on this machine's cores:")
    markdown(["stage", "ms/frame"], _stage_rows(clip, backend, ratio))
    sys.stdout.flush()
    return 0


def _alpha_spec() -> Any:
    from rvm_node.engine.samples import OutputSpec

    return OutputSpec(False, "uint16")
