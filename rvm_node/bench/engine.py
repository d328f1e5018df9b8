"""``rvm-node bench engine``: tensor throughput, side by side, in one run.

Each configuration runs the same frames through its own session, one frame
per call with the state carried, after a few warm-up frames; the
configurations take turns, round after round (A, B, C, A, B, C, ...), and the
median of the rounds is reported, so the machine's noise falls on every row
alike. The official
ONNX runs in a plain ``onnxruntime.InferenceSession`` with default settings,
as the official inference code runs it, on float32 frames made before the
clock starts; the other rows run through our backends on the frames as a
decoder gives them (uint8, interleaved), asking for alpha alone (uint16, as a
16-bit matte is written) or for alpha and foreground (float32, as the
official model returns them). Ratios are against that official row at the
same size, which ``--only`` always keeps.

A second table times the full-resolution stage alone (``fullres``: the
resize down and the planes made from the coefficients) against its floor:
the bytes it must move at the least (the frame read once, the planes written
once) at this machine's copy bandwidth, measured in the same run.

The static exports (TensorFlow SavedModel, TFLite, TF.js) run where their
toolchains are installed, each export made once per size and kept under
``$RVM_NODE_CACHE_DIR/exports/static/``. Their runtimes live in other
environments, so each row drives a persistent subprocess (``tf_worker.py
serve``, ``tests/tfjs_runner/run.js``): one call sends one frame (.npy) and
gets back the inference time measured inside the subprocess, which is what
the row counts, so the frame transfer is left out and the rows still take
turns frame by frame.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvm_node.bench.common import (
    machine,
    markdown,
    parse_one_size,
)
from rvm_node.engine import fullres
from rvm_node.engine.samples import OutputSpec
from rvm_node.errors import InvalidInputError

__all__ = ["run_engine_bench"]


Runner = Callable[[int], float | None]  # frame index in; seconds, when the runner times itself
REFERENCE = "official ONNX, onnxruntime (reference)"
ALPHA = OutputSpec(False, "uint16")  # a 16-bit matte, as writers store it
BOTH = OutputSpec(True, "float32")  # alpha and foreground as the official model returns them


@dataclass(frozen=True)
class _Size:
    width: int
    height: int
    ratio: float

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} @{self.ratio:g}"


def _parse_sizes(text: str) -> list[_Size]:
    sizes = []
    for part in text.split(","):
        dims, at, ratio = part.strip().partition("@")
        try:
            value = float(ratio)
        except ValueError:
            value = -1.0
        if not at or value <= 0:
            raise InvalidInputError(f"--sizes: expected WxH@ratio, got {part.strip()!r}")
        width, height = parse_one_size(dims, "--sizes")
        sizes.append(_Size(width, height, value))
    return sizes


@dataclass(frozen=True)
class _Frames:
    """The frames every row runs: as a decoder gives them (``[1, 3, H, W]`` views of uint8 ``H x W x 3``) and,
    for the official row, as float32 planes made before the clock starts."""

    decoded: np.ndarray  # [N, 1, 3, H, W]
    unit: np.ndarray  # [N, 1, 3, H, W] float32 0..1

    @classmethod
    def random(cls, count: int, size: _Size) -> _Frames:
        pixels = np.random.default_rng(0).integers(
            0, 256, (count, size.height, size.width, 3), dtype=np.uint8
        )
        decoded = pixels.transpose(0, 3, 1, 2)[:, None]
        return cls(decoded, np.ascontiguousarray(decoded, np.float32) / np.float32(255))


def _official_runner(size: _Size, frames: _Frames) -> Runner:
    import onnxruntime as ort

    from rvm_node.engine.weights import official_path

    session = ort.InferenceSession(str(official_path()), providers=["CPUExecutionProvider"])
    rec = [np.zeros([1, 1, 1, 1], np.float32)] * 4
    ratio = np.asarray([size.ratio], np.float32)

    def run(index: int) -> None:
        nonlocal rec
        out = session.run(
            None,
            {
                "src": frames.unit[index],
                "r1i": rec[0],
                "r2i": rec[1],
                "r3i": rec[2],
                "r4i": rec[3],
                "downsample_ratio": ratio,
            },
        )
        rec = out[2:]

    return run


def _session_runner(
    factory: Callable[[], object], size: _Size, outputs: OutputSpec, *, numpy_stage: bool = False
) -> Callable[[_Frames], Runner]:
    """A row of one of our backends; ``numpy_stage``: the full-resolution stage without its compiled loops."""

    def make(frames: _Frames) -> Runner:
        backend = factory()
        session = backend.new_session(size.ratio, outputs)  # type: ignore[attr-defined]

        def run(index: int) -> None:
            if not numpy_stage:
                session.process(frames.decoded[index])
                return
            os.environ[fullres.KERNELS_ENV] = "numpy"  # read on each call
            try:
                session.process(frames.decoded[index])
            finally:
                del os.environ[fullres.KERNELS_ENV]

        return run

    return make


def _network_runner(factory: Callable[[], object], size: _Size) -> Callable[[_Frames], Runner]:
    """The network alone: frames resized down before the clock, run at ratio 1 at the small size (no
    refiner), float32 alpha out. No full-resolution stage can make a frame faster than this."""

    def make(frames: _Frames) -> Runner:
        small = [fullres.downsample(frame[0], size.ratio)[None] for frame in frames.decoded]
        session = factory().new_session(1.0, OutputSpec(False, "float32"))  # type: ignore[attr-defined]

        def run(index: int) -> None:
            session.process(small[index])

        return run

    return make


_REPO = Path(__file__).resolve().parents[2]
_TFJS_RUNNER = _REPO / "tests" / "tfjs_runner" / "run.js"


def _static_export(format: str, size: _Size) -> Path:
    """The fp32 export of ``format`` for ``size``, made once and kept in the cache."""
    from rvm_node.engine.loader import load_network
    from rvm_node.engine.static_export import export_static
    from rvm_node.engine.static_spec import SUFFIX, StaticSpec
    from rvm_node.engine.weights import cache_dir
    from rvm_node.version import __version__

    spec = StaticSpec("mobilenetv3", size.width, size.height, size.ratio)
    # a folder per format: the SavedModel and TF.js exports are both folders of the same name
    folder = cache_dir() / "exports" / "static" / f"v{__version__}" / format
    target = folder / f"{spec.name}{SUFFIX[format]}"
    if not target.with_name(f"{target.name}.json").is_file():  # the sidecar is written last
        print(f"  exporting {format} for {size.label} into {folder} (once) ...", flush=True)
        export_static(load_network("mobilenetv3"), format, spec, folder, overwrite=True)
    return target


class _Served:
    """A runtime serving one export in a subprocess; one call = one frame, state carried inside."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.name = Path(command[1]).name
        self.scratch = Path(tempfile.mkdtemp(prefix="rvm-bench-"))
        self.log = (self.scratch / "stderr.txt").open("w")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        atexit.register(self.close)
        self._reply()  # the model's description: it is loaded

    def _reply(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            lines = [x for x in (self.scratch / "stderr.txt").read_text().splitlines() if x.strip()]
            raise RuntimeError(f"{self.name}: the runner exited ({code}): {lines[-1] if lines else ''}")
        reply: dict[str, object] = json.loads(line)
        return reply

    def __call__(self, frame: np.ndarray) -> float:
        assert self.process.stdin is not None
        src = self.scratch / "src.npy"
        np.save(src, np.ascontiguousarray(frame.transpose(0, 2, 3, 1)))  # NCHW -> the exports' NHWC (0..1)
        self.process.stdin.write(json.dumps({"src": str(src), "out": None}) + "\n")
        self.process.stdin.flush()
        ms = self._reply()["ms"]
        assert isinstance(ms, list)
        return float(ms[0]) / 1000

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _static_runner(format: str, size: _Size) -> Callable[[_Frames], Runner]:
    def make(frames: _Frames) -> Runner:
        from rvm_node.engine.toolchains import WORKERS, toolchain_python

        path = _static_export(format, size)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("PYTHONPATH", None)
        if format == "tfjs":
            served = _Served(["node", str(_TFJS_RUNNER), str(path)], env)
        else:
            python = toolchain_python("tensorflow", purpose="bench")
            kind = ["savedmodel"] if format == "tensorflow" else ["tflite", "--threads", "2"]
            served = _Served(
                [str(python), str(WORKERS / "tf_worker.py"), "serve", kind[0], str(path), *kind[1:]], env
            )
        return lambda index: served(frames.unit[index])

    return make


def _static_configs(size: _Size) -> list[tuple[str, Callable[[_Frames], Runner]]]:
    """The TensorFlow exports' rows, where their toolchains (and Node.js, for TF.js) are installed."""
    from rvm_node.engine.toolchains import toolchain_python
    from rvm_node.errors import MissingToolError

    def have(name: str) -> bool:
        try:
            toolchain_python(name)
        except MissingToolError:
            return False
        return True

    configs: list[tuple[str, Callable[[_Frames], Runner]]] = []
    if have("tensorflow"):
        configs += [
            ("TensorFlow SavedModel fp32 (export for this size)", _static_runner("tensorflow", size)),
            ("TFLite XNNPACK fp32, 2 threads (export for this size)", _static_runner("tflite", size)),
        ]
        modules = _TFJS_RUNNER.parent / "node_modules" / "@tensorflow" / "tfjs-backend-wasm"
        if have("tfjs") and shutil.which("node") and modules.is_dir():
            configs.append(("TF.js WASM, Node.js (export for this size)", _static_runner("tfjs", size)))
    return configs


def _backends() -> list[tuple[str, Callable[[], object]]]:
    """Our backends, each as a name and how to load it."""
    from rvm_node.engine.loader import imported_official_weights, load_model, shared_cpu_options
    from rvm_node.engine.openvino_backend import OpenVinoOptions
    from rvm_node.engine.ort_backend import OrtOptions
    from rvm_node.engine.torch_backend import TorchOptions, cpu_has_bf16

    whole = "the model whole (fused_refiner=False: the full-resolution part in the graph)"
    backends: list[tuple[str, Callable[[], object]]] = [
        ("onnxruntime, the official file", lambda: load_model(backend="onnxruntime")),
        (f"onnxruntime, the official file, {whole}", lambda: load_model(backend="onnxruntime", options=OrtOptions(fused_refiner=False))),
        ("onnxruntime, our ONNX export", lambda: load_model(backend="onnxruntime", weights=imported_official_weights())),
        (
            "onnxruntime, the official file, no spinning (node and converter options)",
            lambda: load_model(backend="onnxruntime", options=shared_cpu_options("onnxruntime")),
        ),
        ("torch eager fp32", lambda: load_model(backend="torch")),
        ("torch eager fp32 channels_last", lambda: load_model(backend="torch", options=TorchOptions(channels_last=True))),
        ("TorchScript (frozen) fp32", lambda: load_model(backend="torch", options=TorchOptions(torchscript="freeze"))),
    ]  # fmt: skip
    openvino = importlib.util.find_spec("openvino") is not None
    if openvino:
        backends += [
            ("OpenVINO fp32, the official file", lambda: load_model(backend="openvino")),
            (f"OpenVINO fp32, the official file, {whole}", lambda: load_model(backend="openvino", options=OpenVinoOptions(fused_refiner=False))),
            ("OpenVINO fp32, our export", lambda: load_model(backend="openvino", weights=imported_official_weights())),
        ]  # fmt: skip
    if cpu_has_bf16():
        if openvino:
            backends.append(
                (
                    "OpenVINO bf16 (breaks the matte: pha error up to 1.0)",
                    lambda: load_model(backend="openvino", precision="bf16"),
                )
            )
        backends.append(("torch eager bf16", lambda: load_model(backend="torch", precision="bf16")))
    return backends


_AUTO_ROW = {  # the row of what load_model(backend="auto") loads, for the backend it picks
    "openvino": "OpenVINO fp32, the official file",
    "onnxruntime": "onnxruntime, the official file",
}


def _configs(size: _Size) -> list[tuple[str, Callable[[_Frames], Runner]]]:
    from rvm_node.engine.backend import fastest_parity_backend

    default = fastest_parity_backend("cpu")
    configs: list[tuple[str, Callable[[_Frames], Runner]]] = [
        (REFERENCE, lambda frames: _official_runner(size, frames))
    ]
    for name, factory in _backends():
        marked = f"{name} (what --backend auto runs here)" if name == _AUTO_ROW[default] else name
        configs.append((f"{marked}: alpha, uint16", _session_runner(factory, size, ALPHA)))
        configs.append((f"{marked}: alpha + foreground, float32", _session_runner(factory, size, BOTH)))
        if name == _AUTO_ROW[default]:
            ceiling = f"{name}: the network alone at the small size, ratio 1 (the ceiling of any full-resolution stage)"
            configs.append((ceiling, _network_runner(factory, size)))
        if name == _AUTO_ROW["onnxruntime"] and fullres.compiled_kernels() is not None:
            numpy_row = (
                f"{name}, numpy full-resolution stage (the Blender extension's default engine): alpha, uint16"
            )
            configs.append((numpy_row, _session_runner(factory, size, ALPHA, numpy_stage=True)))
    return configs + _static_configs(size)


def _timed(run: Runner, indices: range) -> float:
    start = time.perf_counter()
    inside: list[float | None] = [run(index) for index in indices]
    if all(took is not None for took in inside):  # the runner timed its frames itself (subprocess rows)
        return len(indices) / sum(t for t in inside if t is not None)
    return len(indices) / (time.perf_counter() - start)


def run_engine_bench(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0 or args.rounds < 1:
        raise InvalidInputError("--frames and --rounds must be >= 1 and --warmup >= 0")
    sizes = _parse_sizes(args.sizes)
    only = [word.strip() for word in (args.only or "").split(",") if word.strip()]
    results: dict[str, dict[str, float]] = {}
    stage_rows: list[list[str]] = []
    for size in sizes:
        frames = _Frames.random(args.warmup + args.frames, size)
        runners: dict[str, Runner] = {}
        chosen = [
            (n, m) for n, m in _configs(size) if n == REFERENCE or not only or any(w in n for w in only)
        ]
        for name, make in chosen:  # each made and warmed up once, before any timing
            runners[name] = make(frames)
            for index in range(args.warmup):
                runners[name](index)
        rates: dict[str, list[float]] = {name: [] for name in runners}
        timed = range(args.warmup, args.warmup + args.frames)
        for _ in range(args.rounds):  # A, B, C, ..., A, B, C: the machine's noise falls on every row
            for name, run in runners.items():
                rates[name].append(_timed(run, timed))
        for name, values in rates.items():
            fps = statistics.median(values)
            results.setdefault(name, {})[size.label] = fps
            print(f"  {size.label:22} {name:44} {fps:7.2f} frames/s (median of {args.rounds})", flush=True)
        stage_rows += _stage_rows(size, frames, args.rounds)
    reference = results[REFERENCE]
    print()
    print(f"Machine: {machine()}")
    header = ["configuration"] + [s.label for s in sizes]
    rows = [
        [name]
        + [
            f"{fps[s.label]:.2f} ({fps[s.label] / reference[s.label]:.2f}x)" if s.label in fps else "—"
            for s in sizes
        ]
        for name, fps in results.items()
    ]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print()
    print(
        "The full-resolution stage alone (rvm_node.engine.fullres, "
        f"{'compiled loops' if fullres.compiled_kernels() is not None else 'numpy: numba is not installed'}): "
        "the resize down and the planes from the network's coefficients, against the least memory it must "
        "move (the frame read once, the planes written once) at this machine's copy bandwidth."
    )
    markdown(
        ["size", "planes", "stage ms/frame", "floor ms/frame (bytes at copy bandwidth)", "vs floor"],
        stage_rows,
    )
    return 0


def _copy_bandwidth(rounds: int) -> float:
    """Bytes a second a large copy moves here (read and written, counted both), the median of ``rounds``."""
    source = np.random.default_rng(1).integers(0, 256, 256 << 20, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # paged in
    seconds = []
    for _ in range(max(3, rounds)):
        start = time.perf_counter()
        np.copyto(target, source)
        seconds.append(time.perf_counter() - start)
    return 2 * source.nbytes / statistics.median(seconds)


def _stage_rows(size: _Size, frames: _Frames, rounds: int) -> list[list[str]]:
    """The full-resolution stage at ``size``, alpha alone and alpha + foreground, against its floor."""
    h, w = fullres.small_size(size.height, size.width, size.ratio)
    rng = np.random.default_rng(2)
    a, b = (rng.random((4, h, w), dtype=np.float32) for _ in "ab")
    bandwidth = _copy_bandwidth(rounds)
    rows = []
    for label, outputs in (("alpha, uint16", ALPHA), ("alpha + foreground, float32", BOTH)):
        frame = frames.decoded[0, 0]
        fullres.finish(frame, a, b, outputs)  # compiled, paged in
        seconds = []
        for _ in range(max(5, rounds)):
            start = time.perf_counter()
            fullres.downsample(frame, size.ratio)
            fullres.finish(frame, a, b, outputs)
            seconds.append(time.perf_counter() - start)
        took = statistics.median(seconds)
        floor = fullres.floor_bytes(size.height, size.width, frame.dtype, outputs) / bandwidth
        rows.append([size.label, label, f"{took * 1000:.2f}", f"{floor * 1000:.2f}", f"{took / floor:.2f}x"])
    return rows
