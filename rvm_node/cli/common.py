"""What the commands share: exit codes, value parsers, token and CA files, logging, the local model,
and SIGTERM as Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from rvm_node.credentials import read_token
from rvm_node.engine.ratio import RATIO_RANGE, is_ratio
from rvm_node.errors import InvalidInputError

__all__ = [
    "EXIT_BACKEND",
    "EXIT_ERROR",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "HelpFormatter",
    "Parser",
    "Renamed",
    "configure_logging",
    "load_local",
    "optional_path",
    "plural",
    "ratio",
    "stall_timeout",
    "stop_on_sigterm",
    "token",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130


def ratio(text: str) -> float | None:
    """``--downsample-ratio``: a number in (0, 1], or ``auto``; anything else is a usage error (exit 2)."""
    if text.lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not is_ratio(value):
        raise argparse.ArgumentTypeError(f"expected {RATIO_RANGE} or 'auto', got {text!r}")
    return value


def optional_path(text: str) -> Path | None:
    """A path, or none for an empty value (as a job template passes an unset file)."""
    return Path(text) if text else None


def token(path: Path | None) -> str | None:
    """The token in ``path``, else ``$RVM_NODE_TOKEN``, else None."""
    import os

    return read_token(path) if path is not None else os.environ.get("RVM_NODE_TOKEN") or None


def configure_logging(fmt: str) -> None:
    import json
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps(
                {
                    "time": self.formatTime(record),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": record.getMessage(),
                }
            )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


class ModelChoice(Protocol):
    """What names a model: a command's arguments, or serve's settings."""

    @property
    def variant(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def checkpoint(self) -> Path | None: ...


def load_local(choice: ModelChoice, options: Any) -> Any:
    """The model named by --variant/--backend/--device/--precision/--checkpoint."""
    from rvm_node.engine.loader import load_model

    return load_model(
        choice.variant,
        backend=choice.backend,
        device=choice.device,
        precision=choice.precision,
        weights=choice.checkpoint,
        options=options,
    )


def resolved_device(device: str) -> str:
    """``auto`` as the device it stands for here (a GPU where rvm-node can use one); any other as it is."""
    from rvm_node.engine.backend import fastest_device

    return fastest_device() if device == "auto" else device


def resolved_backend(backend: str, device: str) -> str:
    """``auto`` as the backend it stands for on ``device``; any other name as it is."""
    from rvm_node.engine.backend import fastest_parity_backend

    return fastest_parity_backend(device) if backend == "auto" else backend


def stall_timeout(seconds: float) -> float | None:
    if seconds < 0:
        raise InvalidInputError(f"--stall-timeout: expected 0 or more seconds, got {seconds:g}")
    return seconds or None


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (and SIGINT, even where a parent ignored it; Ctrl-Break on Windows) stop a job as Ctrl-C does:
    complete frames are kept.

    Plugins cancel their rvm-node subprocess this way. The node (`serve`)
    handles SIGTERM itself, by draining. The caller's handlers come back after.
    """
    import signal
    import threading

    from rvm_node.processes import stop_signals

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signals = stop_signals()
    previous = [signal.signal(signum, interrupt) for signum in signals]
    try:
        yield
    finally:
        for signum, handler in zip(signals, previous, strict=True):
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, handler)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written (their examples keep their lines); every option shows its default, unless it has
    none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(str(d) for d in default) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """No abbreviated long options: ``--max-str`` is an error, not ``--max-streams``, so which flags were
    given is plain from the command line (flags > environment > config file). Subcommands inherit it,
    and the help formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class Renamed(argparse.Action):
    """An option with a new name first and its old one after it: the old one still works, and says once
    what replaces it."""

    _said: ClassVar[set[str]] = set()

    def __call__(
        self,
        parser: argparse.ArgumentParser,  # noqa: ARG002 - argparse passes it
        namespace: argparse.Namespace,
        values: Any,
        option: str | None = None,
    ) -> None:
        if option is not None and option != self.option_strings[0] and option not in Renamed._said:
            Renamed._said.add(option)
            print(f"rvm-node: {option} is now {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def plural(count: int, noun: str) -> str:
    """``1 frame``, ``2 frames``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
