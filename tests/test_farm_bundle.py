"""Farm job bundles: Open Job Description templates run by the real `openjd` CLI against real
`rvm-node serve` processes, and OpenCue specs built and read back with OpenCue's own outline library."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from rvm_node.cli import build_parser, main
from rvm_node.errors import SubmitError
from rvm_node.farm.openjd import progress_lines
from rvm_node.farm.submit import run_submit_command
from rvm_node.io.images import read_image
from tests.helpers import recorded_standin_submit, run_rvm_node, spawn_node, wait_until

BIN = Path(sys.executable).parent
OPENJD = str(BIN / "openjd")
RVM_NODE = str(BIN / "rvm-node")
RATIO = 0.5


@pytest.fixture(scope="module")
def clip(weights_cache: Path) -> Path:
    from rvm_node.example import example_clip

    return example_clip()


def shot_list(path: Path, clip: Path, out: Path, shots: dict[str, str], extra: str = "") -> Path:
    lines = ["[defaults]", f'input = "{clip}"', f"downsample_ratio = {RATIO}"]
    lines += [f'output_alpha = "{out}/{{shot}}/m.####.png"', "", extra]
    for name, frames in shots.items():
        lines += ["[[shot]]", f'name = "{name}"', f'frames = "{frames}"', ""]
    path.write_text("\n".join(lines))
    return path


def bundle(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_rvm_node("farm", "bundle", *args, check=check)


def template(directory: Path) -> dict:
    return yaml.safe_load((directory / "template.yaml").read_text())


def openjd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENJD, *args], capture_output=True, text=True, timeout=timeout, check=False)


def openjd_run(directory: Path, *args: str) -> list[str]:
    """The `openjd run` command line of a bundle, with its parameter values."""
    template = str(directory / "template.yaml")
    return [OPENJD, "run", template, "-p", f"file://{directory / 'job_parameters.json'}", *args]


def openjd_check(directory: Path) -> None:
    done = openjd("check", str(directory / "template.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passes validation checks" in done.stdout


def task_parameters(directory: Path) -> dict[str, list]:
    space = template(directory)["steps"][0]["parameterSpace"]
    return {p["name"]: p["range"] for p in space["taskParameterDefinitions"]}


# --- bundles, checked by openjd -----------------------------------------------------------------


def test_bundle_from_a_shot_list(clip: Path, tmp_path: Path) -> None:
    shots = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"sh010": "1-10", "sh020": "11-20"})
    done = bundle(str(shots), "--nodes", "n1:50051,n2:50051", "--output", str(tmp_path / "b"))
    assert done.stdout.strip() == str(tmp_path / "b")
    openjd_check(tmp_path / "b")
    doc = template(tmp_path / "b")
    assert doc["specificationVersion"] == "jobtemplate-2023-09"
    job = {p["name"]: p for p in doc["parameterDefinitions"]}
    assert job["Nodes"]["default"] == "n1:50051,n2:50051"
    assert {k: v for k, v in job["OutputAlpha"].items() if k != "description"} == {
        "name": "OutputAlpha",
        "type": "PATH",
        "dataFlow": "OUT",
    }
    assert job["DownsampleRatio"]["default"] == "0.5"
    tasks = task_parameters(tmp_path / "b")
    assert tasks["Shot"] == ["sh010", "sh020"]
    assert tasks["Input"] == [str(clip), str(clip)]
    assert [json.loads(s) for s in tasks["Settings"]] == [{"frames": "1-10"}, {"frames": "11-20"}]
    assert doc["steps"][0]["parameterSpace"]["combination"] == "(Shot, Input, Settings)"
    values = yaml.safe_load((tmp_path / "b" / "parameter_values.yaml").read_text())["parameterValues"]
    values = {v["name"]: v["value"] for v in values}
    assert values == {**{name: p["default"] for name, p in job.items() if "default" in p},
                      "OutputAlpha": f"{tmp_path}/out/{{shot}}/m.####.png"}  # fmt: skip
    assert json.loads((tmp_path / "b" / "job_parameters.json").read_text()) == values


def test_bundle_from_inputs_with_a_split(clip: Path, tmp_path: Path) -> None:
    link = tmp_path / "plate_a.mp4"
    link.symlink_to(clip)
    out = tmp_path / "out" / "{shot}.####.exr"
    args = [
        "--nodes",
        "n1:1",
        "--output-alpha",
        str(out),
        "--frames",
        "1-20",
        "--split",
        "3",
        "--preroll",
        "4",
    ]
    bundle(str(link), *args, "--output", str(tmp_path / "b"))
    openjd_check(tmp_path / "b")
    tasks = task_parameters(tmp_path / "b")
    assert tasks["Shot"] == ["plate_a"] * 3 and tasks["Segment"] == [1, 2, 3]
    args_of_task = template(tmp_path / "b")["steps"][0]["script"]["actions"]["onRun"]["args"]
    at = args_of_task.index("--split")
    assert args_of_task[at : at + 6] == [
        "--split",
        "3",
        "--preroll",
        "4",
        "--segment",
        "{{Task.Param.Segment}}",
    ]
    assert args_of_task[-1] == "--progress-openjd"


def test_outputs_that_differ_per_shot_are_task_parameters(clip: Path, tmp_path: Path) -> None:
    extra = '[[shot]]\nname = "odd"\nframes = "1-4"\noutput_alpha = "elsewhere/odd.####.png"\n'
    shots = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"sh010": "1-10"}, extra)
    bundle(str(shots), "--nodes", "n1:1", "--output", str(tmp_path / "b"))
    openjd_check(tmp_path / "b")
    job = {p["name"] for p in template(tmp_path / "b")["parameterDefinitions"]}
    assert "OutputAlpha" not in job
    tasks = task_parameters(tmp_path / "b")
    assert tasks["Shot"] == ["odd", "sh010"] or tasks["Shot"] == ["sh010", "odd"]
    expected = {
        "sh010": f"{tmp_path}/out/sh010/m.####.png",
        "odd": str(Path.cwd() / "elsewhere/odd.####.png"),
    }
    assert dict(zip(tasks["Shot"], tasks["OutputAlpha"], strict=True)) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--output", "/proc/rvm-bundle"], "/proc/rvm-bundle: cannot write the bundle there"),
        (["--output", "/no/such/folder/b"], "/no/such/folder/b: its folder /no/such/folder does not exist"),
        (["--shared-root", "/mnt/projects"], "is outside the shared storage (/mnt/projects)"),
        (["--cuebot", "cue:8443"], "--cuebot submits OpenCue specs: give --format opencue"),
        (["--shot-settings", "{bad"], "--shot-settings: expected a JSON object"),
        (["--shot-settings", '{"colour": 1}'], "--shot-settings: unknown keys colour"),
        (["--checkpoint-every", "0"], "--checkpoint-every >= 1"),
        (["--split", "0"], "--split must be >= 1"),
    ],
)
def test_bad_bundles_get_one_line(args: list[str], message: str, clip: Path, tmp_path: Path) -> None:
    base = [str(clip), "--nodes", "n1:1", "--output-alpha", str(tmp_path / "m.####.png")]
    if "--output" not in args:
        base += ["--output", str(tmp_path / "b")]
    done = bundle(*base, *args, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_an_unknown_bundle_format_is_a_usage_error(clip: Path, tmp_path: Path) -> None:
    base = [str(clip), "--nodes", "n1:1", "--output-alpha", str(tmp_path / "m.####.png")]
    done = bundle(*base, "--output", str(tmp_path / "b"), "--format", "deadline", check=False)
    assert done.returncode == 2
    assert "argument --format: invalid choice: 'deadline' (choose from openjd, opencue)" in done.stderr or (
        "argument --format: invalid choice: 'deadline' (choose from 'openjd', 'opencue')" in done.stderr
    ), done.stderr
    assert [p.name for p in tmp_path.iterdir()] == []


def test_an_input_that_is_no_farm_path(tmp_path: Path) -> None:
    done = bundle("http://example.com/plate.mp4", "--nodes", "n1:1", "--output-alpha", "m.####.png",
                  "--output", str(tmp_path / "b"), check=False)  # fmt: skip
    assert done.returncode != 0 and "input http://example.com/plate.mp4" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_outputs_must_match_across_shots(clip: Path, tmp_path: Path) -> None:
    extra = f'[[shot]]\nname = "fg"\nframes = "1-4"\noutput_foreground = "{tmp_path}/fg.####.png"\n'
    shots = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"sh010": "1-10"}, extra)
    done = bundle(str(shots), "--nodes", "n1:1", "--output", str(tmp_path / "b"), check=False)
    assert done.returncode != 0
    assert "shots sh010 have no output_foreground but others do" in done.stderr
    assert not (tmp_path / "b").exists()


def test_an_existing_bundle_is_kept_unless_overwrite(clip: Path, tmp_path: Path) -> None:
    base = [str(clip), "--nodes", "n1:1", "--output-alpha", str(tmp_path / "m.####.png")]
    bundle(*base, "--output", str(tmp_path / "b"))
    marker = tmp_path / "b" / "notes.txt"
    marker.write_text("mine")
    done = bundle(*base, "--nodes", "n2:1", "--output", str(tmp_path / "b"), check=False)
    assert done.returncode != 0 and "already exists (give --overwrite to replace it)" in done.stderr
    assert marker.read_text() == "mine"
    bundle(*base, "--nodes", "n2:1", "--output", str(tmp_path / "b"), "--overwrite")
    assert not marker.exists()
    assert json.loads((tmp_path / "b" / "job_parameters.json").read_text())["Nodes"] == "n2:1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_progress_lines() -> None:
    assert progress_lines("frame", "sh010", 5, 20, "n1:1", "") == ["openjd_progress: 25.0"]
    assert progress_lines("started", "sh010", 0, None, "n1:1", "") == [
        "openjd_status: sh010: started on n1:1, 0 frames"
    ]
    assert progress_lines("failed", "sh010", 3, 20, None, "input x: not a readable video") == [
        "openjd_progress: 15.0",
        "openjd_fail: shot sh010: input x: not a readable video",
    ]


# --- submit commands ---------------------------------------------------------------------------


def test_submit_command_gets_the_bundle(tmp_path: Path) -> None:
    command, record = recorded_standin_submit(tmp_path)
    assert run_submit_command(command, tmp_path / "b") == "submitted b: job-0123"
    assert json.loads(record.read_text()) == ["bundle", "submit", "--yes", str(tmp_path / "b")]


def test_failed_submit_commands(tmp_path: Path) -> None:
    command, _ = recorded_standin_submit(tmp_path, exit_code=3)
    with pytest.raises(SubmitError, match=r"failed \(exit 3\): stand-in farm: queue rvm is closed"):
        run_submit_command(command, tmp_path)
    with pytest.raises(SubmitError, match="submit command no-such-deadline: not found"):
        run_submit_command("no-such-deadline bundle submit {bundle}", tmp_path)


# --- OpenCue ------------------------------------------------------------------------------------


def test_opencue_spec_reads_back_through_pyoutline(clip: Path, tmp_path: Path) -> None:
    from outline import cuerun, loader

    shots = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"sh010": "1-10", "sh020": "11-20"})
    bundle(str(shots), "--nodes", "n1:1", "--format", "opencue", "--split", "2", "--preroll", "3",
           "--show", "demo", "--output", str(tmp_path / "cue"))  # fmt: skip
    spec = (tmp_path / "cue" / "job.xml").read_text()
    root = ElementTree.fromstring(spec.split("?>", 1)[1].split(">", 1)[1])  # past the XML and DOCTYPE lines
    assert root.findtext("show") == "demo"
    layers = root.find("job/layers")
    assert layers is not None
    found = [(la.get("name"), la.findtext("range"), la.findtext("chunk")) for la in layers]
    assert found == [
        ("sh010-part1of2", "1-5", "5"),
        ("sh010-part2of2", "6-10", "5"),
        ("sh020-part1of2", "11-15", "5"),
        ("sh020-part2of2", "16-20", "5"),
    ]
    parser = build_parser()
    for layer, (shot, segment) in zip(
        layers, [("sh010", 1), ("sh010", 2), ("sh020", 1), ("sh020", 2)], strict=True
    ):
        argv = shlex.split(layer.findtext("cmd") or "")
        assert argv[:3] == ["rvm-node", "farm", "run"]
        args = parser.parse_args(argv[1:])
        assert (args.name, args.segment, args.split, args.preroll) == (shot, segment, 2, 3)
        assert args.targets == [str(clip)] and args.nodes == "n1:1"
    # The outline file loads in pyoutline and serializes to the same layers.
    ol = loader.load_json((tmp_path / "cue" / "outline.json").read_text())
    assert [(la.get_name(), la.get_frame_range(), la.get_chunk_size()) for la in ol.get_layers()] == [
        (name, rng, int(chunk)) for name, rng, chunk in found
    ]
    again = ElementTree.fromstring(
        cuerun.OutlineLauncher(ol, nomail=True)
        .serialize(use_pycuerun=False)
        .split("?>", 1)[1]
        .split(">", 1)[1]
    )
    assert [la.findtext("cmd") for la in again.find("job/layers")] == [la.findtext("cmd") for la in layers]


def test_opencue_submit_without_a_cuebot(clip: Path, tmp_path: Path) -> None:
    done = bundle(str(clip), "--nodes", "n1:1", "--output-alpha", str(tmp_path / "m.####.png"), "--format",
                  "opencue", "--cuebot", "127.0.0.1:1", "--output", str(tmp_path / "cue"), check=False)  # fmt: skip
    assert done.returncode != 0
    assert "OpenCue at 127.0.0.1:1: the job was not submitted" in done.stderr.strip().splitlines()[-1]
    assert (tmp_path / "cue" / "job.xml").is_file()  # the bundle stays, to submit later


# --- openjd run against real render nodes --------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    nodes = [spawn_node("--max-streams", "2") for _ in range(2)]
    yield ",".join(address for _, address in nodes)
    for process, _ in nodes:
        process.kill()
        process.wait()


def farm_run_reference(clip: Path, nodes: str, tmp_path: Path, shots: dict[str, str]) -> Path:
    reference = shot_list(tmp_path / "ref.toml", clip, tmp_path / "ref", shots)
    run_rvm_node("farm", "run", str(reference), "--nodes", nodes)
    return tmp_path / "ref"


def same_frames(a: Path, b: Path, frames: str) -> None:
    first, last = (int(n) for n in frames.split("-"))
    assert sorted(p.name for p in a.iterdir()) == [f"m.{n:04d}.png" for n in range(first, last + 1)]
    for n in range(first, last + 1):
        assert np.array_equal(
            read_image(a / f"m.{n:04d}.png").pixels, read_image(b / f"m.{n:04d}.png").pixels
        ), n


@pytest.mark.slow
def test_openjd_run_equals_farm_run(two_nodes: str, clip: Path, tmp_path: Path) -> None:
    shots = {"sh010": "3-10", "sh020": "11-18"}
    shot_file = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", shots)
    bundle(str(shot_file), "--nodes", two_nodes, "--rvm-node", RVM_NODE, "--output", str(tmp_path / "b"))
    done = openjd(*openjd_run(tmp_path / "b")[1:])
    assert done.returncode == 0, done.stdout[-3000:]
    assert "openjd_progress: 100.0" in done.stdout and "openjd_status: sh020: done" in done.stdout
    reference = farm_run_reference(clip, two_nodes, tmp_path, shots)
    for name, frames in shots.items():
        same_frames(tmp_path / "out" / name, reference / name, frames)


@pytest.mark.slow
def test_openjd_path_mapping_moves_inputs_and_outputs(two_nodes: str, clip: Path, tmp_path: Path) -> None:
    studio, worker = tmp_path / "studio", tmp_path / "worker"
    (studio / "plates").mkdir(parents=True)
    (studio / "plates" / "sh010.mp4").symlink_to(clip)
    bundle(str(studio / "plates" / "sh010.mp4"), "--nodes", two_nodes, "--rvm-node", RVM_NODE, "--frames", "1-4",
           "--downsample-ratio", str(RATIO), "--output-alpha", str(studio / "mattes" / "{shot}" / "m.####.png"),
           "--output", str(tmp_path / "b"))  # fmt: skip
    worker.mkdir()
    (worker / "plates").symlink_to(studio / "plates")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"version": "pathmapping-1.0", "path_mapping_rules": [
        {"source_path_format": "POSIX", "source_path": str(studio), "destination_path": str(worker)}]}))  # fmt: skip
    done = openjd(*openjd_run(tmp_path / "b", "--path-mapping-rules", f"file://{rules}")[1:])
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(p.name for p in (worker / "mattes" / "sh010").iterdir()) == [
        f"m.{n:04d}.png" for n in range(1, 5)
    ]
    assert not (studio / "mattes").exists()


def task_json(directory: Path, index: int) -> str:
    tasks = task_parameters(directory)
    return json.dumps([{name: values[index] for name, values in tasks.items()}])


@pytest.mark.slow
def test_a_killed_task_resumes_with_identical_frames(two_nodes: str, clip: Path, tmp_path: Path) -> None:
    shots = {"long": "1-60"}
    shot_file = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", shots)
    bundle(str(shot_file), "--nodes", two_nodes, "--rvm-node", RVM_NODE, "--checkpoint-every", "10",
           "--output", str(tmp_path / "b"))  # fmt: skip
    command = openjd_run(tmp_path / "b", "--tasks", task_json(tmp_path / "b", 0))
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    out = tmp_path / "out" / "long"
    wait_until(lambda: len(list(out.glob("m.*.png"))) >= 25, 240)
    os.killpg(process.pid, signal.SIGKILL)  # the agent and the task's rvm-node with it
    process.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("m.*.png")}
    assert 0 < len(kept) < 60
    done = openjd(*command[1:])
    assert done.returncode == 0, done.stdout[-3000:]
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())  # not redone
    same_frames(out, farm_run_reference(clip, two_nodes, tmp_path, shots) / "long", "1-60")


@pytest.mark.slow
def test_a_bad_input_fails_its_own_task_only(two_nodes: str, clip: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes())
    extra = f'[[shot]]\nname = "broken"\ninput = "{broken}"\nframes = "1-4"\n'
    shot_file = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {"good": "1-4"}, extra)
    bundle(str(shot_file), "--nodes", two_nodes, "--rvm-node", RVM_NODE, "--output", str(tmp_path / "b"))
    broken.write_bytes(b"not a video any more")  # the plate went bad after submission
    shots = task_parameters(tmp_path / "b")["Shot"]
    results = {}
    for index, shot in enumerate(shots):
        results[shot] = openjd(*openjd_run(tmp_path / "b", "--tasks", task_json(tmp_path / "b", index))[1:])
    assert results["good"].returncode == 0, results["good"].stdout[-3000:]
    assert len(list((tmp_path / "out" / "good").glob("m.*.png"))) == 4
    assert results["broken"].returncode != 0
    fails = [line for line in results["broken"].stdout.splitlines() if "openjd_fail:" in line]
    assert len(fails) == 1 and f"{broken}" in fails[0] and "not a readable video" in fails[0], fails


def test_cli_main_bundle_prints_the_folder(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["farm", "bundle", str(clip), "--nodes", "n1:1", "--output-alpha",
                 str(tmp_path / "m.####.png"), "--output", str(tmp_path / "b")])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "b")


def test_a_task_that_cannot_start_says_why_to_the_agent(clip: Path, tmp_path: Path) -> None:
    done = run_rvm_node("farm", "run", str(clip), "--nodes", "127.0.0.1:1", "--wait-for-node", "0.5",
                        "--output-alpha", str(tmp_path / "m.####.png"), "--progress-openjd", check=False)  # fmt: skip
    assert done.returncode != 0
    assert done.stdout.strip().splitlines() == [
        "openjd_fail: farm: no node of the pool answered: 127.0.0.1:1"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "2", "--segment", "3"], "--segment: expected 1 to 2 (the --split count), got 3"),
        (["--name", "x"], "--name names one shot, but 2 inputs were given"),
        (
            ["--frames", "1-4", "--shot-settings", '{"frames": "5-8"}'],
            "--shot-settings: frames is also given as an option",
        ),
    ],
)
def test_bad_task_options(args: list[str], message: str, clip: Path, tmp_path: Path) -> None:
    inputs = [str(clip)] * (2 if "--name" in args else 1)
    done = run_rvm_node("farm", "run", *inputs, "--nodes", "127.0.0.1:1", "--output-alpha",
                        str(tmp_path / "{shot}" / "m.####.png"), *args, check=False)  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"rvm-node: error: {message}"]
    assert not any(tmp_path.iterdir())


def test_shot_settings_make_the_same_shot(clip: Path, tmp_path: Path) -> None:
    from rvm_node.farm import load_shot_list, make_shots
    from rvm_node.farm.shots import shot_settings

    extra = (
        '[[shot]]\nname = "full"\nframes = "3-9"\ninput_colorspace = "ACES - ACEScg"\nbackground = "0,1,0"\n'
        'start_frame = 1001\nallow_gaps = true\nexr_channels = "A"\nbit_depth = 8\npremultiplied = true\n'
        f'output_composition = "{tmp_path}/comp/{{shot}}.####.png"\n'
    )
    path = shot_list(tmp_path / "s.toml", clip, tmp_path / "out", {}, extra)
    (shot,) = load_shot_list(path)
    settings = shot_settings(shot)
    assert (
        settings["exr_channels"] == "A" and settings["start_frame"] == 1001 and settings["allow_gaps"] is True
    )
    outputs = {f"output_{k}": v for k, v in shot.outputs.items()}
    (again,) = make_shots([shot.input], {**json.loads(json.dumps(settings)), **outputs, "name": shot.name})
    assert again == shot


def test_job_names_and_new_bundle_folders(tmp_path: Path) -> None:
    from datetime import datetime

    from rvm_node.farm.submit import job_name, new_bundle_folder

    assert job_name("sh 010", ["Read1"]) == "sh_010_Read1"
    assert job_name("", ["a", "b", "c", "d", "e"]) == "untitled_a_b_c_2_more"
    now = datetime(2025, 3, 4, 5, 6, 7)
    first = new_bundle_folder(tmp_path, "job", now)
    assert first == tmp_path / "job-20250304-050607"
    first.mkdir()
    assert new_bundle_folder(tmp_path, "job", now) == tmp_path / "job-20250304-050607-2"


def test_submit_job_leaves_nothing_before_the_submit_step(clip: Path, tmp_path: Path) -> None:
    from rvm_node.farm import make_shots
    from rvm_node.farm.bundle import PoolSettings
    from rvm_node.farm.submit import submit_job

    shots = make_shots([str(clip)], {"output_alpha": str(tmp_path / "m.####.png")})
    pool = PoolSettings(nodes="n1:1")
    with pytest.raises(SubmitError, match="cannot write the job bundle in /proc/rvm/jobs"):
        submit_job(shots, pool, Path("/proc/rvm/jobs"), name="j", command="true")
    command, record = recorded_standin_submit(tmp_path, exit_code=3)
    with pytest.raises(
        SubmitError, match=r"failed \(exit 3\): stand-in farm: .*; the job bundle is in .*/jobs/j-"
    ):
        submit_job(shots, pool, tmp_path / "new" / "jobs", name="j", command=command)
    (bundle,) = (tmp_path / "new" / "jobs").iterdir()
    assert (bundle / "template.yaml").is_file()  # kept, to submit by hand
    command, record = recorded_standin_submit(tmp_path)
    done = submit_job(shots, pool, tmp_path / "jobs", name="j", command=command)
    assert done.said == f"submitted {done.bundle.name}: job-0123"
    assert json.loads(record.read_text())[-1] == str(done.bundle)
