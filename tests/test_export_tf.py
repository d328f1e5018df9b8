"""TensorFlow SavedModel, TFLite and TF.js exports, made by the real CLI and run in their own runtimes.

Each export runs the example clip frame after frame with its recurrent state
carried (from full-shape zeros) and is compared with the official ONNX in
plain onnxruntime (``[1, 1, 1, 1]`` zero states, the same ratio): TensorFlow
on the CPU and ai-edge-litert's interpreter through ``tf_worker.py serve`` in
the tensorflow toolchain, TF.js in Node.js (tfjs, WASM backend) through
``tests/tfjs_runner/run.js``. Frames go to the runners as .npy files.

These need the toolchains (scripts/setup-export-tools) and the runner's
node_modules (scripts/setup-node-tools); CI installs both, so a missing one
fails the test rather than skipping it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rvm_node.engine.toolchains import toolchain_python
from rvm_node.engine.weights import cache_dir
from rvm_node.errors import MissingToolError
from rvm_node.io.resize import resize_image
from tests.helpers import run_rvm_node

pytestmark = pytest.mark.slow  # real weights, real converters and runtimes

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "rvm_node" / "engine" / "exporters" / "tf_worker.py"
TFJS_RUNNER = Path(__file__).resolve().parent / "tfjs_runner"
FRAMES = 20
FP32_BOUND = 1e-4
FP16_BOUND = 5e-2
INPUTS = ("src", "r1i", "r2i", "r3i", "r4i")
OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")


def _toolchain(name: str) -> Path:
    try:
        return toolchain_python(name, purpose="tests/test_export_tf.py")
    except MissingToolError as exc:
        pytest.fail(f"{exc} (CI installs it with scripts/setup-export-tools)")


def _cache_files() -> dict[str, tuple[int, str]]:
    """(mtime, sha256) of the weights cache's and the ONNX export cache's model files."""
    root = cache_dir()
    files = [*root.glob("*.onnx"), *root.glob("*.pth"), *(root / "exports").glob("*.onnx")]
    return {str(f): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files}


def _export(format: str, size: str, ratio: float, precision: str, folder: Path) -> Path:
    """The real CLI's export; the cached weights and ONNX exports must come out untouched."""
    _toolchain("tensorflow")
    if format == "tfjs":
        _toolchain("tfjs")
    before = _cache_files()
    args = [
        "export",
        "--format",
        format,
        "--size",
        size,
        "--downsample-ratio",
        f"{ratio:g}",
        "--output",
        str(folder),
    ]
    if precision != "fp32":
        args += ["--precision", precision]
    start = time.perf_counter()
    done = run_rvm_node(*args, timeout=1800)
    print(f"\nexport {format} {size} @{ratio:g} {precision}: {time.perf_counter() - start:.0f} s")
    assert before and _cache_files() == before, "the export touched the weights or ONNX export cache"
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.exists() and path.parent == folder
    return path


class Runner:
    """A runtime serving one export in a subprocess (``tf_worker.py serve`` or ``run.js``)."""

    def __init__(self, command: list[str], env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.described: dict[str, Any] = self._reply()

    def _reply(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=60)
            assert self.process.stderr is not None
            pytest.fail(f"runner exited {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
        return json.loads(line)

    def frame(self, src: np.ndarray, reset: bool) -> tuple[np.ndarray, np.ndarray, float]:
        """fgr, pha ``[H, W, C]`` and the inference ms of one NHWC frame ``[H, W, 3]``, state carried."""
        assert self.process.stdin is not None
        np.save(self.scratch / "src.npy", src[None])
        request = {"src": str(self.scratch / "src.npy"), "out": str(self.scratch / "out"), "reset": reset}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        fgr = np.load(self.scratch / "out_fgr.npy")[0]
        pha = np.load(self.scratch / "out_pha.npy")[0]
        return fgr, pha, float(reply["ms"][0])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _runner(format: str, path: Path, scratch: Path) -> Runner:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    if format == "tfjs":
        if not (TFJS_RUNNER / "node_modules" / "@tensorflow" / "tfjs-backend-wasm").is_dir():
            pytest.fail(f"{TFJS_RUNNER}/node_modules is missing; run scripts/setup-node-tools (npm ci)")
        return Runner(["node", str(TFJS_RUNNER / "run.js"), str(path)], env, scratch)
    kind = "savedmodel" if format == "tensorflow" else "tflite"
    return Runner(
        [str(_toolchain("tensorflow")), str(WORKER), "serve", kind, str(path), "--threads", "2"], env, scratch
    )


def _official(official_onnx: Path, frames: Iterator[np.ndarray], ratio: float) -> Iterator[tuple[Any, ...]]:
    """(src NHWC, fgr NHWC, pha NHWC) of each uint8 ``[H, W, 3]`` frame, from the official ONNX."""
    session = ort.InferenceSession(str(official_onnx), providers=["CPUExecutionProvider"])
    rec = [np.zeros([1, 1, 1, 1], np.float32)] * 4
    for frame in frames:
        src = frame.astype(np.float32) / 255
        feed = dict(zip(INPUTS, [src.transpose(2, 0, 1)[None], *rec], strict=True))
        fgr, pha, *rec = session.run(None, {**feed, "downsample_ratio": np.asarray([ratio], np.float32)})
        yield src, fgr[0].transpose(1, 2, 0), pha[0].transpose(1, 2, 0)


def _check_interface(
    runner: Runner, format: str, width: int, height: int, ratio: float, precision: str
) -> None:
    described = runner.described
    inputs, outputs = described["inputs"], described["outputs"]
    assert sorted(inputs) == sorted(INPUTS) and sorted(outputs) == sorted(OUTPUTS), described
    assert inputs["src"] == [1, height, width, 3]
    assert outputs["fgr"] == [1, height, width, 3] and outputs["pha"] == [1, height, width, 1]
    for i in range(1, 5):  # channels-last states, their full shape, the same going out as in
        assert outputs[f"r{i}o"] == inputs[f"r{i}i"] and inputs[f"r{i}i"][3] > 1
    meta = described["metadata"]
    assert meta is not None, "the export carries no rvm_node metadata"
    assert (meta["width"], meta["height"], meta["ratio"], meta["precision"]) == (
        width,
        height,
        ratio,
        precision,
    )
    assert meta["layout"] == "NHWC" and meta["inputs"] == inputs and meta["outputs"] == outputs
    if format == "tfjs":
        assert described["backend"] == "wasm"
        assert sorted(described["outputNodes"]) == sorted(
            OUTPUTS
        )  # the signature's names, as TF.js shows them
        assert sorted(described["inputNodes"]) == sorted(INPUTS)
    else:
        assert described["signatures"] == ["serving_default"]


def _parity(
    format: str,
    precision: str,
    width: int,
    height: int,
    ratio: float,
    clip_frames: np.ndarray,
    official_onnx: Path,
    tmp_path: Path,
) -> None:
    size = f"{width}x{height}"
    path = _export(format, size, ratio, precision, tmp_path / "export")
    frames = (resize_image(f.transpose(1, 2, 0), (width, height)) for f in clip_frames[:FRAMES])
    runner = _runner(format, path, tmp_path)
    try:
        _check_interface(runner, format, width, height, ratio, precision)
        worst_pha = worst_fgr = 0.0
        times = []
        for t, (src, fgr_ref, pha_ref) in enumerate(_official(official_onnx, frames, ratio)):
            fgr, pha, ms = runner.frame(src, reset=t == 0)
            assert fgr.shape == fgr_ref.shape and pha.shape == pha_ref.shape
            worst_fgr = max(worst_fgr, float(np.abs(fgr.astype(np.float64) - fgr_ref).max()))
            worst_pha = max(worst_pha, float(np.abs(pha.astype(np.float64) - pha_ref).max()))
            times.append(ms)
    finally:
        runner.close()
    assert len(times) == FRAMES
    print(
        f"{format} {precision} {size} @{ratio:g} vs official ONNX ({FRAMES} frames, state carried): "
        f"pha {worst_pha:.2e}, fgr {worst_fgr:.2e}; median {np.median(times):.1f} ms/frame"
    )
    bound = FP16_BOUND if precision == "fp16" else FP32_BOUND
    assert worst_pha <= bound and worst_fgr <= bound


@pytest.mark.parametrize(
    ("format", "precision"),
    [("tensorflow", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tfjs", "fp32")],
)
def test_export_runs_like_official_onnx_at_clip_size(
    format: str, precision: str, clip_frames: np.ndarray, official_onnx: Path, tmp_path: Path
) -> None:
    height, width = clip_frames.shape[2:]
    _parity(format, precision, width, height, 0.5, clip_frames, official_onnx, tmp_path)


@pytest.mark.parametrize("format", ["tensorflow", "tflite", "tfjs"])
def test_export_runs_like_official_onnx_at_1080p(
    format: str, clip_frames: np.ndarray, official_onnx: Path, tmp_path: Path
) -> None:
    _parity(format, "fp32", 1920, 1080, 0.25, clip_frames, official_onnx, tmp_path)
