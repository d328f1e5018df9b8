"""Shared-memory streams on a real node (stand-in model): rings handed over as descriptors, the same mattes as
raw streams, and every handle, ring, slot, offset and size checked before the node touches memory."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvm_node.client import NodeClient, StreamChunk
from rvm_node.client.local import Endpoint
from rvm_node.client.ring import ClientRing
from rvm_node.errors import InvalidInputError, NodeUnavailableError
from rvm_node.node.limits import Limits, ShmPolicy
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.handover import frame, message_length, parse
from rvm_node.v1.protocol import DTYPES, SlotLayout
from tests.helpers import error_info, offer_ring, wait_until
from tests.node_support import NodeThread, frames_of, open_request, raw_stream
from tests.standin import StandInBackend

W, H = 64, 48
LAYOUT = SlotLayout.of(
    W, H, DTYPES[pb.SAMPLE_FORMAT_UINT8], DTYPES[pb.SAMPLE_FORMAT_FLOAT32], [pb.PLANE_ALPHA]
)
FRAME = LAYOUT.frame_bytes  # uint8 RGB
PLANE = LAYOUT.plane_bytes[0]  # float32 alpha


@pytest.fixture(scope="module")
def node(standin: StandInBackend) -> Iterator[NodeThread]:
    server = NodeThread(standin, limits=Limits(max_streams=8, idle_timeout=10))
    yield server
    server.stop()


def _endpoint(address: str, token: str | None = None) -> Endpoint:
    with NodeClient(address, token=token) as client:
        (endpoint,) = client.info().local_endpoints
    return endpoint


def _handed(address: str, slots: int = 2, layout: SlotLayout = LAYOUT) -> ClientRing:
    """A ring of ``slots`` slots handed over to the node's (one) worker."""
    endpoint = _endpoint(address)
    ring = ClientRing(layout, slots)
    ring.hand_over(endpoint.ring_socket, None, endpoint.pid)
    ring.start((H, W, 3), np.dtype(np.uint8))
    return ring


def _shm_files() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


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
    before = _shm_files()
    with NodeClient(node.address) as client:
        shm_kind, shm = _run(client, frames, fmt, transport="shm", ring_slots=3)
        raw_kind, raw = _run(client, frames, fmt, transport="raw")
        auto_kind, _ = _run(client, frames, fmt, transport="auto")  # the node is on this host
    assert (shm_kind, raw_kind, auto_kind) == ("shm", "raw", "shm")
    assert len(shm) == len(raw) == 9
    for (n1, a1, f1), (n2, a2, f2) in zip(shm, raw, strict=True):
        assert n1 == n2 and a1.dtype == a2.dtype == np.dtype(fmt)
        assert np.array_equal(a1, a2) and np.array_equal(f1, f2)
    assert _shm_files() == before  # memfds and abstract sockets have no name in any file system
    assert node.wait_idle() == 0


def test_the_node_names_a_local_endpoint_per_worker_that_answers_as_the_same_node(node: NodeThread) -> None:
    with NodeClient(node.address) as client:
        info = client.info()
    (endpoint,) = info.local_endpoints
    assert endpoint.address.startswith("unix-abstract:") and endpoint.pid == os.getpid()  # an in-process node
    assert "shm" in info.transports and info.max_ring_slots == 64 and len(info.node_id) == 16
    with NodeClient(endpoint.address) as local:  # reached in this host's abstract namespace
        assert local.info().node_id == info.node_id


def test_chunks_of_several_frames_wait_for_free_slots(node: NodeThread, clip_frames: np.ndarray) -> None:
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
        ring = stream.ring
        assert ring is not None
        shape, dtype = (height, width, 3), np.dtype(np.uint8)
        assert ring.lend(2, shape, dtype) is None  # no lending allowed yet
        ring.allow_lending(2)
        decoded: queue.Queue[list[tuple[int, np.ndarray]]] = queue.Queue()

        def reader() -> None:  # as the converter's reader: each chunk's frames straight into a lent block
            for first in range(0, 12, 2):
                block = ring.lend(2, shape, dtype)
                assert block is not None and block.shape == (2, *shape)
                for t in range(2):
                    np.copyto(block[t], frames[first + t][1])
                decoded.put([(frames[first + t][0], block[t]) for t in range(2)])

        thread = threading.Thread(target=reader)
        thread.start()

        def chunks() -> Iterator[StreamChunk]:
            for _ in range(6):
                pair = decoded.get(timeout=30)
                chunk = ring.chunk_of([f for _, f in pair])
                assert chunk.shape == (2, 3, height, width) and np.shares_memory(
                    chunk, pair[0][1]
                )  # in place
                yield StreamChunk(pair)

        replies = stream.process_chunks(chunks())
        results = [(r.number, r.alpha, r.foreground) for reply in replies for r in reply.results]
        thread.join()
        assert ring.frames_in_place == 12
        stream.close()
    for (n1, a1, f1), (n2, a2, f2) in zip(results, expected, strict=True):
        assert n1 == n2 and np.array_equal(a1, a2) and np.array_equal(f1, f2)
    assert node.wait_idle() == 0


def test_a_loan_is_refused_for_other_frames_and_ends_with_the_stream(node: NodeThread) -> None:
    shape = (H, W, 3)
    with NodeClient(node.address) as client:
        stream = client.open_stream(width=W, height=H, input_format="float16", transport="shm", ring_slots=4)
        ring = stream.ring
        assert ring is not None
        ring.allow_lending(8)  # held to half the ring
        assert ring.lend(3, shape, np.dtype(np.float16)) is None  # more than a block
        assert ring.lend(2, (H, W + 1, 3), np.dtype(np.float16)) is None  # another size
        assert ring.lend(2, shape, np.dtype(np.uint8)) is None  # another kind of sample
        block = ring.lend(2, shape, np.dtype(np.float32))  # float frames: cast on the way in
        assert block is not None and block.dtype == np.float16 and block.shape == (2, *shape)
        # Frames of an earlier chunk, read before the block was lent: copied, and the block stays lent.
        earlier = ring.chunk_of([np.zeros(shape, np.float16)] * 2)
        assert not np.shares_memory(earlier, block)
        assert np.shares_memory(ring.chunk_of([block[0], block[1]]), block)
        # Copied, not in place: the frames are not the block's in order, and the block goes back.
        chunk = ring.chunk_of([block[1], block[0]])
        assert not np.shares_memory(chunk, block)
        again = ring.lend(2, shape, np.dtype(np.float16))
        assert again is not None
        waiting: list[object] = []
        thread = threading.Thread(target=lambda: waiting.append(ring.lend(2, shape, np.dtype(np.float16))))
        thread.start()  # a block is out and not sent: the next one waits
        time.sleep(0.3)
        assert thread.is_alive()
        stream.cancel()
        thread.join(timeout=10)
        assert waiting == [None]  # the stream is over: no slots, and the reader is not left waiting
    assert node.wait_idle() == 0


def test_a_node_without_shm_gets_raw_frames_and_the_client_says_so_once(
    standin: StandInBackend, clip_frames: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    server = NodeThread(standin, shm=ShmPolicy(enabled=False))
    try:
        frames = frames_of(clip_frames, 3, (W, H))
        with NodeClient(server.address) as client, caplog.at_level(logging.WARNING, "rvm_node.client"):
            info = client.info()
            assert "shm" not in info.transports and not info.local_endpoints
            kinds = [_run(client, frames, "uint8", transport="shm")[0] for _ in range(2)]
            assert _run(client, frames, "uint8", transport="auto")[0] == "raw"
        assert kinds == ["raw", "raw"]
        said = [r.getMessage() for r in caplog.records if "shared memory" in r.getMessage()]
        assert len(said) == 1 and "serve --shm off" in said[0]
    finally:
        server.stop()


def _open(ring: pb.SharedMemoryRing, **overrides: object) -> pb.MatteRequest:
    request = open_request(W, H, transport=pb.TRANSPORT_SHM, **overrides)
    request.open.settings.ring.CopyFrom(ring)
    return request


def _frame(number: int, slot: int, offset: int, size: int = FRAME, data: bytes = b"") -> pb.MatteRequest:
    ref = pb.SlotRef(slot=slot, offset=offset, size=size)
    part = pb.FramePart(number=number, total_bytes=FRAME, data=data, shm=ref)
    return pb.MatteRequest(chunk=pb.FrameChunk(parts=[part]))


def _refusal(
    address: str, requests: list[pb.MatteRequest]
) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.RpcError) as caught:
        raw_stream(address, requests)
    reason, metadata = error_info(caught.value)
    return caught.value.code(), reason, metadata, caught.value.details()


def test_slot_references_outside_the_ring_are_refused_naming_the_field(node: NodeThread) -> None:
    endpoint = _endpoint(node.address)
    ring = _handed(node.address)
    try:
        good = ring.message()
        cases = [
            (_frame(1, 2, 2 * good.slot_bytes), "chunk.parts[0].shm.slot", "outside the ring's 2 slots"),
            (_frame(1, 1, 0), "chunk.parts[0].shm.offset", "expected"),
            (_frame(1, 0, 0, size=FRAME + 1), "chunk.parts[0].shm.size", "expected the frame's"),
            (_frame(1, 0, 0, data=b"x"), "chunk.parts[0].data", "must be empty"),
        ]
        for request, field, text in cases:
            code, _, metadata, details = _refusal(endpoint.address, [_open(good), request])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and metadata.get("field") == field, details
            assert text in details
        no_slot = pb.MatteRequest(chunk=pb.FrameChunk(parts=[pb.FramePart(number=1, total_bytes=FRAME)]))
        code, _, metadata, _ = _refusal(endpoint.address, [_open(good), no_slot])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and metadata.get("field") == "chunk.parts[0].shm"
        twice = _frame(1, 0, 0)  # two frames of one chunk in one slot
        twice.chunk.parts.append(_frame(2, 0, 0).chunk.parts[0])
        code, _, metadata, details = _refusal(endpoint.address, [_open(good), twice])
        assert (
            metadata.get("field") == "chunk.parts[1].shm.slot" and "still holds a frame in flight" in details
        )
    finally:
        ring.close()
    assert node.wait_idle() == 0


def test_rings_that_do_not_fit_the_stream_are_refused_before_accepted(node: NodeThread) -> None:
    """Every ring is checked against what the stream needs before a byte of it is mapped."""
    endpoint = _endpoint(node.address)
    big = _handed(node.address, layout=SlotLayout(FRAME, (PLANE,), FRAME + PLANE + 8192))
    ring = _handed(node.address)
    try:
        handle = ring.handle
        cases = [
            (pb.SharedMemoryRing(name="/proc/1/fd/3", slots=2, slot_bytes=FRAME + PLANE), "ring.name", "never by a name"),
            (pb.SharedMemoryRing(name="/dev/shm/rvm-node-x", slots=2, slot_bytes=FRAME + PLANE), "ring.name", "never by a name"),
            (pb.SharedMemoryRing(handle=os.urandom(16), slots=2, slot_bytes=FRAME + PLANE), "ring.handle", "no ring was handed over"),
            (pb.SharedMemoryRing(handle=handle[:8], slots=2, slot_bytes=FRAME + PLANE), "ring.handle", "no ring was handed over"),
            (pb.SharedMemoryRing(slots=2, slot_bytes=FRAME + PLANE), "ring.handle", "no ring was handed over"),
            (pb.SharedMemoryRing(handle=handle, slots=0, slot_bytes=FRAME + PLANE), "ring.slots", "expected 1 to 64"),
            (pb.SharedMemoryRing(handle=handle, slots=65, slot_bytes=FRAME + PLANE), "ring.slots", "expected 1 to 64"),
            (pb.SharedMemoryRing(handle=handle, slots=2, slot_bytes=FRAME), "ring.slot_bytes", "one frame and its planes take"),
            (pb.SharedMemoryRing(handle=handle, slots=2, slot_bytes=FRAME + PLANE + 4097), "ring.slot_bytes", "at most"),
            (pb.SharedMemoryRing(handle=handle, slots=3, slot_bytes=FRAME + PLANE), "ring", f"the ring holds {2 * (FRAME + PLANE)} bytes"),
            (pb.SharedMemoryRing(handle=big.handle, slots=1, slot_bytes=FRAME + PLANE), "ring", f"the ring holds {2 * (FRAME + PLANE + 8192)} bytes"),
        ]  # fmt: skip
        for message, field, text in cases:
            code, reason, metadata, details = _refusal(endpoint.address, [_open(message)])
            assert (code, reason, metadata.get("field")) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "RING_INVALID",
                f"open.settings.{field}",
            ), details
            assert text in details, details
        # And after all that, the ring serves a stream as it should.
        assert len(raw_stream(endpoint.address, [_open(ring.message()), _frame(1, 0, 0)])) == 2
    finally:
        ring.close()
        big.close()


def test_shared_memory_over_loopback_tcp_is_refused_even_with_a_good_handle(node: NodeThread) -> None:
    """The port may be forwarded from anywhere (an ssh tunnel): only the node's Unix sockets take rings."""
    ring = _handed(node.address)
    try:
        code, reason, metadata, details = _refusal(node.address, [_open(ring.message()), _frame(1, 0, 0)])
        assert (code, reason, metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "TRANSPORT_UNSUPPORTED",
            "open.settings.transport",
        )
        assert "ipv4:127.0.0.1" in details
    finally:
        ring.close()


def test_a_ring_serves_one_stream_at_a_time_and_its_handle_goes_with_its_connection(
    node: NodeThread,
) -> None:
    endpoint = _endpoint(node.address)
    ring = _handed(node.address)
    with grpc.insecure_channel(endpoint.address) as channel:
        stub = pb_grpc.MattingServiceStub(channel)
        requests: list[pb.MatteRequest] = [_open(ring.message())]
        release = threading.Event()

        def held() -> Iterator[pb.MatteRequest]:
            yield from requests
            release.wait(30)

        first = stub.Matte(held(), timeout=30)
        assert next(first).WhichOneof("kind") == "accepted"  # the ring now serves this stream
        code, reason, _, details = _refusal(endpoint.address, [_open(ring.message())])
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RING_INVALID")
        assert "serves another stream" in details
        release.set()
        assert list(first) == []
    # The same memory handed over a second time, on another connection: refused.
    fd = os.open(f"/proc/self/fd/{ring._fd}", os.O_RDWR)
    try:
        receipt = offer_ring(endpoint.ring_socket, [fd])
        assert (receipt.reason, receipt.handle) == ("RING_INVALID", b"")
        assert "handed over already" in receipt.message
    finally:
        os.close(fd)
    message = ring.message()
    ring.close()  # the connection closes: the handle is withdrawn
    rings = node.node.servicer.rings
    wait_until(lambda: rings is None or not rings.rings, 10)
    _, reason, _, details = _refusal(endpoint.address, [_open(message)])
    assert reason == "RING_INVALID" and "no ring was handed over" in details


def _sealed(size: int, seals: int | None = None, flags: int = os.O_RDWR) -> int:
    import fcntl

    fd = os.memfd_create("test-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    if flags == os.O_RDWR:
        return fd
    other = os.open(f"/proc/self/fd/{fd}", flags)
    os.close(fd)
    return other


def test_the_ring_socket_takes_only_sealed_writable_memfds(node: NodeThread, tmp_path: Path) -> None:
    import fcntl

    endpoint = _endpoint(node.address)
    plain = tmp_path / "plain"
    plain.write_bytes(b"\0" * 4096)
    read, write = os.pipe()
    grow_shrink = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    cases = [
        (lambda: [_sealed(4096)], "RING_INVALID", "not sealed against shrinking and growing"),
        (lambda: [_sealed(4096, fcntl.F_SEAL_SHRINK)], "RING_INVALID", "not sealed against shrinking and growing"),
        (lambda: [_sealed(4096, grow_shrink | fcntl.F_SEAL_WRITE)], "RING_INVALID", "sealed against writing"),
        (lambda: [_sealed(4096, grow_shrink, os.O_RDONLY)], "RING_INVALID", "open for reading and writing"),
        (lambda: [os.open(plain, os.O_RDWR)], "RING_INVALID", "takes no seals"),
        (lambda: [os.dup(read)], "RING_INVALID", "not a regular file"),
        (lambda: [_sealed(0, grow_shrink)], "RING_INVALID", "empty"),
        (lambda: [], "RING_INVALID", "expected one descriptor, got 0"),
        (lambda: [_sealed(4096, grow_shrink), _sealed(4096, grow_shrink)], "RING_INVALID", "got 2"),
    ]  # fmt: skip
    try:
        for make, reason, text in cases:
            fds = make()
            try:
                receipt = offer_ring(endpoint.ring_socket, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            assert (receipt.reason, receipt.handle) == (reason, b""), receipt.message
            assert text in receipt.message, receipt.message
        fd = _sealed(4096, grow_shrink)
        try:
            garbled = offer_ring(endpoint.ring_socket, [fd], data=b"\x05\x00\x00\x00\xff\xff\xff\xff\xff")
        finally:
            os.close(fd)
        assert garbled.reason == "MESSAGE_INVALID" and not garbled.handle
    finally:
        os.close(read)
        os.close(write)
    assert node.node.servicer.rings is not None and node.node.servicer.rings.rings == 0


def test_a_node_with_a_token_takes_rings_only_with_it(standin: StandInBackend) -> None:
    import fcntl

    server = NodeThread(standin, token="s3cret")
    try:
        endpoint = _endpoint(server.address, token="s3cret")
        for token in ("", "wrong"):
            fd = _sealed(4096, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            try:
                receipt = offer_ring(endpoint.ring_socket, [fd], token=token)
            finally:
                os.close(fd)
            assert (receipt.reason, receipt.handle) == ("TOKEN_INVALID", b"")
        with (
            NodeClient(server.address, token="s3cret") as client,
            client.open_stream(width=W, height=H, transport="shm") as stream,
        ):
            assert stream.transport == "shm"
    finally:
        server.stop()


def test_the_shm_budget_is_the_nodes_across_streams_and_a_stream_beyond_it_goes_raw(
    standin: StandInBackend, clip_frames: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    frames = frames_of(clip_frames, 3, (W, H))
    budget = 3 * (FRAME + PLANE)  # one stream of 2 slots fits, not two
    server = NodeThread(standin, shm=ShmPolicy(budget=budget))
    try:
        endpoint = _endpoint(server.address)
        first, second = _handed(server.address), _handed(server.address)
        with grpc.insecure_channel(endpoint.address) as channel:
            release = threading.Event()

            def held() -> Iterator[pb.MatteRequest]:
                yield _open(first.message())
                release.wait(30)

            holding = pb_grpc.MattingServiceStub(channel).Matte(held(), timeout=30)
            assert next(holding).WhichOneof("kind") == "accepted"
            code, reason, _, details = _refusal(endpoint.address, [_open(second.message())])
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SHM_BUDGET_EXHAUSTED")
            assert f"budget of {budget}" in details
            with NodeClient(server.address) as client, caplog.at_level(logging.WARNING, "rvm_node.client"):
                kind, results = _run(client, frames, "uint8", transport="shm", ring_slots=2)
            assert kind == "raw" and len(results) == 3  # the stream goes on without shared memory
            assert any(
                "SHM_BUDGET_EXHAUSTED" in r.getMessage() or "budget" in r.getMessage() for r in caplog.records
            )
            release.set()
            list(holding)
        # Its budget back, the node maps the second ring.
        assert len(raw_stream(endpoint.address, [_open(second.message()), _frame(1, 0, 0)])) == 2
        first.close()
        second.close()
        big = ClientRing(SlotLayout(FRAME, (PLANE,), budget), 2)  # larger than the whole budget
        try:
            with pytest.raises(Exception, match="beyond the node's shared-memory budget"):
                big.hand_over(endpoint.ring_socket, None, endpoint.pid)
        finally:
            big.close()
    finally:
        server.stop()


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def test_a_sparse_ring_of_gigabytes_is_refused_unmapped_and_health_answers_throughout(
    node: NodeThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that spends nothing (a sparse memfd) cannot make the node spend memory or stall: the ring
    is refused from its size alone, nothing is mapped, every ring that is mapped is mapped beside the event
    loop, and health answers every probe while streams open and close."""
    import fcntl

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import rvm_node.node.ring

    mapped_on: list[str] = []
    real_map = rvm_node.node.ring._map

    def recording_map(fd: int, length: int) -> object:
        mapped_on.append(threading.current_thread().name)
        return real_map(fd, length)

    monkeypatch.setattr(rvm_node.node.ring, "_map", recording_map)
    endpoint = _endpoint(node.address)
    size = 6 << 30
    fd = os.memfd_create("sparse", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    latencies: list[float] = []
    answers: list[int] = []
    stop, probing = threading.Event(), threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(node.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while not stop.is_set():
                started = time.monotonic()
                try:
                    answers.append(check(health_pb2.HealthCheckRequest(), timeout=5).status)
                except grpc.RpcError as exc:
                    answers.append(-exc.code().value[0])
                latencies.append(time.monotonic() - started)
                probing.set()
                time.sleep(0.005)

    rss_before = _rss_kb(os.getpid())
    prober = threading.Thread(target=probe)
    prober.start()
    assert probing.wait(30)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:  # held open: the handle lives
            connection.connect("\0" + endpoint.ring_socket)
            socket.send_fds(connection, [frame(pb.RingOffer())], [fd])
            data = b""
            while (message_length(data) or 1 << 30) > len(data):
                data += connection.recv(4096)
            receipt = parse(data, pb.RingReceipt(), "receipt")
            assert isinstance(receipt, pb.RingReceipt)
            if receipt.handle:  # within a large host's budget: the stream refuses it for its size
                ring = pb.SharedMemoryRing(handle=receipt.handle, slots=1, slot_bytes=FRAME + PLANE)
                code, reason, _, details = _refusal(endpoint.address, [_open(ring)])
                assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RING_INVALID")
                assert f"the ring holds {size} bytes" in details
            else:
                assert receipt.reason == "SHM_BUDGET_EXHAUSTED" and str(size) in receipt.message
        assert mapped_on == []  # refused from its size alone
        for _ in range(3):  # streams open and close meanwhile
            with NodeClient(node.address) as client:
                _run(client, frames_of(np.zeros((4, 3, H, W), np.uint8), 4), "uint8", transport="shm")
    finally:
        stop.set()
        prober.join(30)
        os.close(fd)
    assert len(mapped_on) == 3 and "rvm-node-codec" in mapped_on[0]  # never on the event loop's thread
    assert answers and set(answers) == {health_pb2.HealthCheckResponse.SERVING}  # every probe, within 5 s
    assert _rss_kb(os.getpid()) - rss_before < 64 * 1024  # the node (in this process) mapped none of it
    print(
        f"\nhealth while a sparse ring was refused and streams opened: at most {max(latencies) * 1000:.1f} ms"
    )


def test_a_nan_written_into_a_slot_after_its_check_is_refused_naming_the_frame(
    clip_frames: np.ndarray,
) -> None:
    """Frames are read in place: a client can change a float frame after the node checked it. The engine's
    own check catches that before the state is poisoned, and the error names the frame like every other."""

    class Paused(StandInBackend):
        """The stand-in, holding each chunk between the node's check and the engine's until told."""

        def __init__(self) -> None:
            super().__init__()
            self.arrived = threading.Event()
            self.go = threading.Event()

        def prepare(self, frames: object) -> np.ndarray:
            self.arrived.set()
            self.go.wait(30)
            return super().prepare(frames)

    backend = Paused()
    server = NodeThread(backend)
    shape = (H, W, 3)
    try:
        with NodeClient(server.address) as client:
            stream = client.open_stream(
                width=W, height=H, input_format="float16", transport="shm", ring_slots=4
            )
            ring = stream.ring
            assert ring is not None
            ring.allow_lending(1)
            block = ring.lend(1, shape, np.dtype(np.float16))  # the frame is sent from where it lies
            assert block is not None
            block[:] = 0.5
            replies = stream.process_chunks([StreamChunk([(1048, block[0])])])
            results: list[object] = []
            thread = threading.Thread(target=lambda: results.append(_collect(replies)))
            thread.start()
            assert backend.arrived.wait(30)  # the node has read and checked the frame
            block[0, 7, 9, 0] = np.nan
            backend.go.set()
            thread.join(30)
    finally:
        server.stop()
    (error,) = results
    assert isinstance(error, Exception) and getattr(error, "reason", "") == "SAMPLES_NOT_FINITE"
    assert "frame 1048: NaN or infinite samples" in str(error)
    assert getattr(error, "metadata", {}).get("frame") == "1048"


def _collect(replies: Iterator[object]) -> object:
    try:
        return list(replies)
    except Exception as exc:
        return exc


def test_a_unix_socket_node_keeps_its_socket_private_and_its_clients_take_shm(
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


def test_a_ring_is_handed_only_to_the_process_the_node_names(node: NodeThread) -> None:
    """A process that holds a worker's ring socket name (say, while a worker restarts) gets no memory."""
    name = f"rvm-node-impostor-{os.getpid()}"
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    impostor.bind("\0" + name)
    impostor.listen(1)
    ring = ClientRing(LAYOUT, 1)
    try:
        with pytest.raises(Exception, match=f"served by process {os.getpid()}, not the node's worker 1"):
            ring.hand_over(name, None, 1)
        with pytest.raises(NodeUnavailableError, match="not on this host"):
            ring.hand_over(f"rvm-node-nobody-{os.getpid()}", None, 1)
    finally:
        ring.close()
        impostor.close()


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
    ring = _handed(node.address)
    try:
        requests = [_open(ring.message())] + [_frame(i + 1, *ref) for i, ref in enumerate(refs)]
        try:
            raw_stream(_endpoint(node.address).address, requests)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    finally:
        ring.close()


def test_a_clean_streams_ring_serves_the_next_stream_and_a_cancelled_ones_does_not(
    node: NodeThread, clip_frames: np.ndarray
) -> None:
    frames = frames_of(clip_frames, 4, (W, H))
    with NodeClient(node.address) as client:
        rings = []
        for _ in range(2):
            with client.open_stream(width=W, height=H, output_format="uint16", transport="shm") as stream:
                rings.append(stream.ring)
                first = [r.alpha for r in stream.process(frames)]
        assert rings[0] is not None and rings[0] is rings[1]  # the same memory, already paged in
        stream = client.open_stream(width=W, height=H, output_format="uint16", transport="shm")
        assert stream.ring is rings[0]
        next(stream.process(frames[:1]))
        stream.cancel()  # the node may still write into it: it is never handed out again
        with client.open_stream(width=W, height=H, output_format="uint16", transport="shm") as fresh:
            assert fresh.ring is not None and fresh.ring is not rings[0]
            again = [r.alpha for r in fresh.process(frames)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_newest_rings_are_kept_when_shots_change_size(node: NodeThread, clip_frames: np.ndarray) -> None:
    with NodeClient(node.address) as client:
        kept = []
        for width in (16, 24, 32, 40, 48, 48):  # four older sizes fill the spares, then a fifth size twice
            with client.open_stream(width=width, height=H, output_format="uint16", transport="shm") as stream:
                kept.append(stream.ring)
                list(stream.process(frames_of(clip_frames, 2, (width, H))))
        assert kept[5] is kept[4]  # the newest size's ring came back: the oldest spare made room


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
