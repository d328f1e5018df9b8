"""The ``rvm-node`` command line.

``main()`` owns the mapping from errors to exit codes, so the console script
and ``python -m rvm_node`` behave the same:

===  =====================================================
0    success
1    an rvm-node error not covered below
2    bad usage (unknown option, missing argument)
3    bad input: a file, frame, setting or weights file at fault
4    a backend, device or render node that cannot serve the request
130  interrupted (Ctrl-C)
===  =====================================================

Each command is a module with ``add_parser(sub)`` and ``run(args) -> int``;
:data:`COMMANDS` maps the command's name to its module.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from rvm_node.cli import bench, common, convert, example, export, farm, nodes, serve, weights
from rvm_node.cli.common import EXIT_BACKEND, EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_USAGE
from rvm_node.errors import (
    BackendError,
    InvalidInputError,
    NodeError,
    OutputError,
    OutputInUseError,
    RvmNodeError,
    WeightsError,
)
from rvm_node.version import __version__

__all__ = [
    "COMMANDS",
    "EXIT_BACKEND",
    "EXIT_ERROR",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "build_parser",
    "in_flags",
    "main",
]

# The order of the parsers in --help; convert's module also adds matte.
_MODULES: tuple[ModuleType, ...] = (weights, export, bench, convert, serve, farm, nodes, example)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "weights": weights.run,
    "export": export.run,
    "bench": bench.run,
    "convert": convert.run,
    "matte": convert.run,
    "serve": serve.run,
    "farm": farm.run,
    "info": nodes.run,
    "example": example.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = common.Parser(
        prog="rvm-node",
        description="Robust Video Matting for VFX pipelines: mattes identical to the official model, on this "
        "machine, on render nodes, or over a farm.",
        epilog="examples:\n  rvm-node example\n"
        "  rvm-node convert --input-source plate.mov --output-alpha mattes/plate.####.exr\n"
        "  rvm-node serve --host 0.0.0.0\n"
        "  rvm-node matte --node gpu01 --input-source plate.mov --output-alpha mattes/plate.####.exr\n"
        "\nEach command says more with --help.",
    )
    parser.add_argument("--version", action="version", version=f"rvm-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _MODULES:
        module.add_parser(sub)
    return parser


# Library parameters whose flag is spelt otherwise.
_FLAG_OF = {"unix_socket": "--unix", "video_mbps": "--output-video-mbps"}
_NAMED = re.compile(r"^([a-z][a-z0-9_]*)((?:/| and )[a-z][a-z0-9_]*)?( \S+)?$")


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option's destination and its flag, over all commands."""
    flags = dict(_FLAG_OF)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update({k: v for k, v in _flags(sub).items() if k not in flags})
        elif action.option_strings and action.option_strings[0].startswith("--"):
            flags.setdefault(action.dest, action.option_strings[0])
    return flags


def in_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library error as the command line says it: ``seq_chunk: ...`` becomes ``--seq-chunk: ...``.

    Only the leading setting names are spelt as flags; what follows them (a path, a value) is quoted as
    it was given."""
    head, colon, rest = message.partition(":")
    matched = _NAMED.match(head) if colon else None
    if matched is None:
        return message
    flags = _flags(parser)
    names = head[: matched.end(2) if matched.group(2) else matched.end(1)]
    named = re.sub(r"[a-z][a-z0-9_]*", lambda m: flags.get(m.group(0), m.group(0)), names)
    return f"{named}{head[len(names) :]}:{rest}" if named != names else message


def _resolve(args: argparse.Namespace) -> None:
    """Derived values, once every source of settings is in: ``--device auto`` becomes a device, then
    ``--backend auto`` a backend (serve layers its settings first, then resolves them itself)."""
    if getattr(args, "device", None) is not None:
        args.device = common.resolved_device(args.device)
    if getattr(args, "backend", None) is not None:
        args.backend = common.resolved_backend(args.backend, getattr(args, "device", "cpu"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "serve":
            return COMMANDS["serve"](args)  # the node handles SIGTERM itself, by draining
        _resolve(args)
        with common.stop_on_sigterm():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("rvm-node: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `rvm-node weights list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (InvalidInputError, WeightsError, OutputError, OutputInUseError) as exc:
        print(f"rvm-node: error: {in_flags(str(exc), parser)}", file=sys.stderr)
        return EXIT_INPUT
    except (BackendError, NodeError) as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except RvmNodeError as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
