"""TensorFlow SavedModel, TFLite and TensorFlow.js exports, through onnx2tf.

This process writes the static ONNX graph (ratio frozen, every input and
output of static shape) into the work folder; ``tf_worker.py`` in the
``tensorflow`` toolchain converts it (onnx2tf gets a temporary copy: it
rewrites the file it is given) and re-signs the result with the official
guide's interface (``serving_default``: channels-last ``src, r1i..r4i`` ->
``fgr, pha, r1o..r4o``), the metadata in ``assets.extra/rvm_node.json``. TFLite
converts that SavedModel (metadata entry ``rvm_node``); TF.js converts it in
the ``tfjs`` toolchain (``tfjs_worker.py``; metadata in model.json's
``userDefinedMetadata.rvm_node``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rvm_node.engine.static_spec import SUFFIX, StaticSpec, static_onnx
from rvm_node.engine.toolchains import run_worker

__all__ = ["build_tensorflow"]


def _static_outputs(model: Any, spec: StaticSpec) -> None:
    """Give the graph's outputs their static shapes (onnxsim, inside onnx2tf, needs them)."""
    frame = [(1, 3, spec.height, spec.width), (1, 1, spec.height, spec.width)]
    shapes = dict(zip(("fgr", "pha", "r1o", "r2o", "r3o", "r4o"), frame + spec.state_shapes(), strict=True))
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = size


def build_tensorflow(format: str, net: Any, spec: StaticSpec, info: dict[str, Any], work: Path) -> Path:
    """Export ``net`` for ``spec`` as ``format`` (tensorflow, tflite, tfjs) inside ``work``; its path."""
    import onnx

    purpose = f"export --format {format}"
    model = static_onnx(net, spec)
    _static_outputs(model, spec)
    graph = work / "static.onnx"
    onnx.save(model, str(graph))
    meta = work / "info.json"
    meta.write_text(json.dumps(info))
    target = work / f"{spec.name}{SUFFIX[format]}"
    saved = target if format == "tensorflow" else work / "saved_model"
    run_worker(
        "tensorflow",
        "tf_worker",
        ["savedmodel", str(graph), str(saved), "--info", str(meta)],
        purpose=purpose,
    )
    if format == "tflite":
        fp16 = ["--fp16"] if spec.precision == "fp16" else []
        run_worker(
            "tensorflow",
            "tf_worker",
            ["tflite", str(saved), str(target), "--info", str(meta), *fp16],
            purpose=purpose,
        )
    elif format == "tfjs":
        run_worker("tfjs", "tfjs_worker", [str(saved), str(target), "--info", str(meta)], purpose=purpose)
    return target
