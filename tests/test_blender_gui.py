"""The Blender add-on's modal operator in a real Blender GUI on a virtual screen.

Needs Debian's ``blender``, ``xvfb`` and ``xdotool`` (scripts/setup-blender-gui
installs them; CI runs it). See tests/blender_gui_scenario.py for what runs
inside Blender.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import assert_same_mattes, direct_matte, spawn_node

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gui_node() -> Iterator[str]:
    process, address = spawn_node()
    yield address
    process.terminate()
    process.wait(30)


def test_modal_operator_runs_beside_the_ui_cancels_on_escape_and_resumes(
    gui_node: str, weights_cache: Path, tmp_path: Path
) -> None:
    from rvm_node.example import example_clip

    missing = [tool for tool in ("blender", "xvfb-run", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run scripts/setup-blender-gui")
    clip = example_clip()
    out = tmp_path / "out"
    args = {
        "plugins": str(ROOT / "plugins" / "blender"),
        "node": gui_node,
        "program": str(Path(sys.executable).with_name("rvm-node")),
        "clip": str(clip),
        "output": f"{out}/m.####.exr",
        "cancel_after": 30,
        "result": str(tmp_path / "result.json"),
    }
    env = {**os.environ, "LIBGL_ALWAYS_SOFTWARE": "1", "HOME": str(tmp_path / "home")}
    scenario = str(ROOT / "tests" / "blender_gui_scenario.py")
    command = ["xvfb-run", "-a", "-s", "-screen 0 1600x900x24", "blender", "--factory-startup"]
    done = subprocess.run(
        [*command, "--python", scenario, "--", json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    result_file = tmp_path / "result.json"
    assert result_file.exists(), f"Blender ended without a result ({done.returncode}):\n{done.stdout[-3000:]}"
    seen = json.loads(result_file.read_text())
    assert "Traceback" not in done.stdout + done.stderr, done.stdout[-3000:]  # the panel drew, nothing raised
    assert seen["invoked"] == [["RUNNING_MODAL"], ["RUNNING_MODAL"]]
    assert seen["ticks_while_running"] >= 5  # the UI's timers kept running beside the operator
    cancelled = seen["after_cancel"]
    assert 30 <= len(cancelled["frames"]) < 120, "Escape did not stop the run"
    assert not [name for name in cancelled["hidden"] if ".rvmtmp" in name]
    assert [c[0] for c in cancelled["clips"]] == ["carphone.mp4"] and not cancelled["images"]
    resumed = seen["after_resume"]
    assert resumed["frames"] == [f"m.{n:04d}.exr" for n in range(1, 121)]
    assert ["carphone_matte", "SEQUENCE", "Non-Color"] in resumed["images"]
    assert ["carphone_matte", 1] in resumed["clips"]
    reference = tmp_path / "reference"
    direct_matte(clip, gui_node, "1-120", reference / "ref.####.exr", "--downsample-ratio", "1.0")
    assert_same_mattes(out, reference, range(1, 121), "m")
