"""The command line as a newcomer meets it: every option described with its default, every command with
examples that parse, one definition of the shot options, and the settings layered before anything
resolves."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rvm_node.cli import COMMANDS, build_parser, main
from rvm_node.cli.common import EXIT_INPUT, EXIT_USAGE, HelpFormatter
from rvm_node.errors import InvalidInputError


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_has_a_description() -> None:
    missing = [
        f"{path} {action.option_strings[-1]}"
        for path, parser in _parsers(build_parser(), "rvm-node")
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    epilog = parser.epilog or ""
    examples = [line.split("  # ")[0].strip() for line in epilog.splitlines() if " rvm-node " in f" {line}"]
    return [e[e.index("rvm-node ") :] for e in examples]  # after any VARIABLE=value


def test_every_command_has_examples_that_parse() -> None:
    top = dict(_parsers(build_parser(), "rvm-node"))
    for command in COMMANDS:
        examples = _examples(top[f"rvm-node {command}"])
        assert len(examples) >= 2, command
        for example in examples:
            words = shlex.split(example)[1:]
            build_parser().parse_args(words)  # exits (a failure) if the example is not a valid command


def test_every_parser_says_what_it_does_and_shows_an_example() -> None:
    """The top level, every command and every subcommand (``bench engine``, ``weights list``...)."""
    lacking = []
    for path, parser in _parsers(build_parser(), "rvm-node"):
        if not parser.description:
            lacking.append(f"{path}: no description")
        examples = [e for e in _examples(parser) if e.startswith(path)]
        if not examples:
            lacking.append(f"{path}: no example of itself")
        for example in examples:
            words = shlex.split(example)[1:]
            build_parser().parse_args(words)
    assert lacking == []


def test_help_shows_defaults_and_how_to_write_exr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: 16)" in text and "(default: RGBA)" in text  # --bit-depth, --exr-channels
    assert "mattes/plate.####.exr" in text and ".mp4, .mov" in text
    assert main(["serve", "--help"]) == 0
    assert "(default: 4; RVM_NODE_MAX_STREAMS)" in " ".join(capsys.readouterr().out.split())
    for path, parser in _parsers(build_parser(), "rvm-node"):
        assert "`" not in parser.format_help(), path  # no Markdown or RST markup in a terminal


def test_farm_commands_leave_the_shot_options_unset_so_a_shot_list_shows_through() -> None:
    from rvm_node.cli.options import SHOT_OPTIONS

    for command in (
        ["farm", "run", "a.mov", "--nodes", "n:1"],
        ["farm", "bundle", "a.mov", "--nodes", "n:1", "--output", "b"],
    ):
        args = vars(build_parser().parse_args(command))
        assert all(args[name] is None for name in SHOT_OPTIONS), command  # unset: the shot list shows through
    convert = vars(build_parser().parse_args(["convert", "--input-source", "a.mov"]))
    assert set(SHOT_OPTIONS) <= set(convert)


def test_an_old_option_name_works_and_says_once_what_replaces_it(capsys: pytest.CaptureFixture[str]) -> None:
    from rvm_node.cli.common import Renamed

    Renamed._said.clear()
    for _ in range(2):
        assert build_parser().parse_args(["info", "--node", "a:1"]).nodes == "a:1"
    assert capsys.readouterr().err.count("--node is now --nodes") == 1
    assert build_parser().parse_args(["info", "--nodes", "a:1,b:2"]).nodes == "a:1,b:2"


def test_a_renamed_serve_setting_works_by_its_old_name_as_flag_variable_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nshm_group = "render"\n')
    assert _serve_settings(["--shm-group", "render"], {}).unix_group == "render"
    assert _serve_settings([], {"RVM_NODE_SHM_GROUP": "render"}).unix_group == "render"
    assert _serve_settings(["--config", str(config)], {}).unix_group == "render"
    assert (
        _serve_settings(["--unix-group", "artists"], {"RVM_NODE_SHM_GROUP": "render"}).unix_group == "artists"
    )
    said = capsys.readouterr().err
    assert "--shm-group is now --unix-group" in said
    assert "RVM_NODE_SHM_GROUP is now RVM_NODE_UNIX_GROUP" in said
    assert "[node] shm_group is now unix_group" in said


def _serve_settings(argv: list[str], environ: dict[str, str]) -> Any:
    """``rvm-node serve ARGV`` settings as main() layers and resolves them, without serving."""
    from rvm_node.cli.serve_settings import layer_settings, resolve

    return resolve(layer_settings(build_parser().parse_args(["serve", *argv]), environ))


def test_serve_settings_precedence(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nmax_streams = 7\nidle_timeout = 12.5\nport = 6000\nbackend = "torch"\n')
    args = _serve_settings(["--port", "7000", "--config", str(config)], {"RVM_NODE_MAX_STREAMS": "3"})
    assert (args.port, args.max_streams, args.idle_timeout, args.backend) == (7000, 3, 12.5, "torch")
    # a flag beats the environment, which beats the file; an abbreviated flag is no flag at all
    assert _serve_settings(["--max-streams", "2"], {"RVM_NODE_MAX_STREAMS": "8"}).max_streams == 2
    assert (
        _serve_settings([], {"RVM_NODE_CONFIG": str(config)}).max_streams == 7
    )  # the file, named by the environment
    assert _serve_settings([], {}).max_streams == 4  # the default
    from rvm_node.cli import EXIT_USAGE, main

    assert main(["serve", "--max-str", "2"]) == EXIT_USAGE
    for text, message in (
        ('[node]\nmax_streams = "many"\n', r"node.toml: \[node\] max_streams: expected an integer"),
        ("[node]\nmax_streams = 2.5\n", r"\[node\] max_streams: expected an integer, got 2.5"),
        ("[node]\nspeed = 3\n", r"unknown settings in \[node\]: speed"),
        ("[node\n", "not valid TOML"),
        (
            '[node]\nbackend = "tpu"\n',
            r"\[node\] backend: expected one of auto, torch, onnxruntime, openvino, got 'tpu'",
        ),
    ):
        config.write_text(text)
        with pytest.raises(InvalidInputError, match=message):
            _serve_settings(["--config", str(config)], {})
    with pytest.raises(InvalidInputError, match="RVM_NODE_IDLE_TIMEOUT=soon: expected a number"):
        _serve_settings([], {"RVM_NODE_IDLE_TIMEOUT": "soon"})
    with pytest.raises(InvalidInputError, match="cannot read the config file"):
        _serve_settings(["--config", str(tmp_path / "missing.toml")], {})
    assert _serve_settings([], {"RVM_NODE_METRICS_PORT": ""}).metrics_port is None  # empty: unset


def test_backend_auto_resolves_alike_from_every_source(tmp_path: Path) -> None:
    from rvm_node.engine.backend import fastest_parity_backend

    config = tmp_path / "node.toml"
    config.write_text('[node]\nbackend = "auto"\n')
    expected = fastest_parity_backend("cpu")
    for argv, environ in (
        (["--backend", "auto"], {}),
        ([], {"RVM_NODE_BACKEND": "auto"}),
        (["--config", str(config)], {}),
    ):
        assert _serve_settings(argv, environ).backend == expected, (argv, environ)


def test_device_auto_resolves_alike_from_every_source(tmp_path: Path) -> None:
    """Here (no CUDA) ``auto`` is the CPU; with it, the backend is resolved for the device it became."""
    from rvm_node.engine.backend import fastest_device, fastest_parity_backend

    assert fastest_device() == "cpu"
    config = tmp_path / "node.toml"
    config.write_text('[node]\ndevice = "auto"\nbackend = "auto"\n')
    for argv, environ in (
        (["--device", "auto", "--backend", "auto"], {}),
        ([], {"RVM_NODE_DEVICE": "auto", "RVM_NODE_BACKEND": "auto"}),
        (["--config", str(config)], {}),
    ):
        settings = _serve_settings(argv, environ)
        assert (settings.device, settings.backend) == ("cpu", fastest_parity_backend("cpu")), (argv, environ)


@pytest.mark.parametrize(
    ("providers", "driver", "expected"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], True, "cuda"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], False, "cpu"),  # onnxruntime-gpu, no driver
        (["CPUExecutionProvider"], True, "cpu"),  # a driver, but the CPU onnxruntime
    ],
)
def test_device_auto_takes_a_gpu_only_where_rvm_node_can_use_one(
    providers: list[str], driver: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU edge, faked (no GPU here): what onnxruntime offers, and whether NVIDIA's driver loads."""
    import onnxruntime

    from rvm_node.engine import backend

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(backend, "cuda_driver_loads", lambda: driver)
    assert backend.fastest_device() == expected
    assert _serve_settings(["--device", "auto"], {}).device == expected


def test_the_serve_settings_are_one_typed_definition() -> None:
    from rvm_node.cli.serve_settings import SETTINGS, ServeSettings

    defaults = ServeSettings()
    assert [s.name for s in SETTINGS] == list(vars(defaults))
    assert all(getattr(defaults, s.name) == s.default for s in SETTINGS)
    kinds = {s.name: (s.kind, s.optional) for s in SETTINGS}
    assert kinds["max_streams"] == (int, False) and kinds["checkpoint"] == (Path, True)
    assert kinds["exit_when_idle"] == (float, True)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from rvm_node.version import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rvm-node {__version__}"


@pytest.mark.parametrize("given", ["2.5", "0", "abc", "nan"])
def test_a_ratio_out_of_range_is_a_usage_error_in_one_wording(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["convert", "--input-source", "x.mp4", "--output-alpha", "a.mp4", "--downsample-ratio", given]
    assert main(argv) == EXIT_USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"argument --downsample-ratio: expected a number in (0, 1] or 'auto', got {given!r}")


def test_a_port_out_of_range_is_refused_not_wrapped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "99999"]) == EXIT_INPUT
    assert (
        capsys.readouterr().err.strip()
        == "rvm-node: error: --port: expected a port from 0 to 65535, got 99999"
    )


def test_errors_quote_the_users_paths_as_given() -> None:
    from rvm_node.cli import build_parser, in_flags

    parser = build_parser()
    said = "input shows/frames/sh010.mov: cannot be read (no such file)"
    assert in_flags(said, parser) == said  # "frames" in the path is no flag
    assert (
        in_flags("seq_chunk: expected 1 or more, got 0", parser) == "--seq-chunk: expected 1 or more, got 0"
    )
    assert in_flags("frames 3-1: expected FIRST <= LAST", parser) == "--frames 3-1: expected FIRST <= LAST"


def test_output_cut_short_by_the_reader_is_no_error() -> None:
    """`rvm-node weights list | head -1`: the reader is gone before the command writes; no traceback."""
    import os
    import subprocess

    from rvm_node.node.launch import rvm_node_command

    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails with EPIPE
    try:
        done = subprocess.run(
            rvm_node_command("weights", "list"),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_matte_takes_no_engine_options(capsys: pytest.CaptureFixture[str]) -> None:
    """A shot on a node runs on the node's model: --device, --backend and the like are refused, not ignored."""
    base = ["matte", "--node", "127.0.0.1:9", "--input-source", "x.mp4", "--output-alpha", "a.mp4"]
    for flag, value in (
        ("--device", "cuda"),
        ("--backend", "torch"),
        ("--precision", "fp16"),
        ("--variant", "resnet50"),
    ):
        assert main([*base, flag, value]) == EXIT_USAGE
        assert f"unrecognized arguments: {flag} {value}" in capsys.readouterr().err


def test_matte_checks_its_input_before_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.mp4"
    argv = [
        "matte",
        "--node",
        "127.0.0.1:9",
        "--input-source",
        str(missing),
        "--output-alpha",
        str(tmp_path / "a.mp4"),
    ]
    assert main(argv) == EXIT_INPUT
    assert capsys.readouterr().err.strip() == f"rvm-node: error: {missing}: no such file or directory"


def test_a_node_without_a_port_is_on_the_default_port() -> None:
    from rvm_node.cli.serve_settings import ServeSettings
    from rvm_node.client import NodeClient
    from rvm_node.v1 import DEFAULT_PORT
    from rvm_node.v1.protocol import with_default_port

    assert ServeSettings().port == DEFAULT_PORT == 50051  # the node serves where clients look
    assert [with_default_port(a) for a in ("gpu01", "[::1]", "10.0.0.7")] == [
        "gpu01:50051",
        "[::1]:50051",
        "10.0.0.7:50051",
    ]
    for given in ("gpu01:7000", "unix:///run/rvm/node.sock", "dns:///gpu01:7000", "[::1]:7000"):
        assert with_default_port(given) == given
    with NodeClient("localhost") as client:
        assert client.address == "localhost:50051"


def test_defaults_are_shown_one_way_even_where_a_shot_list_may_set_them() -> None:
    from rvm_node.convert import RESUME_WARMUP
    from rvm_node.farm import DEFAULT_PREROLL

    for path, parser in _parsers(build_parser(), "rvm-node"):
        text = " ".join(parser.format_help().split())
        assert "(default: )" not in text and "(default " not in text, path
    formatted = {k: HelpFormatter("x")._get_help_string(a) for k, a in _actions()}
    assert f"(default: {RESUME_WARMUP})" in formatted["rvm-node convert --resume-warmup"]
    assert f"(default: {DEFAULT_PREROLL})" in formatted["rvm-node farm run --preroll"]
    for option, default in (("--bit-depth", "16"), ("--exr-channels", "RGBA"), ("--start-frame", "1")):
        assert f"(default: {default})" in formatted[f"rvm-node farm run {option}"], option


def _actions() -> Iterator[tuple[str, argparse.Action]]:
    for path, parser in _parsers(build_parser(), "rvm-node"):
        for action in parser._actions:
            if action.option_strings:
                yield f"{path} {action.option_strings[0]}", action
