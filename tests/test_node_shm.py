"""Shared-memory streams on a real node on 127.0.0.1 (stand-in model): the same mattes as raw streams, and
every ring, slot, offset and size checked before the node touches memory."""

from __future__ import annotations

import grp
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvm_node.client import NodeClient
from rvm_node.client.ring import ClientRing
from rvm_node.errors import InvalidInputError
from rvm_node.node.service import Limits, ShmPolicy, is_local_peer
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.protocol import RING_DIRECTORY, RING_PREFIX
from tests.helpers import error_info
from tests.standin import StandInBackend
from tests.test_node import NodeThread, frames_of, open_request, raw_stream

W, H = 64, 48
FRAME = W * H * 3  # uint8 RGB
PLANE = W * H * 4  # float32 alpha


@pytest.fixture(scope="module")
def node(standin: StandInBackend) -> Iterator[NodeThread]:
    server = NodeThread(
        standin, limits=Limits(max_streams=8, idle_timeout=10), shm=ShmPolicy(group=os.getegid())
    )
    yield server
    server.stop()


def _rings_left() -> set[str]:
    return {p.name for p in Path(RING_DIRECTORY).glob(f"{RING_PREFIX}*")}


def _run(client: NodeClient, frames: list[tuple[int, np.ndarray]], fmt: str, **options: object) -> list:
    with client.open_stream(
        width=frames[0][1].shape[1],
        height=frames[0][1].shape[0],
        output_format=fmt,
        planes=("alpha", "foreground"),
        downsample_ratio=0.5,
        **options,  # type: ignore[arg-type]
    ) as stream:
        kind = stream.transport
        results = [(r.number, r.alpha, r.foreground) for r in stream.process(frames, window=3)]
    return [kind, results]


@pytest.mark.parametrize("fmt", ["uint8", "uint16", "float16", "float32"])
def test_shm_mattes_equal_raw_ones_bit_for_bit(node: NodeThread, clip_frames: np.ndarray, fmt: str) -> None:
    frames = frames_of(clip_frames, 9)
    before = _rings_left()
    with NodeClient(node.address) as client:
        shm_kind, shm = _run(client, frames, fmt, transport="shm", ring_slots=3)
        raw_kind, raw = _run(client, frames, fmt, transport="raw")
        auto_kind, _ = _run(client, frames, fmt, transport="auto")  # a node on 127.0.0.1 is local
    assert (shm_kind, raw_kind, auto_kind) == ("shm", "raw", "shm")
    assert len(shm) == len(raw) == 9
    for (n1, a1, f1), (n2, a2, f2) in zip(shm, raw, strict=True):
        assert n1 == n2 and a1.dtype == a2.dtype == np.dtype(fmt)
        assert np.array_equal(a1, a2) and np.array_equal(f1, f2)
    assert _rings_left() == before  # memfds have no name; nothing left in /dev/shm
    assert node.wait_idle() == 0


def test_chunks_of_several_frames_wait_for_free_slots(node: NodeThread, clip_frames: np.ndarray) -> None:
    from rvm_node.client.node_client import StreamChunk

    frames = frames_of(clip_frames, 12)
    chunks = [StreamChunk(frames[i : i + 4]) for i in range(0, 12, 4)]
    with NodeClient(node.address) as client:
        with client.open_stream(width=176, height=144, transport="shm", ring_slots=5) as stream:
            numbers = [r.number for reply in stream.process_chunks(chunks) for r in reply.results]
        assert numbers == [n for n, _ in frames]
        stream = client.open_stream(width=176, height=144, transport="shm", ring_slots=3)
        with pytest.raises(
            InvalidInputError, match="a chunk of 4 frames needs as many ring slots; the ring has 3"
        ):
            list(stream.process_chunks(chunks[:1]))
        stream.cancel()


def test_a_reader_thread_decodes_into_lent_blocks_and_chunks_go_from_there(
    node: NodeThread, clip_frames: np.ndarray
) -> None:
    import queue
    import threading

    from rvm_node.client.node_client import StreamChunk

    frames = frames_of(clip_frames, 12)
    height, width = frames[0][1].shape[:2]
    with NodeClient(node.address) as client:
        _, expected = _run(client, frames, "uint8", transport="raw")
        stream = client.open_stream(
            width=width,
            height=height,
            output_format="uint8",
            planes=("alpha", "foreground"),
            downsample_ratio=0.5,
            transport="shm",
            ring_slots=4,
        )
        shape, dtype = (height, width, 3), np.dtype(np.uint8)
        assert stream.lease_frames(2, shape, dtype) is None  # no leases allowed yet
        stream.allow_leases(2)
        decoded: queue.Queue[list[tuple[int, np.ndarray]]] = queue.Queue()

        def reader() -> None:  # as the converter's reader: each chunk's frames straight into a lent block
            for first in range(0, 12, 2):
                block = stream.lease_frames(2, shape, dtype)
                assert block is not None and block.shape == (2, *shape)
                for t in range(2):
                    np.copyto(block[t], frames[first + t][1])
                decoded.put([(frames[first + t][0], block[t]) for t in range(2)])

        thread = threading.Thread(target=reader)
        thread.start()

        def chunks() -> Iterator[StreamChunk]:
            for _ in range(6):
                pair = decoded.get(timeout=30)
                chunk = stream.lent_chunk([f for _, f in pair])
                assert chunk.shape == (2, 3, height, width) and np.shares_memory(
                    chunk, pair[0][1]
                )  # in place
                yield StreamChunk(pair)

        replies = stream.process_chunks(chunks())
        results = [(r.number, r.alpha, r.foreground) for reply in replies for r in reply.results]
        thread.join()
        assert stream.frames_in_place == 12
        stream.close()
    for (n1, a1, f1), (n2, a2, f2) in zip(results, expected, strict=True):
        assert n1 == n2 and np.array_equal(a1, a2) and np.array_equal(f1, f2)
    assert node.wait_idle() == 0


def test_a_lease_is_refused_for_other_frames_and_ends_with_the_stream(
    node: NodeThread, clip_frames: np.ndarray
) -> None:
    import threading

    shape = (H, W, 3)
    with NodeClient(node.address) as client:
        stream = client.open_stream(width=W, height=H, input_format="float16", transport="shm", ring_slots=4)
        stream.allow_leases(8)  # held to half the ring
        assert stream.lease_frames(3, shape, np.dtype(np.float16)) is None  # more than a block
        assert stream.lease_frames(2, (H, W + 1, 3), np.dtype(np.float16)) is None  # another size
        assert stream.lease_frames(2, shape, np.dtype(np.uint8)) is None  # another kind of sample
        block = stream.lease_frames(2, shape, np.dtype(np.float32))  # float frames: cast on the way in
        assert block is not None and block.dtype == np.float16 and block.shape == (2, *shape)
        # Frames of an earlier chunk, read before the block was lent: copied, and the block stays lent.
        earlier = stream.lent_chunk([np.zeros(shape, np.float16)] * 2)
        assert not np.shares_memory(earlier, block)
        assert np.shares_memory(stream.lent_chunk([block[0], block[1]]), block)
        # Copied, not in place: the frames are not the block's in order, and the block goes back.
        chunk = stream.lent_chunk([block[1], block[0]])
        assert not np.shares_memory(chunk, block)
        again = stream.lease_frames(2, shape, np.dtype(np.float16))
        assert again is not None
        waiting: list[object] = []
        thread = threading.Thread(
            target=lambda: waiting.append(stream.lease_frames(2, shape, np.dtype(np.float16)))
        )
        thread.start()  # a block is out and not sent: the next one waits
        time.sleep(0.3)
        assert thread.is_alive()
        stream.cancel()
        thread.join(timeout=10)
        assert waiting == [None]  # the stream is over: no slots, and the reader is not left waiting
    assert node.wait_idle() == 0


def test_a_group_ring_in_dev_shm_is_unlinked_once_accepted(
    node: NodeThread, standin: StandInBackend, clip_frames: np.ndarray
) -> None:
    """The path a node that runs as another user takes (`serve --shm-group`): a /dev/shm file in the node's
    group, read with pread, its name gone once the node has it."""
    frames = frames_of(clip_frames, 5, (W, H))
    group = grp.getgrgid(os.getegid())
    grouped = NodeThread(standin, shm=ShmPolicy(group=group.gr_gid, group_name=group.gr_name))
    before = _rings_left()
    try:
        with NodeClient(grouped.address) as client:
            assert client.info().shm_group == group.gr_name
            with client.open_stream(width=W, height=H, output_format="uint16", transport="shm") as stream:
                assert stream._ring is not None and stream._ring.name.startswith(
                    f"{RING_DIRECTORY}/{RING_PREFIX}"
                )
                assert _rings_left() == before  # unlinked as soon as `accepted` came
                shm = [r.alpha for r in stream.process(frames)]
        with NodeClient(node.address) as client:  # a node without a group: a memfd
            _, memfd = _run(client, frames, "uint16", transport="shm")
    finally:
        grouped.stop()
    assert all(np.array_equal(a, b[1]) for a, b in zip(shm, memfd, strict=True))
    assert _rings_left() == before


def test_a_node_without_shm_gets_raw_frames_and_the_client_says_so_once(
    standin: StandInBackend, clip_frames: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    server = NodeThread(standin, shm=ShmPolicy(enabled=False))
    try:
        frames = frames_of(clip_frames, 3, (W, H))
        with NodeClient(server.address) as client, caplog.at_level(logging.WARNING, "rvm_node.client"):
            assert "shm" not in client.info().transports
            kinds = [_run(client, frames, "uint8", transport="shm")[0] for _ in range(2)]
        assert kinds == ["raw", "raw"]
        said = [r.getMessage() for r in caplog.records if "shared memory" in r.getMessage()]
        assert len(said) == 1 and "serve --shm off" in said[0]
    finally:
        server.stop()


def test_only_peers_on_this_host_may_use_shared_memory() -> None:
    for peer in ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/tmp/rvm.sock", "unix:"):
        assert is_local_peer(peer), peer
    for peer in ("ipv4:10.0.0.5:5000", "ipv6:[2001:db8::1]:5000", "ipv4:128.0.0.1:1", ""):
        assert not is_local_peer(peer), peer


def _open(ring: pb.SharedMemoryRing, **overrides: object) -> pb.MatteRequest:
    request = open_request(W, H, transport=pb.TRANSPORT_SHM, **overrides)
    request.open.settings.ring.CopyFrom(ring)
    return request


def _frame(number: int, slot: int, offset: int, size: int = FRAME, data: bytes = b"") -> pb.MatteRequest:
    ref = pb.SlotRef(slot=slot, offset=offset, size=size)
    part = pb.FramePart(number=number, total_bytes=FRAME, data=data, shm=ref)
    return pb.MatteRequest(chunk=pb.FrameChunk(parts=[part]))


def _refusal(
    node: NodeThread, requests: list[pb.MatteRequest]
) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.RpcError) as caught:
        raw_stream(node.address, requests)
    reason, metadata = error_info(caught.value)
    return caught.value.code(), reason, metadata, caught.value.details()


def test_slot_references_outside_the_ring_are_refused_naming_the_field(node: NodeThread) -> None:
    ring = ClientRing(2, FRAME + PLANE)
    try:
        good = ring.message()
        cases = [
            (_frame(1, 2, 2 * good.slot_bytes), "chunk.parts[0].shm.slot", "outside the ring's 2 slots"),
            (_frame(1, 1, 0), "chunk.parts[0].shm.offset", "expected"),
            (_frame(1, 0, 0, size=FRAME + 1), "chunk.parts[0].shm.size", "expected the frame's"),
            (_frame(1, 0, 0, data=b"x"), "chunk.parts[0].data", "must be empty"),
        ]
        for request, field, text in cases:
            code, _, metadata, details = _refusal(node, [_open(good), request])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and metadata.get("field") == field, details
            assert text in details
        no_slot = pb.MatteRequest(chunk=pb.FrameChunk(parts=[pb.FramePart(number=1, total_bytes=FRAME)]))
        code, _, metadata, _ = _refusal(node, [_open(good), no_slot])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and metadata.get("field") == "chunk.parts[0].shm"
        twice = _frame(1, 0, 0)  # two frames of one chunk in one slot
        twice.chunk.parts.append(_frame(2, 0, 0).chunk.parts[0])
        code, _, metadata, details = _refusal(node, [_open(good), twice])
        assert (
            metadata.get("field") == "chunk.parts[1].shm.slot" and "still holds a frame in flight" in details
        )
    finally:
        ring.close()
    assert node.wait_idle() == 0


def _dev_shm_ring(tmp_name: str, size: int, mode: int = 0o600, uid: int | None = None) -> Path:
    path = Path(RING_DIRECTORY) / f"{RING_PREFIX}{tmp_name}"
    path.write_bytes(b"\0" * size)
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, 65534)  # a group the node does not name
    return path


@pytest.mark.parametrize(
    ("make", "field", "text"),
    [
        (lambda: "/dev/shm/rvm-node-doesnotexist00", "open.settings.ring.name", "does not exist"),
        (lambda: "/etc/passwd", "open.settings.ring.name", "is not a ring name"),
        (lambda: "/dev/shm/../../etc/passwd", "open.settings.ring.name", "is not a ring name"),
        (
            lambda: str(_dev_shm_ring("openworld0001", FRAME + PLANE, 0o666)),
            "open.settings.ring.name",
            "open to other users",
        ),
        (lambda: str(_dev_shm_ring("shortfile0001", 100)), "open.settings.ring.name", "holds 100 bytes"),
    ],
)
def test_rings_the_node_cannot_use_are_refused_before_accepted(
    node: NodeThread, make: object, field: str, text: str
) -> None:
    name = make()  # type: ignore[operator]
    try:
        ring = pb.SharedMemoryRing(name=name, slots=1, slot_bytes=FRAME + PLANE)
        code, reason, metadata, details = _refusal(node, [_open(ring)])
        assert (code, reason, metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "RING_INVALID",
            field,
        )
        assert text in details
    finally:
        if name.startswith(f"{RING_DIRECTORY}/{RING_PREFIX}"):
            Path(name).unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_ring_of_another_user_is_refused(node: NodeThread) -> None:
    path = _dev_shm_ring("otheruser0001", FRAME + PLANE, 0o660, uid=65534)
    try:
        ring = pb.SharedMemoryRing(name=str(path), slots=1, slot_bytes=FRAME + PLANE)
        _, reason, _, details = _refusal(node, [_open(ring)])
        assert reason == "RING_INVALID" and "belongs to another user" in details
    finally:
        path.unlink()


def test_a_ring_too_small_or_unsealed_is_refused(node: NodeThread) -> None:
    ring = ClientRing(1, FRAME + PLANE)
    try:
        small = pb.SharedMemoryRing(name=ring.name, slots=1, slot_bytes=FRAME)  # no room for the alpha
        _, reason, metadata, details = _refusal(node, [_open(small)])
        assert (reason, metadata.get("field")) == ("RING_INVALID", "open.settings.ring.slot_bytes")
        assert "too small for one frame and its planes" in details
    finally:
        ring.close()
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, FRAME + PLANE)
        unsealed = pb.SharedMemoryRing(name=f"/proc/{os.getpid()}/fd/{fd}", slots=1, slot_bytes=FRAME + PLANE)
        _, reason, _, details = _refusal(node, [_open(unsealed)])
        assert reason == "RING_INVALID" and "not sealed against shrinking" in details
    finally:
        os.close(fd)


def test_a_ring_that_shrinks_mid_stream_ends_the_stream_and_the_node_serves_on(
    node: NodeThread, clip_frames: np.ndarray
) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    ring = ClientRing(2, FRAME + PLANE, group=group)  # a /dev/shm file, which a client can truncate
    name = ring.name
    ring.view(0, np.dtype(np.uint8), (H, W, 3))[:] = frames_of(clip_frames, 1, (W, H))[0][1]

    def requests() -> Iterator[pb.MatteRequest]:
        yield _open(ring.message())
        time.sleep(0.5)  # the node has opened the ring
        os.truncate(name, FRAME // 2)  # the client cuts its ring under the node
        yield _frame(1, 0, 0)

    try:
        with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as caught:
            list(pb_grpc.MattingServiceStub(channel).Matte(requests(), timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shrank" in caught.value.details()
    finally:
        ring.close()
    with NodeClient(node.address) as client:  # and the node serves on
        assert _run(client, frames_of(clip_frames, 2, (W, H)), "uint8", transport="shm")[0] == "shm"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    refs=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.sampled_from([0, 1, FRAME, FRAME + PLANE, 2**63, 2**64 - 1]),
            st.sampled_from([0, 1, FRAME, FRAME + 1, 2**64 - 1]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_random_slot_messages_never_reach_outside_the_ring(node: NodeThread, refs: list) -> None:
    ring = ClientRing(2, FRAME + PLANE)
    try:
        requests = [_open(ring.message())] + [_frame(i + 1, *ref) for i, ref in enumerate(refs)]
        try:
            raw_stream(node.address, requests)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    finally:
        ring.close()


def test_a_unix_socket_node_takes_shm_and_keeps_its_socket_private(
    standin: StandInBackend, clip_frames: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "node.sock"
    server = NodeThread(standin, unix_socket=path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        frames = frames_of(clip_frames, 4, (W, H))
        with NodeClient(f"unix://{path}") as client:
            kind, over_unix = _run(client, frames, "uint16", transport="auto")
        with NodeClient(server.address) as client:
            _, over_tcp = _run(client, frames, "uint16", transport="raw")
        assert kind == "shm"
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(over_unix, over_tcp, strict=True))
        with pytest.raises(InvalidInputError, match="is in use by a running node"):
            NodeThread(standin, unix_socket=path)
    finally:
        server.stop()
    other = tmp_path / "plain-file"
    other.write_text("not a socket")
    with pytest.raises(InvalidInputError, match="exists and is not a socket"):
        NodeThread(standin, unix_socket=other)


_KILLED_CLIENT = """
import sys
import numpy as np
from rvm_node.client import NodeClient
client = NodeClient(sys.argv[1])
stream = client.open_stream(width=64, height=48, output_format="uint16", transport="shm")
frame = np.zeros((48, 64, 3), np.uint8)
for n, result in enumerate(stream.process((i, frame) for i in range(1, 10**9))):
    if n == 3:
        print("streaming", flush=True)
"""


def _ring_mappings(pid: int) -> int:
    return sum("memfd:rvm-node-ring" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


@pytest.mark.slow
def test_memory_stays_flat_over_100_shm_streams_with_killed_clients(
    clip_frames: np.ndarray, tmp_path: Path
) -> None:
    """90 streams that end as they should, 10 whose client is SIGKILLed mid-stream: the node keeps no ring,
    and says nothing of writes it could not finish."""
    from rvm_node.bench.common import rss_mb
    from rvm_node.node.launch import spawn_server, stop_process

    command = [sys.executable, "-m", "rvm_node.bench.standins", "--standin", "constant", "--port", "0"]
    log = (tmp_path / "node.log").open("w")
    process, address = spawn_server(command, "a stand-in node", stderr=log)
    frames = frames_of(clip_frames, 6, (W, H))
    try:
        with NodeClient(address) as client:
            rss = []
            for index in range(100):
                if index % 10 == 9:
                    killed = subprocess.Popen(
                        [sys.executable, "-c", _KILLED_CLIENT, address], stdout=subprocess.PIPE, text=True
                    )
                    assert killed.stdout is not None and killed.stdout.readline().strip() == "streaming"
                    killed.kill()
                    killed.wait()
                else:
                    assert _run(client, frames, "uint16", transport="shm")[0] == "shm"
                if index in (9, 99):
                    for _ in range(100):  # the node sees the dead connection and lets its ring go
                        if _ring_mappings(process.pid) == 0 and client.info().active_streams == 0:
                            break
                        time.sleep(0.1)
                    assert _ring_mappings(process.pid) == 0
                    rss.append(rss_mb(process.pid))
        print(f"\nnode RSS after 10 / 100 shm streams: {rss[0]:.0f} / {rss[1]:.0f} MB")
        assert rss[1] - rss[0] < 20
    finally:
        stop_process(process)
        log.close()
    assert "never retrieved" not in (tmp_path / "node.log").read_text()


def test_a_clean_streams_ring_serves_the_next_stream_and_a_cancelled_ones_does_not(
    node: NodeThread, clip_frames: np.ndarray
) -> None:
    frames = frames_of(clip_frames, 4, (W, H))
    with NodeClient(node.address) as client:
        rings = []
        for _ in range(2):
            with client.open_stream(width=W, height=H, output_format="uint16", transport="shm") as stream:
                rings.append(stream._ring)
                first = [r.alpha for r in stream.process(frames)]
        assert rings[0] is not None and rings[0] is rings[1]  # the same memory, already paged in
        stream = client.open_stream(width=W, height=H, output_format="uint16", transport="shm")
        assert stream._ring is rings[0]
        next(stream.process(frames[:1]))
        stream.cancel()  # the node may still write into it: it is never handed out again
        with client.open_stream(width=W, height=H, output_format="uint16", transport="shm") as fresh:
            assert fresh._ring is not None and fresh._ring is not rings[0]
            again = [r.alpha for r in fresh.process(frames)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_newest_rings_are_kept_when_shots_change_size(node: NodeThread, clip_frames: np.ndarray) -> None:
    with NodeClient(node.address) as client:
        kept = []
        for width in (16, 24, 32, 40, 48, 48):  # four older sizes fill the spares, then a fifth size twice
            with client.open_stream(width=width, height=H, output_format="uint16", transport="shm") as stream:
                kept.append(stream._ring)
                list(stream.process(frames_of(clip_frames, 2, (width, H))))
        assert kept[5] is kept[4]  # the newest size's ring came back: the oldest spare made room
