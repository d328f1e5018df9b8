"""Sessions: chunking, batching, state snapshots, and every bad-input path."""

from __future__ import annotations

import numpy as np
import pytest

from rvm_node import (
    InvalidInputError,
    ResolutionChangedError,
    auto_downsample_ratio,
    load_model,
)
from rvm_node.engine.ratio import check_downsample_ratio
from tests.helpers import per_frame_max, run_frames

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

RATIO = 0.5


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def backend(request: pytest.FixtureRequest):
    return load_model("mobilenetv3", backend=request.param)


def test_chunk_of_12_equals_frame_by_frame(backend, clip_frames: np.ndarray) -> None:
    frames = clip_frames[:24]
    _, one = run_frames(backend, frames, RATIO, chunk=1)
    _, twelve = run_frames(backend, frames, RATIO, chunk=12)
    assert one.mean() > 0.1
    assert per_frame_max(one, twelve).max() <= 1e-4


def test_batch_of_two_clips_equals_each_alone(backend, clip_frames: np.ndarray) -> None:
    clip_a = clip_frames[:8]
    clip_b = clip_frames[::-1][:8].copy()  # the same shot played backwards: another clip
    _, alone_a = run_frames(backend, clip_a, RATIO)
    _, alone_b = run_frames(backend, clip_b, RATIO)
    session = backend.new_session(RATIO)
    batched = [session.process(np.stack([clip_a[t : t + 1], clip_b[t : t + 1]])).pha for t in range(8)]
    together = np.concatenate(batched, axis=1)  # [2, T, 1, H, W]
    assert per_frame_max(together[0], alone_a).max() <= 1e-4
    assert per_frame_max(together[1], alone_b).max() <= 1e-4
    assert per_frame_max(alone_a, alone_b).max() > 0.01  # the two clips differ


def test_snapshot_restore_continues_without_a_seam(clip_frames: np.ndarray) -> None:
    torch_backend = load_model(backend="torch")
    ort_backend = load_model(backend="onnxruntime")
    _, straight = run_frames(torch_backend, clip_frames[:16], RATIO)
    first = torch_backend.new_session(RATIO)
    first.process(clip_frames[:10])
    snapshot = first.snapshot()
    assert snapshot is not None and snapshot.frames == 10 and snapshot.frame_size == (144, 176)
    assert snapshot.r1.shape == (1, 16, 36, 44) and snapshot.r4.dtype == np.float32
    for target in (torch_backend, ort_backend):  # move the stream to another session and backend
        second = target.new_session()
        second.restore(snapshot)
        rest = second.process(clip_frames[10:16]).pha
        assert per_frame_max(rest, straight[10:]).max() <= 2e-4
        assert second.frames_processed == 16


def test_fresh_session_has_no_snapshot(backend) -> None:
    assert backend.new_session().snapshot() is None


def test_auto_ratio_is_official_rule() -> None:
    assert auto_downsample_ratio(1080, 1920) == pytest.approx(512 / 1920)
    assert auto_downsample_ratio(144, 176) == 1.0
    assert auto_downsample_ratio(2, 4097) == 0.5  # keeps the short side at one pixel
    session = load_model(backend="torch").new_session(None)
    assert session.ratio_for(720, 1280) == pytest.approx(0.4)


def test_resolution_change_is_an_error_until_reset(backend, clip_frames: np.ndarray) -> None:
    session = backend.new_session(RATIO)
    session.process(clip_frames[:1])
    with pytest.raises(ResolutionChangedError, match="call reset"):
        session.process(clip_frames[:1, :, :128, :128])
    session.reset()
    assert session.process(clip_frames[:1, :, :128, :128]).pha.shape == (1, 1, 128, 128)


def test_uint8_uint16_and_float_inputs_agree(backend, clip_frames: np.ndarray) -> None:
    frame = clip_frames[:1]
    as_u8 = backend.new_session(RATIO).process(frame).pha
    as_u16 = backend.new_session(RATIO).process(frame.astype(np.uint16) * 257).pha
    as_f32 = backend.new_session(RATIO).process(frame.astype(np.float32) / 255).pha
    assert per_frame_max(as_u8, as_u16).max() <= 1e-5
    assert per_frame_max(as_u8, as_f32).max() <= 1e-5


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((0, 3, 32, 32), np.float32), "at least one frame"),
        (np.zeros((1, 4, 32, 32), np.float32), "3 RGB channels"),
        (np.zeros((1, 1, 32, 32), np.float32), "3 RGB channels"),
        (np.zeros((32, 32, 3), np.float32), r"\[T, 3, H, W\]"),
        (np.zeros((1, 3, 32, 32), np.int32), "uint8, uint16, float16 or float32"),
        (np.zeros((1, 3, 32, 32), np.float64), "uint8, uint16, float16 or float32"),
    ],
)
def test_bad_frames_are_rejected(backend, frames: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        backend.new_session(RATIO).process(frames)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan"), float("inf"), "0.5", True])
def test_out_of_range_ratio_is_rejected(ratio: object) -> None:
    with pytest.raises(InvalidInputError, match=r"downsample_ratio: expected a number in \(0, 1\]"):
        check_downsample_ratio(ratio)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        load_model(backend="torch").new_session(ratio)  # type: ignore[arg-type]


def test_ratio_too_small_for_the_frame(backend) -> None:
    with pytest.raises(InvalidInputError, match="smaller than one pixel"):
        backend.new_session(0.01).process(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (2, 33)])
def test_tiny_and_odd_sizes_run(backend, size: tuple[int, int]) -> None:
    height, width = size
    out = backend.new_session(1.0).process(np.full((2, 3, height, width), 0.5, np.float32))
    assert out.pha.shape == (2, 1, height, width)
    assert np.isfinite(out.pha).all() and (out.pha >= 0).all() and (out.pha <= 1).all()


def test_restore_rejects_malformed_state(backend, clip_frames: np.ndarray) -> None:
    session = backend.new_session(RATIO)
    session.process(clip_frames[:1])
    snapshot = session.snapshot()
    assert snapshot is not None
    bad = type(snapshot)(
        snapshot.r1[0],
        snapshot.r2,
        snapshot.r3,
        snapshot.r4,
        snapshot.frame_size,
        snapshot.downsample_ratio,
        snapshot.frames,
    )
    with pytest.raises(InvalidInputError, match="state"):
        backend.new_session().restore(bad)
