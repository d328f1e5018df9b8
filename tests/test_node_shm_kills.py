"""Nothing outlives its client: 20 shared-memory clients of a private node (the stand-in model) SIGKILLed at
random points (starting, handing their ring over, waiting for a slot on a full node, mid-stream, closing)
leave /dev/shm and the private folder as they were, and the node keeps no ring of theirs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rvm_node.client import NodeClient
from rvm_node.client.private_node import private_node, stop_private_node
from tests.helpers import RVM_NODE_STANDIN, listing, wait_until

ROOT = Path(__file__).resolve().parent.parent

# A client that streams short shots to the node over shared memory, one after another, for ever: a kill at a
# random moment finds it in any phase of a stream. It waits (retrying) while the node is full.
_CLIENT = """
import sys
import numpy as np
from rvm_node.client import NodeClient
frame = np.zeros((48, 64, 3), np.uint8)
with NodeClient(sys.argv[1], token=sys.argv[2], retries=1000, backoff=0.05) as client:
    while True:
        with client.open_stream(width=64, height=48, output_format="uint16", transport="shm") as stream:
            assert stream.transport == "shm"
            for _ in stream.process((n, frame) for n in range(1, 4)):
                pass
"""


def _shm_listing() -> list[str]:
    return sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else []


def _rings_held(pid: int) -> int:
    """Ring memfds the node process holds open or mapped."""
    held = sum("memfd:rvm-node-ring" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held += "memfd:rvm-node-ring" in os.readlink(fd)
        except OSError:
            continue
    return held


@pytest.mark.slow
def test_clients_killed_at_random_points_leave_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    node = private_node(RVM_NODE_STANDIN, folder=folder, serve_options=["--max-streams", "2"])
    try:
        shm_before, folder_before = _shm_listing(), listing(folder)
        rng = random.Random(20261207)
        frames = [(n, np.zeros((48, 64, 3), np.uint8)) for n in range(1, 4)]
        with NodeClient(node.address, token=node.token) as holder:
            for round_ in range(4):  # 5 clients a round; in two rounds the node is full, so they wait
                held = []
                if round_ % 2:
                    held = [holder.open_stream(width=64, height=48, transport="shm") for _ in range(2)]
                clients = [
                    subprocess.Popen(
                        [sys.executable, "-c", _CLIENT, node.address, node.token],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for _ in range(5)
                ]
                for client in clients:
                    time.sleep(rng.uniform(0.0, 1.5))  # into any phase: start, hand-over, wait, stream, close
                    client.kill()
                    client.wait()
                for stream in held:
                    list(stream.process(frames))
                    stream.close()
        with NodeClient(node.address, token=node.token) as client:
            assert wait_until(lambda: client.info().active_streams == 0, 30)
            assert wait_until(lambda: _rings_held(node.pid) == 0, 30)  # every killed client's ring let go
            assert _shm_listing() == shm_before
            assert listing(folder) == folder_before
            with client.open_stream(width=64, height=48, transport="shm") as stream:  # the node serves on
                assert [r.number for r in stream.process(frames)] == [1, 2, 3]
    finally:
        stop_private_node(folder=folder)
    assert listing(folder) == []
