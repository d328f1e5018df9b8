"""TensorFlow.js graph model, run with the ``tfjs`` toolchain's Python (imports nothing from rvm-node).

``tfjs_worker.py SAVED OUT --info JSON``: tensorflowjs_converter turns the
re-signed SavedModel (signature ``serving_default``) into ``OUT/model.json``
and its weight shards; ``JSON`` goes into model.json as
``userDefinedMetadata.rvm_node``. The signature keeps the names ``src,
r1i..r4i`` and ``fgr, pha, r1o..r4o``, which TF.js maps to the graph's nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# This script's folder also holds rvm-node's tensorflow.py: keep it off the path, or it shadows TensorFlow.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

INPUTS = ("src", "r1i", "r2i", "r3i", "r4i")
OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")
METADATA_NAME = "rvm_node"


class WorkerError(Exception):
    pass


def convert(saved: Path, out: Path, info: Path) -> None:
    converter = Path(sys.executable).with_name("tensorflowjs_converter")
    done = subprocess.run(
        [
            str(converter if converter.is_file() else "tensorflowjs_converter"),
            "--input_format=tf_saved_model",
            "--output_format=tfjs_graph_model",
            "--signature_name=serving_default",
            "--saved_model_tags=serve",
            f"--metadata={METADATA_NAME}:{info}",
            str(saved),
            str(out),
        ],
        capture_output=True,
        text=True,
        # oneDNN builds fuse Conv2D with HardSwish (_FusedHardSwish), which the TF.js backends lack
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
            "TF_ENABLE_ONEDNN_OPTS": "0",
        },
        check=False,
    )
    model_json = out / "model.json"
    if done.returncode != 0 or not model_json.is_file():
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise WorkerError(f"tensorflowjs_converter failed: {lines[-1].strip() if lines else done.returncode}")
    model = json.loads(model_json.read_text())
    signature = model.get("signature", {})
    if sorted(signature.get("inputs", {})) != sorted(INPUTS) or sorted(
        signature.get("outputs", {})
    ) != sorted(OUTPUTS):
        raise WorkerError(
            f"model.json: unexpected signature {sorted(signature.get('inputs', {}))} -> "
            f"{sorted(signature.get('outputs', {}))}"
        )
    if METADATA_NAME not in model.get("userDefinedMetadata", {}):
        raise WorkerError(f"model.json: no userDefinedMetadata.{METADATA_NAME}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--info", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        convert(args.saved, args.out, args.info)
    except Exception as exc:  # one line for the caller, whatever failed
        print(f"tfjs_worker: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
