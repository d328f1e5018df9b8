"""Static exports (TensorFlow, TFLite, TF.js, CoreML): bad settings and missing toolchains, each one line,
nothing written. These run without the toolchains."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, list[str]]]:
    """``rvm-node export ARGS --random-weights`` in this process, with no toolchains: its exit code and
    stderr lines."""
    from rvm_node.cli import main

    monkeypatch.setenv("RVM_NODE_TOOLCHAINS", str(tmp_path / "no-toolchains"))

    def run(*args: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = main(["export", *args, "--random-weights"])
        return code, capsys.readouterr().err.strip().splitlines()

    return run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite", "--downsample-ratio", "0.5"], "--format tflite: give --size WIDTHxHEIGHT and --downsample-ratio"),
        (["--format", "tflite", "--size", "176by144", "--downsample-ratio", "0.5"], "--size: expected WIDTHxHEIGHT"),
        (["--format", "tflite", "--size", "176x144", "--downsample-ratio", "1.5"], "--downsample-ratio: expected a number in (0, 1]"),
        (["--format", "coreml", "--size", "176x144", "--downsample-ratio", "0.25"],
         "the network would run at 36 px on the short side; it needs at least 64"),
        (["--format", "tfjs", "--size", "176x144", "--downsample-ratio", "0.5", "--precision", "fp16"],
         "--precision fp16: tfjs exports are fp32"),
        (["--format", "onnx", "--size", "176x144"], "--size and --downsample-ratio: only for the static formats"),
        (["--format", "tflite", "--size", "176x144", "--downsample-ratio", "0.5", "--opset", "13"],
         "--opset: only applies to --format onnx"),
    ],
)  # fmt: skip
def test_bad_settings(
    args: list[str], message: str, tmp_path: Path, export: Callable[..., tuple[int, list[str]]]
) -> None:
    code, lines = export(*args, "--output", str(tmp_path / "out"))
    assert code == 3 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, toolchain", [("tensorflow", "tensorflow"), ("tflite", "tensorflow"),
                                             ("tfjs", "tensorflow"), ("coreml", "coreml")])  # fmt: skip
def test_a_missing_toolchain_says_what_to_install(
    fmt: str, toolchain: str, tmp_path: Path, export: Callable[..., tuple[int, list[str]]]
) -> None:
    code, lines = export("--format", fmt, "--size", "176x144", "--downsample-ratio", "0.5",
                         "--output", str(tmp_path / "out"))  # fmt: skip
    assert code != 0 and len(lines) == 1, lines
    assert f"the {toolchain} toolchain" in lines[0] and f"toolchains install {toolchain}" in lines[0], lines
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == []


def test_an_existing_export_is_kept(tmp_path: Path, export: Callable[..., tuple[int, list[str]]]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "rvm_mobilenetv3_176x144_r0.5_fp32.tflite"
    existing.write_bytes(b"mine")
    code, lines = export("--format", "tflite", "--size", "176x144", "--downsample-ratio", "0.5",
                         "--output", str(out))  # fmt: skip
    assert code == 3 and lines == [
        f"rvm-node: error: {existing}: already exists; pass --overwrite to replace it"
    ]
    assert existing.read_bytes() == b"mine" and sorted(p.name for p in out.iterdir()) == [existing.name]


def test_unknown_toolchain_names(tmp_path: Path) -> None:
    from rvm_node.engine.toolchains import install
    from rvm_node.errors import InvalidInputError

    with pytest.raises(
        InvalidInputError, match="toolchains: unknown keras; expected tensorflow, tfjs, coreml"
    ):
        install(["keras"])


def test_an_unknown_format_is_a_usage_error_that_lists_the_choices(
    tmp_path: Path, export: Callable[..., tuple[int, list[str]]]
) -> None:
    code, lines = export("--format", "keras", "--output", str(tmp_path / "out"))
    assert code == 2 and "argument --format: invalid choice: 'keras'" in lines[-1], lines
    assert all(
        name in lines[-1] for name in ("onnx", "torchscript", "tensorflow", "tflite", "tfjs", "coreml")
    )
    assert not (tmp_path / "out").exists()


def test_an_output_named_like_a_file_is_refused_not_made_a_folder(
    tmp_path: Path, export: Callable[..., tuple[int, list[str]]]
) -> None:
    target = tmp_path / "rvm.tflite"
    code, lines = export(
        "--format", "tflite", "--size", "176x144", "--downsample-ratio", "0.5", "--output", str(target)
    )
    assert code == 3 and len(lines) == 1, lines
    assert lines[0] == (
        f"rvm-node: error: {target}: expected the folder the export goes in, not a file name "
        "(the export is named rvm_mobilenetv3_176x144_r0.5_fp32.tflite)"
    )
    assert not target.exists()
