"""Sources matted as they are displayed: phone footage turned upright by its display matrix, and
variable-frame-rate video whose video outputs keep every frame's own time.

Real clips written with PyAV in each test (a display matrix with ``set_display_rotation``, frame times
with explicit timestamps), read back with PyAV. The fast tier runs the converter on the stand-in model
(``tests/standin.py``); the tests marked slow compare the real model's mattes with the engine's on
frames turned by numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from rvm_node.convert import convert_video
from rvm_node.engine.samples import to_samples
from rvm_node.errors import InvalidInputError
from rvm_node.io.images import read_image
from rvm_node.io.sources import open_source
from tests.helpers import run_frames, run_rvm_node
from tests.node_support import NodeThread
from tests.standin import StandInBackend, expected_alpha

# Frame times of a phone clip, in ms: bursts and stalls around ~24 fps.
VFR_MS = (0, 41, 83, 100, 167, 175, 250, 292, 333, 417, 425, 500)


def write_clip(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    rotation: tuple[int, bool, bool] | None = None,
    times_ms: Sequence[int] | None = None,
    rate: Fraction = Fraction(24),
    audio: bool = False,
) -> Path:
    """``frames`` (``H x W x 3`` uint8) as an h264 video; ``rotation`` (degrees counter-clockwise, hflip,
    vflip) as its display matrix, ``times_ms`` as the frames' times (else a constant ``rate``)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if times_ms is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            video.set_display_rotation(rotation[0], hflip=rotation[1], vflip=rotation[2])
        sound = out.add_stream("aac", rate=48000) if audio else None
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = int(48000 * len(frames) / rate)
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.zeros((1, min(1024, samples - start)), np.float32), format="fltp", layout="mono"
                )
                chunk.sample_rate = 48000
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def stored_frames(path: Path) -> np.ndarray:
    """Every frame as the file stores it, ``[T, H, W, 3]`` uint8, decoded by PyAV alone."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def frame_times(path: Path) -> list[float]:
    """Every frame's presentation time in seconds, as PyAV reads it."""
    with av.open(str(path)) as container:
        return [float(f.time) for f in container.decode(video=0)]


def rotation_of(path: Path) -> int:
    """The display rotation the first frame of a video carries (degrees counter-clockwise; 0: none)."""
    with av.open(str(path)) as container:
        return int(next(container.decode(video=0)).rotation)


def displayed(stored: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    """``[T, H, W, C]`` frames as a player shows them: turned ``degrees`` counter-clockwise, then mirrored."""
    shown = np.rot90(stored, degrees // 90, axes=(1, 2))
    if hflip:
        shown = shown[:, :, ::-1]
    if vflip:
        shown = shown[:, ::-1]
    return shown


def standin_alpha(frames: np.ndarray) -> np.ndarray:
    """The stand-in's alpha of ``[T, H, W, 3]`` uint8 frames, as 16-bit samples ``[T, H, W]``."""
    unit = frames.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    return to_samples(expected_alpha(unit), "uint16")[:, 0]


def written_alpha(directory: Path, count: int) -> np.ndarray:
    return np.stack([read_image(directory / f"m.{n:04d}.png").pixels[..., 0] for n in range(1, count + 1)])


@pytest.fixture(scope="module")
def phone_frames(clip_frames: np.ndarray) -> list[np.ndarray]:
    """Six frames of the example clip (176x144), ``H x W x 3``."""
    return [f.transpose(1, 2, 0) for f in clip_frames[:6]]


@pytest.mark.parametrize("vflip", [False, True], ids=["", "vflip"])
@pytest.mark.parametrize("hflip", [False, True], ids=["", "hflip"])
@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_every_display_matrix_is_turned_upright_as_a_player_shows_it(
    tmp_path: Path, phone_frames: list[np.ndarray], degrees: int, hflip: bool, vflip: bool
) -> None:
    """The eight orientations a display matrix can give (each reached two ways): ffmpeg's autorotate steps
    give what PyAV's definition of the matrix says (turn counter-clockwise, then mirror), bit for bit."""
    clip = write_clip(tmp_path / "c.mp4", phone_frames[:2], rotation=(degrees, hflip, vflip))
    expected = displayed(stored_frames(clip), degrees, hflip, vflip)
    source = open_source(clip)
    got = np.stack([f.pixels for f in source.frames()])
    assert (source.width, source.height) == (expected.shape[2], expected.shape[1])
    assert got.shape == expected.shape and np.array_equal(got, expected)
    kept = open_source(clip, autorotate=False)
    assert (kept.width, kept.height) == (176, 144)
    assert np.array_equal(np.stack([f.pixels for f in kept.frames()]), stored_frames(clip))


def test_display_matrix_steps_follow_ffmpeg() -> None:
    """The matrices phones write, read as ffmpeg's autorotate reads them (its transpose filter's names)."""
    from rvm_node.io.orientation import DisplayMatrix

    one = 1 << 16
    iphone_portrait = DisplayMatrix((0, one, 0, -one, 0, 0, 0, 0, 1 << 30))  # ffprobe: rotation of -90°
    assert iphone_portrait.clockwise == 90 and iphone_portrait.steps == ("clock",)
    assert iphone_portrait.describe() == "rotated 90° clockwise" and iphone_portrait.turns_sideways
    upside_down = DisplayMatrix((-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30))
    assert upside_down.steps == ("hflip", "vflip") and upside_down.describe() == "rotated 180°"
    assert not upside_down.turns_sideways
    mirrored = DisplayMatrix((-one, 0, 0, 0, one, 0, 0, 0, 1 << 30))
    assert mirrored.steps == ("hflip",) and mirrored.describe() == "mirrored left to right"
    tilted = DisplayMatrix((46341, -46341, 0, 46341, 46341, 0, 0, 0, 1 << 30))  # 45°
    assert tilted.clockwise == 315 and tilted.steps is None
    assert tilted.describe() == "turned 45° counter-clockwise"
    singular = DisplayMatrix((0, 0, 0, 0, 0, 0, 0, 0, 1 << 30))
    assert singular.clockwise is None and singular.steps is None
    assert singular.describe() == "at an unusable angle"
    pixels = np.arange(6).reshape(2, 3)
    assert np.array_equal(iphone_portrait.upright(pixels), np.rot90(pixels, -1))
    assert iphone_portrait.upright(pixels).flags.c_contiguous


def test_a_phone_clip_is_matted_upright_and_said_once(
    tmp_path: Path,
    phone_frames: list[np.ndarray],
    standin: StandInBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stored 176x144 with a quarter turn clockwise (an iPhone's portrait clip): mattes, composition and
    foreground come out 144x176 and upright, and one log line names the file and the turn."""
    clip = write_clip(tmp_path / "phone.mov", phone_frames, rotation=(-90, False, False))
    upright = np.rot90(stored_frames(clip), -1, axes=(1, 2))
    with caplog.at_level(logging.WARNING):
        convert_video(
            standin,
            clip,
            output_alpha=tmp_path / "a" / "m.####.png",
            output_composition=tmp_path / "comp.mp4",
            output_foreground=tmp_path / "fgr.mov",
            progress=False,
        )
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"{clip}: its display matrix shows it rotated 90° clockwise; frames are matted upright, 144x176 "
        "(--no-autorotate keeps them as stored)"
    ]
    assert np.array_equal(written_alpha(tmp_path / "a", 6), standin_alpha(upright))
    for video in (tmp_path / "comp.mp4", tmp_path / "fgr.mov"):
        with av.open(str(video)) as result:
            stream = result.streams.video[0]
            assert (stream.width, stream.height) == (144, 176), video
        assert rotation_of(video) == 0, video  # upright: nothing left to turn
    with av.open(str(tmp_path / "fgr.mov")) as result:  # the foreground is the frame itself
        first = next(result.decode(video=0)).to_ndarray(format="rgba64le")[..., :3]
    assert np.abs(np.round(first / 257) - upright[0]).max() <= 3  # 10-bit YUV 4:4:4 and back


def test_no_autorotate_keeps_the_stored_frames_and_videos_carry_the_rotation(
    tmp_path: Path,
    phone_frames: list[np.ndarray],
    standin: StandInBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clip = write_clip(tmp_path / "phone.mp4", phone_frames, rotation=(90, False, False))
    with caplog.at_level(logging.WARNING):
        convert_video(
            standin,
            clip,
            output_alpha=tmp_path / "a" / "m.####.png",
            output_composition=tmp_path / "comp.mp4",
            output_foreground=tmp_path / "fgr.mov",
            no_autorotate=True,
            progress=False,
        )
    assert not caplog.records
    assert np.array_equal(written_alpha(tmp_path / "a", 6), standin_alpha(stored_frames(clip)))
    for video in (tmp_path / "comp.mp4", tmp_path / "fgr.mov"):
        with av.open(str(video)) as result:
            stream = result.streams.video[0]
            assert (stream.width, stream.height) == (176, 144), video
        assert rotation_of(video) == rotation_of(clip) == 90, video  # shown as the source is


def test_a_video_is_written_as_stored_where_pyav_cannot_record_a_display_matrix(
    tmp_path: Path,
    phone_frames: list[np.ndarray],
    standin: StandInBackend,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PyAV before 18.1 has no ``set_display_matrix``: the video is still written, and a line says so."""
    from rvm_node.io import writers

    monkeypatch.setattr(writers, "display_matrix_writable", lambda _stream: False)
    clip = write_clip(tmp_path / "phone.mp4", phone_frames[:2], rotation=(90, False, False))
    with caplog.at_level(logging.WARNING):
        convert_video(
            standin, clip, output_composition=tmp_path / "comp.mp4", no_autorotate=True, progress=False
        )
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'comp.mp4'}: PyAV {av.__version__} cannot")
    assert rotation_of(tmp_path / "comp.mp4") == 0 and len(frame_times(tmp_path / "comp.mp4")) == 2


def test_a_turn_that_is_no_quarter_turn_is_kept_as_stored_and_said(
    tmp_path: Path,
    phone_frames: list[np.ndarray],
    standin: StandInBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clip = write_clip(tmp_path / "tilted.mp4", phone_frames[:2], rotation=(45, False, False))
    with caplog.at_level(logging.WARNING):
        convert_video(
            standin,
            clip,
            output_alpha=tmp_path / "a" / "m.####.png",
            output_composition=tmp_path / "comp.mp4",
            progress=False,
        )
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"{clip}: its display matrix shows it turned 45° counter-clockwise, which is no quarter turn; frames "
        "are matted as stored and video outputs carry the matrix"
    ]
    assert np.array_equal(written_alpha(tmp_path / "a", 2), standin_alpha(stored_frames(clip)))
    assert rotation_of(tmp_path / "comp.mp4") == rotation_of(clip) == 45


def test_matte_on_a_node_takes_no_autorotate_and_says_the_turn_on_the_client(
    tmp_path: Path, phone_frames: list[np.ndarray], standin_node: NodeThread
) -> None:
    """``rvm-node matte`` through a real node: the client turns the frames before they travel."""
    clip = write_clip(tmp_path / "phone.mp4", phone_frames, rotation=(-90, False, False))
    command = ["matte", "--node", standin_node.address, "--input-source", str(clip), "--disable-progress"]
    upright = run_rvm_node(*command, "--output-alpha", str(tmp_path / "u" / "m.####.png"))
    kept = run_rvm_node(*command, "--no-autorotate", "--output-alpha", str(tmp_path / "k" / "m.####.png"))
    turn = [line for line in upright.stderr.splitlines() if "display matrix" in line]
    assert len(turn) == 1 and turn[0].startswith(f"{clip}: its display matrix shows it rotated 90° clockwise")
    assert "display matrix" not in kept.stderr
    stored = stored_frames(clip)
    assert np.array_equal(written_alpha(tmp_path / "u", 6), standin_alpha(np.rot90(stored, -1, axes=(1, 2))))
    assert np.array_equal(written_alpha(tmp_path / "k", 6), standin_alpha(stored))


def test_a_farm_shot_takes_no_autorotate_from_its_shot_list(
    tmp_path: Path, phone_frames: list[np.ndarray], standin: StandInBackend
) -> None:
    from rvm_node.farm import NodePool, load_shot_list, run_shots

    clip = write_clip(tmp_path / "phone.mp4", phone_frames[:3], rotation=(-90, False, False))
    shot_list = tmp_path / "s.toml"
    shot_list.write_text(
        f'[[shot]]\nname = "kept"\ninput = "{clip}"\nno_autorotate = true\n'
        f'output_alpha = "{tmp_path}/k/m.####.png"\n'
        f'[[shot]]\nname = "upright"\ninput = "{clip}"\noutput_alpha = "{tmp_path}/u/m.####.png"\n'
    )
    shots = load_shot_list(shot_list)
    assert [s.no_autorotate for s in shots] == [True, False]
    server = NodeThread(standin)
    pool = NodePool([server.address])
    try:
        finals = [e for e in run_shots(shots, pool) if e.final]
    finally:
        pool.close()
        server.stop()
    assert {e.kind for e in finals} == {"done"}
    assert read_image(tmp_path / "k" / "m.0001.png").size == (176, 144)
    assert read_image(tmp_path / "u" / "m.0001.png").size == (144, 176)


@pytest.mark.parametrize("turned_again", [True, False], ids=["same", "toggled"])
def test_a_resume_takes_the_saved_state_only_for_the_same_orientation(
    tmp_path: Path, clip_frames: np.ndarray, standin: StandInBackend, turned_again: bool
) -> None:
    """A square clip is as wide turned as stored: the checkpoint still tells the two apart."""
    import dataclasses
    import threading

    from rvm_node.convert import ConvertJob, ShotSpec, run_job
    from rvm_node.errors import JobCancelledError

    frames = [f.transpose(1, 2, 0)[:, :144] for f in clip_frames]
    clip = write_clip(tmp_path / "square.mp4", frames, rotation=(-90, False, False))
    cancel = threading.Event()
    job = ConvertJob(
        backend=standin,
        shot=ShotSpec(
            input_source=str(clip),
            outputs={"alpha": str(tmp_path / "m.####.png")},
        ),
        state_every=2,
        progress="off",
    )
    stop_at_4 = dataclasses.replace(job, cancel=cancel, on_frame=lambda n: cancel.set() if n == 4 else None)
    with pytest.raises(JobCancelledError):
        run_job(stop_at_4)
    again = dataclasses.replace(job.shot, no_autorotate=not turned_again)
    report = run_job(dataclasses.replace(job, resume=True, shot=again))
    assert report.frames_written > 0 and report.resumed_from_checkpoint is turned_again


def test_variable_rate_follows_the_frames_not_the_container() -> None:
    from rvm_node.io.frame_times import variable_rate

    ms = Fraction(1, 1000)
    assert variable_rate([i * 1001 for i in range(50)], Fraction(1, 30000)) is None  # exact 30000/1001
    # 30000/1001 in a container that counts milliseconds (Matroska): 33 or 34 ms apart, still constant
    assert variable_rate([round(i * 1001 / 30) for i in range(300)], ms) is None
    assert variable_rate([3 * i for i in range(10)][::-1], ms) is None  # decode order is not time order
    dropped = variable_rate([0, 40, 80, 120, 200, 240, 280], ms)  # one frame lost: a stall of 80 ms
    assert dropped is not None and (dropped.shortest, dropped.longest) == (40 * ms, 80 * ms)
    assert dropped.time_base == ms and dropped.drift == 20 * ms  # frame 4 at 120 ms, not 140
    assert dropped.describe() == (
        "variable frame rate (frames 40.0 to 80.0 ms apart, up to 20.0 ms from a constant rate)"
    )
    phone = variable_rate(list(VFR_MS), ms)
    assert phone is not None and phone.drift > 30 * ms
    for unknown in ([0, 40], [0, None, 80, 120], [5, 5, 5]):  # too few, a frame without a time, no span
        assert variable_rate(unknown, ms) is None
    assert variable_rate([0, 40, 90, 100], None) is None


def test_scanning_frame_times_reads_packets_and_names_an_unreadable_file(
    tmp_path: Path, phone_frames: list[np.ndarray]
) -> None:
    from rvm_node.io.frame_times import scan_frame_times

    clip = write_clip(tmp_path / "v.mkv", phone_frames, times_ms=VFR_MS[:6])
    stamps, time_base = scan_frame_times(clip)
    assert time_base == Fraction(1, 1000) and sorted(s for s in stamps if s is not None) == list(VFR_MS[:6])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(InvalidInputError, match=r"broken\.mp4: cannot read its frame times"):
        scan_frame_times(broken)


@pytest.mark.parametrize("container", ["mp4", "mov", "mkv"])
def test_a_variable_rate_clip_keeps_every_frame_time_in_its_videos(
    tmp_path: Path,
    clip_frames: np.ndarray,
    standin: StandInBackend,
    caplog: pytest.LogCaptureFixture,
    container: str,
) -> None:
    """Composition, foreground and alpha as video: every frame within 1 ms of the source's time (read
    with PyAV, both); the alpha sequence is what it is for any source; one line says why."""
    frames = [f.transpose(1, 2, 0) for f in clip_frames[: len(VFR_MS)]]
    clip = write_clip(tmp_path / f"phone.{container}", frames, times_ms=VFR_MS)
    source_times = frame_times(clip)
    assert np.allclose(source_times, np.array(VFR_MS) / 1000)
    videos = {
        "output_composition": tmp_path / f"comp.{container}",
        "output_foreground": tmp_path / "fgr.mov",
        "output_alpha": tmp_path / "alpha.mkv",
    }
    with caplog.at_level(logging.WARNING):
        convert_video(standin, clip, progress=False, **videos)  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"{clip}: variable frame rate (frames 8.0 to 84.0 ms apart")
    assert said[0].endswith("; video outputs keep each frame's own time")
    for video in videos.values():
        times = frame_times(video)
        assert len(times) == len(VFR_MS), video
        assert max(abs(a - b) for a, b in zip(times, source_times, strict=True)) <= 0.001, video
    convert_video(standin, clip, output_alpha=tmp_path / "a" / "m.####.png", progress=False)
    assert np.array_equal(written_alpha(tmp_path / "a", len(VFR_MS)), standin_alpha(stored_frames(clip)))


def test_a_variable_rate_clip_cut_to_a_range_keeps_the_times_of_its_frames(
    tmp_path: Path, clip_frames: np.ndarray, standin: StandInBackend
) -> None:
    from rvm_node.io.sequence import FrameRange

    frames = [f.transpose(1, 2, 0) for f in clip_frames[: len(VFR_MS)]]
    clip = write_clip(tmp_path / "phone.mov", frames, times_ms=[500 + t for t in VFR_MS])
    convert_video(
        standin, clip, output_composition=tmp_path / "comp.mp4", frames=FrameRange(3, 8), progress=False
    )
    expected = [(500 + t) / 1000 for t in VFR_MS[2:8]]
    assert np.allclose(frame_times(tmp_path / "comp.mp4"), expected, rtol=0, atol=0.001)


def test_frame_rate_given_makes_a_variable_rate_clip_constant(
    tmp_path: Path, clip_frames: np.ndarray, standin: StandInBackend, caplog: pytest.LogCaptureFixture
) -> None:
    from rvm_node.convert import ConvertJob, ShotSpec, run_job

    frames = [f.transpose(1, 2, 0) for f in clip_frames[: len(VFR_MS)]]
    clip = write_clip(tmp_path / "phone.mp4", frames, times_ms=VFR_MS)
    job = ConvertJob(
        backend=standin,
        shot=ShotSpec(
            input_source=str(clip),
            outputs={"composition": str(tmp_path / "comp.mp4")},
            frame_rate=Fraction(25),
        ),
        progress="off",
    )
    with caplog.at_level(logging.WARNING):
        run_job(job)
    assert not caplog.records
    assert np.allclose(frame_times(tmp_path / "comp.mp4"), np.arange(len(VFR_MS)) / 25, rtol=0, atol=1e-6)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_constant_rate_clip_keeps_its_exact_rate_and_audio(
    tmp_path: Path,
    clip_frames: np.ndarray,
    standin: StandInBackend,
    caplog: pytest.LogCaptureFixture,
    container: str,
) -> None:
    frames = [f.transpose(1, 2, 0) for f in clip_frames[:24]]
    clip = write_clip(tmp_path / f"c.{container}", frames, rate=Fraction(30000, 1001), audio=True)
    assert open_source(clip).variable_rate() is None
    with caplog.at_level(logging.WARNING):
        convert_video(standin, clip, output_composition=tmp_path / "comp.mp4", progress=False)
    assert not caplog.records
    with av.open(str(tmp_path / "comp.mp4")) as result:
        assert result.streams.video[0].average_rate == Fraction(30000, 1001)
        assert [s.codec_context.name for s in result.streams.audio] == ["aac"]
    assert np.allclose(frame_times(tmp_path / "comp.mp4"), np.arange(24) * 1001 / 30000, rtol=0, atol=1e-6)


def test_frames_without_times_or_with_repeated_ones_come_one_tick_later(tmp_path: Path) -> None:
    from rvm_node.io.frame_times import VariableRate
    from rvm_node.io.writers import VideoWriter, WriterSettings

    ms = Fraction(1, 1000)
    timing = VariableRate(time_base=ms, shortest=ms, longest=40 * ms, drift=10 * ms)
    writer = VideoWriter(
        "composition",
        tmp_path / "v.mkv",
        rate=Fraction(24),
        size=(16, 16),
        settings=WriterSettings(),
        timing=timing,
    )
    for number, time in enumerate(
        [Fraction(0), Fraction(40, 1000), None, Fraction(40, 1000), Fraction(1, 10)]
    ):
        writer.write(number, np.full((16, 16, 3), 0.5, np.float32), time)
    writer.close()
    assert np.allclose(frame_times(tmp_path / "v.mkv"), [0, 0.040, 0.041, 0.042, 0.100], rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def real_backend() -> Any:
    from rvm_node import load_model

    return load_model(backend="onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("turn", [90, 180, 270, None], ids=["90", "180", "270", "no-autorotate"])
def test_rotated_clip_mattes_equal_the_engine_on_frames_turned_by_numpy(
    tmp_path: Path, phone_frames: list[np.ndarray], real_backend: Any, turn: int | None
) -> None:
    """The real model: a clip with a display rotation gives the mattes of its frames turned upright
    by numpy, to the bit of the EXR's half floats; with --no-autorotate, those of the stored frames."""
    from tests.helpers import read_exr

    backend = real_backend
    clip = write_clip(tmp_path / "phone.mp4", phone_frames, rotation=(turn or 90, False, False))
    stored = stored_frames(clip)
    frames = stored if turn is None else displayed(stored, turn, False, False)
    convert_video(
        backend,
        clip,
        downsample_ratio=0.5,
        output_alpha=tmp_path / "m.####.exr",
        no_autorotate=turn is None,
        progress=False,
    )
    _, expected = run_frames(backend, np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), 0.5)
    alpha = np.stack([read_exr(tmp_path / f"m.{n:04d}.exr")["A"] for n in range(1, 7)])
    assert alpha.shape == expected[:, 0].shape
    assert np.array_equal(alpha, expected[:, 0].astype(np.float16))
