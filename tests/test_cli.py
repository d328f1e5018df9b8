"""The rvm-node command line, run as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
from fractions import Fraction
from pathlib import Path

import onnx
import pytest

from rvm_node.cli import EXIT_BACKEND, EXIT_INPUT, EXIT_USAGE, main
from rvm_node.engine import weights
from tests.helpers import run_rvm_node, spawn_node

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender


def rvm_node(*args: str) -> subprocess.CompletedProcess[str]:
    return run_rvm_node(*args, check=False)


def test_weights_fetch_prints_the_verified_path_last(official_onnx: Path) -> None:
    result = rvm_node("weights", "fetch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(official_onnx)
    assert weights.sha256_file(official_onnx) == weights.OFFICIAL_ONNX_MOBILENETV3.sha256


def test_weights_list_shows_the_registry(official_onnx: Path) -> None:
    result = rvm_node("weights", "list")
    assert result.returncode == 0
    assert "rvm_mobilenetv3_fp32.onnx" in result.stdout and "cached" in result.stdout
    assert "rvm_resnet50.pth" in result.stdout and "manual" in result.stdout


def test_export_onnx_and_refuse_to_overwrite(tmp_path: Path, official_onnx: Path) -> None:
    output = tmp_path / "ours.onnx"
    result = rvm_node(
        "export", "--format", "onnx", "--variant", "mobilenetv3", "--opset", "16", "--output", str(output)
    )
    assert result.returncode == 0, result.stderr
    assert onnx.load(str(output)).opset_import[0].version == 16
    before = output.read_bytes()
    again = rvm_node("export", "--format", "onnx", "--output", str(output))
    assert again.returncode == EXIT_INPUT
    assert "already exists; pass --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert output.read_bytes() == before


def test_export_torchscript(tmp_path: Path) -> None:
    output = tmp_path / "rn.torchscript"
    assert (
        main(
            [
                "export",
                "--format",
                "torchscript",
                "--variant",
                "resnet50",
                "--random-weights",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert output.stat().st_size > 1_000_000


def test_error_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--format", "onnx", "--variant", "mobilenetv4", "--output", "x"]) == EXIT_USAGE
    capsys.readouterr()
    assert main(["export", "--format", "webp", "--output", "x"]) == EXIT_USAGE  # the choices are listed
    assert "argument --format: invalid choice: 'webp'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        main(["export", "--format", "torchscript", "--opset", "12", "--output", str(tmp_path / "x")])
        == EXIT_INPUT
    )
    assert "--opset: only applies to --format onnx" in capsys.readouterr().err
    assert (
        main(["export", "--format", "onnx", "--variant", "resnet50", "--output", str(tmp_path / "x")])
        == EXIT_INPUT
    )
    assert "rvm_resnet50.pth" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                "--format",
                "onnx",
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == EXIT_INPUT
    )
    assert f"{tmp_path / 'missing.pth'}: no such weights file" in capsys.readouterr().err
    assert main(["bench", "engine", "--sizes", "big"]) == EXIT_INPUT
    for argv, message in (
        (["bench", "engine", "--sizes", "64x48"], "--sizes: expected WxH@ratio, got '64x48'"),
        (["bench", "engine", "--sizes", "64xq@0.5"], "--sizes: expected WxH, got '64xq'"),
        (["bench", "node", "--size", "64x48,32x24"], "--size: expected one WxH, got '64x48,32x24'"),
        (["bench", "node", "--sizes", "0x48"], "--sizes: expected a positive size, got '0x48'"),
        (["bench", "node", "--long-stream-frames", "-1"], "--long-stream-frames: expected 0 or more, got -1"),
    ):
        capsys.readouterr()
        assert main(argv) == EXIT_INPUT  # refused before anything is measured
        assert message in capsys.readouterr().err
    assert main(["example", "--downsample-ratio", "fast"]) == EXIT_USAGE
    assert not (tmp_path / "x").exists()


def test_backend_errors_exit_4(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rvm_node.example as example

    def unavailable(*_args: object, **_kwargs: object) -> None:
        from rvm_node.errors import BackendUnavailableError

        raise BackendUnavailableError("device cuda: not available here")

    monkeypatch.setattr(example, "example_clip", unavailable)
    assert main(["example", "--output-dir", str(tmp_path)]) == EXIT_BACKEND
    assert "device cuda" in capsys.readouterr().err


def test_example_mattes_the_clip(tmp_path: Path) -> None:
    import av
    import OpenEXR

    out = tmp_path / "example"
    result = rvm_node("example", "--output-dir", str(out), "--backend", "torch")
    assert result.returncode == 0, result.stderr
    alphas = sorted((out / "alpha").glob("carphone_matte.*.exr"))
    assert len(alphas) == 120 and alphas[0].name == "carphone_matte.0001.exr"
    with OpenEXR.File(str(alphas[40]), separate_channels=True) as exr:
        alpha = exr.channels()["A"].pixels
    assert alpha.max() > 0.95 and alpha.min() < 0.05  # person and background
    with av.open(str(out / "composite.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.average_rate == Fraction(30000, 1001)
        assert sum(1 for _ in video.decode(stream)) == 120
    again = rvm_node("example", "--output-dir", str(out))
    assert again.returncode == EXIT_INPUT and "already exists" in again.stderr


def test_info_asks_each_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("nope\n")
    process, address = spawn_node("--token-file", str(tmp_path / "token"))
    try:
        assert main(["info", "--nodes", address, "--token-file", str(tmp_path / "token"), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["ok"] and info["node"] == address and info["max_streams"] == 4 and info["device"] == "cpu"
        assert main(["info", "--nodes", address, "--token-file", str(tmp_path / "token")]) == 0
        assert capsys.readouterr().out.startswith(f"{address}: rvm-node ")
        both = f"{address},127.0.0.1:1"
        assert (
            main(["info", "--nodes", both, "--token-file", str(tmp_path / "wrong"), "--json"]) == EXIT_BACKEND
        )
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["ok"] for line in lines] == [False, False]
        assert "bearer token" in lines[0]["error"] and "127.0.0.1:1" in lines[1]["error"]
        handler = signal.getsignal(signal.SIGTERM)
        assert main(["info", "--nodes", " , "]) == EXIT_INPUT
        assert signal.getsignal(signal.SIGTERM) is handler  # main() puts the caller's handlers back
        assert "--nodes: expected HOST:PORT" in capsys.readouterr().err
        assert main(["info", "--nodes", address, "--ca-file", str(tmp_path / "missing.pem")]) == EXIT_INPUT
        assert "cannot read the CA file" in capsys.readouterr().err
    finally:
        process.kill()
        process.wait()
