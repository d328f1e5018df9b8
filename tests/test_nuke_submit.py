"""The Nuke plugin's "submit to the farm" target, against the fake `nuke` module (tests/fake_nuke).

No render node is needed: the plugin writes a real farm job bundle with the
library and runs a submit command. That command is a recorded stand-in (see
:func:`recorded_standin_submit`), never a real farm manager. The bundle
running on real render nodes is in tests/test_nuke_plugin.py (slow tier).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import recorded_standin_submit

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "fake_nuke"), str(ROOT / "plugins" / "nuke")]

import nuke  # noqa: E402 - the fake, from tests/fake_nuke
from rvm_nuke import farm, graph, job, settings  # noqa: E402

from rvm_node.farm.submit import DEADLINE_CLOUD, SubmittedJob  # noqa: E402
from rvm_node.io.images import write_image  # noqa: E402


@pytest.fixture
def script(tmp_path: Path) -> Path:
    nuke.reset()
    path = tmp_path / "sh010_comp.nk"
    path.write_text("# a Nuke script\n")
    nuke.root()["name"].setValue(str(path))
    return path


@pytest.fixture
def plates(tmp_path: Path) -> list[Path]:
    """Two plate sequences: 1001-1008 and 2001-2004."""
    patterns = []
    for name, first, count in (("a", 1001, 8), ("b", 2001, 4)):
        for n in range(first, first + count):
            write_image(tmp_path / "plates" / name / f"{name}.{n}.png", np.full((8, 8, 3), 128, np.uint8))
        patterns.append(tmp_path / "plates" / name / f"{name}.####.png")
    return patterns


def make_read(pattern: Path, name: str, first: int, last: int) -> nuke.Node:
    read = nuke.nodes.Read(
        name=name,
        file=str(pattern),
        first=first,
        last=last,
        origfirst=first,
        origlast=last,
        colorspace="sRGB",
    )
    read.setXYpos(100, 200)
    read.setSelected(True)
    return read


def farm_settings(command: str, **changes: object) -> settings.Settings:
    values: dict[str, object] = {
        "nodes": ["n1:50051", "n2:50051"],
        "target": "farm",
        "submit_command": command,
        "ratio": 0.5,
    }
    values.update(changes)
    return settings.Settings(**values)  # type: ignore[arg-type]


def task_parameters(bundle: Path) -> dict[str, list[object]]:
    template = yaml.safe_load((bundle / "template.yaml").read_text())
    space = template["steps"][0]["parameterSpace"]
    return {p["name"]: p["range"] for p in space["taskParameterDefinitions"]}


def test_submit_writes_the_bundle_submits_it_and_wires_mattes_of_the_frames_to_come(
    script: Path, plates: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read_a = make_read(plates[0], "PlateA", 1001, 1008)
    read_a["frame_mode"].setValue("start at")
    read_a["frame"].setValue("1")
    read_b = make_read(plates[1], "PlateB", 2001, 2004)
    command, record = recorded_standin_submit(tmp_path)
    submitted = job.matte_selected(farm_settings(command), blocking=True)
    assert isinstance(submitted, SubmittedJob)
    bundle = submitted.bundle
    # a new folder beside the script: <script>_rvm_jobs/<job name>-<YYYYmmdd-HHMMSS>
    assert bundle.parent == script.parent / "sh010_comp_rvm_jobs"
    assert re.fullmatch(r"sh010_comp_PlateA_PlateB-\d{8}-\d{6}", bundle.name), bundle.name
    assert (bundle / "template.yaml").is_file()
    tasks = task_parameters(bundle)
    outputs = [str(script.parent / "mattes" / r / f"{r}_matte.####.exr") for r in ("PlateA", "PlateB")]
    assert tasks["Shot"] == ["PlateA", "PlateB"]
    assert tasks["Input"] == [str(p) for p in plates]
    assert tasks["OutputAlpha"] == outputs
    assert [json.loads(str(s))["frames"] for s in tasks["Settings"]] == ["1001-1008", "2001-2004"]
    values = {
        v["name"]: v["value"]
        for v in yaml.safe_load((bundle / "parameter_values.yaml").read_text())["parameterValues"]
    }
    assert values["Nodes"] == "n1:50051,n2:50051" and values["RvmNode"] == "rvm-node"
    assert values["DownsampleRatio"] == "0.5"
    # the stand-in got the bundle folder, and its job id line is the one report
    assert json.loads(record.read_text()) == ["bundle", "submit", "--yes", str(bundle)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "job-0123" in err[0] and str(bundle) in err[0], err
    assert farm.report_line(submitted) == err[0]
    # matte Reads at once, on the sequences the job writes, with their frame ranges; missing frames are black
    assert len(nuke.allNodes("Read")) == 4
    for read, output, (first, last) in (
        (read_a, outputs[0], (1001, 1008)),
        (read_b, outputs[1], (2001, 2004)),
    ):
        matte = next(
            n
            for n in nuke.allNodes("Read")
            if n.knob(graph.SOURCE_KNOB) and n[graph.SOURCE_KNOB].value() == read.name()
        )
        assert matte["file"].value() == output
        assert (matte["first"].value(), matte["last"].value()) == (first, last)
        assert (matte["origfirst"].value(), matte["origlast"].value()) == (first, last)
        assert matte["on_error"].value() == "black" and matte["raw"].value() is True
        assert "farm" in matte["label"].value() and bundle.name in matte["label"].value()
        copy = next(n for n in nuke.allNodes("Copy") if n.input(0) is read)
        assert copy.input(1) is matte
        assert any(p.input(0) is copy for p in nuke.allNodes("Premult"))
        assert not Path(output).parent.exists()  # nothing written yet: the farm writes the frames
    matte_a = nuke.allNodes("Read")[2]
    assert (matte_a["frame_mode"].value(), matte_a["frame"].value()) == ("start at", "1")  # as its plate
    # submitting again makes a new job folder and updates the same matte nodes
    for node in nuke.allNodes():
        node.setSelected(node in (read_a, read_b))
    again = job.matte_selected(farm_settings(command), blocking=True)
    assert isinstance(again, SubmittedJob) and again.bundle != bundle and again.bundle.parent == bundle.parent
    assert len(nuke.allNodes("Read")) == 4 and len(nuke.allNodes("Copy")) == 2


def test_bundle_folder_setting_and_opencue_format(
    script: Path, plates: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A configured bundle folder ([script dir] expands), and an OpenCue spec (job.xml) written there."""
    pytest.importorskip("outline")
    make_read(plates[0], "PlateA", 1001, 1008)
    folder = "[script dir]/farm/bundles"
    chosen = farm_settings("", farm_format="opencue", cuebot="127.0.0.1:1", bundle_folder=folder)
    before = len(nuke.allNodes())
    assert job.matte_selected(chosen, blocking=True) is None  # no Cuebot answers there
    (bundle,) = (script.parent / "farm" / "bundles").iterdir()
    assert (bundle / "job.xml").is_file() and "PlateA" in (bundle / "outline.json").read_text()
    assert (
        str(script.parent / "mattes" / "PlateA" / "PlateA_matte.####.exr") in (bundle / "job.xml").read_text()
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OpenCue at 127.0.0.1:1: the job was not submitted" in err[0], err
    assert f"the job bundle is in {bundle}" in err[0]
    assert len(nuke.allNodes()) == before


def test_failed_submits_change_nothing_in_the_script(
    script: Path,
    plates: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_read(plates[0], "PlateA", 1001, 1008)
    failing, record = recorded_standin_submit(tmp_path, exit_code=3)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    jobs = script.parent / "sh010_comp_rvm_jobs"

    def one_line(chosen: settings.Settings) -> str:
        before = len(nuke.allNodes()), len(nuke.allNodes("Read"))
        assert job.matte_selected(chosen, blocking=True) is None
        assert (len(nuke.allNodes()), len(nuke.allNodes("Read"))) == before  # no matte Read, no Copy
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    # the submit command fails: its own words, and where the bundle stayed (it can be submitted by hand)
    line = one_line(farm_settings(failing))
    assert "failed (exit 3): stand-in farm: queue rvm is closed" in line
    (kept,) = jobs.iterdir()
    assert f"the job bundle is in {kept}" in line and (kept / "template.yaml").is_file()
    assert json.loads(record.read_text())[-1] == str(kept)
    # the submit command is not installed
    line = one_line(farm_settings("no-such-deadline bundle submit --yes {bundle}"))
    assert "submit command no-such-deadline: not found" in line and "the job bundle is in" in line
    # the bundle folder cannot be written: nothing is left behind
    line = one_line(farm_settings(failing, bundle_folder=str(a_file / "bundles")))
    assert "cannot write the job bundle in" in line and str(a_file) in line
    # OpenCue without its library: the bundle is not written, and the folder made for it is gone again
    monkeypatch.setitem(sys.modules, "outline", None)
    line = one_line(
        farm_settings("", farm_format="opencue", cuebot="cue:8443", bundle_folder=str(tmp_path / "cue"))
    )
    assert "the job bundle was not written" in line and "opencue-pyoutline is not installed" in line
    assert not (tmp_path / "cue").exists()
    # settings that cannot submit: said before anything is written
    assert "set the Cuebot address" in one_line(farm_settings("", farm_format="opencue"))
    assert "set the submit command" in one_line(farm_settings(" "))
    assert len(list(jobs.iterdir())) == 2  # only the two bundles whose submit step failed
    # a node other than a Read, and an unsaved script
    nuke.nodes.Blur(name="Blur1").setSelected(True)
    assert "Blur1 is a Blur; the farm mattes Read nodes" in one_line(farm_settings(failing))
    nuke.toNode("Blur1").setSelected(False)
    nuke.root()["name"].setValue("")
    assert "save the Nuke script first" in one_line(farm_settings(failing))  # the mattes go beside it
    absolute = farm_settings(failing, output=str(tmp_path / "mattes" / "{read}.####.exr"))
    assert "save the Nuke script first, or set a bundle folder" in one_line(absolute)


def test_in_the_gui_the_submit_runs_in_a_thread_and_the_graph_changes_on_the_main_thread(
    script: Path, plates: list[Path], tmp_path: Path
) -> None:
    import threading

    plate = make_read(plates[0], "PlateA", 1001, 1008)
    command, record = recorded_standin_submit(tmp_path)
    nuke.GUI = True
    try:
        assert job.matte_selected(farm_settings(command)) is None  # returns at once
        for thread in threading.enumerate():
            if thread.name == "rvm-nuke-submit":
                thread.join(60)
        assert nuke._main_thread_calls == ["_apply_submitted"]
        assert len(nuke._messages) == 1 and "job-0123" in nuke._messages[0]
        assert len(nuke.allNodes("Read")) == 2 and record.is_file()
        (tmp_path / "failing").mkdir()
        failing, _ = recorded_standin_submit(tmp_path / "failing", exit_code=3)
        before = len(nuke.allNodes())
        for node in nuke.allNodes():
            node.setSelected(node is plate)
        job.matte_selected(farm_settings(failing))
        for thread in threading.enumerate():
            if thread.name == "rvm-nuke-submit":
                thread.join(60)
        assert "failed (exit 3)" in nuke._messages[-1] and len(nuke.allNodes()) == before
    finally:
        nuke.GUI = False


def test_farm_settings_persist_and_default_to_run_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.Settings().target == "here"  # "run here" stays the default
    assert settings.DEADLINE_CLOUD == DEADLINE_CLOUD == settings.Settings().submit_command
    saved = settings.Settings(
        target="farm",
        farm_format="opencue",
        bundle_folder="/studio/jobs",
        submit_command="mysubmit {bundle}",
        cuebot="cue:8443",
        farm_rvm_node="/opt/rvm/bin/rvm-node",
    )
    settings.save(saved, tmp_path)
    assert settings.load(tmp_path) == saved
    for bad, message in (
        (settings.Settings(target="cloud"), "target must be here, local or farm"),
        (settings.Settings(farm_format="tractor"), "farm format must be openjd or opencue"),
    ):
        with pytest.raises(settings.SettingsError, match=message):
            bad.check()
    from rvm_nuke import panel

    monkeypatch.setenv("NUKE_USER_DIR", str(tmp_path / "user"))
    dialog = panel.SettingsPanel()
    assert dialog.target.value() == "run here" and dialog.submit_command.value() == DEADLINE_CLOUD
    dialog.target.setValue("submit to the farm")
    dialog.farm_format.setValue("opencue")
    dialog.cuebot.setValue(" cue:8443 ")
    dialog.bundle_folder.setValue("/studio/jobs")
    dialog.farm_rvm_node.setValue("")
    chosen = dialog.to_settings()
    assert (chosen.target, chosen.farm_format, chosen.cuebot, chosen.bundle_folder, chosen.farm_rvm_node) == (
        "farm",
        "opencue",
        "cue:8443",
        "/studio/jobs",
        "rvm-node",
    )
    monkeypatch.setattr(panel, "SettingsPanel", lambda: dialog)
    panel.show_settings()
    assert settings.load(tmp_path / "user").target == "farm"


def test_bundle_folders() -> None:
    chosen = settings.Settings(bundle_folder="~/jobs")
    assert farm.jobs_folder(chosen, "/s/a.nk") == Path.home() / "jobs"
    assert farm.jobs_folder(settings.Settings(), "/s/a.nk") == Path("/s/a_rvm_jobs")
    with pytest.raises(settings.SettingsError, match="expected an absolute path"):
        farm.jobs_folder(settings.Settings(bundle_folder="jobs"), "/s/a.nk")
