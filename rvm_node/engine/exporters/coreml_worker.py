"""Convert a traced RVM network to a CoreML ML Program package (runs in the ``coreml`` toolchain).

Usage: ``coreml_worker.py --traced traced.pt --job job.json --output NAME.mlpackage``

``job.json`` (written by :mod:`rvm_node.engine.exporters.coreml`) gives the
input names and shapes in order, the output names, which inputs are optional
(their default is zeros), the precision, the deployment target and the
metadata. This script imports nothing from rvm-node: it runs with the
toolchain's own Python. A failure prints one line to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any


def convert(traced_path: Path, job: dict[str, Any], output: Path) -> Path:
    import coremltools as ct  # type: ignore[import-not-found, unused-ignore]
    import numpy as np
    import torch

    traced = torch.jit.load(str(traced_path)).eval()
    optional = set(job["optional"])
    inputs = []
    for name, shape in job["inputs"].items():
        default = np.zeros(shape, np.float32) if name in optional else None
        inputs.append(ct.TensorType(name=name, shape=tuple(shape), dtype=np.float32, default_value=default))
    precision = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}[job["precision"]]
    model = ct.convert(
        traced,
        inputs=inputs,
        outputs=[ct.TensorType(name=name) for name in job["outputs"]],
        convert_to="mlprogram",
        compute_precision=precision,
        minimum_deployment_target=getattr(ct.target, job["target"]),
    )
    described = model.get_spec().description
    names = ([i.name for i in described.input], [o.name for o in described.output])
    if names != (list(job["inputs"]), list(job["outputs"])):
        raise RuntimeError(f"the converted model has inputs {names[0]} and outputs {names[1]}")
    for name in job["inputs"]:
        model.input_description[name] = (
            "the frame, RGB in [0, 1]"
            if name == "src"
            else f"recurrent state {name[:2]} of the previous frame (its {name[:2]}o); zeros by default"
        )
    for name in job["outputs"]:
        model.output_description[name] = {
            "fgr": "foreground, RGB in [0, 1]",
            "pha": "alpha matte in [0, 1]",
        }.get(name, f"recurrent state {name[:2]}; feed it back as {name[:2]}i on the next frame")
    model.short_description = job["short_description"]
    model.author = job["author"]
    model.license = job["license"]
    model.version = job["version"]
    model.user_defined_metadata.update(job["metadata"])
    model.save(str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="traced RVM network -> CoreML ML Program (.mlpackage)")
    parser.add_argument("--traced", type=Path, required=True, help="TorchScript module (torch.jit.save)")
    parser.add_argument("--job", type=Path, required=True, help="JSON: inputs, outputs, precision, metadata")
    parser.add_argument("--output", type=Path, required=True, help="the .mlpackage to write")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # coremltools logs that it cannot load its macOS runtime
    warnings.simplefilter("ignore")
    try:
        print(convert(args.traced, json.loads(args.job.read_text()), args.output))
    except Exception as error:  # one line for the exporter's ExportError
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"coremltools conversion failed: {type(error).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
