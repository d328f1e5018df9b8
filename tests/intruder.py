"""A local intruder for the shared-memory tests: a process that tries every route the protocol has to make a
node read or write memory it did not hand over, and prints what each try got, as one JSON object.

``python tests/intruder.py NODE_ADDRESS VICTIM_PID VICTIM_FD [--user NAME]``. With ``--user`` it starts as
root, loads what it needs, then drops to that user's credentials before it tries anything (a second Unix
user of the node's host). The routes:

* ``name_tcp`` / ``name_local``: a stream that names the victim's memfd by path (``/proc/PID/fd/FD``), on
  the node's port and on its local endpoint;
* ``guessed_handle``: streams with random, empty and short handles on the local endpoint;
* ``open_victim_fd``: opening the victim's memfd through ``/proc`` (the kernel decides), and if that works,
  handing it over as the intruder's own.

Every route must be refused, and the victim's bytes stay as they were (``tests/test_node_shm_intruders.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # loaded before the credentials drop, as everything below
import numpy as np

from rvm_node.client import NodeClient
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.protocol import SlotLayout
from tests.helpers import offer_ring

W, H = 64, 48


def _stream(address: str, ring: pb.SharedMemoryRing) -> str:
    settings = pb.StreamSettings(
        width=W,
        height=H,
        input_format=pb.SAMPLE_FORMAT_UINT8,
        output_format=pb.SAMPLE_FORMAT_FLOAT32,
        transport=pb.TRANSPORT_SHM,
        ring=ring,
    )
    part = pb.FramePart(number=1, total_bytes=W * H * 3, shm=pb.SlotRef(slot=0, offset=0, size=W * H * 3))
    requests = [
        pb.MatteRequest(open=pb.OpenStream(settings=settings)),
        pb.MatteRequest(chunk=pb.FrameChunk(parts=[part])),
    ]
    try:
        with grpc.insecure_channel(address) as channel:
            list(pb_grpc.MattingServiceStub(channel).Matte(iter(requests), timeout=30))
    except grpc.RpcError as exc:
        return f"refused: {exc.code().name}: {exc.details()}"
    return "accepted"


def _drop_to(user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def main() -> int:
    address, victim_pid, victim_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with NodeClient(address) as client:
        info = client.info()  # before the drop: whatever the node tells anyone with its address
    (endpoint,) = info.local_endpoints
    layout = SlotLayout.of(W, H, np.dtype("u1"), np.dtype("<f4"), [pb.PLANE_ALPHA])
    if "--user" in sys.argv:
        _drop_to(sys.argv[sys.argv.index("--user") + 1])
    path = f"/proc/{victim_pid}/fd/{victim_fd}"
    slots, slot_bytes = 2, layout.slot_bytes
    outcome: dict[str, object] = {"uid": os.getuid()}
    outcome["name_tcp"] = _stream(address, pb.SharedMemoryRing(name=path, slots=slots, slot_bytes=slot_bytes))
    outcome["name_local"] = _stream(
        endpoint.address, pb.SharedMemoryRing(name=path, slots=slots, slot_bytes=slot_bytes)
    )
    outcome["guessed_handle"] = [
        _stream(endpoint.address, pb.SharedMemoryRing(handle=handle, slots=slots, slot_bytes=slot_bytes))
        for handle in (secrets.token_bytes(16), b"", b"\0" * 16, secrets.token_bytes(8))
    ]
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        outcome["open_victim_fd"] = f"refused by the kernel: {exc.strerror}"
    else:
        try:
            receipt = offer_ring(
                endpoint.ring_socket, [fd]
            )  # the victim's memory, offered as the intruder's own
        finally:
            os.close(fd)
        if receipt.handle:
            ring = pb.SharedMemoryRing(handle=receipt.handle, slots=slots, slot_bytes=slot_bytes)
            outcome["open_victim_fd"] = "handed over: " + _stream(endpoint.address, ring)
        else:
            outcome["open_victim_fd"] = f"hand-over refused: {receipt.reason}: {receipt.message}"
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
