"""``rvm-node bench``: benchmarks, apart from the tests."""

from __future__ import annotations

import argparse

from rvm_node.engine.backend import BACKENDS

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure throughput (not a test)",
        description="Benchmarks, apart from the tests: the configurations take turns round after round and "
        "medians are reported, against a ceiling measured in the same run.",
        epilog="examples:\n  rvm-node bench engine --only onnxruntime\n  rvm-node bench node --serving-only\n"
        "  rvm-node bench convert --frames 60\n",
    )
    kinds = bench.add_subparsers(dest="kind", required=True)
    _add_engine(kinds)
    _add_convert(kinds)
    _add_node(kinds)
    _add_farm(kinds)


def _add_engine(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    engine = kinds.add_parser(
        "engine",
        help="tensor throughput per backend, precision and resolution",
        description="Tensor throughput of every backend against the official ONNX in a plain onnxruntime "
        "session, alpha alone and alpha + foreground, and the full-resolution stage against its memory floor.",
        epilog="examples:\n  rvm-node bench engine --markdown\n"
        "  rvm-node bench engine --only OpenVINO --sizes 1920x1080@0.25,3840x2160@0.125\n",
    )
    engine.add_argument("--frames", type=int, default=20, help="timed frames per configuration and round")
    engine.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    engine.add_argument(
        "--only",
        default=None,
        help="comma-separated words: only the rows whose name has one (and the reference)",
    )
    engine.add_argument("--warmup", type=int, default=3, help="untimed frames before each configuration")
    engine.add_argument(
        "--sizes", default="640x360@0.8,1920x1080@0.25,3840x2160@0.125", help="comma-separated WxH@ratio"
    )
    engine.add_argument("--markdown", action="store_true", help="print a Markdown table")


def _add_convert(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = kinds.add_parser(
        "convert",
        help="end-to-end convert and matte against the official model's raw tensor rate",
        description="rvm-node convert and rvm-node matte (a node on this host) as a user runs them, start-up "
        "included, against the official model's raw tensor rate, with the time of each stage.",
        epilog="examples:\n  rvm-node bench convert\n  rvm-node bench convert --size 1920x1080 --downsample-ratio 0.25 --frames 120\n",
    )
    convert.add_argument("--size", default="640x360", help="WxH the example clip is re-encoded at")
    convert.add_argument(
        "--frames", type=int, default=360, help="frames of the clip (the example clip played back and forth)"
    )
    convert.add_argument("--downsample-ratio", type=float, default=0.8, help="the model's internal scale")
    convert.add_argument("--backend", choices=["auto", *BACKENDS], default="auto", help="engine measured")
    convert.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")


def _add_node(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = kinds.add_parser(
        "node",
        help="a node on loopback: serving path vs a bare gRPC echo, real inference, memory",
        description="The render node's serving path against a bare gRPC echo of the same bytes (with "
        "benchmark-only stand-in models), over shared memory, with worker processes, and with real inference.",
        epilog="examples:\n  rvm-node bench node --serving-only\n  rvm-node bench node --sizes 1920x1080 --rounds 3\n",
    )
    node.add_argument(
        "--sizes", default="1920x1080,3840x2160", help="frame sizes of the echo and stand-in rows"
    )
    node.add_argument(
        "--stream-frames",
        type=int,
        default=120,
        help="frames per stream in the echo and stand-in rows at 1920x1080 (scaled by pixels, at least 30)",
    )
    node.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    node.add_argument(
        "--device-ms",
        default="1,5",
        help="A,B: a simulated device pass of N streams takes A + N*B ms (default: 1,5, about an RTX 3090 "
        "at 1080p, so the busy column answers 'would a GPU idle?')",
    )
    node.add_argument(
        "--serving-only",
        action="store_true",
        help="only the serving-path rows (echo, stand-in, shared memory, workers): no real inference",
    )
    node.add_argument(
        "--size", default="640x360", help="WxH the example clip is re-encoded at (inference rows)"
    )
    node.add_argument("--frames", type=int, default=40, help="frames of the clip (inference rows)")
    node.add_argument("--downsample-ratio", type=float, default=0.5, help="inference rows")
    node.add_argument("--backend", choices=["auto", *BACKENDS], default="auto", help="inference rows")
    node.add_argument("--device", default="cpu", help="inference rows: cpu, cuda, cuda:N")
    node.add_argument(
        "--long-stream-frames",
        type=int,
        default=10_000,
        help="frames of the one long stream whose node memory is reported (0: skip it)",
    )


def _add_farm(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    farm = kinds.add_parser(
        "farm",
        help="nodes pinned to one core: 1 vs 2 nodes, and failover cost",
        description="Two nodes each pinned to one core: one node against two, and the time a shot loses when "
        "its node is killed.",
        epilog="examples:\n  rvm-node bench farm\n  rvm-node bench farm --frames 40 --downsample-ratio 0.5\n",
    )
    farm.add_argument("--frames", type=int, default=20, help="frames per shot (4 shots)")
    farm.add_argument("--downsample-ratio", type=float, default=1.0, help="the model's internal scale")
    farm.add_argument("--checkpoint-every", type=int, default=25, help="frames between state checkpoints")


def run(args: argparse.Namespace) -> int:
    from rvm_node.bench import run_convert_bench, run_engine_bench, run_farm_bench, run_node_bench

    runners = {
        "engine": run_engine_bench,
        "convert": run_convert_bench,
        "node": run_node_bench,
        "farm": run_farm_bench,
    }
    return runners[args.kind](args)
