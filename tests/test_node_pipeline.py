"""The node's pipelined serving path: order, bounded memory, a client that stops reading, prompt answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rvm_node.client import NodeClient
from rvm_node.node.limits import Limits
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from tests.helpers import wait_until
from tests.node_support import RATIO, NodeThread, chunk_request, open_request, raw_stream
from tests.standin import StandInBackend


@pytest.fixture(scope="module")
def backend(standin: StandInBackend) -> StandInBackend:
    """The stand-in model: these tests are about the serving path, not the mattes."""
    return standin


def test_controls_stay_in_order_with_frames_sent_ahead(backend, clip_frames: np.ndarray) -> None:
    node = NodeThread(backend, limits=Limits(max_chunks_in_flight=2))
    frames = [clip_frames[i].transpose(1, 2, 0) for i in range(4)]
    control = pb.MatteRequest
    requests = [
        open_request(176, 144),
        chunk_request(1, frames[0].tobytes()),
        chunk_request(2, frames[1].tobytes()),
        control(control=pb.Control(snapshot=pb.Control.Snapshot())),
        chunk_request(3, frames[2].tobytes()),
        control(control=pb.Control(reset=pb.Control.Reset())),
        chunk_request(4, frames[3].tobytes()),
    ]
    try:
        responses = raw_stream(node.address, requests)  # all sent at once: the node reads ahead
    finally:
        node.stop()
    kinds = [r.WhichOneof("kind") if r.WhichOneof("kind") != "part" else r.part.number for r in responses]
    assert kinds == ["accepted", 1, 2, "snapshot", 3, "reset_done", 4]
    assert responses[3].snapshot.after_frame == 2 and responses[3].snapshot.frames == 2
    after_reset = np.frombuffer(responses[-1].part.data, np.float32).reshape(144, 176)
    fresh = backend.new_session(RATIO).process(clip_frames[3:4]).pha[0, 0]
    assert np.array_equal(after_reset, fresh)
    assert 1 <= node.node.servicer.stream_context.chunks.peak <= 2


def test_a_client_that_stops_reading_holds_little_and_times_out(backend, clip_frames: np.ndarray) -> None:
    """Frames keep coming but no answer is read: the node stops reading ahead, then ends the stream."""
    node = NodeThread(backend, limits=Limits(max_streams=1, idle_timeout=1.0, max_chunks_in_flight=3))
    big = np.repeat(np.repeat(clip_frames[0].transpose(1, 2, 0), 2, 0), 2, 1)  # 352x288

    def requests() -> Iterator[pb.MatteRequest]:
        first = open_request(352, 288)
        first.open.settings.planes.extend([pb.PLANE_ALPHA, pb.PLANE_FOREGROUND])  # 1.6 MB back per frame
        yield first
        for number in range(1, 200):
            yield chunk_request(number, big.tobytes())

    try:
        with grpc.insecure_channel(node.address) as channel:
            call = pb_grpc.MattingServiceStub(channel).Matte(requests(), timeout=60)
            assert next(call).WhichOneof("kind") == "accepted"  # ... and nothing more is read
            assert node.wait_idle(timeout=30) == 0  # the slot comes back
            with pytest.raises(grpc.RpcError) as info:
                for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "read nothing for more than 1 s" in (info.value.details() or "")
        assert node.node.servicer.stream_context.chunks.peak <= 3
    finally:
        node.stop()


def test_info_and_health_answer_while_streams_run(backend, clip_frames: np.ndarray) -> None:
    node = NodeThread(backend, limits=Limits(max_streams=4))
    frames = [
        (i, np.repeat(np.repeat(f.transpose(1, 2, 0), 2, 0), 2, 1)) for i, f in enumerate(clip_frames[:12])
    ]
    stop = threading.Event()

    def endless() -> Iterator[tuple[int, np.ndarray]]:  # one long stream, until the test is done
        number = 0
        while not stop.is_set():
            yield number, frames[number % len(frames)][1]
            number += 1

    def stream() -> None:
        with (
            NodeClient(node.address) as client,
            client.open_stream(width=352, height=288, downsample_ratio=RATIO) as s,
        ):
            for _ in s.process(endless(), window=4):
                pass

    workers = [threading.Thread(target=stream) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        assert wait_until(lambda: node.active == 2, 60)  # both streams are running
        with grpc.insecure_channel(node.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            info = pb_grpc.MattingServiceStub(channel)
            for _ in range(10):  # each within a short deadline, though two streams keep the worker busy
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                assert info.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=2).active_streams >= 1
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        node.stop()
