"""``rvm-node bench engine``: tensor throughput, side by side, in one run.

Each configuration runs the same frames through its own session, one frame
per call with the state carried, after a few warm-up frames; the
configurations take turns, round after round (A, B, C, A, B, C, ...), and the
median of the rounds is reported, so the machine's noise falls on every row
alike. The official
ONNX runs in a plain ``onnxruntime.InferenceSession`` with default settings,
as the official inference code runs it; the other rows run through our
backends. Ratios are against that official row at the same size, which
``--only`` always keeps.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rvm_node.bench.common import (
    machine,
    parse_one_size,
)
from rvm_node.errors import InvalidInputError

__all__ = ["run_engine_bench"]


Runner = Callable[[np.ndarray], None]
REFERENCE = "official ONNX, onnxruntime (reference)"


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


def _official_runner(size: _Size) -> Runner:
    import onnxruntime as ort

    from rvm_node.engine.weights import official_path

    session = ort.InferenceSession(str(official_path()), providers=["CPUExecutionProvider"])
    rec = [np.zeros([1, 1, 1, 1], np.float32)] * 4
    ratio = np.asarray([size.ratio], np.float32)

    def run(frame: np.ndarray) -> None:
        nonlocal rec
        out = session.run(
            None,
            {
                "src": frame,
                "r1i": rec[0],
                "r2i": rec[1],
                "r3i": rec[2],
                "r4i": rec[3],
                "downsample_ratio": ratio,
            },
        )
        rec = out[2:]

    return run


def _session_runner(factory: Callable[[], object], size: _Size) -> Callable[[], Runner]:
    def make() -> Runner:
        backend = factory()
        session = backend.new_session(size.ratio)  # type: ignore[attr-defined]

        def run(frame: np.ndarray) -> None:
            session.process(frame)

        return run

    return make


def _configs(size: _Size) -> list[tuple[str, Callable[[], Runner]]]:
    from rvm_node.engine.loader import load_model, shared_cpu_options
    from rvm_node.engine.torch_backend import TorchOptions, cpu_has_bf16

    configs: list[tuple[str, Callable[[], Runner]]] = [
        (REFERENCE, lambda: _official_runner(size)),
        ("our ONNX export, onnxruntime", _session_runner(lambda: load_model(backend="onnxruntime"), size)),
        (
            "our ONNX export, onnxruntime, no spinning (node and converter options)",
            _session_runner(
                lambda: load_model(backend="onnxruntime", options=shared_cpu_options("onnxruntime")), size
            ),
        ),
        ("torch eager fp32", _session_runner(lambda: load_model(backend="torch"), size)),
        (
            "torch eager fp32 channels_last",
            _session_runner(
                lambda: load_model(backend="torch", options=TorchOptions(channels_last=True)), size
            ),
        ),
        (
            "TorchScript (frozen) fp32",
            _session_runner(
                lambda: load_model(backend="torch", options=TorchOptions(torchscript="freeze")), size
            ),
        ),
    ]
    openvino = importlib.util.find_spec("openvino") is not None
    if openvino:
        configs.append(
            (
                "OpenVINO fp32 (static shapes, ratio frozen)",
                _session_runner(lambda: load_model(backend="openvino"), size),
            )
        )
    if cpu_has_bf16():
        if openvino:
            configs.append(
                (
                    "OpenVINO bf16, whole model (breaks the matte: pha error up to 1.0)",
                    _session_runner(lambda: load_model(backend="openvino", precision="bf16"), size),
                )
            )
        configs += [
            (
                "torch eager bf16",
                _session_runner(lambda: load_model(backend="torch", precision="bf16"), size),
            ),
            (
                "torch eager bf16 channels_last",
                _session_runner(
                    lambda: load_model(
                        backend="torch", precision="bf16", options=TorchOptions(channels_last=True)
                    ),
                    size,
                ),
            ),
        ]
    return configs


def _timed(run: Runner, frames: np.ndarray) -> float:
    start = time.perf_counter()
    for frame in frames:
        run(frame)
    return len(frames) / (time.perf_counter() - start)


def run_engine_bench(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0 or args.rounds < 1:
        raise InvalidInputError("--frames and --rounds must be >= 1 and --warmup >= 0")
    sizes = _parse_sizes(args.sizes)
    only = [word.strip() for word in (args.only or "").split(",") if word.strip()]
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    for size in sizes:
        frames = rng.random((args.warmup + args.frames, 1, 3, size.height, size.width), dtype=np.float32)
        runners: dict[str, Runner] = {}
        chosen = [
            (n, m) for n, m in _configs(size) if n == REFERENCE or not only or any(w in n for w in only)
        ]
        for name, make in chosen:  # each made and warmed up once, before any timing
            runners[name] = make()
            for frame in frames[: args.warmup]:
                runners[name](frame)
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):  # A, B, C, ..., A, B, C: the machine's noise falls on every row
            for name, run in runners.items():
                rates[name].append(_timed(run, frames[args.warmup :]))
        for name, values in rates.items():
            fps = statistics.median(values)
            results.setdefault(name, {})[size.label] = fps
            print(f"  {size.label:22} {name:44} {fps:7.2f} frames/s (median of {args.rounds})", flush=True)
    reference = results[REFERENCE]
    print()
    print(f"Machine: {machine()}")
    header = ["configuration"] + [s.label for s in sizes]
    rows = [
        [name] + [f"{fps[s.label]:.2f} ({fps[s.label] / reference[s.label]:.2f}x)" for s in sizes]
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
    return 0
