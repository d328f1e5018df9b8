"""Stand-ins for ``rvm-node bench node``; ``rvm-node serve`` never serves them.

``python -m rvm_node.bench.standins --standin constant --port 0`` serves the
real node (service, scheduler, wire formats) over :class:`ConstantMatteBackend`,
which runs no network: every frame gets one precomputed matte, already in the
sample format asked for, as a GPU backend that converts on the device returns
it. ``--device-ms A,B`` makes each forward pass of N streams sleep A + N*B ms
with the GIL released, a simulated device; ``--busy-file PATH`` keeps the
seconds it slept in PATH (a little-endian double, rewritten after each pass).
``--stages-file PATH`` times the serving path's stages
(:mod:`rvm_node.node.stages`) and keeps their CPU seconds in PATH (JSON,
rewritten every 50 ms).

``--standin echo`` serves a bare ``grpc.aio`` bidirectional stream instead:
each request (a packed frame) gets one reply carrying the bytes the node would
return for it, the packed matte. It is the ceiling of the serving path.

Both print their address on stdout once serving, like ``rvm-node serve``,
and stop on SIGTERM.

``--standin constant --workers N`` runs the node's own supervisor
(:mod:`rvm_node.node.workers`) over N stand-in workers, with
``--metrics-port`` and ``--unix`` as ``rvm-node serve`` has them, for the
tests of the supervisor. A test hook of this stand-in only (``rvm-node
serve`` has none): while the file that ``RVM_NODE_STANDIN_FAIL_FILE`` names
exists, a stand-in worker that starts fails before it serves, with one line
to its supervisor, as a worker whose device has gone would; or, when the
file holds a number, it crashes without a line, exiting with that status.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node import filelocks
from rvm_node.engine.backend import MattingBackend
from rvm_node.engine.samples import OutputSpec, SampleFormat, to_samples
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import InvalidInputError, RvmNodeError
from rvm_node.processes import on_stop_signals

__all__ = [
    "ECHO_METHOD",
    "FAIL_FILE_VARIABLE",
    "STANDIN_NAME",
    "ConstantMatteBackend",
    "bench_matte",
    "echo_reply",
    "main",
    "parse_device_ms",
    "read_busy",
]

STANDIN_NAME = "stand-in: constant matte, no inference"
FAIL_FILE_VARIABLE = "RVM_NODE_STANDIN_FAIL_FILE"
ECHO_METHOD = "/rvm_node.bench.Echo/Frames"
_MAX_MESSAGE = 64 * 1024 * 1024


def bench_matte(height: int, width: int) -> np.ndarray:
    """A head-and-shoulders matte, float32 0..1, ``height`` x ``width``.

    Its edge ramps over 1/12 of the frame height with a little grain, like a
    real matte of the example clip scaled up: at 1920x1080 it compresses with
    zstd to within 1% of the size of one the network made.
    """
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    ramp = height / 12
    alpha = np.zeros((height, width), np.float32)
    for cy, cx, ry, rx in ((0.36, 0.5, 0.2, 0.15), (1.1, 0.5, 0.55, 0.42)):
        ry_px, rx_px = ry * height, rx * height
        radius = np.sqrt(((y - cy * height) / ry_px) ** 2 + ((x - cx * width) / rx_px) ** 2)
        np.maximum(alpha, np.clip(0.5 - (radius - 1) * min(ry_px, rx_px) / ramp, 0, 1), out=alpha)
    edge = (alpha > 0) & (alpha < 1)
    grain = np.random.default_rng(0).normal(0, 0.01, int(edge.sum()))
    alpha[edge] += grain.astype(np.float32)
    return np.clip(alpha, 0, 1, out=alpha)


def echo_reply(height: int, width: int, transport: str) -> bytes:
    """What the node returns for one frame of a uint16 alpha stream: the packed :func:`bench_matte`."""
    from rvm_node.v1.protocol import TRANSPORTS, pack

    if transport not in TRANSPORTS:
        raise InvalidInputError(f"transport: expected one of {', '.join(TRANSPORTS)}, got {transport!r}")
    return pack(to_samples(bench_matte(height, width), "uint16"), TRANSPORTS[transport])


def parse_device_ms(text: str) -> tuple[float, float]:
    """``A,B``: a forward pass of N streams takes A + N*B milliseconds."""
    try:
        fixed, per_stream = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInputError(f"--device-ms: expected A,B in milliseconds, got {text!r}") from None
    if fixed < 0 or per_stream < 0:
        raise InvalidInputError(f"--device-ms: expected times of 0 or more, got {text!r}")
    return fixed, per_stream


def read_busy(path: Path) -> float:
    """Seconds a stand-in's simulated device has been busy (0 before its first pass)."""
    data = path.read_bytes() if path.is_file() else b""
    return struct.unpack("<d", data[:8])[0] if len(data) >= 8 else 0.0


class ConstantMatteBackend(MattingBackend[int]):
    """Returns one precomputed matte per frame size and format; its state is the batch size.

    Frames stay as they arrived (``prepare`` converts nothing), like a device
    backend that converts on the device. With ``device_ms`` each call sleeps
    ``A + N*B`` ms, N streams in the batch, and adds the time to ``busy``.
    """

    name = STANDIN_NAME
    device = "cpu"
    precision = "none"
    variant = "mobilenetv3"

    def __init__(self, device_ms: tuple[float, float] | None = None, busy_file: Path | None = None) -> None:
        self.device_ms = device_ms
        self.busy = 0.0
        self._mattes: dict[tuple[int, int, SampleFormat], np.ndarray] = {}
        # Not truncated: the workers of one stand-in node share the file, and the device it stands for.
        self._busy_fd = filelocks.open_lock_file(busy_file) if busy_file else None

    def _matte(self, height: int, width: int, fmt: SampleFormat) -> np.ndarray:
        key = (height, width, fmt)
        if key not in self._mattes:
            self._mattes[key] = to_samples(bench_matte(height, width), fmt)
        return self._mattes[key]

    def _occupy_device(self, seconds: float) -> None:
        """Hold the simulated device for ``seconds`` with the GIL released. With a busy file the device is
        one for every process that shares the file: each pass holds its lock, as passes from several workers
        queue on one GPU, and the file keeps the total."""
        if self._busy_fd is None:
            time.sleep(seconds)
            self.busy += seconds
            return
        filelocks.lock(self._busy_fd)
        try:
            started = time.perf_counter()
            time.sleep(seconds)
            held = time.perf_counter() - started
            before = filelocks.read_start(self._busy_fd, 8)
            total = (struct.unpack("<d", before)[0] if len(before) == 8 else 0.0) + held
            filelocks.write_start(self._busy_fd, struct.pack("<d", total))
            self.busy += held
        finally:
            filelocks.unlock(self._busy_fd)

    def prepare(self, frames: Any) -> np.ndarray:
        return np.asarray(frames)

    def infer(
        self,
        src: np.ndarray,
        state: int | None,  # noqa: ARG002 - every frame gets the same matte
        downsample_ratio: float,  # noqa: ARG002
        outputs: OutputSpec,
    ) -> tuple[np.ndarray | None, np.ndarray, int]:
        batch, count, _, height, width = src.shape
        if self.device_ms is not None:
            self._occupy_device((self.device_ms[0] + self.device_ms[1] * batch) / 1000)
        pha = np.broadcast_to(
            self._matte(height, width, outputs.sample_format), (batch, count, 1, height, width)
        )
        fgr = None
        if outputs.foreground:
            grey = to_samples(np.full((3, 1, 1), 0.5, np.float32), outputs.sample_format)
            fgr = np.broadcast_to(grey, (batch, count, 3, height, width))
        return fgr, pha, batch

    def state_to_host(self, state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        zeros = np.zeros((state, 1, 1, 1), np.float32)
        return zeros, zeros, zeros, zeros

    def state_from_host(self, state: RecurrentState) -> int:
        return int(state.r1.shape[0])

    def stack_states(self, states: list[int]) -> int:
        return sum(states)

    def split_state(self, state: int, count: int) -> list[int]:  # noqa: ARG002
        return [1] * count

    def zero_state_like(self, state: int) -> int:
        return state


async def _serve_constant(args: argparse.Namespace, streams: Any = None, ready_pipe: Any = None) -> None:
    from rvm_node.node.limits import Limits
    from rvm_node.node.scheduler import BatchPolicy
    from rvm_node.node.server import NodeServer, serve_forever, start_node
    from rvm_node.node.stages import StageClock

    backend = ConstantMatteBackend(args.device_ms, args.busy_file)
    stages = StageClock() if args.stages_file is not None else None
    node = await start_node(
        backend,
        host=args.host,
        port=args.port,
        limits=Limits(max_streams=args.max_streams),
        batch=BatchPolicy(max_batch=args.max_batch, delay=args.batch_delay_ms / 1000),
        stages=stages,
        streams=streams,
        metrics_port=args.metrics_port if ready_pipe is None else None,
        collect_metrics=args.metrics_port is not None,
        unix_socket=args.unix if streams is None or streams.worker == 0 else None,
    )

    async def keep_stages(clock: StageClock, path: Path) -> None:
        while True:
            clock.save(path)
            await asyncio.sleep(0.05)

    saver = asyncio.ensure_future(keep_stages(stages, args.stages_file)) if stages is not None else None

    def ready(served: NodeServer) -> None:
        if ready_pipe is not None:
            ready_pipe.send(None)
        else:
            print(served.address, flush=True)

    await serve_forever(node, 1.0, ready)
    if saver is not None:
        saver.cancel()


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )


def _constant_worker(args: argparse.Namespace, streams: Any, ready_pipe: Any) -> None:
    """One worker of a stand-in node with ``--workers N``."""
    _configure_logging()
    fail_file = os.environ.get(FAIL_FILE_VARIABLE)
    if fail_file and Path(fail_file).exists():  # the test hook (see the module docstring)
        status = Path(fail_file).read_text().strip()
        if status.isdigit():
            sys.exit(int(status))
        ready_pipe.send(("backend", f"stand-in worker: {fail_file} exists, so it fails before serving"))
        sys.exit(4)
    asyncio.run(_serve_constant(args, streams, ready_pipe))


def _serve_constant_workers(args: argparse.Namespace) -> int:
    from rvm_node.node.workers import serve_workers

    def worker_args(port: int) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(args), "port": port})

    def ready(port: int, metrics_port: int | None) -> None:
        if metrics_port is not None:
            print(f"metrics: http://{args.host}:{metrics_port}/metrics", file=sys.stderr, flush=True)
        print(f"{args.host}:{port}", flush=True)

    return serve_workers(
        _constant_worker,
        worker_args,
        host=args.host,
        port=args.port,
        count=args.workers,
        grace=1.0,
        metrics_port=args.metrics_port,
        on_ready=ready,
    )


async def _serve_echo(args: argparse.Namespace) -> None:
    import grpc

    replies: dict[tuple[int, int, str], bytes] = {}

    async def frames(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        settings = dict(context.invocation_metadata())
        key = (int(settings["height"]), int(settings["width"]), str(settings["transport"]))
        if key not in replies:
            replies[key] = echo_reply(*key)
        async for _ in requests:
            yield replies[key]

    service, method = ECHO_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.stream_stream_rpc_method_handler(frames)}
    )
    options = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise InvalidInputError(f"--port: cannot bind {args.host}:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    on_stop_signals(loop, stop.set)
    print(f"{args.host}:{port}", flush=True)
    await stop.wait()
    await server.stop(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rvm_node.bench.standins", description="benchmark stand-ins for `rvm-node bench node`"
    )
    parser.add_argument("--standin", choices=["constant", "echo"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument(
        "--device-ms", type=parse_device_ms, default=None, help="A,B: a pass of N streams sleeps A + N*B ms"
    )
    parser.add_argument("--busy-file", type=Path, default=None, help="keep the simulated busy seconds here")
    parser.add_argument(
        "--stages-file",
        type=Path,
        default=None,
        help="keep the CPU seconds of each serving stage here (JSON)",
    )
    parser.add_argument("--workers", type=int, default=1, help="node processes on one port (constant only)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (constant only)")
    parser.add_argument(
        "--unix", type=Path, default=None, help="also serve on this Unix socket (constant only)"
    )
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--batch-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        if args.standin == "constant" and args.workers > 1:
            if args.stages_file is not None:
                parser.error("--stages-file times one process: not with --workers")
            return _serve_constant_workers(args)
        asyncio.run(_serve_echo(args) if args.standin == "echo" else _serve_constant(args))
    except RvmNodeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
