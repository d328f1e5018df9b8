"""Progress events: one contract for ``convert``, ``matte``, ``farm run`` and the plugins.

Every line ``--progress-json`` prints is one event: a JSON object with all of
these keys, in this order (schema version 1)::

    v        1, the schema version
    kind     "started" | "frame" | "retry" | "done" | "failed" | "cancelled"
    shot     the shot's name (farm runs), or null for one convert or matte
    node     the node serving the shot, or null (a local convert; not started yet)
    frame    the frame number just written (kind "frame"), else null
    done     frames written in this run so far (frames kept from an earlier run not counted)
    total    frames this run writes, or null while unknown
    fps      frames per second written in this run so far
    eta      seconds left at that rate, or null while unknown
    retries  times the shot moved to another node
    message  why, for "retry", "failed" and "cancelled" (and a note on "done"), else ""

A shot's events start with ``started`` and end with exactly one of
``done``, ``failed`` or ``cancelled``; ``frame`` and ``retry`` come between.
A reader ignores keys it does not know, and refuses a ``v`` it does not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from rvm_node.errors import InvalidInputError

__all__ = ["ENDS", "KINDS", "SCHEMA_VERSION", "EventKind", "ProgressEvent", "eta_of"]

SCHEMA_VERSION = 1
EventKind = Literal["started", "frame", "retry", "done", "failed", "cancelled"]
KINDS: tuple[str, ...] = get_args(EventKind)
ENDS = ("done", "failed", "cancelled")


def eta_of(done: int, total: int | None, fps: float) -> float | None:
    """Seconds left for ``total - done`` frames at ``fps``, when both are known."""
    if total is None or fps <= 0:
        return None
    return max(0.0, (total - done) / fps)


@dataclass(frozen=True)
class ProgressEvent:
    """One progress event (see the module docstring for what each field means)."""

    kind: EventKind
    shot: str | None = None
    node: str | None = None
    frame: int | None = None
    done: int = 0
    total: int | None = None
    fps: float = 0.0
    eta: float | None = None
    retries: int = 0
    message: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"event kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def final(self) -> bool:
        """True for the event that ends a shot."""
        return self.kind in ENDS

    def to_json(self) -> str:
        """The event as one JSON line (no newline), the form ``--progress-json`` prints."""
        record: dict[str, Any] = {"v": SCHEMA_VERSION, **asdict(self)}
        record["fps"] = round(self.fps, 3)
        record["eta"] = None if self.eta is None else round(self.eta, 1)
        return json.dumps(record)

    @classmethod
    def from_json(cls, line: str | bytes) -> ProgressEvent:
        """An event from one JSON line; InvalidInputError for anything that is not a version-1 event."""
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"progress event: not JSON ({exc})") from None
        if not isinstance(record, dict) or record.get("v") != SCHEMA_VERSION:
            raise InvalidInputError(f"progress event: expected an object with v = {SCHEMA_VERSION}")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in record]
        if missing:
            raise InvalidInputError(f"progress event: missing {', '.join(missing)}")
        return cls(**{name: record[name] for name in names})
