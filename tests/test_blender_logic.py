"""The Blender add-on's bpy-free parts: frame mapping, output paths, command lines, the progress reader.

What needs Blender itself runs in tests/test_blender_plugin.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import recorded_standin_submit, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "blender"))

from rvm_blender import command, farm, process, shots
from rvm_blender.shots import FrameMap, PluginError, ShotRequest

from rvm_node.events import ProgressEvent
from rvm_node.farm import load_shot_list


def test_movie_clip_frames_follow_blender() -> None:
    # movie frame (from 0) shown at scene frame f is f - frame_start + frame_offset; numbered from 1
    frames = shots.clip_frame_map(is_movie=True, first_file=1, frame_start=1001, frame_offset=0, duration=120)
    assert (frames.first, frames.last, frames.scene_first) == (1, 120, 1001)
    offset = shots.clip_frame_map(is_movie=True, first_file=1, frame_start=1, frame_offset=5, duration=120)
    assert (offset.first, offset.last, offset.scene_frame(offset.first)) == (6, 120, 1)
    sequence = shots.clip_frame_map(
        is_movie=False, first_file=1001, frame_start=1, frame_offset=2, duration=30
    )
    assert (sequence.first, sequence.last, sequence.scene_first) == (1003, 1032, 1)
    with pytest.raises(PluginError, match="no frames"):
        shots.clip_frame_map(is_movie=True, first_file=1, frame_start=1, frame_offset=0, duration=0)
    with pytest.raises(PluginError, match="frame offset 130"):
        shots.clip_frame_map(is_movie=True, first_file=1, frame_start=1, frame_offset=130, duration=120)


def test_scene_range_clamps_the_shot() -> None:
    frames = FrameMap(6, 120, 1)
    clamped = frames.clamp_to_scene(10, 20, "clip c")
    assert (clamped.first, clamped.last, clamped.scene_first) == (15, 25, 10)
    with pytest.raises(PluginError, match="clip c: no frames inside the scene range 200-300"):
        frames.clamp_to_scene(200, 300, "clip c")
    with pytest.raises(PluginError, match="no frames to matte"):
        FrameMap(5, 4, 1)


def test_strip_frames_follow_trims_and_file_numbers() -> None:
    movie = shots.strip_frame_map(frame_start=10, final_start=15, final_end=130, numbers=None)
    assert (movie.first, movie.last, movie.scene_first) == (6, 120, 15)
    numbers = list(range(1001, 1031))
    images = shots.strip_frame_map(frame_start=200, final_start=202, final_end=230, numbers=numbers)
    assert (images.first, images.last, images.scene_first) == (1003, 1030, 202)
    with pytest.raises(PluginError, match="outside its images"):
        shots.strip_frame_map(frame_start=200, final_start=200, final_end=240, numbers=numbers)
    with pytest.raises(PluginError, match="not numbered one after another"):
        shots.strip_frame_map(frame_start=0, final_start=0, final_end=3, numbers=[1, 2, 4])
    with pytest.raises(PluginError, match="empty"):
        shots.strip_frame_map(frame_start=0, final_start=5, final_end=5, numbers=None)


def test_frame_patterns_and_paths() -> None:
    assert shots.frame_pattern("/p/plate_v2.1001.exr") == ("/p/plate_v2.####.exr", 1001)
    assert shots.frame_path("/m/x.####.exr", 7) == "/m/x.0007.exr"
    assert shots.frame_path("/m/x.%06d.exr", 7) == "/m/x.000007.exr"
    assert shots.frame_path("/m/x.##.exr", 1001) == "/m/x.1001.exr"
    with pytest.raises(PluginError, match="needs a frame number"):
        shots.frame_pattern("/p/plate.exr")


def test_output_patterns_resolve_relative_to_the_blend(tmp_path: Path) -> None:
    blend = str(tmp_path / "shot.blend")
    alpha = shots.resolve_output("//mattes/{shot}/{shot}_matte.####.exr", "sh010", blend, "EXR")
    assert alpha == str(tmp_path / "mattes" / "sh010" / "sh010_matte.####.exr")
    assert shots.resolve_output("/m/{shot}.####.exr", "a", "", "PNG16") == "/m/a.####.png"
    kinds = shots.output_patterns(alpha, {"alpha", "foreground", "composition"})
    assert kinds["foreground"].endswith("sh010_fgr.####.exr")
    assert kinds["composition"].endswith("sh010_comp.####.exr")
    plain = shots.output_patterns("/m/a.####.exr", {"alpha", "foreground"})
    assert plain == {"alpha": "/m/a.####.exr", "foreground": "/m/a_fgr.####.exr"}
    with pytest.raises(PluginError, match=r"save the \.blend file first"):
        shots.resolve_output("//m/{shot}.####.exr", "a", "", "EXR")
    with pytest.raises(PluginError, match="needs a frame field"):
        shots.resolve_output("/m/{shot}.exr", "a", blend, "EXR")
    with pytest.raises(PluginError, match="absolute path"):
        shots.resolve_output("m/{shot}.####.exr", "a", blend, "EXR")
    with pytest.raises(PluginError, match="expected one of EXR, PNG16"):
        shots.resolve_output("/m/{shot}.####.exr", "a", blend, "TIFF")
    with pytest.raises(PluginError, match="outputs: expected some of"):
        shots.output_patterns(alpha, {"depth"})
    with pytest.raises(PluginError, match="the output pattern is empty"):
        shots.resolve_output("  ", "a", blend, "EXR")
    with pytest.raises(PluginError, match=r"/m/a\.exr: needs a frame field"):
        shots.output_patterns("/m/a.exr", {"alpha", "foreground"})
    with pytest.raises(PluginError, match=r"/m/a\.exr: no frame field"):
        shots.frame_path("/m/a.exr", 1)
    assert shots.shot_name("my plate v2.mov") == "my_plate_v2"
    assert shots.unique_names(["a", "a", "b", "a", "a_2"]) == ["a", "a_2", "b", "a_3", "a_2_2"]
    assert shots.shot_name("***") == "shot"


def test_run_options_are_checked(tmp_path: Path) -> None:
    assert command.parse_nodes(" a:1, b:2 ;c:3") == ("a:1", "b:2", "c:3")
    with pytest.raises(PluginError, match="expected HOST:PORT"):
        command.parse_nodes("localhost")
    with pytest.raises(PluginError, match="no render node"):
        command.RunOptions(nodes=())
    with pytest.raises(PluginError, match="format 'TIFF'"):
        command.RunOptions(nodes=("a:1",), file_format="TIFF")
    with pytest.raises(
        PluginError, match=r"^preferences: downsample_ratio: expected a number in \(0, 1\] or auto, got 1.5$"
    ):
        command.RunOptions(nodes=("a:1",), downsample_ratio=1.5)
    with pytest.raises(PluginError, match=r"token file .*: not found"):
        command.RunOptions(nodes=("a:1",), token_file=str(tmp_path / "missing"))


def _shot(tmp_path: Path, name: str = "sh010") -> ShotRequest:
    plate = tmp_path / "plate.mp4"
    plate.write_bytes(b"")
    return ShotRequest(
        name=name,
        input=str(plate),
        frames=FrameMap(6, 25, 1),
        outputs={
            "alpha": str(tmp_path / name / "m.####.exr"),
            "foreground": str(tmp_path / name / "f.####.exr"),
        },
        input_colorspace="Linear Rec.709",
    )


def test_one_shot_on_one_node_runs_matte(tmp_path: Path) -> None:
    options = command.RunOptions(nodes=("h:1",), downsample_ratio=0.25, token_file=__file__)
    argv = command.build_command([_shot(tmp_path)], options, tmp_path)
    assert argv[:4] == [sys.executable, "-m", "rvm_node", "matte"]
    text = " ".join(argv)
    for part in (
        "--node h:1",
        f"--token-file {__file__}",
        "--frames 6-25",
        "--downsample-ratio 0.25",
        "--input-colorspace Linear Rec.709",
        "--exr-channels RGBA",
        "--resume",
        "--progress-json",
        f"--output-foreground {tmp_path / 'sh010' / 'f.####.exr'}",
    ):
        assert part in text
    png = command.build_command([_shot(tmp_path)], command.RunOptions(("h:1",), "PNG16", None), tmp_path)
    assert "--bit-depth 16" in " ".join(png) and "--downsample-ratio auto" in " ".join(png)
    external = command.RunOptions(nodes=("h:1",), executable="/opt/rvm/bin/rvm-node")
    assert command.build_command([_shot(tmp_path)], external, tmp_path)[:2] == [
        "/opt/rvm/bin/rvm-node",
        "matte",
    ]


def test_several_shots_go_to_the_farm_as_a_shot_list_it_accepts(tmp_path: Path) -> None:
    shots_ = [_shot(tmp_path, "a"), _shot(tmp_path, "b")]
    options = command.RunOptions(nodes=("h:1", "h:2"), file_format="PNG16", downsample_ratio=None)
    argv = command.build_command(shots_, options, tmp_path)
    assert argv[3:6] == ["farm", "run", str(tmp_path / "shots.toml")]
    assert argv[argv.index("--nodes") + 1] == "h:1,h:2"
    parsed = load_shot_list(tmp_path / "shots.toml")  # the farm's own parser
    assert [s.name for s in parsed] == ["a", "b"]
    assert parsed[0].frames is not None and (parsed[0].frames.first, parsed[0].frames.last) == (6, 25)
    assert parsed[0].outputs == shots_[0].outputs and parsed[0].downsample_ratio is None
    assert parsed[0].input_colorspace == "Linear Rec.709" and parsed[0].settings.bit_depth == 16
    # one shot over two nodes also goes through the farm, for failover
    assert "farm" in command.build_command(shots_[:1], options, tmp_path)
    with pytest.raises(PluginError, match="nothing to matte"):
        command.build_command([], options, tmp_path)


def test_environment_carries_the_import_path_and_blenders_ocio(tmp_path: Path) -> None:
    env = command.environment({"PATH": "/bin"}, [str(tmp_path), "/does/not/exist", ""], "/b/config.ocio")
    assert env["PYTHONPATH"] == str(tmp_path) and env["OCIO"] == "/b/config.ocio"
    studio = command.environment({"OCIO": "/studio.ocio", "PYTHONPATH": "/x"}, [str(tmp_path)], "/b/c.ocio")
    assert studio["OCIO"] == "/studio.ocio" and studio["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/x"])


def test_overwrite_clears_only_the_shots_frames(tmp_path: Path) -> None:
    shot = _shot(tmp_path)
    folder = tmp_path / "sh010"
    folder.mkdir()
    for n in (5, 6, 25, 26):
        (folder / f"m.{n:04d}.exr").write_bytes(b"x")
    (folder / "notes.txt").write_text("keep")
    assert command.clear_outputs(shot) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["m.0005.exr", "m.0026.exr", "notes.txt"]


def test_output_folders_are_checked_before_anything_starts(tmp_path: Path) -> None:
    command.check_writable(str(tmp_path / "new" / "deeper"))
    assert (tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PluginError, match="is a file, not a folder"):
        command.check_writable(str(tmp_path / "file" / "m"))
    with pytest.raises(PluginError, match="/proc/rvm-node-test: cannot write there"):
        command.check_writable("/proc/rvm-node-test")  # refused even to root


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "fake_rvm_node.py"
    path.write_text(body)
    return [sys.executable, str(path)]


def _printing(tmp_path: Path, events: list[ProgressEvent], code: int = 0) -> list[str]:
    """A stand-in for rvm-node that prints these events in the real schema, then exits with ``code``."""
    lines = [event.to_json() for event in events]
    return _script(tmp_path, f"import sys\nprint({chr(10).join(lines)!r})\nsys.exit({code})\n")


def test_progress_lines_from_matte_and_farm(tmp_path: Path) -> None:
    matte = _printing(
        tmp_path,
        [
            ProgressEvent("started", total=3),
            *(ProgressEvent("frame", frame=i, done=i, total=3, fps=2.0, eta=1.0) for i in range(1, 4)),
            ProgressEvent("done", done=3, total=3, fps=2.0, eta=0.0),
        ],
    )
    run = process.MatteProcess(matte, dict(os.environ), tmp_path / "a", {"sh": 5})
    run.start()
    assert run.wait() == 0 and run.ok
    assert run.shots["sh"].done == 5 and run.fps == 2.0  # 2 frames were already on disk (total 3 of 5)
    farm = _printing(
        tmp_path,
        [
            ProgressEvent("started", shot="a", node="n1", total=4),
            ProgressEvent("frame", shot="a", node="n1", done=2, total=4, fps=1.0),
            ProgressEvent("retry", shot="a", node="n1", done=2, total=4, retries=1, message="node lost"),
            ProgressEvent("done", shot="a", node="n2", done=3, total=3, retries=1),
            ProgressEvent("failed", shot="b", node="n1", done=1, total=4, message="node lost"),
        ],
        code=4,
    )
    run = process.MatteProcess(farm, dict(os.environ), tmp_path / "b", {"a": 4, "b": 4})
    run.start()
    assert run.wait() == 4 and not run.ok
    run.cancel()  # too late: it ended on its own, and says why
    assert not run.cancelled
    assert run.shots["a"].state == "done" and run.shots["a"].nodes == ["n1", "n2"]
    assert run.shots["b"].state == "failed" and run.error_line() == "node lost"
    assert run.done == 5 and "5/8 frames" in run.status_text()


def test_lines_of_another_schema_are_ignored(tmp_path: Path) -> None:
    other = _script(
        tmp_path,
        "import sys\n"
        'print(\'{"v": 2, "kind": "done", "shot": null, "done": 3, "total": 3}\')\n'
        'print(\'{"v": 1, "kind": "finished", "shot": null, "done": 3, "total": 3}\')\n'
        "print('[1, 2]')\nsys.exit(4)\n",
    )
    run = process.MatteProcess(other, dict(os.environ), tmp_path / "g", {"sh": 3})
    run.start()
    assert run.wait() == 4
    assert run.shots["sh"].done == 0 and run.shots["sh"].state == "failed"  # nothing read from them


def test_error_line_is_rvm_nodes_own(tmp_path: Path) -> None:
    failing = _script(
        tmp_path,
        "import sys\nprint('warming up', file=sys.stderr)\n"
        "print('rvm-node: error: node 127.0.0.1:9: unavailable', file=sys.stderr)\nsys.exit(4)\n",
    )
    run = process.MatteProcess(failing, dict(os.environ), tmp_path / "c", {"sh": 3})
    run.start()
    assert run.wait() == 4 and run.shots["sh"].state == "failed"
    assert run.error_line() == "node 127.0.0.1:9: unavailable"
    crash = _script(tmp_path, "raise SystemExit('Traceback: boom')\n")
    run = process.MatteProcess(crash, dict(os.environ), tmp_path / "d", {"sh": 3})
    run.start()
    run.wait()
    assert run.error_line() == "Traceback: boom"
    with pytest.raises(OSError, match="cannot start"):
        process.MatteProcess([str(tmp_path / "missing")], {}, tmp_path / "e", {"sh": 1}).start()


def test_cancel_interrupts_and_partial_lines_wait(tmp_path: Path) -> None:
    slow = _script(
        tmp_path,
        "import json, signal, sys, time\n"
        "def stop(*args):\n    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"sys.stdout.write({ProgressEvent('frame', frame=1, done=1, total=9).to_json()!r} + '\\n' + '{{\"v')\n"
        "sys.stdout.flush()\n"
        "try:\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('\": 1}')\n"
        f"    print({ProgressEvent('cancelled', done=1, total=9, message='stop').to_json()!r})\n"
        "    sys.exit(130)\n",
    )
    run = process.MatteProcess(slow, dict(os.environ), tmp_path / "f", {"sh": 9})
    run.start()

    def started() -> bool:
        run.poll()
        return run.done >= 1

    wait_until(started, 30)
    assert run.done == 1
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 10  # interrupted, not killed after the grace period
    assert run.returncode == 130 and run.cancelled and run.shots["sh"].state == "cancelled"


def test_leftover_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "m.0001.exr").write_bytes(b"x")
    (tmp_path / ".m.0002.abc.rvmtmp.exr").write_bytes(b"x")  # a killed run's
    (tmp_path / ".other.0002.abc.rvmtmp.exr").write_bytes(b"x")  # another job's, in the same folder
    (tmp_path / ".m.video.rvmtmp.mp4").write_bytes(b"x")  # not one of this pattern's frames
    assert process.remove_temporaries([str(tmp_path / "m.####.exr")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".m.video.rvmtmp.mp4",
        ".other.0002.abc.rvmtmp.exr",
        "m.0001.exr",
    ]


# --- submit to the farm -------------------------------------------------------------------------


def test_submit_writes_a_bundle_of_the_run_here_shots_and_runs_the_submit_command(tmp_path: Path) -> None:
    import json
    from datetime import datetime

    import yaml

    requests = [_shot(tmp_path, "a"), _shot(tmp_path, "b")]
    run = command.RunOptions(nodes=("h:1", "h:2"), file_format="PNG16", downsample_ratio=0.25)
    submit, record = recorded_standin_submit(tmp_path)
    cleared: list[bool] = []
    blend = str(tmp_path / "sh010 layout.blend")
    done = farm.submit_requests(
        requests,
        run,
        farm.FarmOptions(submit_command=submit, rvm_node="/opt/rvm/bin/rvm-node"),
        blend,
        before_submit=lambda: cleared.append(not record.exists()),
        now=datetime(2025, 3, 4, 5, 6, 7),
    )
    assert done.bundle == tmp_path / "sh010 layout_rvm_jobs" / "sh010_layout_a_b-20250304-050607"
    assert done.said == f"submitted {done.bundle.name}: job-0123" and cleared == [True]
    assert json.loads(record.read_text()) == ["bundle", "submit", "--yes", str(done.bundle)]
    template = yaml.safe_load((done.bundle / "template.yaml").read_text())
    space = template["steps"][0]["parameterSpace"]
    tasks = {p["name"]: p["range"] for p in space["taskParameterDefinitions"]}
    assert tasks["Shot"] == ["a", "b"] and tasks["Input"] == [r.input for r in requests]
    assert tasks["OutputAlpha"] == [r.outputs["alpha"] for r in requests]
    assert tasks["OutputForeground"] == [r.outputs["foreground"] for r in requests]
    settings = json.loads(tasks["Settings"][0])
    assert settings == {"frames": "6-25", "input_colorspace": "Linear Rec.709"}  # 16-bit: the default
    values = json.loads((done.bundle / "job_parameters.json").read_text())
    assert values["Nodes"] == "h:1,h:2" and values["RvmNode"] == "/opt/rvm/bin/rvm-node"
    assert values["DownsampleRatio"] == "0.25"
    # the farm's shots are those "run here" gives `farm run`
    shot_list = load_shot_list(command.write_shot_list(requests, run, tmp_path / "s.toml"))
    assert farm.farm_shots(requests, run) == shot_list


def test_failed_submits_say_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [_shot(tmp_path)]
    run = command.RunOptions(nodes=("h:1",))
    blend = str(tmp_path / "shot.blend")
    jobs = tmp_path / "shot_rvm_jobs"
    failing, _ = recorded_standin_submit(tmp_path, exit_code=3)

    def error(options: farm.FarmOptions, blend_path: str = blend) -> str:
        with pytest.raises(PluginError) as caught:
            farm.submit_requests(requests, run, options, blend_path)
        assert len(str(caught.value).splitlines()) == 1
        return str(caught.value)

    message = error(farm.FarmOptions(submit_command=failing))
    (kept,) = jobs.iterdir()
    assert "failed (exit 3): stand-in farm: queue rvm is closed" in message
    assert message.endswith(f"the job bundle is in {kept}") and (kept / "template.yaml").is_file()
    message = error(farm.FarmOptions(submit_command="no-such-deadline bundle submit {bundle}"))
    assert "submit command no-such-deadline: not found" in message
    (tmp_path / "a_file").write_text("x")
    message = error(farm.FarmOptions(submit_command=failing, folder=str(tmp_path / "a_file" / "jobs")))
    assert "cannot write the job bundle in" in message
    monkeypatch.setitem(sys.modules, "outline", None)  # OpenCue's library not installed
    cue = farm.FarmOptions(format="opencue", cuebot="cue:8443", folder=str(tmp_path / "cue" / "jobs"))
    assert "opencue-pyoutline is not installed" in error(cue)
    assert not (tmp_path / "cue").exists()  # the folders made for it are gone again
    assert "set the Cuebot address" in error(farm.FarmOptions(format="opencue"))
    assert "set the submit command" in error(farm.FarmOptions(submit_command=""))
    assert "save the .blend file first, or set a bundle folder" in error(farm.FarmOptions(), "")
    assert "expected an absolute path" in error(farm.FarmOptions(folder="jobs"))
    with pytest.raises(PluginError, match="farm format 'tractor'"):
        farm.FarmOptions(format="tractor")
    assert len(list(jobs.iterdir())) == 2  # only the bundles whose submit step failed stay


def test_bundle_folders() -> None:
    from rvm_node.farm.submit import DEADLINE_CLOUD

    assert farm.DEADLINE_CLOUD == DEADLINE_CLOUD == farm.FarmOptions().submit_command
    assert farm.jobs_folder("", "/p/x.blend") == Path("/p/x_rvm_jobs")
    assert farm.jobs_folder(" /studio/jobs ", "") == Path("/studio/jobs")


def test_the_build_pins_the_engines_to_this_pythons_and_adds_openvino_and_numba_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "plugins" / "blender" / "build.py"
    spec = importlib.util.spec_from_file_location("rvm_blender_build", path)
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, build)  # dataclasses look their module up there
    spec.loader.exec_module(build)
    plain = build.Engine().requirements()
    faster = build.Engine(openvino=True, numba=True).requirements()
    assert build.Engine(bundled=False, openvino=True).requirements() == []
    assert f"onnxruntime=={importlib.metadata.version('onnxruntime')}" in plain
    assert not any(r.startswith(("openvino", "numba", "llvmlite")) for r in plain)
    assert faster[: len(plain)] == plain
    for name in ("openvino", "numba", "llvmlite"):  # at the versions this Python has: the same numbers
        assert f"{name}=={importlib.metadata.version(name)}" in faster
    assert not any(r.startswith("openvino-telemetry") for r in faster)  # never imported, so not carried
    assert [build.Engine(openvino=True, numba=True).suffix(), build.Engine(bundled=False).suffix()] == [
        "-openvino-numba",
        "-client",
    ]
    for flag in ("--openvino", "--numba"):
        with pytest.raises(SystemExit):
            build.main([flag, "--no-engine"])
