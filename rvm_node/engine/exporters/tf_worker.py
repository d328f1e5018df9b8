"""TensorFlow exports, run with the ``tensorflow`` toolchain's Python (imports nothing from rvm-node).

``savedmodel ONNX OUT --info JSON``: onnx2tf converts a temporary copy of the
static ONNX graph; the result is re-signed with the official guide's
interface: one signature ``serving_default``, channels-last inputs ``src,
r1i..r4i`` and outputs ``fgr, pha, r1o..r4o`` of the shapes in ``JSON``
(``inputs``/``outputs``), which is also kept as ``assets.extra/rvm_node.json``.

``tflite SAVED OUT [--fp16] --info JSON``: that SavedModel as TFLite (fp16:
fp16 weights), the same signature, ``JSON`` in the model's metadata under
``rvm_node``.

``serve savedmodel|tflite MODEL [--threads N]``: runs an export on the CPU for
tests and benchmarks (TFLite: ai-edge-litert's interpreter, XNNPACK). It
prints one JSON line describing the signature as the runtime sees it, then
answers each request line ``{"src": IN.npy, "out": PREFIX or null, "reset":
bool}`` (IN: float32 ``[T, H, W, 3]``) by running the T frames one by one,
the recurrent state carried from frame to frame and request to request (from
zeros of full shape at the start or on ``reset``), writing
``PREFIX_fgr.npy`` and ``PREFIX_pha.npy`` (``[T, H, W, C]``) and replying
``{"ms": [inference time of each frame]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# This script's folder also holds rvm-node's tensorflow.py: keep it off the path, or it shadows TensorFlow.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # convert and run on the CPU, whatever the machine has

INPUTS = ("src", "r1i", "r2i", "r3i", "r4i")
OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")
METADATA_NAME = "rvm_node"


class WorkerError(Exception):
    pass


def _nchw(shape: list[int]) -> list[int]:
    return [shape[0], shape[3], shape[1], shape[2]]


def _onnx2tf(onnx_file: Path, raw: Path) -> None:
    """onnx2tf on a copy of ``onnx_file`` (onnx2tf rewrites the file it is given)."""
    with tempfile.TemporaryDirectory(prefix="rvm-onnx2tf.") as scratch:
        copy = Path(scratch) / "model.onnx"
        shutil.copyfile(onnx_file, copy)
        done = subprocess.run(
            ["onnx2tf", "-i", str(copy), "-o", str(raw), "-v", "error"],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not (raw / "saved_model.pb").is_file():
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise WorkerError(f"onnx2tf failed: {lines[-1].strip() if lines else f'exit {done.returncode}'}")


def _adapter(have: list[int], want: list[int], name: str, to_last: bool) -> list[int] | None:
    """The permutation that takes a tensor of shape ``have`` to ``want`` (None: as it is)."""
    if have == want:
        return None
    if to_last and _nchw(want) == have:
        return [0, 2, 3, 1]
    if not to_last and _nchw(want) == have:  # feeding an NCHW input from an NHWC one
        return [0, 3, 1, 2]
    raise WorkerError(f"onnx2tf made {name} of shape {have}; expected {want} or {_nchw(want)}")


def savedmodel(onnx_file: Path, out: Path, info: dict[str, Any]) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="rvm-onnx2tf-out.") as scratch:
        raw = Path(scratch) / "saved_model"
        _onnx2tf(onnx_file, raw)
        loaded = tf.saved_model.load(str(raw))
        inner = loaded.signatures["serving_default"]
        in_specs = inner.structured_input_signature[1]
        if sorted(in_specs) != sorted(INPUTS):
            raise WorkerError(f"onnx2tf made inputs {sorted(in_specs)}; expected {list(INPUTS)}")
        in_perm = {
            n: _adapter(in_specs[n].shape.as_list(), info["inputs"][n], n, to_last=False) for n in INPUTS
        }
        produced = inner.structured_outputs
        if sorted(produced) == sorted(OUTPUTS):
            out_keys = list(OUTPUTS)
        else:  # onnx2tf names them output_0..output_5, in the ONNX graph's order
            out_keys = sorted(produced, key=lambda k: int(k.rsplit("_", 1)[-1]))
            if len(out_keys) != len(OUTPUTS):
                raise WorkerError(f"onnx2tf made outputs {sorted(produced)}; expected {len(OUTPUTS)}")
        out_perm = {
            n: _adapter(produced[k].shape.as_list(), info["outputs"][n], n, to_last=True)
            for n, k in zip(OUTPUTS, out_keys, strict=True)
        }

        def serve(**feed: Any) -> dict[str, Any]:
            given = {n: feed[n] if in_perm[n] is None else tf.transpose(feed[n], in_perm[n]) for n in INPUTS}
            result = inner(**given)
            return {
                n: tf.identity(
                    result[k] if out_perm[n] is None else tf.transpose(result[k], out_perm[n]), name=n
                )
                for n, k in zip(OUTPUTS, out_keys, strict=True)
            }

        module = tf.Module()
        module.inner = loaded  # tracks onnx2tf's variables and functions
        signature = [tf.TensorSpec(info["inputs"][n], tf.float32, name=n) for n in INPUTS]

        def positional(src: Any, r1i: Any, r2i: Any, r3i: Any, r4i: Any) -> dict[str, Any]:
            return serve(src=src, r1i=r1i, r2i=r2i, r3i=r3i, r4i=r4i)

        module.serve = tf.function(positional, input_signature=signature, autograph=False)
        tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    extra = out / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / f"{METADATA_NAME}.json").write_text(json.dumps(info, indent=2) + "\n")


def _with_metadata(flatbuffer: bytes, info: dict[str, Any]) -> bytes:
    """The TFLite model with ``info`` as its metadata entry ``rvm_node`` (a buffer of JSON)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(info).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite(saved: Path, out: Path, info: dict[str, Any], fp16: bool) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serving_default"])
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    out.write_bytes(_with_metadata(converter.convert(), info))


class _SavedModel:
    def __init__(self, path: Path, threads: int | None) -> None:
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        self.tf = tf
        self.model = tf.saved_model.load(str(path))
        self.function = self.model.signatures["serving_default"]
        extra = path / "assets.extra" / f"{METADATA_NAME}.json"
        self.metadata = json.loads(extra.read_text()) if extra.is_file() else None

    def describe(self) -> dict[str, Any]:
        specs = self.function.structured_input_signature[1]
        return {
            "signatures": list(self.model.signatures.keys()),
            "inputs": {k: v.shape.as_list() for k, v in specs.items()},
            "outputs": {k: v.shape.as_list() for k, v in self.function.structured_outputs.items()},
            "metadata": self.metadata,
        }

    def __call__(self, feed: dict[str, Any]) -> dict[str, Any]:
        result = self.function(**{k: self.tf.constant(v) for k, v in feed.items()})
        return {k: v.numpy() for k, v in result.items()}


class _Lite:
    def __init__(self, path: Path, threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.path = path

    def describe(self) -> dict[str, Any]:
        from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model(str(self.path))
        found = [m for m in model.metadata or [] if m.name == METADATA_NAME.encode()]
        metadata = json.loads(bytes(model.buffers[found[0].buffer].data).decode()) if found else None
        return {
            "signatures": list(self.interpreter.get_signature_list()),
            "inputs": {k: [int(n) for n in v["shape"]] for k, v in self.runner.get_input_details().items()},
            "outputs": {k: [int(n) for n in v["shape"]] for k, v in self.runner.get_output_details().items()},
            "metadata": metadata,
        }

    def __call__(self, feed: dict[str, Any]) -> dict[str, Any]:
        return dict(self.runner(**feed))


def serve(kind: str, path: Path, threads: int | None) -> None:
    import time

    import numpy as np

    model = _SavedModel(path, threads) if kind == "savedmodel" else _Lite(path, threads)
    described = model.describe()
    zeros = {f"r{i}i": np.zeros(described["inputs"][f"r{i}i"], np.float32) for i in range(1, 5)}
    state = dict(zeros)
    print(json.dumps(described), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("reset"):
            state = dict(zeros)
        frames = np.load(request["src"]).astype(np.float32, copy=False)
        times, fgrs, phas = [], [], []
        for frame in frames:
            start = time.perf_counter()
            out = model({"src": np.ascontiguousarray(frame[None]), **state})
            times.append((time.perf_counter() - start) * 1000)
            state = {f"r{i}i": out[f"r{i}o"] for i in range(1, 5)}
            fgrs.append(out["fgr"])
            phas.append(out["pha"])
        if request.get("out"):
            np.save(f"{request['out']}_fgr.npy", np.concatenate(fgrs))
            np.save(f"{request['out']}_pha.npy", np.concatenate(phas))
        print(json.dumps({"ms": times}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    saved = commands.add_parser("savedmodel")
    saved.add_argument("onnx", type=Path)
    saved.add_argument("out", type=Path)
    saved.add_argument("--info", type=Path, required=True)
    lite = commands.add_parser("tflite")
    lite.add_argument("saved", type=Path)
    lite.add_argument("out", type=Path)
    lite.add_argument("--info", type=Path, required=True)
    lite.add_argument("--fp16", action="store_true")
    runtime = commands.add_parser("serve")
    runtime.add_argument("kind", choices=["savedmodel", "tflite"])
    runtime.add_argument("model", type=Path)
    runtime.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(args.kind, args.model, args.threads)
            return 0
        info = json.loads(args.info.read_text())
        if args.command == "savedmodel":
            savedmodel(args.onnx, args.out, info)
        else:
            tflite(args.saved, args.out, info, args.fp16)
    except Exception as exc:  # one line for the caller, whatever failed
        print(f"tf_worker {args.command}: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
