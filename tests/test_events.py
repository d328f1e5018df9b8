"""The progress-event schema (version 1) that `convert`, `matte`, `farm run` and the plugins share: pinned."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rvm_node.errors import InvalidInputError
from rvm_node.events import ENDS, KINDS, SCHEMA_VERSION, ProgressEvent

FIELDS = ["v", "kind", "shot", "node", "frame", "done", "total", "fps", "eta", "retries", "message"]
GOLDEN = {
    "started": (
        ProgressEvent("started", shot="sh010", node="gpu1:50051", total=120),
        '{"v": 1, "kind": "started", "shot": "sh010", "node": "gpu1:50051", "frame": null, "done": 0, '
        '"total": 120, "fps": 0.0, "eta": null, "retries": 0, "message": ""}',
    ),
    "frame": (
        ProgressEvent("frame", frame=1001, done=1, total=120, fps=24.123456, eta=4.93333),
        '{"v": 1, "kind": "frame", "shot": null, "node": null, "frame": 1001, "done": 1, "total": 120, '
        '"fps": 24.123, "eta": 4.9, "retries": 0, "message": ""}',
    ),
    "retry": (
        ProgressEvent(
            "retry",
            shot="sh010",
            node="gpu1:50051",
            done=40,
            total=120,
            fps=20.0,
            retries=1,
            message="node gpu1:50051: unavailable",
        ),
        '{"v": 1, "kind": "retry", "shot": "sh010", "node": "gpu1:50051", "frame": null, "done": 40, '
        '"total": 120, "fps": 20.0, "eta": null, "retries": 1, "message": "node gpu1:50051: unavailable"}',
    ),
    "done": (
        ProgressEvent("done", done=120, total=120, fps=25.0, eta=0.0),
        '{"v": 1, "kind": "done", "shot": null, "node": null, "frame": null, "done": 120, "total": 120, '
        '"fps": 25.0, "eta": 0.0, "retries": 0, "message": ""}',
    ),
    "failed": (
        ProgressEvent(
            "failed",
            shot="sh020",
            node="gpu2:50051",
            done=3,
            total=None,
            message="node gpu2:50051: settings: 9000x9000 exceeds this node's limits",
        ),
        '{"v": 1, "kind": "failed", "shot": "sh020", "node": "gpu2:50051", "frame": null, "done": 3, '
        '"total": null, "fps": 0.0, "eta": null, "retries": 0, '
        '"message": "node gpu2:50051: settings: 9000x9000 exceeds this node\'s limits"}',
    ),
    "cancelled": (
        ProgressEvent(
            "cancelled", done=7, total=120, fps=12.5, message="cancelled; complete frames were kept"
        ),
        '{"v": 1, "kind": "cancelled", "shot": null, "node": null, "frame": null, "done": 7, "total": 120, '
        '"fps": 12.5, "eta": null, "retries": 0, "message": "cancelled; complete frames were kept"}',
    ),
}


def test_every_kind_has_a_golden_line() -> None:
    assert set(GOLDEN) == set(KINDS) and set(ENDS) <= set(KINDS) and SCHEMA_VERSION == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_line_of_each_kind_is_pinned(kind: str) -> None:
    event, line = GOLDEN[kind]
    assert event.to_json() == line
    assert list(json.loads(line)) == FIELDS  # every field, in this order
    parsed = ProgressEvent.from_json(line)
    assert parsed == dataclasses.replace(
        event, fps=round(event.fps, 3), eta=None if event.eta is None else round(event.eta, 1)
    )
    assert parsed.final == (kind in ENDS)


def test_readers_ignore_unknown_keys_and_refuse_other_versions() -> None:
    record = json.loads(GOLDEN["frame"][1])
    assert ProgressEvent.from_json(json.dumps({**record, "gpu_temp": 71})).frame == 1001
    for bad, message in (
        ({**record, "v": 2}, "expected an object with v = 1"),
        ([1, 2], "expected an object"),
        ({k: v for k, v in record.items() if k != "done"}, "missing done"),
        ({**record, "kind": "finished"}, "expected one of started, frame"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            ProgressEvent.from_json(json.dumps(bad))
    with pytest.raises(InvalidInputError, match="not JSON"):
        ProgressEvent.from_json("{")
