"""Node settings from three places. Precedence: command-line flags > environment > TOML file.

Every ``rvm-node serve`` option ``--some-option`` can also be set as the
environment variable ``RVM_NODE_SOME_OPTION`` or as ``some_option`` in the
``[node]`` table of the file given with ``--config``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rvm_node.errors import InvalidInputError
from rvm_node.tomlfile import load_toml

__all__ = ["apply_sources", "given_on_command_line"]

_NOT_SETTINGS = ("config", "serve_parser", "command")
_UNSET = object()


def _settings(parser: argparse.ArgumentParser) -> list[str]:
    """The destinations of the parser's options (read by parsing no arguments)."""
    return [dest for dest in vars(parser.parse_args([])) if dest not in _NOT_SETTINGS]


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options that appear in ``argv`` (the arguments after the command).

    The parser fills only what ``argv`` sets into a namespace already holding
    every destination, so what still holds the marker was not given.
    """
    probe = argparse.Namespace(**dict.fromkeys(_settings(parser), _UNSET))
    parser.parse_args(list(argv), namespace=probe)
    return {dest for dest, value in vars(probe).items() if value is not _UNSET and dest not in _NOT_SETTINGS}


def _convert(parser: argparse.ArgumentParser, dest: str, raw: Any, where: str) -> Any:
    """``raw`` as the option ``dest`` takes it, converted and checked by the parser itself."""
    option = "--" + dest.replace("_", "-")
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return getattr(parser.parse_args([option, str(raw)]), dest)
    except SystemExit:
        lines = errors.getvalue().strip().splitlines() or ["not a valid value"]
        detail = lines[-1].split("error: ", 1)[-1]
        raise InvalidInputError(f"{where}: {detail}") from None


def apply_sources(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    given: set[str],
    environ: Mapping[str, str],
    config: Path | None,
) -> None:
    """Fill every option not given as a flag from the environment, then from the TOML file."""
    table: dict[str, Any] = load_toml(config, "the config file").get("node", {}) if config is not None else {}
    known = _settings(parser)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidInputError(f"{config}: unknown settings in [node]: {', '.join(unknown)}")
    for dest in known:
        if dest in given:
            continue
        env_name = "RVM_NODE_" + dest.upper()
        if env_name in environ:
            setattr(args, dest, _convert(parser, dest, environ[env_name], env_name))
        elif dest in table:
            setattr(args, dest, _convert(parser, dest, table[dest], f"{config}: {dest}"))
