"""GPU paths: fp16, onnxruntime I/O binding on the device, device-side sample conversion and batching.

These need a CUDA device and run with ``RVM_NODE_TEST_DEVICE=cuda`` (``scripts/gpu-check`` does
that); elsewhere they skip. Parity is against CPU fp32: alpha within 1e-2 for fp16, 1e-4 for fp32.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest

from rvm_node import load_model
from rvm_node.engine.samples import OutputSpec, to_samples
from rvm_node.node.scheduler import BatchPolicy, Scheduler

DEVICE = os.environ.get("RVM_NODE_TEST_DEVICE", "cpu")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not DEVICE.startswith("cuda"), reason="needs a CUDA device: run with RVM_NODE_TEST_DEVICE=cuda"
    ),
]
RATIO = 0.5


@pytest.fixture(scope="module")
def reference() -> Any:
    return load_model(backend="onnxruntime", device="cpu")


def alpha_of(backend: Any, frames: np.ndarray, spec: OutputSpec | None = None) -> np.ndarray:
    session = backend.new_session(RATIO, spec)
    return np.concatenate([session.process(frames[t : t + 1]).pha for t in range(len(frames))])


@pytest.mark.parametrize(
    ("backend", "precision", "tolerance"),
    [("torch", "fp32", 1e-4), ("torch", "fp16", 1e-2), ("onnxruntime", "fp32", 1e-4)],
)
def test_gpu_matches_cpu_fp32(
    reference: Any, clip_frames: np.ndarray, backend: str, precision: str, tolerance: float
) -> None:
    gpu = load_model(backend=backend, device=DEVICE, precision=precision)
    diff = float(np.abs(alpha_of(gpu, clip_frames[:12]) - alpha_of(reference, clip_frames[:12])).max())
    print(f"\n{backend} {precision} on {DEVICE} vs cpu fp32: alpha max {diff:.2e}")
    assert diff <= tolerance


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("fmt", ["uint8", "uint16", "float16"])
def test_device_side_conversion_equals_the_host_rule(clip_frames: np.ndarray, backend: str, fmt: str) -> None:
    gpu = load_model(backend=backend, device=DEVICE)
    assert gpu.prepare(clip_frames[:1]).dtype == np.uint8  # frames go to the device as they arrived
    on_device = alpha_of(gpu, clip_frames[:4], OutputSpec(foreground=False, sample_format=fmt))  # type: ignore[arg-type]
    on_host = to_samples(alpha_of(gpu, clip_frames[:4]), fmt)  # type: ignore[arg-type]
    assert on_device.dtype == np.dtype(fmt)
    if backend == "torch":  # one model: the same numbers to the bit
        assert np.array_equal(on_device, on_host)
    else:  # two onnxruntime sessions may pick different convolution algorithms: one step at most
        step = 1.0 if fmt != "float16" else 1e-3
        assert float(np.abs(on_device.astype(np.float64) - on_host.astype(np.float64)).max()) <= step


def test_batching_on_the_gpu_equals_each_stream_alone(clip_frames: np.ndarray) -> None:
    gpu = load_model(backend="torch", device=DEVICE)
    scheduler = Scheduler(gpu, policy=BatchPolicy(max_batch=4, delay=0.2))
    clips = [clip_frames[i * 8 : i * 8 + 8] for i in range(4)]
    sessions = [gpu.new_session(RATIO) for _ in clips]

    async def shot() -> list[np.ndarray]:
        out: list[list[np.ndarray]] = [[] for _ in clips]
        for t in range(8):
            results = await asyncio.gather(
                *(scheduler.process(s, c[t : t + 1]) for s, c in zip(sessions, clips, strict=True))
            )
            for i, result in enumerate(results):
                out[i].append(result.pha)
        return [np.concatenate(o) for o in out]

    try:
        batched = asyncio.run(shot())
    finally:
        scheduler.close()
    assert scheduler.batched_chunks > scheduler.batches  # passes were shared
    for clip, result in zip(clips, batched, strict=True):
        assert float(np.abs(result - alpha_of(gpu, clip)).max()) <= 1e-4
