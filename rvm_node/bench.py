"""``rvm-node bench engine``: tensor throughput, side by side, in one run.

Each configuration runs the same frames through a fresh session, one frame
per call with the state carried, after a few warm-up frames. The official
ONNX runs in a plain ``onnxruntime.InferenceSession`` with default settings,
as the official inference code runs it; the other rows run through our
backends. Ratios are against that official row at the same size.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.errors import InvalidInputError, RvmNodeError

__all__ = ["run_engine_bench"]

Runner = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class _Size:
    width: int
    height: int
    ratio: float

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} @{self.ratio:g}"


def _parse_sizes(text: str) -> list[_Size]:
    sizes = []
    for part in text.split(","):
        try:
            dims, ratio = part.strip().split("@")
            width, height = dims.lower().split("x")
            sizes.append(_Size(int(width), int(height), float(ratio)))
        except ValueError:
            raise InvalidInputError(f"--sizes: expected WxH@ratio, got {part.strip()!r}") from None
    return sizes


def _official_runner(size: _Size) -> Runner:
    import onnxruntime as ort

    from rvm_node.engine.weights import official_path

    session = ort.InferenceSession(str(official_path()), providers=["CPUExecutionProvider"])
    rec = [np.zeros([1, 1, 1, 1], np.float32)] * 4
    ratio = np.asarray([size.ratio], np.float32)

    def run(frame: np.ndarray) -> None:
        nonlocal rec
        out = session.run(
            None,
            {
                "src": frame,
                "r1i": rec[0],
                "r2i": rec[1],
                "r3i": rec[2],
                "r4i": rec[3],
                "downsample_ratio": ratio,
            },
        )
        rec = out[2:]

    return run


def _session_runner(factory: Callable[[], object], size: _Size) -> Callable[[], Runner]:
    def make() -> Runner:
        backend = factory()
        session = backend.new_session(size.ratio)  # type: ignore[attr-defined]

        def run(frame: np.ndarray) -> None:
            session.process(frame)

        return run

    return make


def _configs(size: _Size) -> list[tuple[str, Callable[[], Runner]]]:
    from rvm_node.engine.loader import load_model
    from rvm_node.engine.torch_backend import TorchOptions, cpu_has_bf16

    configs: list[tuple[str, Callable[[], Runner]]] = [
        ("official ONNX, onnxruntime (reference)", lambda: _official_runner(size)),
        ("our ONNX export, onnxruntime", _session_runner(lambda: load_model(backend="onnxruntime"), size)),
        ("torch eager fp32", _session_runner(lambda: load_model(backend="torch"), size)),
        (
            "torch eager fp32 channels_last",
            _session_runner(
                lambda: load_model(backend="torch", options=TorchOptions(channels_last=True)), size
            ),
        ),
        (
            "TorchScript (frozen) fp32",
            _session_runner(
                lambda: load_model(backend="torch", options=TorchOptions(torchscript="freeze")), size
            ),
        ),
    ]
    if cpu_has_bf16():
        configs += [
            (
                "torch eager bf16",
                _session_runner(lambda: load_model(backend="torch", precision="bf16"), size),
            ),
            (
                "torch eager bf16 channels_last",
                _session_runner(
                    lambda: load_model(
                        backend="torch", precision="bf16", options=TorchOptions(channels_last=True)
                    ),
                    size,
                ),
            ),
        ]
    return configs


def _measure(make: Callable[[], Runner], frames: np.ndarray, warmup: int) -> float:
    run = make()
    for frame in frames[:warmup]:
        run(frame)
    start = time.perf_counter()
    for frame in frames[warmup:]:
        run(frame)
    return (len(frames) - warmup) / (time.perf_counter() - start)


def _machine() -> str:
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

    return (
        f"{cpu}, {os.cpu_count()} logical cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}"
    )


def _upscaled_clip(width: int, height: int, limit: int) -> Path:
    """The example clip re-encoded at ``width``x``height`` (cached), a real clip at a realistic size."""
    import av

    from rvm_node.engine.weights import cache_dir
    from rvm_node.example import example_clip, read_video_frames
    from rvm_node.fsutil import atomic_write

    target = cache_dir() / f"carphone_{width}x{height}_{limit}.mp4"
    if target.is_file():
        return target
    frames, rate = read_video_frames(example_clip(), limit=limit)

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


def _tensor_rate(backend: Any, frames: list[np.ndarray], ratio: float) -> float:
    """Frames/s of a session over ``HxWx3`` frames already in memory (after one warm-up frame)."""
    session = backend.new_session(ratio)
    session.process(frames[0].transpose(2, 0, 1)[None])
    session.reset()
    start = time.perf_counter()
    for pixels in frames:
        session.process(pixels.transpose(2, 0, 1)[None])
    return len(frames) / (time.perf_counter() - start)


def run_convert_bench(args: argparse.Namespace) -> int:
    """End-to-end convert vs tensor throughput vs a sequential loop, on the same real frames."""
    import tempfile

    from rvm_node.convert import ConvertJob, run_job
    from rvm_node.engine.loader import load_model, shared_cpu_options
    from rvm_node.io.sequence import FramePattern
    from rvm_node.io.sources import open_source
    from rvm_node.io.writers import SequenceWriter, WriterSettings, render

    width, height = (int(v) for v in args.size.lower().split("x"))
    clip = _upscaled_clip(width, height, args.frames)
    backend = load_model(backend=args.backend, options=shared_cpu_options(args.backend))
    ratio = args.downsample_ratio
    source = open_source(clip)
    frames = [f.pixels for f in source.frames()]
    rows: list[tuple[str, float]] = []

    tensor = _tensor_rate(backend, frames, ratio)
    rows.append(("engine tensor throughput (decoded frames in memory)", tensor))

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

    print(f"Machine: {_machine()}")
    print(
        f"Clip: carphone re-encoded at {width}x{height}, {len(frames)} frames, ratio {ratio}, backend {backend.name}"
    )
    print("| path | frames/s | vs tensor |")
    print("|---|---|---|")
    for name, fps in rows:
        print(f"| {name} | {fps:.2f} | {fps / tensor:.2f}x |")
    return 0


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def _print_table(clip: str, rows: list[tuple[str, str]]) -> int:
    print(f"Machine: {_machine()}")
    print(clip)
    print("| measurement | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


def _spawn_node(*options: str, pin_core: int | None = None) -> tuple[Any, str]:
    """An `rvm-node serve --port 0` subprocess and the address it printed once serving."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "rvm_node", "serve", "--port", "0", *options]
    if pin_core is not None:
        command = ["taskset", "-c", str(pin_core), *command]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy()
    )
    address = process.stdout.readline().strip() if process.stdout is not None else ""
    if not address:
        process.kill()
        raise RvmNodeError("benchmark: the node did not start")
    return process, address


def run_node_bench(args: argparse.Namespace) -> int:
    """A node on loopback: one shot end to end, concurrent streams, and memory after many streams."""
    import tempfile
    import threading

    from rvm_node.client import NodeClient, RemoteBackend
    from rvm_node.convert import ConvertJob, run_job
    from rvm_node.engine.loader import load_model
    from rvm_node.io.sources import open_source

    width, height = (int(v) for v in args.size.lower().split("x"))
    clip = _upscaled_clip(width, height, args.frames)
    frames = [f.pixels for f in open_source(clip).frames()]
    ratio = args.downsample_ratio
    node, address = _spawn_node("--max-streams", "8")
    rows: list[tuple[str, str]] = []
    try:
        tensor = _tensor_rate(load_model(backend="onnxruntime"), frames, ratio)
        rows.append(("engine tensor throughput, in process", f"{tensor:.2f} frames/s (1.00x)"))
        client = NodeClient(address)
        with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
            job = ConvertJob(
                backend=RemoteBackend(client),
                input_source=str(clip),
                downsample_ratio=ratio,
                outputs={"alpha": str(Path(tmp) / "m.####.png")},
                seq_chunk=8,
                progress="off",
            )
            start = time.perf_counter()
            run_job(job)
            shot = len(frames) / (time.perf_counter() - start)
        rows.append(
            (
                "one shot end to end: decode, node, 16-bit PNG alpha",
                f"{shot:.2f} frames/s ({shot / tensor:.2f}x)",
            )
        )
        numbered = [(i, f) for i, f in enumerate(frames)]

        def stream_once() -> None:
            with client.open_stream(width=width, height=height, downsample_ratio=ratio) as stream:
                for _ in stream.process(numbered):
                    pass

        for count in (1, 2, 4):
            threads = [threading.Thread(target=stream_once) for _ in range(count)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rate = count * len(frames) / (time.perf_counter() - start)
            rows.append(
                (f"{count} concurrent stream(s), aggregate", f"{rate:.2f} frames/s ({rate / tensor:.2f}x)")
            )
        small = [(i, np.zeros((144, 176, 3), np.uint8)) for i in range(3)]

        def short_stream() -> None:
            with client.open_stream(width=176, height=144) as stream:
                for _ in stream.process(small):
                    pass

        short_stream()
        after_one = _rss_mb(node.pid)
        for _ in range(99):
            short_stream()
        after_hundred = _rss_mb(node.pid)
        rows.append(
            ("node RSS after 1 stream / after 100 streams", f"{after_one:.0f} MB / {after_hundred:.0f} MB")
        )
        client.close()
    finally:
        node.terminate()
        node.wait(30)
    return _print_table(
        f"Clip: carphone re-encoded at {width}x{height}, {len(frames)} frames, ratio {ratio}; node and client on loopback",
        rows,
    )


def run_farm_bench(args: argparse.Namespace) -> int:
    """Nodes pinned to one core each: aggregate frames/s for 1 and 2 nodes, and the cost of a failover."""
    import tempfile

    from rvm_node.farm import NodePool, Shot, run_shots
    from rvm_node.io.sequence import FrameRange

    clip = _upscaled_clip(352, 288, 120)

    def start(core: int) -> tuple[Any, str]:
        return _spawn_node("--threads", "1", "--max-streams", "2", pin_core=core)

    def shots(root: Path, count: int, length: int) -> list[Shot]:
        return [
            Shot(
                name=f"s{i}",
                input=str(clip),
                outputs={"alpha": str(root / f"s{i}" / "m.####.png")},
                frames=FrameRange(1 + i * length, (i + 1) * length),
                downsample_ratio=args.downsample_ratio,
            )
            for i in range(count)
        ]

    nodes = [start(0), start(1)]
    rows: list[tuple[str, str]] = []
    try:
        rates = {}
        for count in (1, 2):
            with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
                pool = NodePool([address for _, address in nodes[:count]])
                work = shots(Path(tmp), 4, args.frames)
                begin = time.perf_counter()
                for _ in run_shots(work, pool):
                    pass
                rates[count] = 4 * args.frames / (time.perf_counter() - begin)
                pool.close()
            rows.append(
                (
                    f"{count} node(s), one core each, 4 shots x {args.frames} frames",
                    f"{rates[count]:.2f} frames/s ({rates[count] / rates[1]:.2f}x one node)",
                )
            )
        with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
            pool = NodePool([address for _, address in nodes], cooldown=600)
            killed_at = resumed_at = None
            frames_before = 0
            for event in run_shots(
                shots(Path(tmp), 1, 90), pool, checkpoint_every=args.checkpoint_every, backoff=0.0
            ):
                if event.kind == "frame" and killed_at is None and event.result.frames >= 40:
                    victim = next(p for p, a in nodes if a == event.node)
                    victim.kill()
                    killed_at, frames_before = time.perf_counter(), event.result.frames
                elif event.kind == "frame" and killed_at is not None and resumed_at is None:
                    resumed_at = time.perf_counter()
            pool.close()
        replayed = frames_before % args.checkpoint_every
        rows.append(
            (
                f"failover: node killed after frame {frames_before}, checkpoint every {args.checkpoint_every}",
                f"{(resumed_at or killed_at or 0) - (killed_at or 0):.2f} s from the kill to the next frame "
                f"written; up to {replayed} frames recomputed",
            )
        )
    finally:
        for process, _ in nodes:
            process.kill()
            process.wait()
    return _print_table(
        f"Clip: carphone at 352x288, ratio {args.downsample_ratio}; nodes pinned with taskset, --threads 1",
        rows,
    )


def run_engine_bench(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0:
        raise InvalidInputError("--frames must be >= 1 and --warmup >= 0")
    sizes = _parse_sizes(args.sizes)
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    for size in sizes:
        frames = rng.random((args.warmup + args.frames, 1, 3, size.height, size.width), dtype=np.float32)
        for name, make in _configs(size):
            fps = _measure(make, frames, args.warmup)
            results.setdefault(name, {})[size.label] = fps
            print(f"  {size.label:22} {name:40} {fps:7.2f} frames/s", flush=True)
    reference = results["official ONNX, onnxruntime (reference)"]
    print()
    print(f"Machine: {_machine()}")
    header = ["configuration"] + [s.label for s in sizes]
    rows = [
        [name] + [f"{fps[s.label]:.2f} ({fps[s.label] / reference[s.label]:.2f}x)" for s in sizes]
        for name, fps in results.items()
    ]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return 0
