"""CoreML ML Program export: trace here, convert with coremltools in the ``coreml`` toolchain.

The traced network (:func:`rvm_node.engine.static_spec.traced_module`) is
saved as TorchScript beside a small JSON job description, and
``coreml_worker.py`` converts it inside the toolchain environment into
``<name>.mlpackage``: an ML Program (iOS 16+) taking ``src`` and the states
``r1i..r4i`` (NCHW float32, full shapes) and returning ``fgr, pha, r1o..r4o``.
The states are optional inputs whose default is zeros, so the first frame may
be run with ``src`` alone, as the official guide does. ``fp16`` converts with
float16 compute (inputs stay float32, outputs are float16).

CoreML cannot run on Linux; ``coreml_eval.py`` checks a saved package
numerically instead, by evaluating its ML Program with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["OUTPUTS", "build_coreml", "coreml_job"]

OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")
DEPLOYMENT_TARGET = "iOS16"  # ML Programs with zero-default optional inputs


def coreml_job(spec: Any, info: dict[str, Any]) -> dict[str, Any]:
    """What the worker needs: input shapes (in order), output names, precision and the metadata."""
    inputs = {"src": [1, 3, spec.height, spec.width]}
    inputs.update({f"r{i + 1}i": list(shape) for i, shape in enumerate(spec.state_shapes())})
    user = {
        "variant": spec.variant,
        "size": f"{spec.width}x{spec.height}",
        "width": str(spec.width),
        "height": str(spec.height),
        "downsample_ratio": f"{spec.ratio:g}",
        "precision": spec.precision,
        "layout": "NCHW",
        "inputs": json.dumps(info["inputs"]),
        "outputs": json.dumps(info["outputs"]),
        "rvm_node": str(info["rvm_node"]),
    }
    return {
        "inputs": inputs,
        "outputs": list(OUTPUTS),
        "optional": [name for name in inputs if name != "src"],
        "precision": spec.precision,
        "target": DEPLOYMENT_TARGET,
        "metadata": user,
        "short_description": (
            f"Robust Video Matting ({spec.variant}) for {spec.width}x{spec.height} frames at downsample "
            f"ratio {spec.ratio:g}, {spec.precision}; feed r1o..r4o back as r1i..r4i (zeros on the first frame)"
        ),
        "author": f"rvm-node {info['rvm_node']} (network and weights: Robust Video Matting, Lin et al.)",
        "license": "GPL-3.0 (Robust Video Matting)",
        "version": str(info["rvm_node"]),
    }


def build_coreml(net: Any, spec: Any, info: dict[str, Any], work: Path) -> Path:
    """Convert ``net`` for ``spec`` into ``work/<name>.mlpackage``; its path."""
    import torch

    from rvm_node.engine.static_spec import traced_module
    from rvm_node.engine.toolchains import run_worker
    from rvm_node.errors import ExportError

    traced = work / "traced.pt"
    torch.jit.save(traced_module(net, spec), str(traced))
    job = work / "coreml.json"
    job.write_text(json.dumps(coreml_job(spec, info), indent=2) + "\n")
    package = work / f"{spec.name}.mlpackage"
    run_worker(
        "coreml",
        "coreml_worker",
        ["--traced", str(traced), "--job", str(job), "--output", str(package)],
        purpose="export coreml",
    )
    if not (package / "Manifest.json").is_file():
        raise ExportError(f"export coreml: the converter wrote no package at {package}")
    traced.unlink()
    job.unlink()
    return package
