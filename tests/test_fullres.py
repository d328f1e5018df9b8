"""The full-resolution stage (rvm_node.engine.fullres): the compiled loops and the numpy path give the same
numbers to the bit, and both are the official mathematics (the official file's bilinear Resize, run by
onnxruntime itself; the gray guide; the clamp) within float rounding, at every size: odd ones, one pixel
wide or high, tile and block edges, ratios whose small size rounds."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from rvm_node.engine import fullres
from rvm_node.engine.samples import OutputSpec, to_samples

SIZES = [  # (height, width, ratio)
    (144, 176, 0.5),
    (37, 53, 0.3),  # odd, the small size rounds down
    (17, 3, 0.4),  # one pixel wide at the small size
    (3, 97, 0.4),  # one pixel high at the small size
    (1, 9, 1.0),  # one pixel high
    (35, 70, 0.25),  # not a multiple of the tile (16 rows) or the block (8 rows)
    (270, 480, 0.25),
]
FORMATS = ["uint8", "uint16", "float16", "float32"]


@pytest.fixture(params=["numba", "numpy"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "numba" and fullres.compiled_kernels() is None:
        pytest.skip("numba is not installed here")
    monkeypatch.setenv(fullres.KERNELS_ENV, request.param)
    yield request.param


def _frame(height: int, width: int, dtype: str, seed: int = 0) -> np.ndarray:
    """A ``[3, H, W]`` frame as decoders give them: a view of ``H x W x 3`` samples."""
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        pixels = rng.random((height, width, 3), np.float32)
    else:
        pixels = rng.integers(0, np.iinfo(dtype).max + 1, (height, width, 3)).astype(dtype)
    return pixels.transpose(2, 0, 1)


def _coefficients(h: int, w: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 1.5, (4, h, w)).astype(np.float32), rng.uniform(-0.3, 0.7, (4, h, w)).astype(
        np.float32
    )


def _unit(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float64) / (np.iinfo(frame.dtype).max if frame.dtype.kind == "u" else 1.0)


def _onnx_resize(
    values: np.ndarray, *, ratio: float | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """``[C, H, W]`` float32 through the official file's Resize (linear, pytorch_half_pixel), in onnxruntime:
    by ``ratio`` (scales, as the frame is resized down) or to ``size`` (as the coefficients are lifted)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    by_scales = ratio is not None
    node = helper.make_node(
        "Resize",
        ["x", "", "scales"] if by_scales else ["x", "", "", "sizes"],
        ["y"],
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )
    constant = (
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, ratio, ratio])
        if by_scales
        else helper.make_tensor("sizes", TensorProto.INT64, [4], [1, values.shape[0], *(size or ())])
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [constant],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ascontiguousarray(values, np.float32)[None]})[0][0]


@pytest.mark.parametrize(("height", "width", "ratio"), SIZES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_the_resize_down_is_the_official_resize_from_the_samples_as_they_arrived(
    kernels: str, height: int, width: int, ratio: float, dtype: str
) -> None:
    frame = _frame(height, width, dtype)
    small = fullres.downsample(frame, ratio)
    assert small.dtype == np.float32 and small.shape == (3, *fullres.small_size(height, width, ratio))
    expected = _onnx_resize(_unit(frame), ratio=ratio)
    assert expected.shape == small.shape
    assert np.abs(small - expected).max() < 2e-6


@pytest.mark.parametrize(("height", "width", "ratio"), SIZES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("foreground", [False, True])
def test_the_planes_are_the_guided_filters_official_mathematics(
    kernels: str, height: int, width: int, ratio: float, dtype: str, foreground: bool
) -> None:
    frame = _frame(height, width, dtype)
    h, w = fullres.small_size(height, width, ratio)
    a, b = _coefficients(h, w)
    fgr, pha = fullres.finish(frame, a, b, OutputSpec(foreground, "float32"))
    up = _onnx_resize(np.concatenate([a, b]), size=(height, width)).astype(np.float64)
    src = _unit(frame)
    guide = np.concatenate([src, src.mean(0, keepdims=True)])
    refined = up[:4] * guide + up[4:]
    tolerance = 3e-5  # float32 rounding of a few operations on values up to ~2
    assert pha.shape == (1, height, width) and pha.dtype == np.float32
    assert np.abs(pha - np.clip(refined[3:], 0, 1)).max() < tolerance
    if foreground:
        assert fgr is not None and fgr.shape == (3, height, width)
        assert np.abs(fgr - np.clip(refined[:3] + src, 0, 1)).max() < tolerance
    else:
        assert fgr is None


@pytest.mark.parametrize(("height", "width", "ratio"), SIZES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_sample_format_is_the_one_quantisation_rule(
    kernels: str, height: int, width: int, ratio: float, fmt: str
) -> None:
    """Quantised in the pass, the samples equal the float planes put through to_samples."""
    frame = _frame(height, width, "uint8")
    a, b = _coefficients(*fullres.small_size(height, width, ratio))
    fgr, pha = fullres.finish(frame, a, b, OutputSpec(True, fmt))  # type: ignore[arg-type]
    fgr32, pha32 = fullres.finish(frame, a, b, OutputSpec(True, "float32"))
    assert fgr is not None and fgr32 is not None
    assert pha.dtype == np.dtype(fmt) and np.array_equal(pha, to_samples(pha32, fmt))  # type: ignore[arg-type]
    assert fgr.dtype == np.dtype(fmt) and np.array_equal(fgr, to_samples(fgr32, fmt))  # type: ignore[arg-type]
    assert fgr.transpose(1, 2, 0).flags.c_contiguous  # interleaved, as writers and the wire take it


@pytest.mark.parametrize(("height", "width", "ratio"), SIZES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "float32"])
def test_the_compiled_loops_and_numpy_give_the_same_numbers_to_the_bit(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int, ratio: float, dtype: str
) -> None:
    if fullres.compiled_kernels() is None:
        pytest.skip("numba is not installed here")
    frame = _frame(height, width, "float32" if dtype == "float16" else dtype).astype(dtype)
    results = {}
    for way in ("numba", "numpy"):
        monkeypatch.setenv(fullres.KERNELS_ENV, way)
        small = fullres.downsample(frame, ratio)
        a, b = _coefficients(*small.shape[1:])
        planes = [fullres.finish(frame, a, b, OutputSpec(fg, fmt)) for fg in (False, True) for fmt in FORMATS]  # type: ignore[arg-type]
        results[way] = (small, planes)
    small, planes = results["numba"]
    assert np.array_equal(small, results["numpy"][0])
    for (fgr, pha), (fgr2, pha2) in zip(planes, results["numpy"][1], strict=True):
        assert np.array_equal(pha, pha2)
        assert (fgr is None and fgr2 is None) or np.array_equal(fgr, fgr2)


def test_a_planar_frame_is_read_as_well_as_an_interleaved_one(kernels: str) -> None:
    interleaved = _frame(40, 60, "uint16")
    planar = np.ascontiguousarray(interleaved)  # [3, H, W] planes, as a float model's input would be
    a, b = _coefficients(*fullres.small_size(40, 60, 0.5))
    for spec in (OutputSpec(False, "uint16"), OutputSpec(True, "float32")):
        (f1, p1), (f2, p2) = (fullres.finish(f, a, b, spec) for f in (interleaved, planar))
        assert np.array_equal(p1, p2) and (f1 is None or np.array_equal(f1, f2))
    assert np.array_equal(fullres.downsample(interleaved, 0.5), fullres.downsample(planar, 0.5))


def test_the_least_memory_the_stage_can_move_is_the_frame_read_once_and_the_planes_written() -> None:
    assert fullres.floor_bytes(1080, 1920, np.dtype(np.uint8), OutputSpec(False, "uint16")) == 1920 * 1080 * 5
    assert fullres.floor_bytes(10, 10, np.dtype(np.uint16), OutputSpec(True, "float32")) == 100 * (6 + 16)
