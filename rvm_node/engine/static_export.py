"""Exports for runtimes that need static shapes: TensorFlow, TFLite, TensorFlow.js and CoreML.

Each export is made for one frame size and downsample ratio (like the
official CoreML releases), recorded in its name, e.g.
``rvm_mobilenetv3_1920x1080_r0.25_fp32.tflite``, and in a sidecar
``<name>.json`` beside it. The recurrent states are inputs and outputs of
their full shape; the first frame starts from zeros of that shape, which is
the same as starting from ``[1, 1, 1, 1]`` zeros (tested).

The interfaces are the official guide's: TensorFlow (SavedModel, TFLite,
TF.js) takes channels-last ``[B, H, W, C]`` tensors, inputs ``src, r1i..r4i``
and outputs ``fgr, pha, r1o..r4o``; CoreML takes and returns the same names,
channels-first. The converters run in toolchain environments of their own
(:mod:`rvm_node.engine.toolchains`): TensorFlow formats go through onnx2tf
from our ONNX export (ratio frozen, shapes static), CoreML through
coremltools from the traced torch network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rvm_node.engine.static_spec import (
    SUFFIX,
    StaticSpec,
    check_spec,
    metadata,
)
from rvm_node.engine.toolchains import FORMAT_TOOLCHAIN
from rvm_node.errors import InvalidInputError
from rvm_node.fsutil import TEMPORARY_MARK

__all__ = ["export_static", "prepare_export", "require_toolchains"]


def require_toolchains(format: str) -> None:
    """MissingToolError, in one line, unless the toolchains ``format`` needs are installed."""
    from rvm_node.engine.toolchains import toolchain_python

    for name in ("tensorflow", "tfjs") if format == "tfjs" else (FORMAT_TOOLCHAIN[format],):
        toolchain_python(name, purpose=f"export --format {format}")


def prepare_export(format: str, spec: StaticSpec, folder: Path, *, overwrite: bool = False) -> Path:
    """Every check before an export starts (settings, an existing output, the toolchains); the path the
    export will have."""
    check_spec(format, spec)
    target = Path(folder) / f"{spec.name}{SUFFIX[format]}"
    if Path(folder).suffix.lower() in {".tflite", ".mlpackage", ".json", ".onnx", ".pb"}:
        raise InvalidInputError(
            f"{folder}: expected the folder the export goes in, not a file name (the export is named {target.name})"
        )
    sidecar = target.with_name(f"{target.name}.json")
    if (target.exists() or sidecar.exists()) and not overwrite:
        raise InvalidInputError(f"{target}: already exists; pass --overwrite to replace it")
    require_toolchains(format)
    return target


def export_static(net: Any, format: str, spec: StaticSpec, folder: Path, *, overwrite: bool = False) -> Path:
    """Export ``net`` as ``format`` for ``spec`` into ``folder``; the path written (file or folder)."""
    from rvm_node.engine import exporters

    target = prepare_export(format, spec, folder, overwrite=overwrite)
    sidecar = target.with_name(f"{target.name}.json")
    Path(folder).mkdir(parents=True, exist_ok=True)
    info = metadata(format, spec)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", suffix=TEMPORARY_MARK, dir=folder) as staging:
        work = Path(staging)
        built = exporters.build(format, net, spec, info, work)
        (work / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(built, target)
        os.replace(work / "meta.json", sidecar)
    return target
