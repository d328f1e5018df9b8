"""Property-based fuzzing of a real node on 127.0.0.1: generated streams (valid, truncated, reordered,
oversize, non-finite) and raw bytes. Every answer is OK or a documented status with its ErrorInfo, the
node stays SERVING, its memory stays bounded, and a valid stream run after the fuzzing gives the same
mattes as before it. Bounded in examples; the counts are printed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvm_node.client import NodeClient
from rvm_node.node.limits import Limits
from rvm_node.node.status import REASON_CODES
from rvm_node.v1 import matting_pb2 as pb
from tests.helpers import error_info
from tests.node_support import NodeThread, frames_of
from tests.standin import StandInBackend

EXAMPLES = 300
_ITEM = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4}  # bytes per sample of each SampleFormat value (0 and 5+: refused)


@pytest.fixture(scope="module")
def fuzz_node(standin: StandInBackend) -> Iterator[NodeThread]:
    server = NodeThread(
        standin,  # the stand-in model: the protocol is fuzzed, not the network
        limits=Limits(max_streams=4, idle_timeout=10, max_width=96, max_height=96, max_frame_pixels=96 * 96),
    )
    yield server
    server.stop()


def _mostly(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    """Each good value twelve times as often as each bad one, so most streams get past `open`."""
    return st.sampled_from(good * 12 + bad)


def _settings() -> st.SearchStrategy[pb.StreamSettings]:
    return st.builds(
        pb.StreamSettings,
        width=_mostly([16, 32, 64], [0, 97, 5000]),
        height=_mostly([16, 24, 48], [0, 97]),
        input_format=_mostly([1, 2, 3, 4], [0, 5]),
        output_format=_mostly([1, 2, 3, 4], [0, 9]),
        transport=_mostly([0, 1, 3], [2, 4]),
        return_transport=_mostly([0, 1, 3], [2, 7]),
        downsample_ratio=_mostly([0.0, 0.5, 1.0], [1.5, -1.0, math.nan, math.inf, 1e-9]),
        planes=st.lists(_mostly([1, 2], [0, 3]), max_size=3),
        variant=_mostly(["", "mobilenetv3"], ["resnet50", "x" * 300]),
        label=st.text(max_size=40),
    )


@st.composite
def _frame_part(draw: Any, settings: pb.StreamSettings) -> pb.FramePart:
    """A part that is often right for the stream and often wrong in one way."""
    size = settings.width * settings.height * 3 * _ITEM.get(settings.input_format, 1)
    kind = draw(st.sampled_from(["whole", "whole", "whole", "short", "long", "offset", "nan", "junk"]))
    number = draw(st.integers(-3, 40))
    if kind in ("whole", "nan") and 0 < size <= 96 * 96 * 12:
        if settings.input_format in (3, 4) and kind == "whole":
            dtype = np.float16 if settings.input_format == 3 else np.float32
            data = np.full(size // np.dtype(dtype).itemsize, draw(st.floats(0, 1)), dtype).tobytes()
        else:
            data = draw(st.binary(min_size=size, max_size=size)) if size <= 4096 else bytes(size)
        return pb.FramePart(number=number, offset=0, total_bytes=size, data=data)
    if kind == "short":
        return pb.FramePart(number=number, offset=0, total_bytes=size, data=bytes(max(0, size // 2)))
    if kind == "long":
        return pb.FramePart(
            number=number,
            offset=0,
            total_bytes=draw(st.sampled_from([size + 1, 2**40, 2**63 - 1])),
            data=b"\0" * 8,
        )
    if kind == "offset":
        return pb.FramePart(
            number=number, offset=draw(st.integers(1, 2**63 - 1)), total_bytes=size, data=b"\0" * 4
        )
    return pb.FramePart(
        number=number, offset=0, total_bytes=draw(st.integers(0, 64)), data=draw(st.binary(max_size=64))
    )


@st.composite
def _stream(draw: Any) -> list[pb.MatteRequest]:
    settings = draw(_settings())
    requests = [pb.MatteRequest(open=pb.OpenStream(settings=settings))]
    for _ in range(draw(st.integers(0, 5))):
        what = draw(
            st.sampled_from(["chunk", "chunk", "chunk", "reset", "snapshot", "no action", "empty", "open"])
        )
        if what == "chunk":
            parts = draw(st.lists(_frame_part(settings), min_size=1, max_size=3))
            requests.append(pb.MatteRequest(chunk=pb.FrameChunk(parts=parts)))
        elif what == "reset":
            requests.append(pb.MatteRequest(control=pb.Control(reset=pb.Control.Reset())))
        elif what == "snapshot":
            requests.append(pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot())))
        elif what == "no action":
            requests.append(pb.MatteRequest(control=pb.Control()))
        elif what == "empty":
            requests.append(pb.MatteRequest())
        else:
            requests.append(pb.MatteRequest(open=pb.OpenStream(settings=settings)))
    if draw(st.integers(0, 3)) == 0:  # reordered: `open` is not always first
        requests = list(draw(st.permutations(requests)))
    return requests


def _outcome(call: Callable[[], Any]) -> str:
    """'OK' or the status and reason of a finished call; fails on anything undocumented."""
    try:
        call()
    except grpc.RpcError as error:
        reason, _ = error_info(error)
        code = error.code()
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), error.details()
        assert reason in REASON_CODES and REASON_CODES[reason] == code, (code, reason, error.details())
        return f"{code.name} {reason}"
    return "OK"


def _alpha(address: str, clip_frames: np.ndarray) -> np.ndarray:
    with (
        NodeClient(address) as client,
        client.open_stream(width=64, height=48, downsample_ratio=0.5) as stream,
    ):
        return np.stack([r.alpha for r in stream.process(frames_of(clip_frames, 3, (64, 48)))])


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_fuzzed_streams_and_bytes_get_documented_answers(
    fuzz_node: NodeThread, clip_frames: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _alpha(fuzz_node.address, clip_frames)
    outcomes: Counter[str] = Counter()
    channel = grpc.insecure_channel(fuzz_node.address)
    matte = channel.stream_stream(
        "/rvm_node.v1.MattingService/Matte",
        request_serializer=lambda data: data,
        response_deserializer=pb.MatteResponse.FromString,
    )
    baseline = _rss_mb()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests=_stream())
    def streams(requests: list[pb.MatteRequest]) -> None:
        messages = [r.SerializeToString() for r in requests]
        outcomes[_outcome(lambda: list(matte(iter(messages), timeout=30)))] += 1

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(messages=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    def raw_bytes(messages: list[bytes]) -> None:
        outcomes[_outcome(lambda: list(matte(iter(messages), timeout=30)))] += 1

    info = channel.unary_unary(
        "/rvm_node.v1.MattingService/GetNodeInfo",
        request_serializer=lambda data: data,
        response_deserializer=pb.GetNodeInfoResponse.FromString,
    )

    @settings(
        max_examples=EXAMPLES // 3, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(message=st.binary(max_size=64))
    def info_bytes(message: bytes) -> None:
        outcomes["GetNodeInfo " + _outcome(lambda: info(message, timeout=10))] += 1

    try:
        streams()
        raw_bytes()
        info_bytes()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        channel.close()
    grown = _rss_mb() - baseline
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert fuzz_node.wait_idle() == 0
    assert grown < 300, f"the process grew by {grown:.0f} MB over the fuzzing"
    assert np.array_equal(_alpha(fuzz_node.address, clip_frames), before)
    with capsys.disabled():
        total = sum(outcomes.values())
        print(
            f"\nfuzz: {total} calls ({EXAMPLES} generated streams, {EXAMPLES} of raw bytes, "
            f"{EXAMPLES // 3} GetNodeInfo of raw bytes), RSS {grown:+.0f} MB"
        )
        for outcome, count in outcomes.most_common():
            print(f"  {count:4d}  {outcome}")
