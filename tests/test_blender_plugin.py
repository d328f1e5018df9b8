"""The Blender add-on in real Blender (the bpy module in its own venv) against real render nodes.

Every test runs on Blender 4.2 LTS, 4.5 LTS and 5.0 (the test ids name the venv, so the output says
which ran): scripts/setup-blender-venv makes ``.venv-blender-4.2``, ``-4.5`` and ``-5.0``; ``RVM_NODE_BLENDER_PYTHON``
names one other Python with bpy to run them on instead. The add-on is built
with plugins/blender/build.py (Linux wheels) and installed into a temporary
``BLENDER_USER_RESOURCES``; its rvm-node subprocess runs on Blender's Python
with the bundled wheels only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
import yaml

from rvm_node.io.images import write_exr, write_image
from tests.blender_support import BLENDER_VERSIONS, BLENDERS_RUN, NEEDS_PYTHON_313, python_313
from tests.helpers import (
    RVM_NODE_WITHOUT_TORCH,
    alpha,
    assert_same_mattes,
    direct_matte,
    process_gone,
    run_rvm_node,
    spawn_node,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).with_name("blender_scenarios.py")
PYTHON_ENV = "RVM_NODE_BLENDER_PYTHON"
# The releases the tests run on: bpy wheels for Python 3.11, and for Python 3.13 (5.1 and later).


def manifest_maximum() -> str:
    """The manifest's (exclusive) maximum: the minor release after the newest one the tests run on."""
    major, minor = max(tuple(int(p) for p in v.split(".")) for v in BLENDER_VERSIONS)
    return f"{major}.{minor + 1}.0"


def test_the_manifest_admits_exactly_the_tested_releases() -> None:
    manifest = tomllib.loads((ROOT / "plugins/blender/rvm_blender/blender_manifest.toml").read_text())
    assert manifest["blender_version_min"] == f"{min(BLENDER_VERSIONS)}.0"
    assert manifest["blender_version_max"] == manifest_maximum()


def versions_to_run() -> tuple[str, ...]:
    """The releases the tests run on here: the 3.13 ones only where a Python 3.13 is."""
    has_313 = python_313() is not None
    return tuple(v for v in BLENDER_VERSIONS if has_313 or v not in NEEDS_PYTHON_313)


def _blender_pythons() -> list[str]:
    """``RVM_NODE_BLENDER_PYTHON``, or the venvs that scripts/setup-blender-venv makes."""
    given = os.environ.get(PYTHON_ENV)
    return (
        [given] if given else [str(ROOT / f".venv-blender-{v}" / "bin" / "python") for v in versions_to_run()]
    )


@pytest.fixture(scope="session", params=_blender_pythons(), ids=lambda p: Path(p).parent.parent.name)
def blender_python(request: pytest.FixtureRequest) -> Path:
    path = Path(request.param)
    if not path.exists():
        pytest.fail(f"{path}: no Python with bpy; run scripts/setup-blender-venv or set {PYTHON_ENV}")
    code = "import bpy, sys; print('.'.join(map(str, bpy.app.version)), sys.version.split()[0])"
    done = subprocess.run([str(path), "-c", code], capture_output=True, text=True, check=True)
    blender, python = done.stdout.split()[-2:]
    BLENDERS_RUN[f"Blender {blender}"] = f"Python {python}"
    return path


def _python_of(blender_python: Path) -> str:
    """MAJOR.MINOR of a Blender's Python."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    return subprocess.run(
        [str(blender_python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    build = [
        sys.executable,
        str(ROOT / "plugins/blender/build.py"),
        "--platform",
        "linux-x64",
        "--dist",
        str(dist),
    ]
    subprocess.run(build, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return next(dist.glob("rvm_blender-*.zip"))


@pytest.fixture(scope="session")
def openvino_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist-openvino")
    build = [sys.executable, str(ROOT / "plugins/blender/build.py"), "--platform", "linux-x64"]
    build += ["--openvino", "--numba", "--dist", str(dist)]
    subprocess.run(build, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return next(dist.glob("rvm_blender-*-openvino-numba.zip"))


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    process, address = spawn_node()
    yield address
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="session")
def clip(weights_cache: Path) -> Path:
    from rvm_node.example import example_clip

    return example_clip()  # carphone: 120 frames, 176x144


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "OCIO")}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender-user")
    # A temporary folder of its own: the scenarios count the add-on's folders left there, which another
    # Blender running on the machine must not add to.
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def blender(python: Path, scenario: str, args: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    argv = [str(python), str(SCENARIOS), scenario, json.dumps(args)]
    done = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    return _result(done.returncode, done.stdout, done.stderr)


def _result(code: int, stdout: str, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT:")]
    if code != 0 or not lines:
        raise AssertionError(f"Blender scenario failed ({code}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT:"))
    return result


def test_extension_zip_mattes_a_clip_and_loads_it_back(
    blender_python: Path, extension_zip: Path, node: str, clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = blender(
        blender_python,
        "matte_clip",
        {
            "zip": str(extension_zip),
            "clip": {"path": str(clip), "frame_start": 1001},
            "op": {
                "node": node,
                "output": f"{out}/{{shot}}/{{shot}}_matte.####.exr",
                "compositor": True,
                "blocking": True,
            },
            "again": {},  # every frame is on disk: the run resumes, nothing to do, the scene is updated
        },
        tmp_path,
    )
    assert result["result"] == "FINISHED", result["error"]
    assert result["again"]["result"] == "FINISHED" and result["again"]["after"] == result["after"]
    reference = tmp_path / "reference"
    direct_matte(clip, node, "1-120", reference / "ref.####.exr")
    assert_same_mattes(out / "carphone", reference, range(1, 121), "carphone_matte")
    after = result["after"]
    image = next(i for i in after["images"] if i["name"] == "carphone_matte")
    assert image["source"] == "SEQUENCE" and image["colorspace"] == "Non-Color"
    assert image["filepath"] == str(out / "carphone" / "carphone_matte.0001.exr")
    assert image["range"] == [1001, 120, 0]
    matte_clip = next(c for c in after["clips"] if c["name"] == "carphone_matte")
    assert matte_clip["source"] == "SEQUENCE" and matte_clip["frame_start"] == 1001
    assert matte_clip["duration"] == 120 and matte_clip["colorspace"] == "Non-Color"
    assert after["nodes"].count("CompositorNodeMovieClip") == 2 and "CompositorNodeSetAlpha" in after["nodes"]
    assert ["CompositorNodeMovieClip", "Image", "CompositorNodeSetAlpha", "Alpha"] in after["links"]
    assert ["CompositorNodeSetAlpha", "Image", "CompositorNodeViewer", "Image"] in after["links"]


def test_this_computer_mattes_with_no_node_set_and_stops_with_blender(
    blender_python: Path, extension_zip: Path, clip: Path, tmp_path: Path
) -> None:
    """No render node and nothing installed but the zip: the private node runs on the engine the zip bundles
    (onnxruntime, no torch), and its mattes equal `rvm-node convert` of the clip bit for bit."""
    out = tmp_path / "out"
    shot = {"output": f"{out}/{{shot}}/{{shot}}_matte.####.exr", "blocking": True}
    result = blender(
        blender_python,
        "this_computer",
        {
            "zip": str(extension_zip),
            "clip": {"path": str(clip)},
            # No render node in the preferences: Run here is This computer, on the bundled engine.
            "prefs": {"executable": "", "nodes": ""},
            "shots": [
                shot,
                {**shot, "output": f"{out}/again/{{shot}}_matte.####.exr", "target": "LOCAL"},
                {**shot, "output": f"{out}/after-kill/{{shot}}_matte.####.exr"},
            ],
        },
        tmp_path,
    )
    first, second, third = result["shots"]
    for call in (first, second, third):
        assert call["result"] == "FINISHED", call["error"]
    assert first["pid"] is not None and second["pid"] == first["pid"]  # one node for both shots
    assert third["pid"] not in (None, first["pid"])  # the killed node was replaced
    assert process_gone(third["pid"])  # Blender quit: its private node stopped
    assert result["full_resolution"] == "numpy"  # the default zip carries no numba
    reference = tmp_path / "reference"
    argv = [
        "--backend",
        "onnxruntime",
        "--input-source",
        str(clip),
        "--output-alpha",
        str(reference / "ref.####.exr"),
    ]
    run_rvm_node("convert", *argv)
    for folder in ("carphone", "again", "after-kill"):
        assert_same_mattes(out / folder, reference, range(1, 121), "carphone_matte", tolerance=0.0)


def test_this_computer_takes_openvino_and_numba_where_the_zip_bundles_them(
    blender_python: Path, openvino_zip: Path, clip: Path, tmp_path: Path
) -> None:
    """A zip built with --openvino --numba: the private node runs OpenVINO (no torch) with the compiled
    full-resolution loops, and at ratio 0.5 its mattes equal `rvm-node convert --backend openvino`
    without torch bit for bit (and not onnxruntime's)."""
    out = tmp_path / "out"
    result = blender(
        blender_python,
        "this_computer",
        {
            "zip": str(openvino_zip),
            "clip": {"path": str(clip)},
            "prefs": {"executable": "", "nodes": ""},
            "shots": [
                {
                    "output": f"{out}/{{shot}}/{{shot}}_matte.####.exr",
                    "blocking": True,
                    "auto_ratio": False,
                    "downsample_ratio": 0.5,  # below 1: the full-resolution stage runs
                }
            ],
        },
        tmp_path,
    )
    (shot,) = result["shots"]
    assert shot["result"] == "FINISHED", shot["error"]
    assert process_gone(shot["pid"])
    assert result["full_resolution"] == "numba"
    references = {}
    for backend in ("openvino", "onnxruntime"):
        references[backend] = tmp_path / backend
        argv = ["convert", "--backend", backend, "--input-source", str(clip), "--downsample-ratio", "0.5"]
        argv += ["--output-alpha", str(references[backend] / "ref.####.exr")]
        done = subprocess.run([*RVM_NODE_WITHOUT_TORCH, *argv], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    assert_same_mattes(
        out / "carphone", references["openvino"], range(1, 121), "carphone_matte", tolerance=0.0
    )
    differs = [
        n
        for n in range(1, 121)
        if not np.array_equal(
            alpha(out / "carphone" / f"carphone_matte.{n:04d}.exr"),
            alpha(references["onnxruntime"] / f"ref.{n:04d}.exr"),
        )
    ]
    assert differs  # the engine was OpenVINO, not onnxruntime


def test_legacy_folder_with_offset_scene_range_and_png(
    blender_python: Path, node: str, clip: Path, tmp_path: Path
) -> None:
    addons = tmp_path / "blender-user" / "scripts" / "addons"
    build = [
        sys.executable,
        str(ROOT / "plugins/blender/build.py"),
        "--platform",
        "linux-x64",
        "--legacy",
        str(addons),
        "--python",
        _python_of(blender_python),  # a legacy folder carries the wheels of one Python
    ]
    subprocess.run(build, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    out = tmp_path / "out"
    result = blender(
        blender_python,
        "matte_clip",
        {
            "legacy": True,
            "scene_range": [1, 20],
            "clip": {"path": str(clip), "frame_offset": 5},
            "op": {
                "node": node,
                "output": f"{out}/m.####.exr",
                "file_format": "PNG16",
                "frame_range": "SCENE",
                "auto_ratio": False,
                "downsample_ratio": 0.5,
                "blocking": True,
            },
            "again": {"existing": "OVERWRITE", "compositor": True},
            "watch": str(out),
        },
        tmp_path,
    )
    assert result["result"] == "FINISHED", result["error"]
    assert result["after"]["nodes"] == result["before"]["nodes"]  # no compositor unless asked
    again = result["again"]
    assert again["result"] == "FINISHED", again["error"]
    # overwrite wrote every frame again, and the scene was updated, not stacked
    assert again["files_before"].keys() == again["files_after"].keys()
    assert all(again["files_after"][k] > t for k, t in again["files_before"].items())
    assert [c["name"] for c in again["after"]["clips"]] == ["carphone.mp4", "carphone_matte"]
    assert [i["name"] for i in again["after"]["images"]] == ["carphone_matte"]
    assert "CompositorNodeSetAlpha" in again["after"]["nodes"]
    # scene frames 1-20 show movie frames 6-25 (frame_offset 5)
    reference = tmp_path / "reference"
    direct_matte(
        clip, node, "6-25", reference / "ref.####.png", "--bit-depth", "16", "--downsample-ratio", "0.5"
    )
    assert_same_mattes(out, reference, range(6, 26), "m", "png")
    matte_clip = next(c for c in result["after"]["clips"] if c["name"] == "carphone_matte")
    assert matte_clip["frame_start"] == 1 and matte_clip["duration"] == 20


def test_linear_exr_clip_goes_through_blenders_colour_space(
    blender_python: Path,
    extension_zip: Path,
    node: str,
    clip_frames: np.ndarray,
    plate_sequence: list[Path],
    tmp_path: Path,
) -> None:
    """A Linear Rec.709 EXR sequence is converted to sRGB with Blender's OCIO config, as the converter does."""
    plates = tmp_path / "linear"
    srgb = clip_frames[:10].transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    for i, frame in enumerate(linear):
        write_exr(plates / f"plate.{1001 + i}.exr", frame, "RGB")
    out = tmp_path / "out"
    result = blender(
        blender_python,
        "matte_clip",
        {
            "zip": str(extension_zip),
            "clip": {"path": str(plates / "plate.1001.exr"), "colorspace": "Linear Rec.709"},
            "op": {"node": node, "output": f"{out}/m.####.exr", "blocking": True},
        },
        tmp_path,
    )
    assert result["result"] == "FINISHED", result["error"]
    config = next(
        (blender_python.parent.parent / "lib").glob(
            "python3.*/site-packages/bpy/*/datafiles/colormanagement/config.ocio"
        )
    )
    reference = tmp_path / "reference"
    env = {**os.environ, "OCIO": str(config)}
    direct_matte(
        plates / "plate.####.exr",
        node,
        "1001-1010",
        reference / "ref.####.exr",
        "--input-colorspace",
        "Linear Rec.709",
        env=env,
    )
    assert_same_mattes(out, reference, range(1001, 1011), "m")
    # and the conversion really happened: the mattes match those of the sRGB frames themselves
    direct_matte(
        tmp_path / "plates" / "plate.####.png", node, "1001-1010", tmp_path / "srgb" / "ref.####.exr"
    )
    worst = max(
        float(np.abs(alpha(out / f"m.{n}.exr") - alpha(tmp_path / "srgb" / f"ref.{n}.exr")).mean())
        for n in range(1001, 1011)
    )
    print(f"\nlinear EXR vs sRGB PNG plates, mean alpha difference per frame: max {worst:.2e}")
    assert worst < 5e-3


@pytest.fixture
def plate_sequence(clip_frames: np.ndarray, tmp_path: Path) -> list[Path]:
    """30 PNG frames numbered 1001-1030."""
    folder = tmp_path / "plates"
    paths = []
    for i, frame in enumerate(clip_frames[:30]):
        path = folder / f"plate.{1001 + i}.png"
        folder.mkdir(exist_ok=True)
        write_image(path, frame.transpose(1, 2, 0))
        paths.append(path)
    return paths


def _strip_args(zip_path: Path, clip: Path, plates: list[Path], out: Path, nodes: str) -> dict[str, Any]:
    return {
        "zip": str(zip_path),
        "strips": [
            {
                "type": "MOVIE",
                "name": "movie",
                "path": str(clip),
                "channel": 2,
                "frame_start": 10,
                "trim_start": 5,
            },
            {
                "type": "IMAGE",
                "name": "seq",
                "files": [str(p) for p in plates],
                "channel": 5,
                "frame_start": 200,
            },
        ],
        "op": {"node": nodes, "output": f"{out}/{{shot}}/{{shot}}.####.exr", "blocking": True},
    }


def _check_strips(
    result: dict[str, Any],
    out: Path,
    clip: Path,
    plates: list[Path],
    node: str,
    tmp_path: Path,
    channels: tuple[int, int] = (3, 6),
) -> None:
    assert result["result"] == "FINISHED", result["error"]
    strips = {s["name"]: s for s in result["after"]["strips"]}
    for plate, matte in (("movie", "movie_matte"), ("seq", "seq_matte")):
        p, m = strips[plate], strips[matte]
        assert m["type"] == "IMAGE" and m["channel"] > p["channel"]
        assert (m["final_start"], m["final_end"]) == (p["final_start"], p["final_end"])
        assert m["blend_type"] == "ALPHA_OVER" and m["colorspace"] == "Non-Color"
    assert (strips["movie_matte"]["channel"], strips["seq_matte"]["channel"]) == channels
    # the movie strip starts at 10, trimmed by 5: its first visible frame is movie frame 6
    assert (
        strips["movie_matte"]["files"][0] == "movie.0006.exr" and len(strips["movie_matte"]["files"]) == 115
    )
    assert strips["seq_matte"]["files"] == [f"seq.{n}.exr" for n in range(1001, 1031)]
    reference = tmp_path / "reference"
    direct_matte(clip, node, "6-120", reference / "movie" / "ref.####.exr")
    assert_same_mattes(out / "movie", reference / "movie", range(6, 121), "movie")
    direct_matte(
        str(plates[0]).replace("1001", "####"), node, "1001-1030", reference / "seq" / "ref.####.exr"
    )
    assert_same_mattes(out / "seq", reference / "seq", range(1001, 1031), "seq")


def test_strips_get_a_matte_one_channel_up(
    blender_python: Path,
    extension_zip: Path,
    node: str,
    clip: Path,
    plate_sequence: list[Path],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    args = {**_strip_args(extension_zip, clip, plate_sequence, out, node), "again": {}}
    result = blender(blender_python, "matte_strips", args, tmp_path)
    _check_strips(result, out, clip, plate_sequence, node, tmp_path)
    # matting the strips again replaces their matte strips instead of stacking new ones
    assert result["again"]["result"] == "FINISHED" and result["again"]["after"] == result["after"]


def run_killing_a_node(
    python: Path,
    scenario: str,
    args: dict[str, Any],
    doomed: subprocess.Popen[str],
    out: Path,
    tmp_path: Path,
) -> dict[str, Any]:
    """Run a scenario and SIGKILL ``doomed`` once 20 frames are on disk under ``out``."""
    argv = [str(python), str(SCENARIOS), scenario, json.dumps(args)]
    run = subprocess.Popen(
        argv, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if len(list(out.rglob("*.exr"))) >= 20:
                break
            time.sleep(0.05)
        if run.poll() is not None:
            raise AssertionError(
                f"the run ended before the node could be killed: {run.communicate()[1][-3000:]}"
            )
        doomed.send_signal(signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=600)
    finally:
        doomed.kill()
        run.kill()
    return _result(run.returncode, stdout, stderr)


def test_two_shots_over_two_nodes_survive_a_node_dying(
    blender_python: Path,
    extension_zip: Path,
    node: str,
    clip: Path,
    plate_sequence: list[Path],
    tmp_path: Path,
) -> None:
    doomed, doomed_address = spawn_node()
    out = tmp_path / "out"
    args = _strip_args(extension_zip, clip, plate_sequence, out, f"{doomed_address},{node}")
    # a strip already sits one channel above the movie for part of its range: the matte goes higher
    args["strips"].append(
        {"type": "COLOR", "name": "blocker", "channel": 3, "frame_start": 100, "frame_end": 110}
    )
    args["select"] = ["movie", "seq"]
    result = run_killing_a_node(blender_python, "matte_strips", args, doomed, out, tmp_path)
    _check_strips(result, out, clip, plate_sequence, node, tmp_path, channels=(4, 6))


def test_the_only_node_dying_is_reported_and_frames_stay_whole(
    blender_python: Path, extension_zip: Path, clip: Path, tmp_path: Path
) -> None:
    doomed, address = spawn_node()
    out = tmp_path / "out"
    args = {
        "zip": str(extension_zip),
        "clip": {"path": str(clip)},
        "op": {"node": address, "output": f"{out}/m.####.exr", "blocking": True},
    }
    result = run_killing_a_node(blender_python, "matte_clip", args, doomed, out, tmp_path)
    assert result["result"] == "ERROR" and address in result["error"], result["error"]
    assert len(result["error"].splitlines()) == 1
    assert result["after"] == result["before"]  # nothing loaded
    frames = sorted(out.glob("m.*.exr"))
    assert 20 <= len(frames) < 120 and not list(out.glob("*.rvmtmp*"))
    for path in frames:  # every frame left is whole
        assert alpha(path).shape == (144, 176)


def test_cancel_keeps_complete_frames_and_a_rerun_resumes(
    blender_python: Path, extension_zip: Path, node: str, clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = blender(
        blender_python,
        "cancel_then_resume",
        {
            "zip": str(extension_zip),
            "clip": {"path": str(clip)},
            "cancel_after": 40,
            # both runs take the ratio from the preferences: a resume needs the same settings
            "prefs": {"auto_ratio": False, "downsample_ratio": 1.0},
            "op": {"node": node, "output": f"{out}/m.####.exr", "blocking": True},
        },
        tmp_path,
    )
    cancelled = result["cancel"]
    assert cancelled["cancelled"] and not cancelled["loaded"]
    assert cancelled["done_at_cancel"] >= 40, "the run ended before it could be cancelled"
    assert "cancelled;" in cancelled["errors"][0] and "run again to resume" in cancelled["errors"][0]
    assert not cancelled["after"]["images"] and len(cancelled["after"]["clips"]) == 1  # scene unchanged
    assert not [name for name in cancelled["files"] if ".rvmtmp" in name]  # no temporary left
    kept = {name: digest for name, digest in cancelled["files"].items() if name.endswith(".exr")}
    assert 40 <= len(kept) < 120
    assert result["resume"]["result"] == "FINISHED", result["resume"]["error"]
    reference = tmp_path / "reference"
    direct_matte(clip, node, "1-120", reference / "ref.####.exr", "--downsample-ratio", "1.0")
    assert_same_mattes(out, reference, range(1, 121), "m")  # resumed from a state checkpoint: same numbers
    # the frames left by the cancel were complete: the resume kept them byte for byte
    assert all(
        hashlib.sha256((out / name).read_bytes()).hexdigest() == digest for name, digest in kept.items()
    )


def test_errors_are_one_line_and_leave_the_scene_alone(
    blender_python: Path, extension_zip: Path, node: str, clip: Path, tmp_path: Path
) -> None:
    (tmp_path / "node_token").write_text("right\n")
    (tmp_path / "our_token").write_text("wrong\n")
    (tmp_path / "a_file").write_text("not a folder")
    guarded, guarded_address = spawn_node("--token-file", str(tmp_path / "node_token"))
    out = tmp_path / "out"
    ok = {"node": node, "output": f"{out}/m.####.exr", "blocking": True}
    movie = {"type": "MOVIE", "name": "m", "path": str(clip), "channel": 1, "frame_start": 1}
    for name in ("plate.1001.png", "other.1002.png"):
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    files = [str(tmp_path / "plate.1001.png"), str(tmp_path / "other.1002.png")]
    mixed = {"type": "IMAGE", "name": "i", "files": files, "channel": 1, "frame_start": 1}
    try:
        result = blender(
            blender_python,
            "calls",
            {
                "zip": str(extension_zip),
                "clip": {"path": str(clip)},
                "missing_clip": str(tmp_path / "gone.mp4"),
                "calls": [
                    ["node down", "matte_clip", {**ok, "node": "127.0.0.1:1"}],
                    ["wrong token", "matte_clip", {**ok, "node": guarded_address}],
                    ["unreadable clip", "matte_missing_clip", ok],
                    ["unwritable output", "matte_clip", {**ok, "output": f"{tmp_path}/a_file/m.####.exr"}],
                    [
                        "relative output, unsaved .blend",
                        "matte_clip",
                        {**ok, "output": "//m/{shot}.####.exr"},
                    ],
                    ["no clip", "matte_clip_named", {**ok, "clip": "nope"}],
                    ["no strips", "matte_strip", ok],
                    ["bad node", "matte_clip", {**ok, "node": "localhost"}],
                    [
                        "reversed strip",
                        "matte_strip",
                        ok,
                        {"strips": [movie], "set": {"m": {"use_reverse_frames": True}}},
                    ],
                    ["strobed strip", "matte_strip", ok, {"strips": [movie], "set": {"m": {"strobe": 2.0}}}],
                    ["retimed strip", "matte_strip", ok, {"strips": [movie], "retime": ["m"]}],
                    [
                        "moved movie",
                        "matte_strip",
                        ok,
                        {"strips": [movie], "set": {"m": {"filepath": str(tmp_path / "gone.mp4")}}},
                    ],
                    ["mixed images", "matte_strip", ok, {"strips": [mixed]}],
                    [
                        "missing program",
                        "matte_clip",
                        ok,
                        {"prefs": {"executable": str(tmp_path / "no-rvm-node")}},
                    ],
                    [
                        "test connection, missing program",
                        "test_connection",
                        {"node": node},
                        {"prefs": {"executable": str(tmp_path / "no-rvm-node")}},
                    ],
                    [
                        "no channel above",
                        "matte_strip",
                        ok,
                        {"strips": [{**movie, "channel": 128, "trim_end": 115}]},
                    ],
                    [
                        "trimmed past its images",
                        "matte_strip",
                        ok,
                        {
                            "strips": [{**mixed, "files": mixed["files"][:1]}],
                            "set": {"i": {"frame_offset_end": -3}},
                        },
                    ],
                    [
                        "loading breaks midway",  # as 5.0's API change broke the compositor setup
                        "matte_clip",
                        {**ok, "output": f"{tmp_path}/broken/m.####.exr", "compositor": True},
                        {"break": "compat.set_replace_alpha"},
                    ],
                    ["test connection, node down", "test_connection", {"node": "127.0.0.1:1"}],
                    ["test connection, wrong token", "test_connection", {"node": guarded_address}],
                ],
                "prefs": {"token_file": str(tmp_path / "our_token")},
            },
            tmp_path,
        )
    finally:
        guarded.kill()
        guarded.wait()
    outcome = {name: call for name, call in result["calls"]}
    expected = {
        "node down": "127.0.0.1:1",
        "wrong token": "token",
        "unreadable clip": "cannot read",
        "unwritable output": "a_file is a file, not a folder",
        "relative output, unsaved .blend": "save the .blend file first",
        "no clip": "no movie clip named 'nope'",
        "no strips": "select one or more movie or image strips",
        "bad node": "expected HOST:PORT",
        "reversed strip": "strip m: reversed or strobed strips cannot be matted",
        "strobed strip": "strip m: reversed or strobed strips cannot be matted",
        "retimed strip": "strip m: retimed strips cannot be matted",
        "moved movie": "strip m: cannot read",
        "mixed images": "strip i: its images do not share one name pattern",
        "missing program": "cannot start",
        "test connection, missing program": "cannot run rvm-node info",
        "no channel above": "m: mattes written but not loaded: no free channel above 128",
        "trimmed past its images": "strip i: shows frames outside its images",
        "loading breaks midway": "mattes written but not loaded: 'CompositorNodeSetAlpha' object has no",
        "test connection, node down": "127.0.0.1:1",
        "test connection, wrong token": "token",
    }
    for name, fragment in expected.items():
        call = outcome[name]
        assert call["result"] == "ERROR" and fragment in call["error"], (name, call)
        assert len(call["error"].splitlines()) == 1, (name, call["error"])
        assert call["error"].startswith("Error: RVM:"), (name, call["error"])
        assert call["unchanged"], name  # what the broken load had added (nodes, image, clip) is gone
        assert call["folders_left"] == [], name
    # only the call that got as far as loading wrote frames (5 of them, the strip's visible ones)
    assert sorted(p.name for p in out.iterdir()) == [f"m.{n:04d}.exr" for n in range(1, 6)]


def _runs_on(wheel: str, python: int) -> bool:
    """Whether ``wheel`` runs on CPython ``python`` (311: 3.11): its own tag, an older abi3, or pure."""
    tag = re.search(r"-cp(\d+)-(cp\d+|abi3)-", wheel)
    if tag is None:
        return "-none-any" in wheel
    return int(tag.group(1)) == python or (tag.group(2) == "abi3" and int(tag.group(1)) <= python)


def test_release_zip_bundles_every_platform_and_installs(
    blender_python: Path, node: str, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, str(ROOT / "plugins/blender/build.py"), "--dist", str(dist)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    release = dist / "rvm_blender-0.1.0.zip"
    with zipfile.ZipFile(release) as archive:
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
        names = set(archive.namelist())
    assert manifest["type"] == "add-on" and manifest["blender_version_min"] == "4.2.0"
    assert manifest["blender_version_max"] == manifest_maximum()
    assert set(manifest["permissions"]) == {"network", "files"}
    assert sorted(manifest["platforms"]) == ["linux-x64", "macos-arm64", "macos-x64", "windows-x64"]
    wheels = [w.removeprefix("./") for w in manifest["wheels"]]
    assert set(wheels) <= names and "__pycache__" not in " ".join(names)
    platform_tags = {
        "linux-x64": ("manylinux",),
        "windows-x64": ("win_amd64",),
        "macos-arm64": ("arm64", "universal2"),
        "macos-x64": ("x86_64", "universal2"),
    }
    engine = ("onnxruntime", "onnx", "zstandard", "ml_dtypes")  # where onnxruntime has wheels: not Intel Macs
    for package in ("grpcio", "protobuf", "av", "openexr", "opencolorio", *engine):
        for platform, tags in platform_tags.items():
            if package in engine and platform == "macos-x64":
                continue
            for python in (311, 313):  # Blender 4.2-5.0, and 5.1 on
                assert any(
                    w.startswith(f"wheels/{package}-") and any(t in w for t in tags) and _runs_on(w, python)
                    for w in wheels
                ), f"no {package} wheel for {platform}, Python {python}"
    assert not any(w.startswith("wheels/onnxruntime-") and "x86_64" in w and "macosx" in w for w in wheels)
    versions: dict[str, set[str]] = {}
    for w in wheels:
        project, version = w.removeprefix("wheels/").split("-")[:2]
        versions.setdefault(project, set()).add(version)
    assert {
        p: v for p, v in versions.items() if len(v) > 1
    } == {}  # one version of each: Blender installs all
    assert any(w.startswith("wheels/rvm_node-") for w in wheels)
    assert not any(w.startswith(("wheels/numpy-", "wheels/torch-")) for w in wheels)
    result = blender(blender_python, "test_connection", {"zip": str(release), "op": {"node": node}}, tmp_path)
    assert result["result"] == "FINISHED", result["error"]
    site = tmp_path / "blender-user" / "extensions" / ".local" / "lib" / f"python{_python_of(blender_python)}"
    site = site / "site-packages"
    assert list(site.glob("av/*.so")) and not list(site.rglob("*.pyd"))  # Linux binaries only


# --- submit to the farm ---------------------------------------------------------------------------


def _openjd_run(bundle: Path) -> None:
    """Run a job bundle as a farm's worker would: the real `openjd` CLI, every task."""
    openjd = str(Path(sys.executable).parent / "openjd")
    template, values = bundle / "template.yaml", bundle / "job_parameters.json"
    done = subprocess.run(
        [openjd, "run", str(template), "-p", f"file://{values}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def _bundle_of(info: str) -> Path:
    """The bundle folder an "Info: RVM: submitted ... (bundle PATH)..." report names."""
    return Path(info.split("(bundle ", 1)[1].split(")", 1)[0])


def blender_info(
    python: Path, scenario: str, args: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, Any], list[str]]:
    """A scenario's result, and the operator's INFO reports (Blender prints them on stdout)."""
    argv = [str(python), str(SCENARIOS), scenario, json.dumps(args)]
    done = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    infos = [
        line.removeprefix("Info: ") for line in done.stdout.splitlines() if line.startswith("Info: RVM:")
    ]
    return _result(done.returncode, done.stdout, done.stderr), infos


def test_submit_a_clip_to_the_farm_loads_its_matte_to_come(
    blender_python: Path, extension_zip: Path, node: str, clip: Path, tmp_path: Path
) -> None:
    from tests.helpers import recorded_standin_submit

    submit, record = recorded_standin_submit(tmp_path)
    out = tmp_path / "out"
    blend = tmp_path / "shots" / "layout.blend"
    result, infos = blender_info(
        blender_python,
        "matte_clip",
        {
            "zip": str(extension_zip),
            "blend": str(blend),
            "scene_range": [1001, 1010],
            "clip": {"path": str(clip), "frame_start": 1001},
            "prefs": {
                "target": "FARM",
                "submit_command": submit,
                "farm_rvm_node": str(Path(sys.executable).parent / "rvm-node"),
            },
            "op": {
                "node": node,
                "output": f"{out}/{{shot}}/{{shot}}_matte.####.exr",
                "frame_range": "SCENE",
                "compositor": True,
                "blocking": True,
            },
        },
        tmp_path,
    )
    assert result["result"] == "FINISHED", result["error"]
    # one line: what the stand-in said, where the bundle is, what was loaded
    assert len(infos) == 1 and "job-0123" in infos[0] and "mattes load as frames arrive: carphone" in infos[0]
    bundle = _bundle_of(infos[0])
    assert bundle.parent == blend.parent / "layout_rvm_jobs" and bundle.name.startswith("layout_carphone-")
    assert json.loads(record.read_text()) == ["bundle", "submit", "--yes", str(bundle)]
    template = yaml.safe_load((bundle / "template.yaml").read_text())
    tasks = {
        p["name"]: p["range"] for p in template["steps"][0]["parameterSpace"]["taskParameterDefinitions"]
    }
    assert tasks["Shot"] == ["carphone"] and tasks["Input"] == [str(clip)]
    assert json.loads(tasks["Settings"][0])["frames"] == "1-10"
    pattern = out / "carphone" / "carphone_matte.####.exr"
    assert json.loads((bundle / "job_parameters.json").read_text())["OutputAlpha"] == str(pattern)  # one shot
    # the matte is loaded at once as an image sequence of the frames to come (none is there yet)
    after = result["after"]
    assert not out.exists()
    image = next(i for i in after["images"] if i["name"] == "carphone_matte")
    assert image["source"] == "SEQUENCE" and image["colorspace"] == "Non-Color"
    assert image["filepath"] == str(out / "carphone" / "carphone_matte.0001.exr")
    assert image["range"] == [1001, 10, 0]
    assert [c["name"] for c in after["clips"]] == ["carphone.mp4"]  # a movie clip needs its frames on disk
    assert after["image_nodes"] == [["carphone_matte", 1001, 10, 0]]
    assert ["CompositorNodeImage", "Image", "CompositorNodeSetAlpha", "Alpha"] in after["links"]
    assert ["CompositorNodeMovieClip", "Image", "CompositorNodeSetAlpha", "Image"] in after["links"]
    # run as a farm would, the job writes exactly the frames the image sequence reads
    _openjd_run(bundle)
    reference = tmp_path / "reference"
    direct_matte(clip, node, "1-10", reference / "ref.####.exr")
    assert_same_mattes(out / "carphone", reference, range(1, 11), "carphone_matte")


def test_submit_strips_to_the_farm_loads_their_matte_strips_to_come(
    blender_python: Path, extension_zip: Path, clip: Path, plate_sequence: list[Path], tmp_path: Path
) -> None:
    from tests.helpers import recorded_standin_submit

    submit, record = recorded_standin_submit(tmp_path)
    out = tmp_path / "out"
    args = _strip_args(extension_zip, clip, plate_sequence, out, "n1:50051,n2:50051")
    args["prefs"] = {
        "submit_command": submit,
        "bundle_folder": str(tmp_path / "jobs"),
    }  # target: the operator's
    args["op"]["target"] = "FARM"
    result, infos = blender_info(blender_python, "matte_strips", args, tmp_path)
    assert result["result"] == "FINISHED", result["error"]
    assert len(infos) == 1 and "mattes load as frames arrive: movie, seq" in infos[0]
    bundle = _bundle_of(infos[0])
    assert bundle.parent == tmp_path / "jobs" and bundle.name.startswith("untitled_movie_seq-")
    assert json.loads(record.read_text())[-1] == str(bundle)
    template = yaml.safe_load((bundle / "template.yaml").read_text())
    tasks = {
        p["name"]: p["range"] for p in template["steps"][0]["parameterSpace"]["taskParameterDefinitions"]
    }
    assert tasks["Shot"] == ["movie", "seq"]
    assert tasks["Input"] == [str(clip), str(plate_sequence[0]).replace("1001", "####")]
    assert tasks["OutputAlpha"] == [str(out / "movie" / "movie.####.exr"), str(out / "seq" / "seq.####.exr")]
    assert [json.loads(s)["frames"] for s in tasks["Settings"]] == ["6-120", "1001-1030"]
    strips = {s["name"]: s for s in result["after"]["strips"]}
    for plate, matte, folder in (("movie", "movie_matte", "movie"), ("seq", "seq_matte", "seq")):
        p, m = strips[plate], strips[matte]
        assert m["type"] == "IMAGE" and m["channel"] == p["channel"] + 1 and m["blend_type"] == "ALPHA_OVER"
        assert (m["final_start"], m["final_end"]) == (p["final_start"], p["final_end"])
        assert m["directory"] == str(out / folder) + os.sep and m["colorspace"] == "Non-Color"
    assert strips["movie_matte"]["files"] == [f"movie.{n:04d}.exr" for n in range(6, 121)]
    assert strips["seq_matte"]["files"] == [f"seq.{n}.exr" for n in range(1001, 1031)]
    assert not out.exists()  # the farm writes them


def test_failed_submits_are_one_line_and_leave_the_scene_alone(
    blender_python: Path, extension_zip: Path, clip: Path, tmp_path: Path
) -> None:
    from tests.helpers import recorded_standin_submit

    failing, record = recorded_standin_submit(tmp_path, exit_code=3)
    (tmp_path / "unused").mkdir()
    unused, never = recorded_standin_submit(tmp_path / "unused")
    (tmp_path / "a_file").write_text("not a folder")
    jobs = tmp_path / "jobs"
    ok = {
        "node": "127.0.0.1:50051",
        "output": f"{tmp_path}/out/m.####.exr",
        "blocking": True,
        "target": "FARM",
    }
    farm = {"bundle_folder": str(jobs), "submit_command": failing}
    movie = {
        "type": "MOVIE",
        "name": "m",
        "path": str(clip),
        "channel": 128,
        "frame_start": 1,
        "trim_end": 115,
    }
    result = blender(
        blender_python,
        "calls",
        {
            "zip": str(extension_zip),
            "clip": {"path": str(clip)},
            "missing_clip": str(tmp_path / "gone.mp4"),
            "calls": [
                ["submit fails", "matte_clip", ok, {"prefs": farm}],
                [
                    "no submit command",
                    "matte_clip",
                    ok,
                    {"prefs": {**farm, "submit_command": "no-such-deadline bundle submit --yes {bundle}"}},
                ],
                [
                    "unwritable bundle folder",
                    "matte_clip",
                    ok,
                    {"prefs": {**farm, "bundle_folder": str(tmp_path / "a_file" / "jobs")}},
                ],
                [
                    "no OpenCue library",
                    "matte_clip",
                    ok,
                    {"prefs": {**farm, "farm_format": "OPENCUE", "cuebot": "127.0.0.1:1"}},
                ],
                ["no Cuebot", "matte_clip", ok, {"prefs": {**farm, "farm_format": "OPENCUE"}}],
                ["unsaved .blend", "matte_clip", ok, {"prefs": {**farm, "bundle_folder": ""}}],
                ["unreadable clip", "matte_missing_clip", ok, {"prefs": farm}],
                [
                    "no channel for the matte",
                    "matte_strip",
                    ok,
                    {"strips": [movie], "prefs": {**farm, "submit_command": unused}},
                ],
            ],
        },
        tmp_path,
    )
    outcome = {name: call for name, call in result["calls"]}
    expected = {
        "submit fails": "failed (exit 3): stand-in farm: queue rvm is closed; the job bundle is in",
        "no submit command": "submit command no-such-deadline: not found",
        "unwritable bundle folder": "cannot write the job bundle in",
        "no OpenCue library": "opencue-pyoutline is not installed",
        "no Cuebot": "set the Cuebot address",
        "unsaved .blend": "save the .blend file first, or set a bundle folder",
        "unreadable clip": "cannot read",
        "no channel for the matte": "m: the matte could not be loaded: no free channel above 128",
    }
    for name, fragment in expected.items():
        call = outcome[name]
        assert call["result"] == "ERROR" and fragment in call["error"], (name, call)
        assert len(call["error"].splitlines()) == 1 and call["error"].startswith("Error: RVM:"), (name, call)
        assert call["unchanged"], name  # no image, clip, strip or compositor node
    # the bundles whose submit step failed stay, and the message says where; nothing else was written
    kept = sorted(jobs.iterdir())
    assert len(kept) == 2 and all((k / "template.yaml").is_file() for k in kept)
    assert str(kept[0]) in outcome["submit fails"]["error"] and json.loads(record.read_text())[-1] == str(
        kept[0]
    )
    assert not never.exists() and not (tmp_path / "out").exists()
