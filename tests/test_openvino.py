"""The OpenVINO backend against the official ONNX model: parity, its compiled-model cache, snapshots that
move between backends, a node serving it, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rvm_node import load_model
from rvm_node.client import NodeClient
from rvm_node.engine.backend import fastest_parity_backend
from rvm_node.engine.loader import imported_official_weights
from rvm_node.engine.openvino_backend import OpenVinoBackend, OpenVinoOptions
from rvm_node.engine.samples import OutputSpec
from rvm_node.errors import (
    BackendUnavailableError,
    InvalidInputError,
    ResolutionChangedError,
    UnsupportedPrecisionError,
)
from tests.node_support import NodeThread, frames_of

pytestmark = pytest.mark.slow  # the real model

TOLERANCE = 2e-4  # fp32 against the official ONNX in onnxruntime
BF16_MEAN = 1e-2  # bf16: mean alpha error up to 1e-2 measured (the README), single pixels off by up to 1


@pytest.fixture(scope="module")
def openvino(official_onnx: Path) -> Any:
    return load_model(backend="openvino", weights=official_onnx, options=OpenVinoOptions(max_compiled=8))


@pytest.fixture(scope="module")
def official(official_onnx: Path) -> Any:
    return load_model(backend="onnxruntime", weights=official_onnx)


def _run(backend: Any, frames: np.ndarray, ratio: float, chunk: int = 3) -> tuple[np.ndarray, np.ndarray]:
    session = backend.new_session(ratio)
    outs = [session.process(frames[t : t + chunk]) for t in range(0, len(frames), chunk)]
    return np.concatenate([o.fgr for o in outs]), np.concatenate([o.pha for o in outs])


def _assert_parity(backend: Any, official: Any, frames: np.ndarray, ratio: float, what: str) -> None:
    fgr, pha = _run(backend, frames, ratio)
    ref_fgr, ref_pha = _run(official, frames, ratio)
    worst = max(float(np.abs(pha - ref_pha).max()), float(np.abs(fgr - ref_fgr).max()))
    print(f"\n{what} vs official ONNX at ratio {ratio}, {len(frames)} frames: max-abs {worst:.2e}")
    assert worst <= TOLERANCE


@pytest.mark.parametrize("ratio", [0.5, 0.37, 1.0])  # two ratios below 1, and 1 (the refiner rule)
def test_openvino_equals_the_official_onnx(
    openvino: Any, official: Any, clip_frames: np.ndarray, ratio: float
) -> None:
    _assert_parity(openvino, official, clip_frames[:30], ratio, "openvino fp32 (the official file)")


def test_streams_of_different_sizes_share_the_backend(
    openvino: Any, clip_frames: np.ndarray, clip_frames_2x: np.ndarray
) -> None:
    alone_small = _run(openvino, clip_frames[:6], 0.5)[1]
    alone_large = _run(openvino, clip_frames_2x[:6], 0.25)[1]
    small, large = openvino.new_session(0.5), openvino.new_session(0.25)
    mixed_small, mixed_large = [], []
    for t in range(0, 6, 2):  # interleaved on one backend
        mixed_small.append(small.process(clip_frames[t : t + 2]).pha)
        mixed_large.append(large.process(clip_frames_2x[t : t + 2]).pha)
    assert np.array_equal(np.concatenate(mixed_small), alone_small)
    assert np.array_equal(np.concatenate(mixed_large), alone_large)
    # 176x144 at 0.5 and 352x288 at 0.25 both run at 88x72: one compiled small-resolution model serves both.
    assert ("small", (1, 3, 72, 88)) in openvino._compiled
    assert not [k for k in openvino._compiled if k[0] != "small" and k[1] != 1.0]


def test_the_compiled_model_cache_is_bounded(official_onnx: Path, clip_frames: np.ndarray) -> None:
    backend = load_model(backend="openvino", weights=official_onnx, options=OpenVinoOptions(max_compiled=2))
    for ratio in (0.5, 0.4, 0.3):  # small sizes 88x72, 70x57, 52x43
        backend.new_session(ratio).process(clip_frames[:1])
    assert list(backend._compiled) == [("small", (1, 3, 57, 70)), ("small", (1, 3, 43, 52))]
    assert len(backend.compile_seconds) == 3


@pytest.mark.parametrize(("first", "second"), [("openvino", "onnxruntime"), ("onnxruntime", "openvino")])
def test_a_snapshot_moves_between_backends(
    openvino: Any, official: Any, clip_frames: np.ndarray, first: str, second: str
) -> None:
    backends = {"openvino": openvino, "onnxruntime": official}
    whole = _run(official, clip_frames[:12], 0.5)[1]
    head = backends[first].new_session(0.5)
    before = head.process(clip_frames[:6]).pha
    tail = backends[second].new_session()
    tail.restore(head.snapshot())
    after = tail.process(clip_frames[6:12]).pha
    assert float(np.abs(np.concatenate([before, after]) - whole).max()) <= TOLERANCE


def test_a_node_serving_openvino_equals_the_backend_alone(openvino: Any, clip_frames: np.ndarray) -> None:
    node = NodeThread(openvino)
    try:
        frames = frames_of(clip_frames, 6)
        with NodeClient(node.address) as client:
            assert client.info().backend == "openvino"
            with client.open_stream(width=176, height=144, downsample_ratio=0.5, output_format="uint16") as s:
                served = np.stack([r.alpha for r in s.process(frames)])
        expected = openvino.new_session(0.5, OutputSpec(False, "uint16")).process(clip_frames[:6]).pha[:, 0]
        assert np.array_equal(served, expected)
    finally:
        node.stop()


def test_openvino_and_onnxruntime_live_in_one_environment(openvino: Any, official: Any) -> None:
    import onnxruntime
    import openvino as ov

    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
    assert "CPU" in ov.Core().available_devices
    assert openvino.describe()["backend"] == "openvino" and official.describe()["backend"] == "onnxruntime"


def test_bad_input(
    openvino: Any,
    official_onnx: Path,
    clip_frames: np.ndarray,
    clip_frames_2x: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = openvino.new_session(0.5)
    session.process(clip_frames[:1])
    with pytest.raises(ResolutionChangedError, match="call reset"):
        session.process(clip_frames_2x[:1])
    with pytest.raises(InvalidInputError, match="openvino runs fp32 or bf16"):
        load_model(backend="openvino", weights=official_onnx, precision="fp16")
    with pytest.raises(BackendUnavailableError, match="runs on cpu"):
        load_model(backend="openvino", weights=official_onnx, device="cuda")
    with pytest.raises(InvalidInputError, match="hint: expected LATENCY or THROUGHPUT"):
        OpenVinoOptions(hint="FAST")  # type: ignore[arg-type]

    import openvino as ov

    class NoBf16Core(ov.Core):  # a stand-in for a CPU without bf16 units, which this machine may have
        def get_property(self, device: str, name: str) -> Any:
            if name == "OPTIMIZATION_CAPABILITIES":
                return ["FP32", "INT8"]
            return super().get_property(device, name)

    monkeypatch.setattr(ov, "Core", NoBf16Core)
    with pytest.raises(UnsupportedPrecisionError, match="this CPU has no bf16 units"):
        OpenVinoBackend(official_onnx, variant="mobilenetv3", precision="bf16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    with pytest.raises(BackendUnavailableError, match=r"pip install rvm-node\[openvino\]"):
        OpenVinoBackend(official_onnx, variant="mobilenetv3")


def test_convert_runs_on_openvino_from_the_command_line(tmp_path: Path) -> None:
    from rvm_node.example import example_clip
    from rvm_node.io.images import read_image
    from tests.helpers import run_rvm_node

    for backend in ("openvino", "onnxruntime"):
        run_rvm_node(
            "convert", "--backend", backend, "--input-source", str(example_clip()), "--frames", "1-4",
            "--downsample-ratio", "0.5", "--output-alpha", str(tmp_path / backend / "m.####.png"), "--quiet",
        )  # fmt: skip
    for n in range(1, 5):
        ours = read_image(tmp_path / "openvino" / f"m.{n:04d}.png").pixels.astype(np.int32)
        reference = read_image(tmp_path / "onnxruntime" / f"m.{n:04d}.png").pixels.astype(np.int32)
        assert np.abs(ours - reference).max() <= 1  # 16-bit levels: within the 2e-4 of parity


def test_auto_picks_the_fastest_parity_backend(official_onnx: Path) -> None:
    backend = load_model(backend="auto", weights=official_onnx)
    assert backend.name == "openvino" and backend.precision == "fp32"  # measured fastest on a CPU; never bf16
    assert fastest_parity_backend("cuda") == "onnxruntime"


def test_auto_without_openvino_is_onnxruntime() -> None:
    probe = "import sys; sys.modules['openvino'] = None; from rvm_node.engine.backend import fastest_parity_backend as f; print(f('cpu'))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "onnxruntime"


def test_our_export_on_openvino_equals_the_official_onnx(official: Any, clip_frames: np.ndarray) -> None:
    ours = load_model(backend="openvino", weights=imported_official_weights())  # our export of the weights
    _assert_parity(ours, official, clip_frames[:30], 0.37, "openvino fp32 (our export)")


def test_merged_resizes_change_no_bit(clip_frames: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    import rvm_node.engine.openvino_backend as module

    merged_away: list[int] = []
    merge = module.merge_resizes
    monkeypatch.setattr(
        module, "merge_resizes", lambda model: merged_away.append(merge(model)) or merged_away[-1]
    )
    whole = OpenVinoOptions(fused_refiner=False)  # the graph's own full-resolution resizes
    merged_backend = load_model(backend="openvino", options=whole)
    merged = _run(merged_backend, clip_frames[:8], 0.5)
    counts = {key: _interpolates(compiled) for key, compiled in merged_backend._compiled.items()}
    monkeypatch.setattr(module, "merge_resizes", lambda _model: 0)
    plain_backend = load_model(backend="openvino", options=whole)
    plain = _run(plain_backend, clip_frames[:8], 0.5)
    assert np.array_equal(merged[0], plain[0]) and np.array_equal(merged[1], plain[1])
    assert merged_away and min(merged_away) >= 1  # the refiner's resizes of A and b ran as one
    for (key, compiled), away in zip(plain_backend._compiled.items(), merged_away, strict=True):
        assert _interpolates(compiled) == counts[key] + away


def _interpolates(compiled: Any) -> int:
    ops = compiled.get_runtime_model().get_ordered_ops()
    return sum(str(op.get_rt_info()["layerType"].astype(str)) == "Interpolate" for op in ops)


def test_bf16_is_a_preview_within_its_stated_error(
    official_onnx: Path, official: Any, clip_frames: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    from rvm_node.engine.torch_backend import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units (the refusal is tested above)")
    with caplog.at_level("WARNING", logger="rvm_node.engine"):
        bf16 = load_model(backend="openvino", weights=official_onnx, precision="bf16")
    assert "bf16 is a preview mode" in caplog.text
    pha = _run(bf16, clip_frames[:30], 0.5)[1]
    error = np.abs(pha - _run(official, clip_frames[:30], 0.5)[1])
    print(f"\nopenvino bf16 vs official ONNX, 30 frames: pha mean {error.mean():.2e}, max {error.max():.2e}")
    assert error.mean() <= BF16_MEAN


_IMPORT_PROBE = """
import multiprocessing, pathlib, sys
{how}
print(int('openvino_telemetry' in sys.modules), int(pathlib.Path('intel').exists()), len(multiprocessing.active_children()))
"""


@pytest.mark.parametrize(
    ("how", "reports"),
    [
        ("import openvino", True),  # the control: OpenVINO on its own reports the import
        ("from rvm_node.engine.openvino_backend import import_openvino; import_openvino()", False),
    ],
)
def test_openvino_is_imported_without_its_usage_telemetry(tmp_path: Path, how: str, reports: bool) -> None:
    closed = "http://127.0.0.1:9"  # the control's report goes nowhere, even where there is a network
    env = {**os.environ, "HOME": str(tmp_path), "CI": "", "TF_BUILD": "", "JENKINS_URL": ""}
    env |= {"https_proxy": closed, "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE.format(how=how)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    telemetry_loaded, client_id_written, _ = (int(v) for v in out)
    assert bool(telemetry_loaded) is reports and bool(client_id_written) is reports
    if not reports:  # and nothing forked to send it
        assert out[2] == "0"
