"""Option groups more than one command takes, each defined once: a shot's inputs and outputs, a pool of
nodes, the stall timeout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rvm_node.cli import common
from rvm_node.engine.backend import BACKENDS, PRECISIONS
from rvm_node.engine.states import VARIANTS
from rvm_node.shot_settings import SHOT_SETTINGS, ShotSetting

__all__ = [
    "SHOT_OPTIONS",
    "add_backend_option",
    "add_connection_options",
    "add_pool_options",
    "add_shot_option",
    "add_shot_options",
    "add_stall_timeout",
]


_TYPES: dict[str, Any] = {"ratio": common.ratio, "int": int}


def _argument(setting: ShotSetting) -> dict[str, Any]:
    """argparse's keywords for a shot setting."""
    if setting.kind == "bool":
        return {"action": "store_true", "help": setting.help}
    keywords: dict[str, Any] = {"help": setting.help, "default": setting.default}
    if setting.kind in _TYPES:
        keywords["type"] = _TYPES[setting.kind]
    if setting.choices:
        keywords["choices"] = list(setting.choices)
    return keywords


# The options a shot takes wherever shots are made (convert, matte, farm run, farm bundle), from the one
# definition in rvm_node.shot_settings; farm commands give them no default, so a shot list's own values
# show through.
SHOT_OPTIONS: dict[str, dict[str, Any]] = {key: _argument(s) for key, s in SHOT_SETTINGS.items()}


def add_shot_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **override: Any
) -> None:
    """The shot option ``name`` (see :data:`SHOT_OPTIONS`), with ``override`` on top. ``default=None``
    leaves it unset, so a shot list's value shows through; the help still says what it defaults to."""
    option = {**SHOT_OPTIONS[name], **override}
    setting = SHOT_SETTINGS[name]
    if (
        option.get("default") is None
        and setting.default not in (None, False)
        and "default" not in option["help"]
    ):
        option["help"] = f"{option['help']} (default: {setting.default})"
    parser.add_argument(setting.flag, **option)


def add_backend_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--backend``, as every command that runs the model here takes it."""
    parser.add_argument(
        "--backend",
        choices=["auto", *BACKENDS],
        default="auto",
        help="engine that runs the model; auto: the fastest one that matches the official model here "
        "(OpenVINO on a CPU where it is installed, else onnxruntime)",
    )


def add_shot_options(convert: argparse.ArgumentParser, *, engine: bool = True) -> None:
    """The input, output and model options shared by ``convert`` and ``matte``; ``engine``: the model's
    options too (a client's shot runs on the node's model, so ``matte`` takes none of them)."""
    _add_official_options(convert.add_argument_group("the official convert_video options"), engine)
    _add_our_options(convert.add_argument_group("rvm-node options"), engine)


def _add_official_options(official: argparse._ArgumentGroup, engine: bool) -> None:
    """The options of the official ``convert_video``, under their own names."""
    if engine:
        official.add_argument(
            "--variant",
            choices=list(VARIANTS),
            default="mobilenetv3",
            help="RVM backbone (resnet50: a .pth checkpoint)",
        )
        official.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="weights file (default: the fetched official weights)",
        )
        official.add_argument(
            "--device",
            default="cpu",
            help="where the model runs: cpu, cuda, cuda:N, or auto (cuda where rvm-node[gpu] can use one)",
        )
    official.add_argument(
        "--input-source", required=True, help="a video file, a frame pattern or a directory"
    )
    official.add_argument(
        "--input-resize",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        default=None,
        help="resize the input to W x H before matting (default: its own size)",
    )
    add_shot_option(official, "downsample_ratio", default=None)
    official.add_argument(
        "--output-type",
        choices=["video", "png_sequence"],
        default="video",
        help="video, or png_sequence: the outputs are directories of PNGs (a frame pattern picks the format itself)",
    )
    for name in ("output_composition", "output_alpha", "output_foreground"):
        add_shot_option(official, name, default=None)
    official.add_argument(
        "--output-video-mbps",
        type=float,
        default=None,
        help="bit rate of video outputs in Mbit/s (default: 4)",
    )
    official.add_argument(
        "--seq-chunk", type=int, default=None, help="frames per step (default: 1; 8 for matte)"
    )
    official.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="threads encoding image sequences (default: 0 for convert, up to 4 for matte)",
    )
    official.add_argument("--disable-progress", action="store_true", help="no progress bar (as --quiet)")


def _add_our_options(ours: argparse._ArgumentGroup, engine: bool) -> None:
    """What rvm-node adds: the engine, frame numbers, colour, file formats, resume."""
    if engine:
        add_backend_option(ours)
        ours.add_argument("--precision", choices=PRECISIONS, default="fp32", help="arithmetic precision")
    add_shot_option(ours, "frames", default=None)
    add_shot_option(ours, "start_frame")
    ours.add_argument(
        "--frame-rate", default=None, help="rate of video outputs from image sequences, e.g. 24000/1001"
    )
    for name in (
        "input_colorspace",
        "exr_channels",
        "bit_depth",
        "premultiplied",
        "group_writable",
        "background",
    ):
        add_shot_option(ours, name)
    ours.add_argument(
        "--video-codec",
        choices=["h264", "prores4444"],
        default=None,
        help="codec of video outputs (default: h264 for .mp4, ProRes 4444 for .mov)",
    )
    add_shot_option(ours, "allow_gaps")
    add_shot_option(ours, "no_autorotate")
    ours.add_argument("--resume", action="store_true", help="continue a killed run from its verified frames")
    ours.add_argument(
        "--resume-warmup",
        type=int,
        default=None,
        help="frames replayed before the first missing one, where no checkpoint is left (default: 30)",
    )
    ours.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    ours.add_argument("--progress-json", action="store_true", help="one JSON object per line on stdout")
    ours.add_argument("--quiet", action="store_true", help="no progress bar")


def add_connection_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a client proves itself to nodes and checks them: the bearer token and the CA."""
    parser.add_argument(
        "--token-file",
        type=common.optional_path,
        default=None,
        help="file holding the bearer token the nodes expect (default: $RVM_NODE_TOKEN, else none)",
    )
    parser.add_argument(
        "--ca-file",
        type=common.optional_path,
        default=None,
        help="CA certificate of the nodes: connect with TLS (default: plain gRPC)",
    )


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", required=True, help="HOST:PORT,HOST:PORT, dns:///NAME:PORT, or nodes.toml")
    add_connection_options(parser)


def add_stall_timeout(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="seconds a stream may wait for the node's answer before the node counts as dead for the shot "
        "(a frozen node); 0: wait for ever (default: 60)",
    )
