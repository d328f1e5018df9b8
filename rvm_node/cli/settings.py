"""Typed settings layered once: defaults, then the ``--config`` file's ``[node]`` table, then ``RVM_NODE_*``,
then flags. Nothing derived (``backend = "auto"``) is resolved before every source is in.

A :class:`Setting` is the one definition of an option: its flag, its environment variable and its config
key come from its name, its help text and default from here. A bad value names the source it came from:
``RVM_NODE_MAX_STREAMS=abc: expected an integer``.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rvm_node.cli.common import Renamed
from rvm_node.errors import InvalidInputError
from rvm_node.tomlfile import load_toml

__all__ = ["ENV_PREFIX", "Setting", "add_settings", "layer", "setting", "settings_of"]

ENV_PREFIX = "RVM_NODE_"


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number") from None


_KINDS: dict[type, tuple[Callable[[str], Any], str]] = {
    int: (_integer, "an integer"),
    float: (_number, "a number"),
    str: (str, "text"),
    Path: (Path, "a path"),
}


@dataclass(frozen=True)
class Setting:
    """One setting: ``--NAME`` (dashes), ``RVM_NODE_NAME`` and ``NAME`` in the config file."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    optional: bool = False  # None (unset) is a value: the default, and what an empty variable means
    old_name: str | None = None  # the name it had: still taken as flag, variable and key, saying the new one

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: Any) -> Any:
        """``raw`` (text from a flag or the environment, or a TOML value) as this setting takes it."""
        if self.optional and raw in ("", None):
            return None
        convert, expected = _KINDS[self.kind]
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(f"expected {expected}, got {raw!r}")
        if self.kind is int and isinstance(raw, float):
            raise ValueError(f"expected an integer, got {raw!r}")
        value = convert(str(raw)) if isinstance(raw, str) or self.kind in (str, Path) else self.kind(raw)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        return value

    def argparse_type(self, text: str) -> Any:
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    old_name: str | None = None,
) -> Any:
    """A settings dataclass field: its default and what :class:`Setting` needs besides its name and type
    (``old_name``: the name the setting had, still taken as its flag, variable and config key)."""
    return field(
        default=default, metadata={"help": help, "choices": choices, "metavar": metavar, "old_name": old_name}
    )


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The :class:`Setting` of each field of the settings dataclass ``cls`` (fields made by :func:`setting`)."""
    hints = typing.get_type_hints(cls)
    settings = []
    for item in fields(cls):
        kinds = [k for k in typing.get_args(hints[item.name]) if k is not type(None)] or [hints[item.name]]
        optional = type(None) in typing.get_args(hints[item.name])
        meta = item.metadata
        settings.append(
            Setting(
                item.name,
                kinds[0],
                item.default,
                meta["help"],
                meta["choices"],
                meta["metavar"],
                optional,
                meta["old_name"],
            )
        )
    return tuple(settings)


def add_settings(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: Sequence[Setting]
) -> None:
    """The settings as flags. A flag not given leaves no attribute, so the layers below show through."""
    for option in settings:
        shown = "none" if option.default is None else option.default
        parser.add_argument(
            option.flag,
            *([_flag(option.old_name)] if option.old_name else []),
            dest=option.name,
            type=option.argparse_type,
            default=argparse.SUPPRESS,
            action=Renamed,
            metavar=option.metavar or ("{" + ",".join(option.choices) + "}" if option.choices else None),
            help=f"{option.help} (default: {shown}; {option.env})",
        )


def layer(
    settings: Sequence[Setting],
    flags: argparse.Namespace,
    environ: Mapping[str, str],
    config: Path | None,
    table_name: str = "node",
) -> dict[str, Any]:
    """Every setting's value: its default, the config file's, the environment's, then the flag's."""
    values = {s.name: s.default for s in settings}
    if config is not None:
        table = load_toml(config, "the config file").get(table_name, {})
        if not isinstance(table, dict):
            raise InvalidInputError(f"{config}: [{table_name}] must be a table")
        known = {s.name: s for s in settings} | {s.old_name: s for s in settings if s.old_name}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise InvalidInputError(f"{config}: unknown settings in [{table_name}]: {', '.join(unknown)}")
        for name, raw in table.items():
            option = known[name]
            if name != option.name:
                _said(f"{config}: [{table_name}] {name} is now {option.name}")
            values[option.name] = _parsed(option, raw, f"{config}: [{table_name}] {name}")
    for option in settings:
        old_env = ENV_PREFIX + option.old_name.upper() if option.old_name else None
        for env in (old_env, option.env):
            if env is not None and env in environ:
                if env != option.env:
                    _said(f"{env} is now {option.env}")
                values[option.name] = _parsed(option, environ[env], f"{env}={environ[env]}")
    for option in settings:
        if hasattr(flags, option.name):
            values[option.name] = getattr(flags, option.name)
    return values


def _said(line: str) -> None:
    """A renamed setting that still works: said once on stderr, as :class:`Renamed` says a renamed flag."""
    print(f"rvm-node: {line}", file=sys.stderr)


def _parsed(option: Setting, raw: Any, where: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
