"""CoreML export end to end: the real CLI, the real coremltools toolchain, real weights and frames.

CoreML cannot predict on Linux, so the saved ``.mlpackage`` is checked by
evaluating its ML Program with numpy (``rvm_node/engine/exporters/coreml_eval.py``,
run in the toolchain): read back from disk through coremltools' own loader,
over a real clip with the recurrent state carried, against the official ONNX
in onnxruntime. The check is shown to catch a corrupted weight and to refuse
an op it does not implement. The toolchain is required (CI installs it with
scripts/setup-export-tools): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rvm_node.engine import exporters
from rvm_node.engine.states import state_shapes
from rvm_node.engine.toolchains import toolchain_python
from rvm_node.errors import MissingToolError
from tests.helpers import per_frame_max, run_rvm_node

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

EVALUATOR = Path(exporters.__file__).with_name("coreml_eval.py")
FRAMES = 24  # at least 20, state carried
FP32_BOUND = 1e-4
FP16_BOUND = 5e-2
STATES = ("r1", "r2", "r3", "r4")


def coreml_python() -> Path:
    try:
        return toolchain_python("coreml", purpose="the CoreML export tests")
    except MissingToolError as error:
        pytest.fail(f"{error} (the CoreML tests need it; CI installs it with scripts/setup-export-tools)")


def evaluator(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``coreml_eval.py ARGS`` with the toolchain's Python."""
    done = subprocess.run(
        [str(coreml_python()), str(EVALUATOR), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr.strip().splitlines()[-1:] or done.returncode
    return done


def export(folder: Path, size: str, ratio: float, precision: str = "fp32") -> Path:
    coreml_python()  # fail clearly before the CLI says the same in its own words
    done = run_rvm_node(
        "export",
        "--format",
        "coreml",
        "--size",
        size,
        "--downsample-ratio",
        f"{ratio:g}",
        "--precision",
        precision,
        "--output",
        str(folder),
        timeout=900,
    )
    package = Path(done.stdout.strip().splitlines()[-1])
    assert package == folder / f"rvm_mobilenetv3_{size}_r{ratio:g}_{precision}.mlpackage"
    assert (package / "Manifest.json").is_file()
    return package


def evaluate(package: Path, frames: np.ndarray, folder: Path, *extra: str) -> dict[str, np.ndarray]:
    """The package's ML Program evaluated over ``frames`` (float32 ``[T, 3, H, W]``), state carried."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "frames.npy", frames)
    done = evaluator(
        "run",
        str(package),
        "--frames",
        str(folder / "frames.npy"),
        "--output",
        str(folder / "out.npz"),
        *extra,
    )
    print(f"\n{package.name}: {done.stdout.strip()}")
    with np.load(folder / "out.npz") as results:
        return {name: results[name] for name in results.files}


def official(
    path: Path, frames: np.ndarray, ratio: float, first: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The official ONNX in onnxruntime over float frames, state carried from ``first`` (default
    ``[1, 1, 1, 1]`` zeros, as the official guide runs it)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    states = first if first is not None else [np.zeros([1, 1, 1, 1], np.float32)] * 4
    fgrs, phas = [], []
    for frame in frames:
        feeds = {f"{r}i": s for r, s in zip(STATES, states, strict=True)}
        feeds.update(src=frame[None], downsample_ratio=np.asarray([ratio], np.float32))
        fgr, pha, *states = session.run(None, feeds)
        fgrs.append(fgr)
        phas.append(pha)
    return np.concatenate(fgrs), np.concatenate(phas)


def errors(results: dict[str, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Max-abs error of (pha, fgr) over all frames."""
    fgr, pha = (results[k].astype(np.float32) for k in ("fgr", "pha"))
    return float(per_frame_max(pha, reference[1]).max()), float(per_frame_max(fgr, reference[0]).max())


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("coreml")
    return {precision: export(folder, "176x144", 0.5, precision) for precision in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def frames(clip_frames: np.ndarray) -> np.ndarray:
    return clip_frames[:FRAMES].astype(np.float32) / 255


@pytest.fixture(scope="module")
def reference(official_onnx: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return official(official_onnx, frames, 0.5)


def describe(package: Path) -> dict[str, Any]:
    described: dict[str, Any] = json.loads(evaluator("describe", str(package)).stdout)
    return described


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_coreml_interface_and_metadata(packages: dict[str, Path], precision: str) -> None:
    package = packages[precision]
    sidecar = json.loads(package.with_name(f"{package.name}.json").read_text())
    assert sidecar["format"] == "coreml" and sidecar["layout"] == "NCHW" and sidecar["precision"] == precision
    states = state_shapes("mobilenetv3", (144, 176), 0.5)[0]
    described = describe(package)
    assert described["specification_version"] >= 7  # iOS 16 ML Program
    inputs = {f["name"]: f for f in described["inputs"]}
    outputs = {f["name"]: f for f in described["outputs"]}
    assert list(inputs) == ["src", "r1i", "r2i", "r3i", "r4i"]
    assert list(outputs) == ["fgr", "pha", "r1o", "r2o", "r3o", "r4o"]
    assert inputs["src"]["shape"] == [1, 3, 144, 176] and not inputs["src"]["optional"]
    assert outputs["fgr"]["shape"] == [1, 3, 144, 176] and outputs["pha"]["shape"] == [1, 1, 144, 176]
    for r, shape in zip(STATES, states, strict=True):
        # the states are optional, zeros by default: the first frame may be run with src alone
        assert inputs[f"{r}i"] | {"description": ""} == {
            "name": f"{r}i",
            "shape": list(shape),
            "dtype": "FLOAT32",
            "optional": True,
            "default": 0.0,
            "description": "",
        }
        assert outputs[f"{r}o"]["shape"] == list(shape)
    assert {f["dtype"] for f in inputs.values()} == {"FLOAT32"}
    assert {f["dtype"] for f in outputs.values()} == {"FLOAT32" if precision == "fp32" else "FLOAT16"}
    assert {name: list(f["shape"]) for name, f in inputs.items()} == sidecar["inputs"]
    assert {name: list(f["shape"]) for name, f in outputs.items()} == sidecar["outputs"]
    metadata = described["metadata"]
    assert {k: metadata[k] for k in ("variant", "size", "downsample_ratio", "precision", "layout")} == {
        "variant": "mobilenetv3",
        "size": "176x144",
        "downsample_ratio": "0.5",
        "precision": precision,
        "layout": "NCHW",
    }
    assert metadata["rvm_node"] == sidecar["rvm_node"]
    assert json.loads(metadata["inputs"]) == sidecar["inputs"]
    assert json.loads(metadata["outputs"]) == sidecar["outputs"]
    assert "176x144" in described["short_description"] and precision in described["short_description"]
    assert described["author"].startswith("rvm-node ")
    assert described["ops"]["conv"] > 50
    assert ("cast" in described["ops"]) == (precision == "fp16")


def test_coreml_fp32_matches_official_onnx(
    packages: dict[str, Path], frames: np.ndarray, reference: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    started = time.perf_counter()
    results = evaluate(packages["fp32"], frames, tmp_path / "defaults")
    pha, fgr = errors(results, reference)
    print(
        f"CoreML fp32 176x144 r0.5 vs official ONNX, {len(frames)} frames: pha {pha:.2e}, fgr {fgr:.2e} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    assert pha <= FP32_BOUND and fgr <= FP32_BOUND
    assert results["fgr"].dtype == np.float32 and results["pha"].shape == (len(frames), 1, 144, 176)
    # explicit full-shape zeros on the first frame give exactly what the declared defaults give
    zeros = evaluate(packages["fp32"], frames[:3], tmp_path / "zeros", "--zero-states")
    defaults = evaluate(packages["fp32"], frames[:3], tmp_path / "defaults3")
    for name in ("fgr", "pha", "r1o", "r2o", "r3o", "r4o"):
        assert np.array_equal(zeros[name], defaults[name]), name


def test_coreml_fp16_matches_official_onnx(
    packages: dict[str, Path], frames: np.ndarray, reference: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    started = time.perf_counter()
    results = evaluate(packages["fp16"], frames, tmp_path)
    assert results["fgr"].dtype == np.float16  # the program computes and returns float16
    pha, fgr = errors(results, reference)
    print(
        f"CoreML fp16 176x144 r0.5 vs official ONNX, {len(frames)} frames: pha {pha:.2e}, fgr {fgr:.2e} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    assert pha <= FP16_BOUND and fgr <= FP16_BOUND
    assert pha > 1e-4  # it really ran in float16


def test_coreml_1080p_quarter_ratio_matches_official_onnx(
    official_onnx: Path, frames: np.ndarray, tmp_path: Path
) -> None:
    import torch

    started = time.perf_counter()
    package = export(tmp_path, "1920x1080", 0.25)
    exported = time.perf_counter()
    with torch.no_grad():
        upscaled = torch.nn.functional.interpolate(
            torch.from_numpy(frames[:20]), size=(1080, 1920), mode="bilinear", align_corners=False
        )
    big = upscaled.clamp(0, 1).numpy()
    results = evaluate(package, big, tmp_path / "eval")
    evaluated = time.perf_counter()
    pha, fgr = errors(results, official(official_onnx, big, 0.25))
    print(
        f"CoreML fp32 1920x1080 r0.25 vs official ONNX, {len(big)} frames: pha {pha:.2e}, fgr {fgr:.2e} "
        f"(export {exported - started:.0f} s, evaluation {evaluated - exported:.0f} s)"
    )
    assert pha <= FP32_BOUND and fgr <= FP32_BOUND


def test_the_check_catches_a_corrupted_weight(
    packages: dict[str, Path], frames: np.ndarray, reference: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    corrupt = tmp_path / packages["fp32"].name
    shutil.copytree(packages["fp32"], corrupt)
    weights = [json.loads(line) for line in evaluator("weights", str(corrupt)).stdout.splitlines()]
    convs = [w for w in weights if "conv.weight" in w["consumers"] and len(w["shape"]) == 4]
    assert len(convs) > 50 and all(Path(w["file"]).is_relative_to(corrupt) for w in convs)
    (target,) = [w for w in convs if w["shape"][1] == 3]  # the first conv, on the RGB frame: [16, 3, 3, 3]
    blob = Path(target["file"])
    data = bytearray(blob.read_bytes())
    for i in range(27):  # flip the sign of one of its 16 filters (27 float32 values, little-endian)
        data[target["data_offset"] + 4 * i + 3] ^= 0x80
    blob.write_bytes(bytes(data))
    pha, fgr = errors(evaluate(corrupt, frames, tmp_path / "eval"), reference)
    print(
        f"corrupted {target['name']} {target['shape']}: pha {pha:.2e}, fgr {fgr:.2e} (bound {FP32_BOUND:g})"
    )
    assert max(pha, fgr) > 100 * FP32_BOUND


UNKNOWN_OP_PROGRAM = """
import sys
import numpy as np
import coremltools as ct
from coremltools.converters.mil import Builder as mb

@mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
def program(x):
    return mb.erf(x=mb.relu(x=x), name="y")

ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16).save(sys.argv[1])
"""


def test_the_evaluator_refuses_an_op_it_does_not_know(tmp_path: Path) -> None:
    package = tmp_path / "erf.mlpackage"
    subprocess.run(
        [str(coreml_python()), "-c", UNKNOWN_OP_PROGRAM, str(package)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 4), np.float32))
    for args in (
        ["describe", str(package)],
        ["run", str(package), "--frames", str(tmp_path / "x.npy"), "--output", str(tmp_path / "out.npz")],
    ):
        done = evaluator(*args, check=False)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("coreml_eval: unsupported op type 'erf' (op "), lines[-1:]
        assert "this evaluator implements " in lines[-1] and "conv" in lines[-1]
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_official_onnx_full_shape_zero_states_equal_unit_zeros(
    official_onnx: Path, clip_frames: np.ndarray, clip_frames_2x: np.ndarray, ratio: float
) -> None:
    """What the static exports rely on: full-shape zero states on the first frame are ``[1, 1, 1, 1]`` zeros."""
    source = clip_frames if ratio == 0.5 else clip_frames_2x  # 0.25 needs 288 px for 64 on the short side
    frames = source[:6].astype(np.float32) / 255
    shapes = state_shapes("mobilenetv3", frames.shape[2:], ratio)[0]
    full = official(official_onnx, frames, ratio, [np.zeros(s, np.float32) for s in shapes])
    unit = official(official_onnx, frames, ratio)
    same = all(np.array_equal(a, b) for a, b in zip(full, unit, strict=True))
    largest = max(float(np.abs(a - b).max()) for a, b in zip(full, unit, strict=True))
    print(
        f"\nofficial ONNX @ {ratio}, {len(frames)} frames: full-shape vs [1,1,1,1] zeros "
        f"{'bit-identical' if same else f'max-abs {largest:.1e}'}"
    )
    assert same or largest <= 1e-7
