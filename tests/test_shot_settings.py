"""A shot's settings are defined once (rvm_node.shot_settings): the flags, a shot list's keys, a farm job
bundle's command and the plugins' entries all come from it, and a shot survives every hop unchanged."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from rvm_node.cli import build_parser
from rvm_node.cli.farm import _farm_shots
from rvm_node.errors import InvalidInputError
from rvm_node.farm import load_shot_list, shots_from_entries
from rvm_node.farm.bundle import PoolSettings, plan_job, task_argv, task_values
from rvm_node.farm.shots import shot_settings
from rvm_node.shot_settings import (
    OUTPUT_KEYS,
    SETTING_KEYS,
    SHOT_SETTINGS,
    changed_settings,
    check_settings,
    setting_entries,
    setting_flags,
)

# A value for every setting, none of them its default.
EVERY: dict[str, Any] = {
    "output_alpha": "{out}/m.####.exr",
    "output_foreground": "{out}/f.####.png",
    "output_composition": "{out}/c.####.tif",
    "downsample_ratio": 0.375,
    "frames": "3-17",
    "start_frame": 1001,
    "input_colorspace": "ACEScg",
    "exr_channels": "A",
    "bit_depth": 8,
    "premultiplied": True,
    "group_writable": True,
    "background": "10,20,30",
    "allow_gaps": True,
    "no_autorotate": True,
}


def _every(tmp_path: Path) -> dict[str, Any]:
    return {k: v.replace("{out}", str(tmp_path / "o")) if k in OUTPUT_KEYS else v for k, v in EVERY.items()}


def test_the_example_sets_every_setting_to_something_not_its_default() -> None:
    assert set(EVERY) == set(SETTING_KEYS)
    assert changed_settings(EVERY) == EVERY


def test_the_flags_parse_back_to_the_same_values_in_every_command(tmp_path: Path) -> None:
    values = _every(tmp_path)
    flags = setting_flags(values)
    for command in (
        ["convert", "--input-source", "a.mov"],
        ["matte", "--input-source", "a.mov", "--node", "n:1"],
        ["farm", "run", "a.mov", "--nodes", "n:1"],
        ["farm", "bundle", "a.mov", "--nodes", "n:1", "--output", "b"],
    ):
        args = vars(build_parser().parse_args([*command, *flags]))
        assert {k: args[k] for k in SETTING_KEYS} == values, command
    auto = vars(
        build_parser().parse_args(
            ["convert", "--input-source", "a", *setting_flags({"downsample_ratio": None})]
        )
    )
    assert auto["downsample_ratio"] is None


def test_a_shot_survives_entries_the_command_line_and_a_job_bundle(tmp_path: Path) -> None:
    plate = tmp_path / "plate.mov"
    plate.write_bytes(b"")
    values = _every(tmp_path)
    (shot,) = shots_from_entries([{"name": "sh010", "input": str(plate), **setting_entries(values)}], "test")
    assert shot_settings(shot) == {k: v for k, v in values.items() if k not in OUTPUT_KEYS}
    assert {f"output_{k}": v for k, v in shot.outputs.items()} == {k: values[k] for k in OUTPUT_KEYS}

    farm_run = build_parser().parse_args(
        ["farm", "run", str(plate), "--nodes", "n:1", "--name", "sh010", *setting_flags(values)]
    )
    assert _farm_shots(farm_run, split_now=False) == [shot]

    other = dataclasses.replace(
        shot, name="sh020", downsample_ratio=0.5, outputs={"alpha": str(tmp_path / "p" / "m.####.exr")}
    )
    for shots in ([shot], [dataclasses.replace(shot, outputs={"alpha": shot.outputs["alpha"]}), other]):
        job = plan_job(shots, PoolSettings(nodes="n:1"), name="job")
        for task, expected in zip(job.tasks, shots, strict=True):
            argv = task_argv(job, task_values(job, task))
            assert argv[:3] == ["rvm-node", "farm", "run"]
            parsed = _farm_shots(build_parser().parse_args(argv[1:]), split_now=False)
            assert parsed == [expected]


def test_the_library_defaults_are_the_settings_defaults() -> None:
    from rvm_node.convert.api import convert_video
    from rvm_node.io.writers import WriterSettings

    writer = WriterSettings()
    for key in ("exr_channels", "bit_depth", "premultiplied", "group_writable"):
        assert getattr(writer, key) == SHOT_SETTINGS[key].default, key
    parameters = inspect.signature(convert_video).parameters
    for key in (
        "start_frame",
        "allow_gaps",
        "no_autorotate",
        "downsample_ratio",
        "frames",
        "input_colorspace",
        "background",
    ):
        assert parameters[key].default == SHOT_SETTINGS[key].default, key
    assert check_settings({}, "x") == {k: s.default for k, s in SHOT_SETTINGS.items()}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("downsample_ratio", 1.5, "a number in (0, 1] or auto"),
        ("downsample_ratio", "half", "a number in (0, 1] or auto"),
        ("downsample_ratio", True, "a number in (0, 1] or auto"),
        ("bit_depth", "16", "an integer"),
        ("bit_depth", 12, "one of 8, 16"),
        ("exr_channels", "RGB", "one of RGBA, A"),
        ("premultiplied", "yes", "true or false"),
        ("start_frame", 1.5, "an integer"),
        ("frames", "1001 to 1100", "a range FIRST-LAST"),
        ("frames", 1001, "a range FIRST-LAST"),
        ("input_colorspace", 3, "a string"),
    ],
)
def test_a_bad_value_is_one_line_naming_where_and_the_key(key: str, value: Any, expected: str) -> None:
    with pytest.raises(
        InvalidInputError, match="^" + re.escape(f"shots.toml: shot 2: {key}: expected {expected}, got ")
    ) as caught:
        check_settings({key: value}, "shots.toml: shot 2")
    assert caught.value.field == key and "\n" not in str(caught.value)


def test_a_shot_list_with_a_bad_value_names_the_file_the_shot_and_the_key(tmp_path: Path) -> None:
    plate = tmp_path / "plate.mov"
    plate.write_bytes(b"")
    shots = tmp_path / "shots.toml"
    shots.write_text(
        f'[defaults]\noutput_alpha = "o/{{shot}}.####.png"\n[[shot]]\ninput = "{plate}"\n'
        f'[[shot]]\ninput = "{plate}"\nname = "b"\nbit_depth = "16"\n'
    )
    with pytest.raises(
        InvalidInputError, match=r"shots.toml: shot 2: bit_depth: expected an integer, got '16'"
    ):
        load_shot_list(shots)
    shots.write_text(
        f'[defaults]\nallow_gaps = "yes"\n[[shot]]\ninput = "{plate}"\noutput_alpha = "o/m.####.png"\n'
    )
    with pytest.raises(
        InvalidInputError, match=r"shots.toml: \[defaults\]: allow_gaps: expected true or false"
    ):
        load_shot_list(shots)
    with pytest.raises(
        InvalidInputError, match=r"unknown keys colour; expected some of input, name, output_alpha"
    ):
        check_settings({"colour": 1}, "x", extra=("input", "name"))
