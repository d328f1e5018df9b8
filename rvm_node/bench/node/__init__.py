"""``rvm-node bench node``: the render node's serving path against a bare gRPC echo, and real inference.

Rows (b), (c), (e), (f) and (g) use benchmark-only stand-ins
(:mod:`rvm_node.bench.standins`), never reachable from ``rvm-node serve``.
The cases and their formatting live in :mod:`.serving` and :mod:`.inference`,
the streams they time in :mod:`.streams`, the interleaved runner in
:mod:`.measure`; this module checks the options and prints the tables.
"""

from __future__ import annotations

import argparse
import time

from rvm_node.bench.common import machine, markdown, parse_frame_sizes, parse_one_size
from rvm_node.bench.node.inference import inference_rows
from rvm_node.bench.node.serving import TABLE_HEADER, ring_shot_rows, stage_header, standin_tables
from rvm_node.bench.node.streams import MIN_STREAM_FRAMES, WINDOW
from rvm_node.errors import InvalidInputError

__all__ = ["run_node_bench"]


def run_node_bench(args: argparse.Namespace) -> int:
    """The serving path against its ceiling and against real inference, in one run.

    (a) a bare gRPC echo, (b) the node over a stand-in that returns a constant
    matte, (c) the same stand-in with a simulated device, at each of
    ``--sizes``, for 1 and 4 streams, raw and zstd; configurations interleaved
    round by round, medians reported. (d) `rvm-node serve` with ``--backend`` at
    ``--size``: streams with batching off and on, one shot end to end against
    the in-process tensor rate, and the node's memory after many streams.
    """
    from rvm_node.bench.standins import parse_device_ms
    from rvm_node.engine.ratio import check_downsample_ratio

    if args.rounds < 1 or args.stream_frames < 1 or args.frames < 1:
        raise InvalidInputError("--rounds, --stream-frames and --frames must be >= 1")
    if args.long_stream_frames < 0:
        raise InvalidInputError(f"--long-stream-frames: expected 0 or more, got {args.long_stream_frames}")
    parse_frame_sizes(args.sizes)  # every option is checked before the first measurement
    parse_one_size(args.size, "--size")
    parse_device_ms(args.device_ms)
    check_downsample_ratio(args.downsample_ratio, "--downsample-ratio")
    from rvm_node.engine.loader import load_model, shared_cpu_options

    backend = load_model(  # an unusable device is refused here, before the first measurement
        backend=args.backend,
        device=args.device,
        options=shared_cpu_options(args.backend) if args.device == "cpu" else None,
    )
    started = time.perf_counter()
    standin_rows, stage_rows = standin_tables(args)
    ring_rows = ring_shot_rows(args)
    inferred = [] if args.serving_only else inference_rows(args, backend)
    print(f"Machine: {machine()}")
    print(
        f"Node and client on loopback, the client's streams on threads of one process. The example clip scaled "
        f"to each size, uint8 RGB in, uint16 alpha back; {args.stream_frames} frames per stream at 1920x1080 "
        f"(fewer at larger sizes, at least {MIN_STREAM_FRAMES}); a window of {WINDOW} frames per stream (a ring of {WINDOW} "
        f"slots over shared memory); median (min–max) of {args.rounds} rounds, the rows of each group "
        "interleaved; MB = 10^6 bytes; node CPU = user + system time of the server process over the run. "
        "Rows (b), (c) and (e) are stand-ins: the real node and client, but a backend that runs no network; "
        "the simulated device sleeps with the GIL released."
    )
    markdown(TABLE_HEADER, standin_rows)
    print()
    print(
        "Where (b)'s CPU goes, ms per frame, raw: the stages as timed inside the stand-in node (CPU time of the "
        "thread that ran them), then every thread's CPU from /proc (the event loop thread's includes the timed "
        "stages that ran on it)."
    )
    markdown(stage_header(), stage_rows)
    print()
    print(
        "(g) One co-located shot end to end over shared memory (`rvm-node matte`: decode, node, 8-bit PNG alpha, "
        "seq_chunk 8), the example clip scaled to each size: the reader decodes each chunk straight into ring "
        "slots, or each frame is copied in; client CPU = this process's user + system time; interleaved, "
        f"median (min–max) of {args.rounds} rounds."
    )
    markdown(["size", "path", "frames/s", "client CPU ms/frame", "vs copied in"], ring_rows)
    if not inferred:
        print(f"\n({time.perf_counter() - started:.0f} s)")
        return 0
    print()
    print(
        f"(d) real inference on this CPU: the example clip re-encoded at {args.size}, {args.frames} frames, "
        f"ratio {args.downsample_ratio}; `rvm-node serve --backend {args.backend}`; median (min–max) of {args.rounds} rounds."
    )
    markdown(["measurement", "result"], [list(row) for row in inferred])
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0
