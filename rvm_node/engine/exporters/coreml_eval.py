"""Evaluate a saved CoreML ML Program with numpy, to check an export where CoreML cannot run.

CoreML predicts only on macOS. This script (run with the ``coreml``
toolchain's Python; it imports nothing from rvm-node) reads the saved
``.mlpackage`` back through coremltools' own MIL loader, which reads every
weight from the package's ``weight.bin``, and runs the program op by op with
a small numpy implementation of each op it uses, following the MIL op
definitions (coremltools ``converters/mil/mil/ops/defs``). An op type it does
not know is refused with an error naming it, never skipped.

Each op's result is stored in the dtype the program declares for it, so an
fp16 program keeps every tensor in float16 after its ``cast``; arithmetic is
done in float32 and rounded to float16 per op (convolutions and means
accumulate in float32, as CoreML's GPU does). Every computed shape is checked
against the shape the program declares.

Usage::

    coreml_eval.py run PACKAGE --frames FRAMES.npy --output RESULTS.npz [--zero-states]
    coreml_eval.py weights PACKAGE          # JSON lines: where each weight sits in weight.bin
    coreml_eval.py describe PACKAGE         # JSON: inputs, outputs, metadata, op types

``run`` evaluates the frames ``[T, 3, H, W]`` (float32 in [0, 1]) in order,
feeding each frame's ``r1o..r4o`` back as ``r1i..r4i``; the first frame
leaves the states out, so they take the package's declared defaults (or
zeros of their full shape with ``--zero-states``). RESULTS.npz holds
``fgr`` and ``pha`` ``[T, ...]`` and the last states, in the program's dtypes.
A failure prints one line to stderr and exits 1.
"""

from __future__ import annotations

import os

# Many small matrix products: BLAS threads cost more than they give (and thrash a busy machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import logging
import math
import struct
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Array = Any  # numpy arrays of the dtypes the program declares
BLOB_SENTINEL = 0xDEADBEEF  # coremltools' MIL blob storage: a 64-byte header before each blob


class EvalError(Exception):
    """The program cannot be evaluated faithfully (unknown op, unsupported option, shape mismatch)."""


# --- ops ------------------------------------------------------------------------------------------------


def _f32(x: Array) -> Array:
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype in (np.float16, np.float64) else x


def _ints(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _bools(x: Any, rank: int) -> list[bool]:
    return [False] * rank if x is None else [bool(v) for v in np.asarray(x).reshape(-1)]


def _spatial_pads(
    pad_type: str, pad: Any, size: list[int], kernel: list[int], strides: list[int]
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis for ``pad_type`` (kernel already dilated)."""
    if pad_type == "valid":
        return [(0, 0)] * len(size)
    if pad_type == "custom":
        values = _ints(pad)
        return [(values[2 * i], values[2 * i + 1]) for i in range(len(size))]
    if pad_type in ("same", "same_lower"):
        pads = []
        for n, k, s in zip(size, kernel, strides, strict=True):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if pad_type == "same" else (large, small))
        return pads
    raise EvalError(f"unknown pad_type {pad_type!r}")


def _taps(
    x: Array, kernel: list[int], strides: list[int], dilations: list[int], out: list[int]
) -> list[Array]:
    """The strided views of the (padded) 2-D input under each kernel position: ``[N, C, Ho, Wo]`` each."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, strides, dilations, out
    return [
        x[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


def op_conv(
    x: Array,
    weight: Array,
    bias: Any = None,
    strides: Any = None,
    pad_type: Any = "valid",
    pad: Any = None,
    dilations: Any = None,
    groups: Any = 1,
) -> Array:
    x, weight = _f32(x), _f32(weight)
    if x.ndim != 4:
        raise EvalError(f"conv: only 2-D convolutions are implemented, got input rank {x.ndim}")
    n, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    groups = int(groups)
    strides = [1, 1] if strides is None else _ints(strides)
    dilations = [1, 1] if dilations is None else _ints(dilations)
    if channels != group_channels * groups or out_channels % groups:
        raise EvalError(f"conv: weight {weight.shape} does not fit input {x.shape} with {groups} groups")
    effective = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilations, strict=True)]
    pads = _spatial_pads(str(pad_type), pad, [height, width], effective, strides)
    padded = np.pad(x, ((0, 0), (0, 0), *pads))
    out = [
        (size + before + after - k) // s + 1
        for size, (before, after), k, s in zip((height, width), pads, effective, strides, strict=True)
    ]
    taps = _taps(padded, [kh, kw], strides, dilations, out)
    if group_channels == 1:  # depthwise: one multiply-add per kernel position
        multiplier = out_channels // groups
        if multiplier > 1:
            taps = [np.repeat(tap, multiplier, axis=1) for tap in taps]
        kernels = weight.reshape(out_channels, kh * kw)
        result = np.zeros((n, out_channels, out[0], out[1]), np.float32)
        for k, tap in enumerate(taps):
            result += tap * kernels[:, k].reshape(1, -1, 1, 1)
    else:  # im2col per group: [N, G, Cg * K, P] against weights [G, Og, Cg * K]
        cols = taps[0] if len(taps) == 1 else np.stack(taps, axis=2)
        cols = cols.reshape(n, groups, group_channels * kh * kw, out[0] * out[1])
        kernels = weight.reshape(groups, out_channels // groups, group_channels * kh * kw)
        if groups == 1 and n == 1:
            result = (kernels[0] @ cols[0, 0]).reshape(n, out_channels, out[0], out[1])
        else:
            result = np.matmul(kernels[None], cols).reshape(n, out_channels, out[0], out[1])
    if bias is not None:
        result += _f32(bias).reshape(1, -1, 1, 1)
    return result


def op_avg_pool(
    x: Array,
    kernel_sizes: Any,
    pad_type: Any,
    strides: Any = None,
    pad: Any = None,
    exclude_padding_from_average: Any = False,
    ceil_mode: Any = False,
) -> Array:
    x = _f32(x)
    if x.ndim != 4:
        raise EvalError(f"avg_pool: only 2-D pooling is implemented, got input rank {x.ndim}")
    kernel = _ints(kernel_sizes)
    strides = [1, 1] if strides is None else _ints(strides)
    size = list(x.shape[2:])
    pads = _spatial_pads(str(pad_type), pad, size, kernel, strides)
    out, extra = [], []
    for n, (before, after), k, s in zip(size, pads, kernel, strides, strict=True):
        if bool(ceil_mode):  # the MIL definition of the output size in ceil mode
            length = (n + before + after - k + s - 1) // s + 1
            if (length - 1) * s >= n + before and (before + after) > 0:
                length -= 1
        else:
            length = (n + before + after - k) // s + 1
        out.append(length)
        extra.append(max((length - 1) * s + k - (n + before + after), 0))  # windows past the edge
    if any(extra) and not bool(exclude_padding_from_average):
        raise EvalError("avg_pool: ceil_mode windows past the edge with padding counted are not implemented")
    spread = [(before, after + more) for (before, after), more in zip(pads, extra, strict=True)]
    padded = np.pad(x, ((0, 0), (0, 0), *spread))
    total = np.sum(_taps(padded, kernel, strides, [1, 1], out), axis=0)
    if bool(exclude_padding_from_average):
        ones = np.pad(np.ones((1, 1, *size), np.float32), ((0, 0), (0, 0), *spread))
        count = np.sum(_taps(ones, kernel, strides, [1, 1], out), axis=0)
        return total / count
    return total / np.float32(kernel[0] * kernel[1])


def _bilinear_axis(size: int, out: int, align_corners: bool, half_pixel: bool) -> tuple[Array, Array, Array]:
    """Lower index, upper index and weight of the upper sample, for each output position."""
    i = np.arange(out, dtype=np.float64)
    if align_corners:
        grid = i * ((size - 1) / (out - 1)) if out > 1 else np.zeros(out)
    elif half_pixel:
        grid = (i + 0.5) * (size / out) - 0.5
    else:
        grid = i * (size / out)
    grid = np.clip(grid, 0, size - 1)
    low = np.floor(grid).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    return low, high, (grid - low).astype(np.float32)


def op_upsample_bilinear(
    x: Array,
    scale_factor_height: Any = 1,
    scale_factor_width: Any = 1,
    align_corners: Any = True,
    half_pixel_centers: Any = None,
) -> Array:
    x = _f32(x)
    align = bool(align_corners)
    half = (not align) if half_pixel_centers is None else bool(half_pixel_centers)
    if align and half:
        raise EvalError("upsample_bilinear: align_corners and half_pixel_centers cannot both be true")
    height, width = x.shape[-2:]
    out_h = math.floor(height * float(scale_factor_height))
    out_w = math.floor(width * float(scale_factor_width))
    top, bottom, wy = _bilinear_axis(height, out_h, align, half)
    left, right, wx = _bilinear_axis(width, out_w, align, half)
    rows = x[..., top, :] * (1 - wy)[:, None] + x[..., bottom, :] * wy[:, None]
    return rows[..., left] * (1 - wx) + rows[..., right] * wx


def op_reduce_mean(x: Array, axes: Any = None, keep_dims: Any = False) -> Array:
    axis = None if axes is None else tuple(_ints(axes))
    return np.mean(_f32(x), axis=axis, keepdims=bool(keep_dims))


def op_split(x: Array, axis: Any, num_splits: Any = None, split_sizes: Any = None) -> list[Array]:
    axis = int(axis)
    if split_sizes is not None:
        sizes = _ints(split_sizes)
    elif num_splits is not None:
        count = int(num_splits)
        sizes = [math.ceil(x.shape[axis] / count)] * count
        sizes[-1] = x.shape[axis] - sum(sizes[:-1])
    else:
        raise EvalError("split: neither num_splits nor split_sizes given")
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def op_concat(values: list[Array], axis: Any, interleave: Any = False) -> Array:
    axis = int(axis)
    if not bool(interleave):
        return np.concatenate(values, axis=axis)
    axis = axis % values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


def op_slice_by_index(
    x: Array,
    begin: Any,
    end: Any,
    stride: Any = None,
    begin_mask: Any = None,
    end_mask: Any = None,
    squeeze_mask: Any = None,
) -> Array:
    rank = x.ndim
    begins, ends = _ints(begin), _ints(end)
    steps = [1] * rank if stride is None else _ints(stride)
    masks_b, masks_e, squeeze = _bools(begin_mask, rank), _bools(end_mask, rank), _bools(squeeze_mask, rank)
    index: list[Any] = []
    for axis in range(rank):
        if squeeze[axis]:
            index.append(begins[axis])
            continue
        index.append(
            slice(None if masks_b[axis] else begins[axis], None if masks_e[axis] else ends[axis], steps[axis])
        )
    return x[tuple(index)]


def op_cast(x: Array, dtype: Any) -> Array:
    """The value unchanged: the result takes the output's declared dtype, like every op's."""
    if str(dtype) not in ("fp16", "fp32", "int32", "int16", "int8", "uint8", "bool"):
        raise EvalError(f"cast: unknown dtype {dtype!r}")
    return x


def _sigmoid(x: Array) -> Array:
    x = _f32(x)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


OPS: dict[str, Callable[..., Any]] = {
    "conv": op_conv,
    "avg_pool": op_avg_pool,
    "upsample_bilinear": op_upsample_bilinear,
    "reduce_mean": op_reduce_mean,
    "split": op_split,
    "concat": op_concat,
    "slice_by_index": op_slice_by_index,
    "cast": op_cast,
    "add": lambda x, y: _f32(x) + _f32(y),
    "sub": lambda x, y: _f32(x) - _f32(y),
    "mul": lambda x, y: _f32(x) * _f32(y),
    "real_div": lambda x, y: _f32(x) / _f32(y),
    "maximum": lambda x, y: np.maximum(_f32(x), _f32(y)),
    "minimum": lambda x, y: np.minimum(_f32(x), _f32(y)),
    "relu": lambda x: np.maximum(_f32(x), 0),
    "sigmoid": _sigmoid,
    "tanh": lambda x: np.tanh(_f32(x)),
    "sigmoid_hard": lambda x, alpha, beta: np.minimum(np.maximum(_f32(alpha) * _f32(x) + _f32(beta), 0), 1),
    "thresholded_relu": lambda x, alpha: np.where(_f32(x) >= _f32(alpha), _f32(x), np.float32(0)),
    "clip": lambda x, alpha, beta: np.minimum(np.maximum(_f32(x), _f32(alpha)), _f32(beta)),
}


# --- the program ----------------------------------------------------------------------------------------


def _nptype(var: Any) -> Any:
    from coremltools.converters.mil.mil import types  # type: ignore[import-not-found, unused-ignore]

    dtype = var.dtype
    return np.dtype(types.nptype_from_builtin(dtype)) if dtype is not None else None


def _declared_shape(var: Any) -> tuple[int, ...] | None:
    shape = tuple(var.shape) if var.shape is not None else None
    if shape is None or not all(isinstance(d, int | np.integer) for d in shape):
        return None
    return tuple(int(d) for d in shape)


class Program:
    """The ``main`` function of a saved ML Program package, ready to evaluate."""

    def __init__(self, package: Path) -> None:
        import coremltools as ct  # type: ignore[import-not-found, unused-ignore]
        from coremltools.converters.mil.frontend.milproto.load import (  # type: ignore[import-not-found, unused-ignore]
            load,
        )

        model = ct.models.MLModel(str(package), skip_model_load=True)
        self.spec = model.get_spec()
        if self.spec.WhichOneof("Type") != "mlProgram":
            raise EvalError(f"{package}: not an ML Program ({self.spec.WhichOneof('Type')})")
        self.weights_dir = Path(model.weights_dir)
        program = load(self.spec, self.spec.specificationVersion, str(self.weights_dir))
        self.function = program.functions["main"]
        self.operations = list(self.function.operations)
        unknown = sorted({op.op_type for op in self.operations} - set(OPS) - {"const"})
        if unknown:
            first = next(op for op in self.operations if op.op_type == unknown[0])
            raise EvalError(
                f"unsupported op type {unknown[0]!r} (op {first.name!r}); this evaluator implements "
                f"{', '.join(sorted(OPS))}"
                + (f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else "")
            )
        self.inputs: dict[str, tuple[tuple[int, ...], Any, float | None]] = {}
        for feature in self.spec.description.input:
            var = self.function.inputs[feature.name]
            array = feature.type.multiArrayType
            default = None
            if feature.type.isOptional:
                kind = array.WhichOneof("defaultOptionalValue")
                default = float(getattr(array, kind)) if kind else 0.0
            self.inputs[feature.name] = (tuple(int(d) for d in array.shape), _nptype(var), default)
        self.outputs = [var.name for var in self.function.outputs]
        self.constants = {
            op.outputs[0].name: np.asarray(op.outputs[0].val)
            for op in self.operations
            if op.op_type == "const"
        }

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """The outputs for ``feeds`` (inputs left out take their declared default)."""
        values: dict[str, Array] = dict(self.constants)
        for name, (shape, dtype, default) in self.inputs.items():
            if name in feeds:
                given = np.asarray(feeds[name])
                if given.shape != shape:
                    raise EvalError(f"input {name}: shape {given.shape}, the package declares {shape}")
                values[name] = given.astype(dtype)
            elif default is not None:
                values[name] = np.full(shape, default, dtype)
            else:
                raise EvalError(f"input {name} is required (it has no default)")
        for op in self.operations:
            if op.op_type != "const":
                self._evaluate(op, values)
        return {name: values[name] for name in self.outputs}

    def _evaluate(self, op: Any, values: dict[str, Array]) -> None:
        arguments: dict[str, Any] = {}
        for key, var in op.inputs.items():
            if isinstance(var, list | tuple):
                arguments[key] = [values[v.name] for v in var]
            elif var.name in values:
                arguments[key] = values[var.name]
            elif var.val is not None:
                arguments[key] = np.asarray(var.val)
            else:
                raise EvalError(f"op {op.name!r} ({op.op_type}): input {key} ({var.name}) has no value")
        try:
            results = OPS[op.op_type](**arguments)
        except TypeError as error:
            raise EvalError(f"op {op.name!r} ({op.op_type}): unexpected arguments ({error})") from None
        results = results if isinstance(results, list) else [results]
        if len(results) != len(op.outputs):
            raise EvalError(
                f"op {op.name!r} ({op.op_type}): {len(results)} results for {len(op.outputs)} outputs"
            )
        for var, result in zip(op.outputs, results, strict=True):
            result = np.asarray(result)
            dtype = _nptype(var)
            if dtype is not None:
                result = result.astype(dtype, copy=False)
            declared = _declared_shape(var)
            if declared is not None and result.shape != declared:
                raise EvalError(
                    f"op {op.name!r} ({op.op_type}): computed shape {result.shape}, the program declares {declared}"
                )
            values[var.name] = result

    def describe(self) -> dict[str, Any]:
        """The package's interface, metadata and op types (counted), as JSON-ready values."""
        from coremltools.proto import FeatureTypes_pb2  # type: ignore[import-not-found, unused-ignore]

        names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType

        def feature(described: Any) -> dict[str, Any]:
            array = described.type.multiArrayType
            kind = array.WhichOneof("defaultOptionalValue")
            return {
                "name": described.name,
                "shape": [int(d) for d in array.shape],
                "dtype": names.Name(array.dataType),
                "optional": bool(described.type.isOptional),
                "default": float(getattr(array, kind)) if kind else None,
                "description": described.shortDescription,
            }

        description = self.spec.description
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
        return {
            "specification_version": int(self.spec.specificationVersion),
            "inputs": [feature(f) for f in description.input],
            "outputs": [feature(f) for f in description.output],
            "metadata": dict(description.metadata.userDefined),
            "short_description": description.metadata.shortDescription,
            "author": description.metadata.author,
            "license": description.metadata.license,
            "version": description.metadata.versionString,
            "ops": counts,
        }

    def weights(self) -> list[dict[str, Any]]:
        """Each weight kept in a blob file: the const, its consumers, file, data offset, size and dtype."""
        function = self.spec.mlProgram.functions["main"]
        block = function.block_specializations[function.opset]
        consumers: dict[str, list[str]] = {}
        for op in block.operations:
            for name, argument in op.inputs.items():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name":
                        consumers.setdefault(binding.name, []).append(f"{op.type}.{name}")
        found = []
        for op in block.operations:
            if op.type != "const" or op.attributes["val"].WhichOneof("value") != "blobFileValue":
                continue
            blob = op.attributes["val"].blobFileValue
            path = self.weights_dir / blob.fileName.split("/")[-1]
            with path.open("rb") as file:
                file.seek(blob.offset)
                sentinel, kind, size, data = struct.unpack("<IIQQ", file.read(24))
            if sentinel != BLOB_SENTINEL:
                raise EvalError(f"{path}: no blob header at offset {blob.offset}")
            name = op.outputs[0].name
            found.append(
                {
                    "name": name,
                    "consumers": consumers.get(name, []),
                    "file": str(path),
                    "header_offset": int(blob.offset),
                    "data_offset": int(data),
                    "size": int(size),
                    "blob_dtype": int(kind),
                    "shape": [int(d.constant.size) for d in op.outputs[0].type.tensorType.dimensions],
                }
            )
        return found


def run_frames(program: Program, frames: Array, *, zero_states: bool = False) -> dict[str, Array]:
    """Evaluate ``frames`` in order with the recurrent state carried; fgr, pha ``[T, ...]`` and the last states."""
    states = [name for name in program.inputs if name != "src"]
    carried: dict[str, Array] = {}
    if zero_states:
        carried = {name: np.zeros(program.inputs[name][0], np.float32) for name in states}
    fgr, pha = [], []
    out: dict[str, Array] = {}
    for frame in frames:
        out = program.run({"src": frame[None], **carried})
        fgr.append(out["fgr"])
        pha.append(out["pha"])
        carried = {name: out[f"{name[:2]}o"] for name in states}
    return {
        "fgr": np.concatenate(fgr),
        "pha": np.concatenate(pha),
        **{k: v for k, v in out.items() if k[0] == "r"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evaluate a saved CoreML ML Program package with numpy")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="evaluate frames with the recurrent state carried")
    run.add_argument("package", type=Path)
    run.add_argument("--frames", type=Path, required=True, help=".npy [T, 3, H, W] float32 in [0, 1]")
    run.add_argument("--output", type=Path, required=True, help=".npz: fgr, pha [T, ...] and the last states")
    run.add_argument("--zero-states", action="store_true", help="feed zero states on the first frame")
    listing = commands.add_parser("weights", help="JSON lines: the blob weights and where they are stored")
    listing.add_argument("package", type=Path)
    describe = commands.add_parser("describe", help="JSON: inputs, outputs, metadata and op types")
    describe.add_argument("package", type=Path)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # coremltools logs that it cannot load its macOS runtime
    warnings.simplefilter("ignore")
    try:
        program = Program(args.package)
        if args.command == "weights":
            for entry in program.weights():
                print(json.dumps(entry))
            return 0
        if args.command == "describe":
            print(json.dumps(program.describe(), indent=2))
            return 0
        frames = np.load(args.frames)
        started = time.perf_counter()
        results = run_frames(program, frames, zero_states=args.zero_states)
        np.savez(args.output, **results)
        print(f"evaluated {len(frames)} frames in {time.perf_counter() - started:.1f} s")
    except Exception as error:  # one line for the caller
        message = " ".join(str(error).split()) or type(error).__name__
        kind = "" if isinstance(error, EvalError) else f"{type(error).__name__}: "
        print(f"coreml_eval: {kind}{message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
