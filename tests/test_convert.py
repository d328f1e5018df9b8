"""The converter end to end: real video decoded with PyAV, real files written and read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import OpenEXR
import pytest

from rvm_node import InvalidInputError, load_model
from rvm_node.cli import EXIT_INPUT, EXIT_USAGE, main
from rvm_node.convert import RESUME_WARMUP, convert_video
from rvm_node.events import ProgressEvent
from rvm_node.fsutil import is_temporary
from rvm_node.io.colour import ColourTransform
from rvm_node.io.images import read_image, write_exr, write_image
from rvm_node.io.sequence import FramePattern, parse_frame_range
from rvm_node.io.writers import WriterSettings
from rvm_node.node.launch import rvm_node_command
from tests.helpers import read_exr, run_rvm_node, wait_until

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

RATIO = 0.5


@pytest.fixture(scope="module")
def backend():
    return load_model(backend="onnxruntime")


@pytest.fixture(scope="module")
def clip(weights_cache: Path) -> Path:
    from rvm_node.example import example_clip

    return example_clip()


@pytest.fixture(scope="module")
def plate_png(tmp_path_factory: pytest.TempPathFactory, clip_frames: np.ndarray) -> Path:
    """Frames 1001-1012 of the clip as a 16-bit PNG plate."""
    root = tmp_path_factory.mktemp("plate_png")
    for i, frame in enumerate(clip_frames[:12]):
        write_image(root / f"plate.{1001 + i:04d}.png", frame.transpose(1, 2, 0).astype(np.uint16) * 257)
    return root / "plate.####.png"


def rvm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_rvm_node(*args, check=check)


def test_sequence_frame_numbers_are_preserved(backend, plate_png: Path, tmp_path: Path) -> None:
    report = convert_video(
        backend, plate_png, downsample_ratio=RATIO, output_alpha=tmp_path / "m.####.exr", progress=False
    )
    written = sorted(p.name for p in tmp_path.glob("m.*.exr"))
    assert written == [f"m.{n}.exr" for n in range(1001, 1013)]
    assert (report.first_frame, report.last_frame, report.frames_written) == (1001, 1012, 12)
    channels = read_exr(tmp_path / "m.1005.exr")
    assert sorted(channels) == ["A", "B", "G", "R"] and channels["A"].dtype == np.float16
    assert np.array_equal(channels["R"], channels["A"]) and np.array_equal(channels["G"], channels["A"])
    assert channels["A"].max() == 1.0 and channels["A"].min() == 0.0
    with OpenEXR.File(str(tmp_path / "m.1005.exr")) as exr:
        assert exr.header()["compression"] == OpenEXR.ZIP_COMPRESSION


def test_frames_option_selects_a_range(backend, plate_png: Path, tmp_path: Path) -> None:
    convert_video(
        backend,
        plate_png,
        downsample_ratio=RATIO,
        output_alpha=tmp_path / "m.%04d.png",
        frames=parse_frame_range("1004-1006"),
        progress=False,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.1004.png", "m.1005.png", "m.1006.png"]
    assert read_image(tmp_path / "m.1004.png").pixels.dtype == np.uint16


def test_alpha_matches_the_engine(backend, plate_png: Path, tmp_path: Path, clip_frames: np.ndarray) -> None:
    convert_video(
        backend, plate_png, downsample_ratio=RATIO, output_alpha=tmp_path / "m.####.exr", progress=False
    )
    expected = backend.new_session(RATIO).process(clip_frames[:12].astype(np.uint16) * 257).pha
    for i in range(12):
        alpha = read_exr(tmp_path / f"m.{1001 + i}.exr")["A"].astype(np.float32)
        assert np.abs(alpha - expected[i, 0]).max() <= 1e-3  # half-float storage


@pytest.mark.parametrize(
    "name, settings, check",
    [
        ("a.####.exr", WriterSettings(exr_channels="A"), lambda p: sorted(read_exr(p)) == ["A"]),
        ("a.####.png", WriterSettings(bit_depth=8), lambda p: read_image(p).pixels.dtype == np.uint8),
        ("a.####.tif", WriterSettings(), lambda p: read_image(p).pixels.dtype == np.uint16),
    ],
)
def test_alpha_formats(
    backend, clip: Path, tmp_path: Path, name: str, settings: WriterSettings, check
) -> None:
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_alpha=tmp_path / name,
        settings=settings,
        frames=parse_frame_range("1-3"),
        progress=False,
    )
    files = sorted(p for p in tmp_path.iterdir())
    assert [p.name for p in files] == [name.replace("####", f"{n:04d}") for n in (1, 2, 3)]
    assert check(files[1])


def test_foreground_straight_and_premultiplied(backend, clip: Path, tmp_path: Path) -> None:
    frames = parse_frame_range("1-2")
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_foreground=tmp_path / "s" / "f.####.exr",
        output_alpha=tmp_path / "a.####.exr",
        frames=frames,
        progress=False,
    )
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_foreground=tmp_path / "p" / "f.####.exr",
        frames=frames,
        settings=WriterSettings(premultiplied=True),
        progress=False,
    )
    straight = read_exr(tmp_path / "s" / "f.0002.exr")
    premult = read_exr(tmp_path / "p" / "f.0002.exr")
    alpha = read_exr(tmp_path / "a.0002.exr")["A"].astype(np.float32)
    assert sorted(straight) == ["A", "B", "G", "R"]
    expected = straight["R"].astype(np.float32) * alpha
    assert np.abs(premult["R"].astype(np.float32) - expected).max() <= 2e-3
    assert np.abs(straight["R"].astype(np.float32) - premult["R"].astype(np.float32)).max() > 0.1


def test_composition_video_over_colour_and_image(backend, clip: Path, tmp_path: Path) -> None:
    frames = parse_frame_range("1-4")
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_composition=tmp_path / "green.mp4",
        frames=frames,
        output_video_mbps=2,
        progress=False,
    )
    background = tmp_path / "bg.png"
    write_image(background, np.full((10, 10, 3), [255, 0, 0], np.uint8))  # resized to the frame
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_composition=tmp_path / "red.mp4",
        frames=frames,
        background=str(background),
        progress=False,
    )
    corners = {}
    for name in ("green", "red"):
        with av.open(str(tmp_path / f"{name}.mp4")) as video:
            decoded = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
        assert len(decoded) == 4
        corners[name] = decoded[2][2:10, 2:10].reshape(-1, 3).mean(axis=0)  # background, top left
    assert corners["green"][1] > 200 and corners["green"][0] < 160
    assert corners["red"][0] > 200 and corners["red"][1] < 60


def test_prores_4444_keeps_alpha(backend, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "fgr.mov"
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_foreground=out,
        frames=parse_frame_range("1-3"),
        progress=False,
    )
    with av.open(str(out)) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "prores"
        frame = next(video.decode(stream))
        rgba = frame.to_ndarray(format="rgba64le")
    alpha = rgba[..., 3].astype(np.float32) / 65535
    assert alpha.max() > 0.9 and alpha.min() < 0.1


def test_official_png_sequence_directory(backend, clip: Path, tmp_path: Path) -> None:
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_type="png_sequence",
        output_composition=tmp_path / "com",
        output_alpha=tmp_path / "pha",
        frames=parse_frame_range("5-7"),
        progress=False,
    )
    assert sorted(p.name for p in (tmp_path / "pha").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    composition = read_image(tmp_path / "com" / "0001.png")
    assert composition.pixels.dtype == np.uint8
    with av.open(str(tmp_path / "com" / "0001.png")) as image:
        assert next(image.decode(video=0)).format.name == "rgba"  # the official RGBA composition


def test_linear_exr_plate_mattes_like_srgb_png(backend, clip_frames: np.ndarray, tmp_path: Path) -> None:
    """A plate stored as scene-linear EXR gives the matte of the same plate as sRGB PNG (within 2e-3)."""
    colour = ColourTransform()
    inverse = colour.config.getProcessor(colour.target, colour.source).getDefaultCPUProcessor()
    for i, frame in enumerate(clip_frames[:8]):
        srgb16 = frame.transpose(1, 2, 0).astype(np.uint16) * 257
        write_image(tmp_path / "png" / f"plate.{1001 + i}.png", srgb16)
        linear = np.ascontiguousarray(srgb16.astype(np.float32) / 65535)
        inverse.applyRGB(linear)
        write_exr(tmp_path / "exr" / f"plate.{1001 + i}.exr", linear, "RGB")  # stored as half
    convert_video(
        backend,
        tmp_path / "png" / "plate.####.png",
        downsample_ratio=RATIO,
        output_alpha=tmp_path / "a_png" / "m.####.exr",
        progress=False,
    )
    convert_video(
        backend,
        tmp_path / "exr" / "plate.####.exr",
        downsample_ratio=RATIO,
        output_alpha=tmp_path / "a_exr" / "m.####.exr",
        progress=False,
    )
    worst = 0.0
    for n in range(1001, 1009):
        a = read_exr(tmp_path / "a_png" / f"m.{n}.exr")["A"].astype(np.float32)
        b = read_exr(tmp_path / "a_exr" / f"m.{n}.exr")["A"].astype(np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
    print(f"\nlinear EXR plate vs sRGB PNG plate: alpha max {worst:.2e}")
    assert worst <= 2e-3


def make_av_clip(
    path: Path,
    *,
    frames: int = 12,
    rate: Fraction = Fraction(24000, 1001),
    audio: bool = True,
    size: tuple[int, int] = (64, 48),
) -> None:
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        sound = out.add_stream("aac", rate=48000) if audio else None
        for i in range(frames):
            image = np.zeros((size[1], size[0], 3), np.uint8)
            image[:, : (i * 5) % size[0]] = 200
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = int(48000 * frames / rate)
            tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 48000)).astype(np.float32)[None]
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono"
                )
                chunk.sample_rate = 48000
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)


def test_audio_passes_through_and_rate_stays_exact(backend, tmp_path: Path) -> None:
    source = tmp_path / "shot.mp4"
    make_av_clip(source)
    convert_video(
        backend, source, downsample_ratio=1.0, output_composition=tmp_path / "comp.mp4", progress=False
    )
    with av.open(str(tmp_path / "comp.mp4")) as result:
        assert result.streams.video[0].average_rate == Fraction(24000, 1001)
        assert len(result.streams.audio) == 1
        assert result.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in result.decode(video=0)) == 12


def test_official_command_line_verbatim(tmp_path: Path, clip: Path, official_onnx: Path) -> None:
    source = tmp_path / "shot.mp4"
    make_av_clip(source, audio=False, size=(96, 64))
    rvm(
        "convert",
        "--variant",
        "mobilenetv3",
        "--checkpoint",
        str(official_onnx),
        "--device",
        "cpu",
        "--input-source",
        str(source),
        "--input-resize",
        "80",
        "48",
        "--downsample-ratio",
        "0.5",
        "--output-type",
        "video",
        "--output-composition",
        str(tmp_path / "com.mp4"),
        "--output-alpha",
        str(tmp_path / "pha.mp4"),
        "--output-foreground",
        str(tmp_path / "fgr.mp4"),
        "--output-video-mbps",
        "4",
        "--seq-chunk",
        "4",
        "--num-workers",
        "1",
        "--disable-progress",
    )
    for name in ("com", "pha", "fgr"):
        with av.open(str(tmp_path / f"{name}.mp4")) as video:
            stream = video.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (80, 48)
            assert sum(1 for _ in video.decode(stream)) == 12


def test_progress_json_lines(tmp_path: Path, clip: Path) -> None:
    result = rvm(
        "convert",
        "--input-source",
        str(clip),
        "--frames",
        "1-3",
        "--downsample-ratio",
        "0.5",
        "--output-alpha",
        str(tmp_path / "m.####.png"),
        "--progress-json",
    )
    events = [ProgressEvent.from_json(line) for line in result.stdout.splitlines()]
    assert [e.kind for e in events] == ["started", "frame", "frame", "frame", "done"]
    assert [e.frame for e in events[1:4]] == [1, 2, 3] and [e.done for e in events[1:]] == [1, 2, 3, 3]
    assert all(e.total == 3 and e.shot is None and e.node is None for e in events)


def test_existing_output_is_never_overwritten_without_asking(tmp_path: Path, clip: Path) -> None:
    args = [
        "convert",
        "--input-source",
        str(clip),
        "--frames",
        "1-2",
        "--output-alpha",
        str(tmp_path / "m.####.png"),
        "--quiet",
        "--downsample-ratio",
        "0.5",
    ]
    assert main(args) == 0
    before = (tmp_path / "m.0001.png").read_bytes()
    (tmp_path / "m.0001.png").write_bytes(b"user data")
    assert main(args) == EXIT_INPUT
    assert (tmp_path / "m.0001.png").read_bytes() == b"user data"
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / "m.0001.png").read_bytes() == before


def test_resume_after_sigkill(tmp_path: Path, clip: Path, backend) -> None:
    """Kill a run mid-way; --resume completes it with no partial frame and a bounded seam."""
    out = tmp_path / "m.####.exr"
    args = [
        "convert",
        "--input-source",
        str(clip),
        "--frames",
        "1-80",
        "--downsample-ratio",
        "0.5",
        "--output-alpha",
        str(out),
        "--quiet",
    ]
    process = subprocess.Popen(rvm_node_command(*args), env=os.environ.copy())
    wait_until(lambda: len(list(tmp_path.glob("m.*.exr"))) >= 40, 300)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = sorted(tmp_path.glob("m.*.exr"))
    assert 0 < len(killed) < 80, "the run must be killed mid-way"
    for path in killed:  # no partial frame under a final name
        assert read_exr(path)["A"].shape == (144, 176)
    before = {p.name: p.read_bytes() for p in killed}
    rvm(*args, "--resume")
    final = sorted(p for p in tmp_path.iterdir() if not is_temporary(p))
    assert [p.name for p in final] == [f"m.{n:04d}.exr" for n in range(1, 81)]
    assert not [p for p in tmp_path.iterdir() if is_temporary(p)]
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data  # frames before the kill are untouched
    reference = tmp_path / "ref"
    convert_video(
        backend,
        clip,
        downsample_ratio=0.5,
        output_alpha=reference / "m.####.exr",
        frames=parse_frame_range("1-80"),
        progress=False,
    )
    resumed_from = len(killed) + 1
    worst = max(
        float(
            np.abs(
                read_exr(tmp_path / f"m.{n:04d}.exr")["A"].astype(np.float32)
                - read_exr(reference / f"m.{n:04d}.exr")["A"].astype(np.float32)
            ).max()
        )
        for n in range(resumed_from, 81)
    )
    print(f"\nresume after SIGKILL at frame {resumed_from} from a state checkpoint: alpha max {worst:.2e}")
    assert worst <= 1e-3  # half-float storage; the state itself is restored exactly


def test_resume_without_checkpoint_warms_up(tmp_path: Path, clip: Path, backend) -> None:
    """With its checkpoint gone, resume replays RESUME_WARMUP frames: close on average, not exact."""
    frames = parse_frame_range("1-70")
    reference = tmp_path / "ref" / "m.####.exr"
    convert_video(backend, clip, downsample_ratio=0.5, output_alpha=reference, frames=frames, progress=False)
    out = tmp_path / "run" / "m.####.exr"
    convert_video(backend, clip, downsample_ratio=0.5, output_alpha=out, frames=frames, progress=False)
    for n in range(50, 71):  # as if the run had died before frame 50, its checkpoint lost
        (tmp_path / "run" / f"m.{n:04d}.exr").unlink()
    report = convert_video(
        backend, clip, downsample_ratio=0.5, output_alpha=out, frames=frames, resume=True, progress=False
    )
    assert (report.frames_written, report.frames_skipped, report.resumed_from_checkpoint) == (21, 49, False)
    assert report.warmup_frames == RESUME_WARMUP
    diffs = [
        np.abs(
            read_exr(tmp_path / "run" / f"m.{n:04d}.exr")["A"].astype(np.float32)
            - read_exr(tmp_path / "ref" / f"m.{n:04d}.exr")["A"].astype(np.float32)
        )
        for n in range(50, 71)
    ]
    mean, worst = float(np.mean(diffs)), float(np.max(diffs))
    print(
        f"\nresume with {RESUME_WARMUP} warm-up frames, no checkpoint: alpha mean {mean:.2e}, max {worst:.2e}"
    )
    assert mean <= 2e-3 and worst <= 0.5


def test_resume_needs_sequences_and_excludes_overwrite(tmp_path: Path, clip: Path) -> None:
    base = ["convert", "--input-source", str(clip), "--quiet"]
    assert main([*base, "--output-composition", str(tmp_path / "c.mp4"), "--resume"]) == EXIT_INPUT
    assert (
        main([*base, "--output-alpha", str(tmp_path / "m.####.png"), "--resume", "--overwrite"]) == EXIT_INPUT
    )
    assert (
        main([*base, "--output-alpha", str(tmp_path / "m.####.png"), "--progress-json", "--quiet"])
        == EXIT_INPUT
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--input-source", "{d}/missing.mp4"], "missing.mp4: no such file or directory"),
        (
            lambda d: (d / "bad.mp4").write_bytes(b"\0" * 4096),
            ["--input-source", "{d}/bad.mp4"],
            "bad.mp4: not a readable video",
        ),
        (lambda d: (d / "empty").mkdir(), ["--input-source", "{d}/empty"], "no images"),
        (
            lambda d: (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30),
            ["--input-source", "{d}/bad.png"],
            "bad.png: not a readable image",
        ),
        (None, ["--input-source", "{clip}", "--frames", "500-600"], "zero frames"),
        (None, ["--input-source", "{clip}", "--frames", "9-3"], "comes before"),
        (None, ["--input-source", "{clip}", "--seq-chunk", "0"], "--seq-chunk"),
        (
            lambda d: (d / "file").write_text("x"),
            ["--input-source", "{clip}", "--output-alpha", "{d}/file/m.####.png"],
            "not a writable directory",
        ),
        (
            None,
            ["--input-source", "{clip}", "--output-alpha", "{d}/single.png"],
            "needs a frame field",
        ),
        (
            None,
            ["--input-source", "{clip}", "--output-alpha", "{d}/m.####.jpg"],
            "unsupported image type .jpg",
        ),
        (
            None,
            ["--input-source", "{clip}", "--input-colorspace", "NoSuchSpace"],
            "no colourspace 'NoSuchSpace'",
        ),
        (None, ["--input-source", "{clip}", "--frame-rate", "fast"], "--frame-rate"),
    ],
)
def test_bad_input_is_one_clear_line(
    setup, args: list[str], message: str, tmp_path: Path, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if setup is not None:
        setup(tmp_path)
    filled = [a.format(d=tmp_path, clip=clip) for a in args]
    if "--output-alpha" not in filled:
        filled += ["--output-alpha", str(tmp_path / "out" / "m.####.png")]
    assert main(["convert", *filled, "--quiet"]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_no_output_given_and_bad_usage(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--input-source", str(clip)]) == EXIT_INPUT
    assert "give at least one of" in capsys.readouterr().err
    assert main(["convert", "--input-source", str(clip), "--output-type", "gif"]) == EXIT_USAGE


def test_sequence_gaps_and_mixed_sizes(backend, tmp_path: Path, clip_frames: np.ndarray) -> None:
    for n in (1, 2, 4, 5):
        write_image(tmp_path / "gap" / f"p.{n:04d}.png", clip_frames[n].transpose(1, 2, 0))
    with pytest.raises(
        InvalidInputError, match=r"frames missing in the middle of the sequence: 3 \(pass --allow-gaps"
    ):
        convert_video(
            backend,
            tmp_path / "gap" / "p.####.png",
            output_alpha=tmp_path / "a" / "m.####.png",
            progress=False,
        )
    convert_video(
        backend,
        tmp_path / "gap" / "p.####.png",
        output_alpha=tmp_path / "a" / "m.####.png",
        allow_gaps=True,
        progress=False,
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "m.0001.png",
        "m.0002.png",
        "m.0004.png",
        "m.0005.png",
    ]
    write_image(tmp_path / "mixed" / "p.0001.png", clip_frames[0].transpose(1, 2, 0))
    write_image(tmp_path / "mixed" / "p.0002.png", clip_frames[1].transpose(1, 2, 0)[:100])
    with pytest.raises(InvalidInputError, match=r"p\.0002\.png: frame 2 is 176x100, expected 176x144"):
        convert_video(
            backend,
            tmp_path / "mixed" / "p.####.png",
            output_alpha=tmp_path / "b" / "m.####.png",
            progress=False,
        )


def test_unsupported_pixel_format_is_named(tmp_path: Path, backend) -> None:
    path = tmp_path / "depth.exr"
    with OpenEXR.File(
        {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
        {"Z": np.zeros((4, 4), np.float32)},
    ) as exr:
        exr.write(str(path))
    with pytest.raises(InvalidInputError, match=r"expected R, G, B .* found Z"):
        convert_video(backend, path, output_alpha=tmp_path / "a.png", progress=False)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (4097, 2)])
def test_tiny_and_odd_sizes(backend, tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    write_image(tmp_path / "p.0001.png", np.full((height, width, 3), 128, np.uint8))
    convert_video(backend, tmp_path / "p.####.png", output_alpha=tmp_path / "m.####.exr", progress=False)
    assert read_exr(tmp_path / "m.0001.exr")["A"].shape == (height, width)


def test_directory_input_in_natural_order(backend, tmp_path: Path, clip_frames: np.ndarray) -> None:
    for n in (1, 2, 10):
        write_image(tmp_path / "in" / f"frame{n}.png", clip_frames[n].transpose(1, 2, 0))
    convert_video(
        backend, tmp_path / "in", output_type="png_sequence", output_alpha=tmp_path / "out", progress=False
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png", "0001.png", "0002.png"]


def test_frame_pattern_parsing() -> None:
    pattern = FramePattern.detect("/shots/plate.%04d.exr")
    assert pattern is not None and pattern.width == 4 and pattern.path(1047).name == "plate.1047.exr"
    assert FramePattern.detect("/shots/plate.####.exr") == pattern
    assert FramePattern.detect("/shots/plate.exr") is None
    assert FramePattern.detect("a.##.png").path(12345).name == "a.12345.png"  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="one frame-number field"):
        FramePattern.detect("a.##.%04d.png")
    with pytest.raises(InvalidInputError, match="FIRST-LAST"):
        parse_frame_range("1001..1100")


def test_other_input_formats(backend, tmp_path: Path, clip_frames: np.ndarray) -> None:
    """TIFF 16-bit, JPEG 8-bit and float (not half) EXR plates all decode and matte."""
    frame = clip_frames[3].transpose(1, 2, 0)
    write_image(tmp_path / "tif" / "p.0001.tif", frame.astype(np.uint16) * 257)
    with av.open(str(tmp_path / "p.jpg"), "w", format="image2") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuvj444p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame.copy(), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    (tmp_path / "jpg").mkdir()
    (tmp_path / "p.jpg").rename(tmp_path / "jpg" / "p.0001.jpg")
    linear = np.ascontiguousarray((frame.astype(np.float32) / 255) ** 2.2)
    (tmp_path / "exr").mkdir()
    with OpenEXR.File(
        {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGB": linear}
    ) as exr:
        exr.write(str(tmp_path / "exr" / "p.0001.exr"))
    mattes = {}
    for kind, ext in (("tif", "tif"), ("jpg", "jpg"), ("exr", "exr")):
        convert_video(
            backend,
            tmp_path / kind / f"p.####.{ext}",
            downsample_ratio=RATIO,
            output_alpha=tmp_path / f"a_{kind}" / "m.####.exr",
            progress=False,
        )
        mattes[kind] = read_exr(tmp_path / f"a_{kind}" / "m.0001.exr")["A"].astype(np.float32)
    assert read_image(tmp_path / "tif" / "p.0001.tif").pixels.dtype == np.uint16
    assert np.abs(mattes["tif"] - mattes["jpg"]).mean() < 0.02  # JPEG is lossy
    assert np.abs(mattes["tif"] - mattes["exr"]).mean() < 0.02  # gamma 2.2 is not exactly sRGB


def test_composition_over_a_background_video(backend, clip: Path, tmp_path: Path) -> None:
    background = tmp_path / "bg.mp4"
    make_av_clip(background, frames=3, audio=False, size=(32, 32))  # shorter: it loops, and is resized
    convert_video(
        backend,
        clip,
        downsample_ratio=RATIO,
        output_composition=tmp_path / "comp.mp4",
        background=str(background),
        frames=parse_frame_range("1-5"),
        progress=False,
    )
    with av.open(str(tmp_path / "comp.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 5


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_exits_130_and_keeps_complete_frames(tmp_path: Path, clip: Path, stop: int) -> None:
    """Ctrl-C, or SIGTERM as plugins send to cancel."""
    process = subprocess.Popen(
        rvm_node_command(
            "convert",
            "--input-source",
            str(clip),
            "--downsample-ratio",
            "0.5",
            "--output-alpha",
            str(tmp_path / "m.####.exr"),
            "--quiet",
        ),
        env=os.environ.copy(),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(list(tmp_path.glob("m.*.exr"))) >= 5, 300)
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err
    for path in tmp_path.glob("m.*.exr"):
        assert read_exr(path)["A"].shape == (144, 176)
    assert not [p for p in tmp_path.iterdir() if is_temporary(p)]


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_shot(tmp_path: Path) -> None:
    """10,000 frames through the whole pipeline: resident memory must not grow with the shot."""
    source = tmp_path / "long.mp4"
    make_av_clip(source, frames=10_000, audio=False, size=(32, 32))
    process = subprocess.Popen(
        rvm_node_command(
            "convert",
            "--input-source",
            str(source),
            "--downsample-ratio",
            "1",
            "--output-alpha",
            str(tmp_path / "alpha.mp4"),
            "--progress-json",
        ),
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        text=True,
    )
    samples: dict[int, int] = {}
    assert process.stdout is not None
    for line in process.stdout:
        done = json.loads(line)["done"]
        if done in (1_000, 5_000, 9_900):
            status = Path(f"/proc/{process.pid}/status").read_text()
            samples[done] = int(next(v for v in status.splitlines() if v.startswith("VmRSS")).split()[1])
    assert process.wait(timeout=60) == 0
    growth_mb = (samples[9_900] - samples[1_000]) / 1024
    print(
        f"\nRSS at 1,000 / 5,000 / 9,900 frames: {[v // 1024 for v in samples.values()]} MB; growth {growth_mb:.1f} MB"
    )
    assert growth_mb < 50


def test_container_without_video_and_truncated_video(
    tmp_path: Path, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio_only = tmp_path / "sound.m4a"
    with av.open(str(audio_only), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000)
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        chunk.sample_rate = 48000
        for packet in [*stream.encode(chunk), *stream.encode()]:
            out.mux(packet)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[:20_000])
    for path, message in ((audio_only, "sound.m4a: no video stream"), (truncated, "cut.mp4: ")):
        code = main(
            [
                "convert",
                "--input-source",
                str(path),
                "--output-alpha",
                str(tmp_path / "o" / "m.####.png"),
                "--quiet",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == EXIT_INPUT and len(err) == 1 and message in err[0], err
    assert not list((tmp_path / "o").glob("m.*.png")) if (tmp_path / "o").exists() else True


def test_existing_video_output_is_not_overwritten(backend, clip: Path, tmp_path: Path) -> None:
    target = tmp_path / "comp.mp4"
    target.write_bytes(b"an editor's cut")
    with pytest.raises(InvalidInputError, match="already exists; pass --overwrite"):
        convert_video(
            backend, clip, output_composition=target, frames=parse_frame_range("1-2"), progress=False
        )
    assert target.read_bytes() == b"an editor's cut"
    # a failure after a video output was opened leaves no temporary file behind
    (tmp_path / "m.0001.png").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=r"m\.0001\.png: already exists"):
        convert_video(
            backend,
            clip,
            output_composition=tmp_path / "new.mp4",
            output_alpha=tmp_path / "m.####.png",
            frames=parse_frame_range("1-2"),
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comp.mp4", "m.0001.png"]


def test_cancel_stops_after_a_chunk_and_resume_finishes(backend, clip: Path, tmp_path: Path) -> None:
    import threading

    from rvm_node.convert import ConvertJob, ShotSpec, run_job
    from rvm_node.errors import JobCancelledError

    cancel = threading.Event()
    out = tmp_path / "m.####.png"
    job = ConvertJob(
        backend=backend,
        shot=ShotSpec(
            input_source=str(clip),
            outputs={"alpha": str(out)},
            downsample_ratio=RATIO,
            frames=parse_frame_range("1-40"),
        ),
        progress="off",
        cancel=cancel,
        on_frame=lambda n: cancel.set() if n == 10 else None,
    )
    with pytest.raises(JobCancelledError, match="cancelled; complete frames were kept"):
        run_job(job)
    kept = sorted(tmp_path.glob("m.*.png"))
    assert 10 <= len(kept) < 40 and not [p for p in tmp_path.iterdir() if is_temporary(p)]
    report = convert_video(
        backend,
        clip,
        output_alpha=out,
        downsample_ratio=RATIO,
        frames=parse_frame_range("1-40"),
        resume=True,
        progress=False,
    )
    assert report.frames_written == 40 - len(kept) and len(list(tmp_path.glob("m.*.png"))) == 40
