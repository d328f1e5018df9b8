"""Node settings from three places. Precedence: command-line flags > environment > TOML file.

Every ``rvm-node serve`` option ``--some-option`` can also be set as the
environment variable ``RVM_NODE_SOME_OPTION`` or as ``some_option`` in the
``[node]`` table of the file given with ``--config``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rvm_node.errors import InvalidInputError
from rvm_node.tomlfile import load_toml

__all__ = ["apply_sources", "given_on_command_line"]


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options that appear in ``argv``."""
    given = set()
    for token in argv:
        option = token.split("=", 1)[0]
        action = parser._option_string_actions.get(option)
        if action is not None:
            given.add(action.dest)
    return given


def _convert(action: argparse.Action, raw: Any, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise InvalidInputError(f"{where}: expected true or false, got {raw!r}")
    kind = action.type or str
    try:
        value = kind(raw)  # type: ignore[operator]
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{where}: expected {getattr(kind, '__name__', 'a value')}, got {raw!r}"
        ) from None
    if action.choices is not None and value not in action.choices:
        raise InvalidInputError(
            f"{where}: expected one of {', '.join(map(str, action.choices))}, got {raw!r}"
        )
    return value


def apply_sources(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    given: set[str],
    environ: Mapping[str, str],
    config: Path | None,
) -> None:
    """Fill every option not given as a flag from the environment, then from the TOML file."""
    table: dict[str, Any] = load_toml(config, "the config file").get("node", {}) if config is not None else {}
    known = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InvalidInputError(f"{config}: unknown settings in [node]: {', '.join(unknown)}")
    for dest, action in known.items():
        if dest in given:
            continue
        env_name = "RVM_NODE_" + dest.upper()
        if env_name in environ:
            setattr(args, dest, _convert(action, environ[env_name], env_name))
        elif dest in table:
            setattr(args, dest, _convert(action, table[dest], f"{config}: {dest}"))
