"""A second Unix user and a second process of the node's own user, each trying every route the protocol has
to make a node read or write memory they did not hand over (``tests/intruder.py``): every try is refused, and
the victim's bytes stay as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rvm_node.client import NodeClient
from rvm_node.client.stream import MatteStream
from rvm_node.node.limits import Limits
from tests.node_support import NodeThread
from tests.standin import StandInBackend

INTRUDER = Path(__file__).resolve().parent / "intruder.py"
USER = "rvm-node-intruder"
W, H = 64, 48


@pytest.fixture(scope="module")
def node(standin: StandInBackend) -> Iterator[NodeThread]:
    server = NodeThread(standin, limits=Limits(max_streams=8, idle_timeout=30))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def second_user() -> Iterator[str]:
    """A Unix user of its own, made for the test and removed after it."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("making a second Unix user needs root and useradd (CI runs as root)")
    made = subprocess.run(["id", USER], capture_output=True).returncode != 0
    if made:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
            capture_output=True,
        )
    yield USER
    if made:
        subprocess.run(["userdel", USER], check=False, capture_output=True)


def _victim_stream(client: NodeClient) -> MatteStream:
    """A shared-memory stream that holds its ring, with a known frame in its first slot."""
    stream = client.open_stream(width=W, height=H, transport="shm", ring_slots=2)
    assert stream.transport == "shm" and stream.ring is not None
    frame = (np.arange(H * W * 3) % 251).astype(np.uint8).reshape(H, W, 3)
    list(stream.process([(1, frame)]))  # the frame and its alpha now lie in the ring
    return stream


def _digest(stream: MatteStream) -> str:
    ring = stream.ring
    assert ring is not None and ring._map is not None
    return hashlib.sha256(bytes(ring._map)).hexdigest()


def _intrude(address: str, stream: MatteStream, user: str | None) -> dict[str, object]:
    assert stream.ring is not None
    command = [sys.executable, str(INTRUDER), address, str(os.getpid()), str(stream.ring._fd)]
    if user is not None:
        command += ["--user", user]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _all_refused(outcome: dict[str, object]) -> None:
    assert str(outcome["name_tcp"]).startswith("refused: INVALID_ARGUMENT"), outcome
    assert "shared memory is taken only on the node's Unix sockets" in str(outcome["name_tcp"])
    assert str(outcome["name_local"]).startswith("refused: INVALID_ARGUMENT"), outcome
    assert "never by a name" in str(outcome["name_local"])
    guesses = outcome["guessed_handle"]
    assert isinstance(guesses, list) and len(guesses) == 4
    assert all(
        str(g).startswith("refused: INVALID_ARGUMENT") and "no ring was handed over" in g for g in guesses
    )


def test_another_user_cannot_reach_memory_it_did_not_hand_over(node: NodeThread, second_user: str) -> None:
    with NodeClient(node.address) as client:
        stream = _victim_stream(client)
        before = _digest(stream)
        outcome = _intrude(node.address, stream, second_user)
        assert outcome["uid"] != 0
        _all_refused(outcome)
        assert str(outcome["open_victim_fd"]).startswith("refused by the kernel"), outcome
        assert _digest(stream) == before
        more = list(stream.process([(2, np.zeros((H, W, 3), np.uint8))]))  # and the victim streams on
        assert [r.number for r in more] == [2]
        stream.close()


def test_another_process_of_the_same_user_cannot_take_a_ring_in_use(node: NodeThread) -> None:
    """The same user may open the victim's memfd through /proc (Unix lets it), but the node refuses to take
    memory that is handed over already, so the victim's frames and planes stay its own."""
    with NodeClient(node.address) as client:
        stream = _victim_stream(client)
        before = _digest(stream)
        outcome = _intrude(node.address, stream, None)
        assert outcome["uid"] == os.getuid()
        _all_refused(outcome)
        assert str(outcome["open_victim_fd"]).startswith("hand-over refused: RING_INVALID"), outcome
        assert "handed over already" in str(outcome["open_victim_fd"])
        assert _digest(stream) == before
        stream.close()
