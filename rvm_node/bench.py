"""``rvm-node bench engine``: tensor throughput, side by side, in one run.

Each configuration runs the same frames through a fresh session, one frame
per call with the state carried, after a few warm-up frames. The official
ONNX runs in a plain ``onnxruntime.InferenceSession`` with default settings,
as the official inference code runs it; the other rows run through our
backends. Ratios are against that official row at the same size.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.errors import InvalidInputError, RvmNodeError
from rvm_node.node.launch import spawn_node, spawn_server, stop_process

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
        dims, at, ratio = part.strip().partition("@")
        try:
            value = float(ratio)
        except ValueError:
            value = -1.0
        if not at or value <= 0:
            raise InvalidInputError(f"--sizes: expected WxH@ratio, got {part.strip()!r}")
        width, height = _parse_one_size(dims, "--sizes")
        sizes.append(_Size(width, height, value))
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


def _tensor_rate(backend: Any, frames: list[np.ndarray], ratio: float, outputs: Any = None) -> float:
    """Frames/s of a session over ``HxWx3`` frames already in memory (after one warm-up frame),
    returning ``outputs`` (an ``OutputSpec``; default both planes, float32)."""
    session = backend.new_session(ratio, outputs)
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
    from rvm_node.engine.samples import OutputSpec
    from rvm_node.io.sequence import FramePattern
    from rvm_node.io.sources import open_source
    from rvm_node.io.writers import SequenceWriter, WriterSettings, render

    width, height = _parse_one_size(args.size, "--size")
    clip = _upscaled_clip(width, height, args.frames)
    backend = load_model(backend=args.backend, options=shared_cpu_options(args.backend))
    ratio = args.downsample_ratio
    source = open_source(clip)
    frames = [f.pixels for f in source.frames()]
    rows: list[tuple[str, float]] = []

    tensor = _tensor_rate(backend, frames, ratio, OutputSpec(foreground=False, sample_format="uint16"))
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


def _markdown(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _print_table(clip: str, rows: list[tuple[str, str]]) -> int:
    print(f"Machine: {_machine()}")
    print(clip)
    _markdown(["measurement", "result"], [list(row) for row in rows])
    return 0


def _spawn_standin(*options: str) -> tuple[Any, str]:
    """A benchmark stand-in server (``python -m rvm_node.bench_standins``) and its address."""
    return spawn_server(
        [sys.executable, "-m", "rvm_node.bench_standins", "--port", "0", *options], "a stand-in"
    )


_WINDOW = 3  # packed frames a stream keeps in flight (the window in bytes MatteStream.process_chunks takes)
_SIMULATED_BATCH = ("--max-batch", "4", "--batch-delay-ms", "2")
_MB = 1e6


@dataclass(frozen=True)
class _Wire:
    """Frames of one size, packed with one transport in both directions; a window of ``window`` bytes."""

    width: int
    height: int
    transport: str
    window: int


def _parse_frame_sizes(text: str, where: str = "--sizes") -> list[tuple[int, int]]:
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


def _parse_one_size(text: str, where: str) -> tuple[int, int]:
    sizes = _parse_frame_sizes(text, where)
    if len(sizes) != 1:
        raise InvalidInputError(f"{where}: expected one WxH, got {text!r}")
    return sizes[0]


def _wire_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` frames of the example clip scaled to ``width`` x ``height``: ``HxWx3`` uint8 pictures."""
    import av

    from rvm_node.example import example_clip, read_video_frames

    frames, _ = read_video_frames(example_clip(), limit=count)
    return [
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.transpose(1, 2, 0)), format="rgb24")
        .reformat(width=width, height=height)
        .to_ndarray()
        for frame in frames
    ]


def _concurrently(count: int, work: Callable[[], None]) -> float:
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


def _echo_stream(channel: Any, wire: _Wire, frames: list[np.ndarray]) -> None:
    """One echo stream, driven as MatteStream.process_chunks drives a node stream: a queue, a window of bytes."""
    import queue
    from collections import deque

    from rvm_node.bench_standins import ECHO_METHOD
    from rvm_node.node.protocol import TRANSPORTS, pack, unpack

    transport = TRANSPORTS[wire.transport]
    requests: queue.Queue[bytes | None] = queue.Queue()

    def outgoing() -> Iterator[bytes]:
        while (item := requests.get()) is not None:
            yield item

    settings = (("width", str(wire.width)), ("height", str(wire.height)), ("transport", wire.transport))
    replies = iter(channel.stream_stream(ECHO_METHOD)(outgoing(), metadata=settings))
    pending: deque[int] = deque()
    in_flight = 0

    def receive() -> None:
        nonlocal in_flight
        unpack(next(replies), transport, np.dtype("<u2"), (wire.height, wire.width), "echo reply")
        in_flight -= pending.popleft()

    for frame in frames:
        data = pack(frame, transport)
        requests.put(data)
        pending.append(len(data))
        in_flight += len(data)
        while len(pending) > 1 and in_flight > wire.window:
            receive()
    while pending:
        receive()
    requests.put(None)
    for _ in replies:
        pass


def _node_stream(client: Any, wire: _Wire, frames: list[np.ndarray], ratio: float = 0.25) -> None:
    """One stream through a node: uint8 RGB in, uint16 alpha back, one frame per chunk."""
    from rvm_node.client.node_client import StreamChunk

    with client.open_stream(
        width=wire.width,
        height=wire.height,
        input_format="uint8",
        output_format="uint16",
        planes=("alpha",),
        downsample_ratio=ratio,
        transport=wire.transport,
        return_transport=wire.transport,
    ) as stream:
        chunks = (StreamChunk([(number, frame)]) for number, frame in enumerate(frames))
        for _ in stream.process_chunks(chunks, window_bytes=wire.window):
            pass


def _spread(values: list[float], digits: int = 1) -> str:
    """The median, and the range when there are several values."""
    median = statistics.median(values)
    if len(values) < 2:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _interleaved(
    runs: list[Callable[[list[np.ndarray]], None]],
    streams: int,
    frames: list[np.ndarray],
    rounds: int,
    busy_file: Path,
) -> tuple[list[list[float]], list[float]]:
    """Aggregate frames/s of each run per round (A, B, C, A, B, C, ...) and the last run's device-busy fractions.

    Each run is warmed up first (connections, the mattes of this size).
    """
    from rvm_node.bench_standins import read_busy

    for run in runs:
        _concurrently(streams, functools.partial(run, frames[:2]))
    rates: list[list[float]] = [[] for _ in runs]
    busy: list[float] = []
    for _ in range(rounds):
        for index, run in enumerate(runs):
            before = read_busy(busy_file)
            seconds = _concurrently(streams, functools.partial(run, frames))
            rates[index].append(streams * len(frames) / seconds)
            if index == len(runs) - 1:
                busy.append((read_busy(busy_file) - before) / seconds)
    return rates, busy


def _standin_table(args: argparse.Namespace) -> tuple[list[str], list[list[str]]]:
    """(a) echo, (b) node over the constant stand-in, (c) the same with a simulated device; interleaved."""
    import contextlib
    import tempfile

    import grpc

    from rvm_node.bench_standins import STANDIN_NAME, echo_reply, parse_device_ms
    from rvm_node.client import NodeClient
    from rvm_node.node.protocol import TRANSPORTS, pack

    sizes = _parse_frame_sizes(args.sizes)
    fixed, per_stream = parse_device_ms(args.device_ms)
    simulated = f"simulated device: a pass of N ≤ 4 streams sleeps {fixed:g} + {per_stream:g}·N ms"
    paths = [
        "(a) bare gRPC echo (ceiling)",
        f"(b) node, {STANDIN_NAME}",
        f"(c) node, {STANDIN_NAME}; {simulated}",
    ]
    header = [
        "size",
        "frames/stream",
        "streams",
        "transport",
        "path",
        "frames/s",
        "MB/frame in",
        "MB/frame out",
        "(b) / (a)",
        "device busy",
    ]
    rows: list[list[str]] = []
    limit = 64 * 1024 * 1024
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    with contextlib.ExitStack() as stack:
        busy_file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rvm-bench-"))) / "busy"
        servers = [
            _spawn_standin("--standin", "echo"),
            _spawn_standin("--standin", "constant"),
            _spawn_standin(
                "--standin",
                "constant",
                "--device-ms",
                args.device_ms,
                "--busy-file",
                str(busy_file),
                *_SIMULATED_BATCH,
            ),
        ]
        for process, _ in servers:
            stack.callback(stop_process, process)
        channel = stack.enter_context(grpc.insecure_channel(servers[0][1], options=options))
        clients = [stack.enter_context(NodeClient(address)) for _, address in servers[1:]]
        for width, height in sizes:
            count = max(8, round(args.stream_frames * 1920 * 1080 / (width * height)))
            frames = _wire_frames(width, height, count)
            for transport in ("raw", "zstd"):
                packed = statistics.mean(len(pack(f, TRANSPORTS[transport])) for f in frames)
                wire = _Wire(width, height, transport, int(_WINDOW * packed))
                out_mb = len(echo_reply(height, width, transport)) / _MB
                for streams in (1, 4):
                    runs: list[Callable[[list[np.ndarray]], None]] = [
                        functools.partial(_echo_stream, channel, wire),
                        functools.partial(_node_stream, clients[0], wire),
                        functools.partial(_node_stream, clients[1], wire),
                    ]
                    rates, busy = _interleaved(runs, streams, frames, args.rounds, busy_file)
                    echo = statistics.median(rates[0])
                    for index, path in enumerate(paths):
                        ratio = f"{statistics.median(rates[1]) / echo:.2f}x" if index == 1 else ""
                        rows.append(
                            [
                                f"{width}x{height}",
                                str(len(frames)),
                                str(streams),
                                transport,
                                path,
                                _spread(rates[index]),
                                f"{packed / _MB:.2f}",
                                f"{out_mb:.3f}",
                                ratio,
                                f"{statistics.median(busy):.0%}" if index == 2 else "",
                            ]
                        )
                    print(
                        f"  {width}x{height} {streams} stream(s) {transport}: "
                        + ", ".join(f"{statistics.median(r):.1f}" for r in rates)
                        + " frames/s",
                        file=sys.stderr,
                        flush=True,
                    )
    return header, rows


def _shot_rate(client: Any, clip: Path, ratio: float, frames: int) -> float:
    """Frames/s of one shot as `rvm-node matte` runs it: decode here, matte on the node, 16-bit PNG alpha."""
    import tempfile

    from rvm_node.client import RemoteBackend
    from rvm_node.convert import ConvertJob, run_job
    from rvm_node.convert.pipeline import encoder_threads

    with tempfile.TemporaryDirectory(prefix="rvm-bench-") as tmp:
        job = ConvertJob(
            backend=RemoteBackend(client),
            input_source=str(clip),
            downsample_ratio=ratio,
            outputs={"alpha": str(Path(tmp) / "m.####.png")},
            seq_chunk=8,
            num_workers=encoder_threads(),
            progress="off",
        )
        start = time.perf_counter()
        run_job(job)
        return frames / (time.perf_counter() - start)


def _long_stream(client: Any, pid: int, frames: int) -> tuple[float, float]:
    """The node's RSS (MB) after the first tenth of one ``frames``-long 176x144 stream and at its end."""
    from rvm_node.client.node_client import StreamChunk

    pixels = np.zeros((144, 176, 3), np.uint8)
    early = 0.0
    with client.open_stream(width=176, height=144, output_format="uint16", planes=("alpha",)) as stream:
        chunks = (
            StreamChunk([(i, pixels) for i in range(n, min(n + 8, frames))]) for n in range(0, frames, 8)
        )
        for reply in stream.process_chunks(chunks, window_bytes=4 * 8 * pixels.nbytes):
            if not early and reply.results[-1].number >= frames // 10:
                early = _rss_mb(pid)
    return early, _rss_mb(pid)


def _inference_rows(args: argparse.Namespace, backend: Any) -> list[tuple[str, str]]:
    """(d) `rvm-node serve`, batching off and on, the end-to-end shot, and memory; ``backend`` is the
    in-process model of the same kind the nodes load."""
    import contextlib

    from rvm_node.client import NodeClient
    from rvm_node.engine.samples import OutputSpec
    from rvm_node.io.sources import open_source

    width, height = _parse_one_size(args.size, "--size")
    clip = _upscaled_clip(width, height, args.frames)
    frames = [f.pixels for f in open_source(clip).frames()]
    ratio = args.downsample_ratio
    wire = _Wire(width, height, "raw", _WINDOW * width * height * 3)
    model = ("--backend", args.backend, "--device", args.device)
    shot_outputs = OutputSpec(foreground=False, sample_format="uint16")  # what the shot's 16-bit PNGs need
    notes: list[tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        clients: dict[str, Any] = {}
        pids: dict[str, int] = {}
        for flags in ("--batch off", "--batch 4 --batch-delay-ms 2"):
            try:
                process, address = spawn_node("--max-streams", "8", *model, *flags.split())
            except RvmNodeError:
                notes.append((f"`serve {flags}`", "not measured: this `rvm-node serve` does not take it"))
                continue
            stack.callback(stop_process, process)
            clients[flags], pids[flags] = stack.enter_context(NodeClient(address)), process.pid
        if not clients:  # a serve without batch flags: batching is off on a CPU
            process, address = spawn_node("--max-streams", "8", *model)
            stack.callback(stop_process, process)
            clients["(no flags)"], pids["(no flags)"] = stack.enter_context(NodeClient(address)), process.pid
        first = next(iter(clients))  # batching off: the shot and the memory rows
        policies = {flags: client.info().max_batch for flags, client in clients.items()}
        tensor: list[float] = []
        shot: list[float] = []
        streams: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            tensor.append(_tensor_rate(backend, frames, ratio, shot_outputs))
            shot.append(_shot_rate(clients[first], clip, ratio, len(frames)))
            for flags, client in clients.items():
                for count in (1, 4):
                    seconds = _concurrently(
                        count, functools.partial(_node_stream, client, wire, frames, ratio)
                    )
                    streams.setdefault((flags, count), []).append(count * len(frames) / seconds)
        reference = statistics.median(tensor)
        rows = [
            (
                f"engine tensor throughput, in process ({backend.name} on {args.device}, the node's options, "
                "uint16 alpha)",
                f"{_spread(tensor, 2)} frames/s (1.00x)",
            ),
            *notes,
        ]
        end_to_end = statistics.median(shot) / reference
        verdict = "met" if end_to_end >= 0.85 else "not met"
        rows.append(
            (
                "one shot end to end (`rvm-node matte`): decode, node, 16-bit PNG alpha, seq_chunk 8",
                f"{_spread(shot, 2)} frames/s ({end_to_end:.2f}x; goal ≥ 0.85x: {verdict})",
            )
        )
        for (flags, count), rates in streams.items():
            rate = statistics.median(rates)
            rows.append(
                (
                    f"{count} stream(s), `serve {flags}` (node reports max batch {policies[flags]}), aggregate",
                    f"{_spread(rates, 2)} frames/s ({rate / reference:.2f}x)",
                )
            )
        small = [(i, np.zeros((144, 176, 3), np.uint8)) for i in range(3)]

        def short_stream() -> None:
            with clients[first].open_stream(width=176, height=144) as stream:
                for _ in stream.process(small):
                    pass

        short_stream()
        after_one = _rss_mb(pids[first])
        for _ in range(99):
            short_stream()
        after_hundred = _rss_mb(pids[first])
        rows.append(
            (
                f"node RSS (`serve {first}`) after 1 stream / after 100 streams",
                f"{after_one:.0f} MB / {after_hundred:.0f} MB",
            )
        )
        if args.long_stream_frames > 0:
            batching = list(clients)[-1]
            early, late = _long_stream(clients[batching], pids[batching], args.long_stream_frames)
            rows.append(
                (
                    f"node RSS (`serve {batching}`) over one {args.long_stream_frames}-frame 176x144 stream: "
                    "after its first tenth / at its end",
                    f"{early:.0f} MB / {late:.0f} MB",
                )
            )
    return rows


def run_node_bench(args: argparse.Namespace) -> int:
    """The serving path against its ceiling and against real inference, in one run.

    (a) a bare gRPC echo, (b) the node over a stand-in that returns a constant
    matte, (c) the same stand-in with a simulated device, at each of
    ``--sizes``, for 1 and 4 streams, raw and zstd; configurations interleaved
    round by round, medians reported. (d) `rvm-node serve` with onnxruntime at
    ``--size``: streams with batching off and on, one shot end to end against
    the in-process tensor rate, and the node's memory after many streams.
    """
    from rvm_node.bench_standins import parse_device_ms
    from rvm_node.engine.session import check_downsample_ratio

    if args.rounds < 1 or args.stream_frames < 1 or args.frames < 1:
        raise InvalidInputError("--rounds, --stream-frames and --frames must be >= 1")
    if args.long_stream_frames < 0:
        raise InvalidInputError(f"--long-stream-frames: expected 0 or more, got {args.long_stream_frames}")
    _parse_frame_sizes(args.sizes)  # every option is checked before the first measurement
    _parse_one_size(args.size, "--size")
    parse_device_ms(args.device_ms)
    check_downsample_ratio(args.downsample_ratio, "--downsample-ratio")
    from rvm_node.engine.loader import load_model, shared_cpu_options

    backend = load_model(  # an unusable device is refused here, before the first measurement
        backend=args.backend,
        device=args.device,
        options=shared_cpu_options(args.backend) if args.device == "cpu" else None,
    )
    started = time.perf_counter()
    header, standin_rows = _standin_table(args)
    inference_rows = _inference_rows(args, backend)
    print(f"Machine: {_machine()}")
    print(
        f"Node and client on loopback, the client's streams on threads of one process. (a)–(c): the example "
        f"clip scaled to each size, uint8 RGB in, uint16 alpha back; {args.stream_frames} frames per stream at "
        f"1920x1080 (fewer at larger sizes, at least 8); a window of {_WINDOW} packed frames per stream; median "
        f"(min–max) of {args.rounds} rounds, (a), (b), (c) interleaved; MB = 10^6 bytes. Rows (b) and (c) are stand-ins: "
        "the real node and client, but a backend that runs no network."
    )
    _markdown(header, standin_rows)
    print()
    print(
        f"(d) real inference on this CPU: the example clip re-encoded at {args.size}, {args.frames} frames, "
        f"ratio {args.downsample_ratio}; `rvm-node serve` with onnxruntime; median (min–max) of {args.rounds} rounds."
    )
    _markdown(["measurement", "result"], [list(row) for row in inference_rows])
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


def run_farm_bench(args: argparse.Namespace) -> int:
    """Nodes pinned to one core each: aggregate frames/s for 1 and 2 nodes, and the cost of a failover."""
    import tempfile

    from rvm_node.farm import NodePool, Shot, run_shots
    from rvm_node.io.sequence import FrameRange

    clip = _upscaled_clip(352, 288, 120)

    def start(core: int) -> tuple[Any, str]:
        return spawn_node("--threads", "1", "--max-streams", "2", pin_core=core)

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
