"""Every command's ``run()`` through ``main()``, in process, against the stand-in model (``tests/standin.py``):
the fast tier's check that the commands are wired to the library, with no weights and no network. The
real model's runs of the same commands are in ``tests/test_cli.py`` (slow tier)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rvm_node.cli import EXIT_INPUT, main
from rvm_node.engine.backend import fastest_parity_backend
from tests.node_support import NodeThread
from tests.standin import StandInBackend

FRAMES = 6


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic video made here, so nothing is fetched: 6 frames of 64x48 H.264."""
    import av

    path = tmp_path_factory.mktemp("plate") / "plate.mp4"
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(FRAMES):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture
def local_standin(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The model commands load locally is the stand-in; what they asked for is recorded."""
    asked: list[Any] = []

    def load_local(choice: Any, options: Any) -> StandInBackend:
        asked.append((choice.variant, choice.backend, choice.device, choice.precision))
        return StandInBackend()

    monkeypatch.setattr("rvm_node.cli.common.load_local", load_local)
    return asked


@pytest.fixture
def root_logging() -> Iterator[None]:
    """serve configures the root logger onto the captured stderr: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def node() -> Iterator[NodeThread]:
    server = NodeThread(StandInBackend())
    yield server
    server.stop()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_convert_writes_every_frame_and_refuses_to_overwrite(
    plate: Path, tmp_path: Path, local_standin: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.####.png"
    argv = ["convert", "--input-source", str(plate), "--output-alpha", str(out), "--quiet"]
    assert main([*argv, "--backend", "auto", "--device", "auto"]) == 0
    assert sorted(_files(tmp_path)) == [f"m.{n:04d}.png" for n in range(1, FRAMES + 1)]
    assert local_standin[0][1:3] == (fastest_parity_backend("cpu"), "cpu")  # resolved before the model loads
    assert main(argv) == EXIT_INPUT
    assert "m.0001.png: already exists; pass --overwrite to replace" in capsys.readouterr().err


def test_matte_equals_convert(
    plate: Path,
    tmp_path: Path,
    node: NodeThread,
    local_standin: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--input-source", str(plate), "--frames", "2-5", "--downsample-ratio", "0.5"]
    assert main(["convert", *common, "--output-alpha", str(tmp_path / "l" / "m.####.png"), "--quiet"]) == 0
    argv = ["matte", *common, "--node", node.address, "--output-alpha", str(tmp_path / "n" / "m.####.png")]
    assert main([*argv, "--progress-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in events] == ["started", "frame", "frame", "frame", "frame", "done"]
    assert [e["frame"] for e in events if e["kind"] == "frame"] == [2, 3, 4, 5]
    assert _files(tmp_path / "n") == _files(tmp_path / "l")


def test_serve_serves_until_idle_then_exits_0(
    root_logging: None,
    tmp_path: Path,
    local_standin: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nmax_streams = 3\nbackend = "auto"\n')
    monkeypatch.setenv("RVM_NODE_PRECISION", "fp32")
    argv = ["serve", "--port", "0", "--config", str(config), "--exit-when-idle", "0.5", "--shm", "off"]
    assert main(argv) == 0
    address = capsys.readouterr().out.strip().splitlines()[0]
    assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
    (variant, backend, device, precision) = local_standin[0]
    assert (variant, device, precision) == ("mobilenetv3", "cpu", "fp32") and backend != "auto"


def test_serve_refuses_a_bad_setting_before_the_model_loads(
    root_logging: None, local_standin: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", "--workers", "0"]) == EXIT_INPUT
    assert capsys.readouterr().err.strip() == "rvm-node: error: --workers: expected 1 or more, got 0"
    assert local_standin == []


def test_farm_run_and_bundle(plate: Path, tmp_path: Path, node: NodeThread) -> None:
    shots = tmp_path / "shots.toml"
    shots.write_text(
        f'[defaults]\noutput_alpha = "{tmp_path}/out/{{shot}}/m.####.exr"\nexr_channels = "A"\n'
        f'[[shot]]\nname = "a"\ninput = "{plate}"\n[[shot]]\nname = "b"\ninput = "{plate}"\nframes = "3-4"\n'
    )
    assert main(["farm", "run", str(shots), "--nodes", node.address]) == 0
    assert len(_files(tmp_path / "out" / "a")) == FRAMES and sorted(_files(tmp_path / "out" / "b")) == [
        "m.0003.exr",
        "m.0004.exr",
    ]
    bundle = tmp_path / "bundle"
    assert main(["farm", "bundle", str(shots), "--nodes", node.address, "--output", str(bundle)]) == 0
    assert (bundle / "template.yaml").is_file()


def test_info_asks_the_node(node: NodeThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--nodes", node.address, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    answer = json.loads(line)
    assert answer["node"] == node.address and answer["ok"] and answer["backend"] == StandInBackend.name


def test_weights_list_names_the_official_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list"]) == 0
    assert "rvm_mobilenetv3_fp32.onnx" in capsys.readouterr().out


def test_export_writes_a_torchscript_model_and_keeps_an_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "rvm.torchscript"
    argv = ["export", "--format", "torchscript", "--random-weights", "--output", str(target)]
    assert main(argv) == 0 and target.stat().st_size > 1_000_000
    written = target.read_bytes()
    assert main(argv) == EXIT_INPUT
    assert "--overwrite" in capsys.readouterr().err and target.read_bytes() == written


def test_bench_refuses_bad_settings_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "engine", "--frames", "0"]) == EXIT_INPUT
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("rvm-node: error: --frames")


def test_example_mattes_its_clip_on_a_node(
    plate: Path,
    tmp_path: Path,
    node: NodeThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        "rvm_node.example.example_clip", lambda: plate
    )  # the clip is fetched in the slow tier
    assert main(["example", "--node", node.address, "--output-dir", str(tmp_path)]) == 0
    assert len(_files(tmp_path / "alpha")) == FRAMES and (tmp_path / "composite.mp4").stat().st_size > 0
    assert (
        f"{FRAMES} frames of the example clip matted on the node at {node.address}" in capsys.readouterr().err
    )


def test_without_torch_the_torch_paths_say_so_in_one_line(plate: Path, tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import RVM_NODE_WITHOUT_TORCH

    (tmp_path / "w.pth").write_bytes(b"weights")
    for flags in (
        ["--backend", "torch"],
        ["--backend", "onnxruntime", "--checkpoint", str(tmp_path / "w.pth")],
    ):
        argv = [
            "convert",
            "--input-source",
            str(plate),
            "--output-alpha",
            str(tmp_path / "m.####.png"),
            *flags,
        ]
        done = subprocess.run([*RVM_NODE_WITHOUT_TORCH, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 4, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("rvm-node: error: ") and "needs torch, which is not installed here" in line
        assert not (tmp_path / "m.0001.png").exists()


@pytest.mark.slow
def test_bench_engine_prints_every_row_against_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    sizes = "96x64@0.5,64x48@0.5"  # two sizes: every row has a cell at each
    argv = ["bench", "engine", "--sizes", sizes, "--frames", "1", "--rounds", "1", "--warmup", "1"]
    assert main([*argv, "--only", "the official file", "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x) |" in line]
    assert all(row.count("x) |") == 2 for row in rows)
    names = [row.split(" | ")[0][2:] for row in rows]
    auto = "OpenVINO fp32" if fastest_parity_backend("cpu") == "openvino" else "onnxruntime"
    assert names[0] == "official ONNX, onnxruntime (reference)" and rows[0].endswith("(1.00x) |")
    assert f"{auto}, the official file (what --backend auto runs here): alpha, uint16" in names
    assert any(
        n.endswith("the network alone at the small size, ratio 1 (the ceiling of any full-resolution stage)")
        for n in names
    )
    assert any("numpy full-resolution stage" in n for n in names)  # numba is installed here: both are timed
    stage = [line for line in out.splitlines() if line.startswith("| 96x64 @0.5 | ")]
    assert [line.split(" | ")[1] for line in stage] == ["alpha, uint16", "alpha + foreground, float32"]
