"""``rvm-node example``: fetch the example clip and matte it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rvm_node.cli import common, options

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    example = sub.add_parser(
        "example",
        help="fetch the example clip and matte it",
        description="Fetch the bundled example clip (carphone, hash-checked) and matte it here or on a node: an "
        "EXR alpha sequence and a composite over green.",
        epilog="examples:\n  rvm-node example\n  rvm-node example --node gpu01:50051 --output-dir /tmp/rvm-example\n",
    )
    example.add_argument(
        "--output-dir",
        type=Path,
        default=Path("example-output"),
        help="where the alpha sequence (alpha/) and the composite over green (composite.mp4) go (default: example-output)",
    )
    options.add_backend_option(example)
    example.add_argument(
        "--downsample-ratio", type=common.ratio, default=None, help="(0, 1] or auto (default: auto)"
    )
    example.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")
    example.add_argument(
        "--node", default=None, help="HOST:PORT of a render node to matte on (default: matte here)"
    )


def run(args: argparse.Namespace) -> int:
    from rvm_node.example import run_example

    return run_example(args)
