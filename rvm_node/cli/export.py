"""``rvm-node export``: the model for TensorFlow, TFLite, TensorFlow.js and CoreML."""

from __future__ import annotations

import argparse
from pathlib import Path

from rvm_node.engine.states import VARIANTS
from rvm_node.engine.static_spec import STATIC_FORMATS
from rvm_node.errors import InvalidInputError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export",
        help="export the network: ONNX, TorchScript, or TensorFlow/TFLite/TF.js/CoreML for one size and ratio",
        description="Export the network with the official interface: ONNX or TorchScript for any size, or a "
        "static export (TensorFlow SavedModel, TFLite, TF.js, CoreML) for one frame size and ratio.",
        epilog="examples:\n  rvm-node export --format onnx --output rvm.onnx\n"
        "  rvm-node export --format tflite --size 1920x1080 --downsample-ratio 0.25 --output exports/\n",
    )
    export.add_argument(
        "--format",
        required=True,
        choices=["onnx", "torchscript", *STATIC_FORMATS],
        help="onnx, torchscript, or (static shapes, one size and ratio) tensorflow, tflite, tfjs, coreml",
    )
    export.add_argument(
        "--size", default=None, help="static formats: WIDTHxHEIGHT of the frames, e.g. 1920x1080"
    )
    export.add_argument(
        "--downsample-ratio", type=float, default=None, help="static formats: the ratio, e.g. 0.25"
    )
    export.add_argument("--variant", choices=VARIANTS, default="mobilenetv3", help="RVM backbone")
    export.add_argument(
        "--refiner",
        choices=["deep_guided_filter", "fast_guided_filter"],
        default="deep_guided_filter",
        help="the refiner that lifts the mattes to full resolution below ratio 1 (at ratio 1 none runs, as in "
        "the official model)",
    )
    export.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="weights precision")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    export.add_argument(
        "--checkpoint", type=Path, default=None, help="weights file; default: the official weights"
    )
    export.add_argument(
        "--random-weights", action="store_true", help="export untrained weights (for testing)"
    )
    export.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the file (onnx, torchscript), or the folder a static export goes in, named after its size and "
        "ratio (exports/rvm_mobilenetv3_1920x1080_r0.25_fp32.tflite)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from rvm_node.engine.export import DEFAULT_OPSET, export_onnx, export_torchscript
    from rvm_node.engine.loader import load_network
    from rvm_node.engine.static_export import export_static, prepare_export
    from rvm_node.engine.static_spec import STATIC_FORMATS, StaticSpec, parse_size

    output: Path = args.output
    if args.format in STATIC_FORMATS:
        if args.size is None or args.downsample_ratio is None:
            raise InvalidInputError(
                f"--format {args.format}: give --size WIDTHxHEIGHT and --downsample-ratio"
            )
        if args.opset is not None:
            raise InvalidInputError("--opset: only applies to --format onnx")
        width, height = parse_size(args.size)
        spec = StaticSpec(args.variant, width, height, args.downsample_ratio, args.precision)
        prepare_export(args.format, spec, output, overwrite=args.overwrite)  # before loading weights
        net = load_network(
            args.variant, args.checkpoint, refiner=args.refiner, random_weights=args.random_weights
        )
        print(export_static(net, args.format, spec, output, overwrite=args.overwrite))
        return 0
    if args.size is not None or args.downsample_ratio is not None:
        raise InvalidInputError(
            "--size and --downsample-ratio: only for the static formats (shapes are dynamic)"
        )
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
