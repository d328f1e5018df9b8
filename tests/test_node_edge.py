"""The node's edge: every bad input is refused with a documented status and reason; nothing is lost or leaked.

Real nodes on 127.0.0.1, on the stand-in model (``tests/standin.py``): the protocol is under test, not
the mattes. Two more stand-ins are named as such: a backend whose forward pass raises (to drive the
node's own-failure path) and a misbehaving node (to drive the client's checks of what a node sends).
"""

from __future__ import annotations

import logging
import math
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from rvm_node.client import NodeClient
from rvm_node.errors import NodeBusyError, NodeProtocolError, NodeRejectedError, NonFiniteSamplesError
from rvm_node.node.launch import rvm_node_command
from rvm_node.node.limits import Limits
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.protocol import state_to_message
from tests.helpers import error_info
from tests.node_support import NodeThread, frames_of, open_request, raw_stream
from tests.standin import standin_as_backend, standin_node_as_node

__all__ = ["standin_as_backend", "standin_node_as_node"]  # the fixtures `backend` and `node`: the stand-in


WIDTH, HEIGHT = 176, 144


def _refusal(
    address: str, requests: list[pb.MatteRequest]
) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as info:
        raw_stream(address, requests)
    reason, metadata = error_info(info.value)
    return info.value.code(), info.value.details() or "", reason, metadata


def _frame(number: int, pixels: np.ndarray) -> pb.MatteRequest:
    data = np.ascontiguousarray(pixels).tobytes()
    return pb.MatteRequest(
        chunk=pb.FrameChunk(parts=[pb.FramePart(number=number, total_bytes=len(data), data=data)])
    )


@pytest.fixture(scope="module")
def snapshot(node: NodeThread, clip_frames: np.ndarray) -> pb.StateSnapshot:
    """A real snapshot of a 176x144 stream at ratio 0.5, after frames 1001 and 1002."""
    with (
        NodeClient(node.address) as client,
        client.open_stream(width=WIDTH, height=HEIGHT, downsample_ratio=0.5) as s,
    ):
        list(s.process(frames_of(clip_frames, 2)))
        after, state = s.snapshot()
    return state_to_message(state, after)


def _restore_open(message: pb.StateSnapshot, **settings: Any) -> pb.MatteRequest:
    request = open_request(WIDTH, HEIGHT, **settings)
    request.open.restore.CopyFrom(message)
    return request


def _edited(snapshot: pb.StateSnapshot, case: str) -> pb.StateSnapshot:
    message = pb.StateSnapshot()
    message.CopyFrom(snapshot)
    tensors = message.tensors
    if case == "channels":
        shape = list(tensors[0].shape)
        shape[1] = 5
        tensors[0].shape[:] = shape
        tensors[0].data = tensors[0].data[: 4 * math.prod(shape)]
    elif case == "spatial":
        tensors[2].shape[3] -= 1
    elif case == "huge":
        tensors[0].shape[:] = [1, 16, 2**32, 2**32]
    elif case == "batch":
        tensors[1].shape[0] = 2
        tensors[1].data = tensors[1].data * 2
    elif case == "bytes":
        tensors[3].data = tensors[3].data[:-4]
    elif case == "nan":
        values = np.frombuffer(tensors[3].data, "<f4").copy()
        values[7] = np.nan
        tensors[3].data = values.tobytes()
    elif case == "three tensors":
        del tensors[3]
    elif case == "size":
        message.width = 352
    elif case == "variant":
        message.variant = "resnet50"
    elif case == "no variant":
        message.variant = ""
    elif case == "after":
        message.after_frame = -5
    else:
        message.downsample_ratio = float(case.removeprefix("ratio "))
    return message


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("channels", "do not fit mobilenetv3"),
        ("spatial", "do not fit mobilenetv3"),
        ("huge", "do not fit mobilenetv3"),
        ("batch", "do not fit mobilenetv3"),
        ("bytes", "needs"),
        ("nan", "NaN or infinite"),
        ("three tensors", "expected 4 state tensors"),
        ("size", "do not fit mobilenetv3 at 352x144"),
        ("variant", "the state is for resnet50"),
        ("no variant", "an unnamed variant"),
        ("after", "after_frame must be -1 or more"),
        ("ratio 0", "in (0, 1]"),
        ("ratio -1", "in (0, 1]"),
        ("ratio nan", "got nan"),
        ("ratio 2", "in (0, 1]"),
        ("ratio 8", "in (0, 1]"),
        ("ratio 0.25", "do not fit"),
    ],
)
def test_a_restore_that_does_not_fit_the_stream_is_refused(
    node: NodeThread, snapshot: pb.StateSnapshot, case: str, message: str
) -> None:
    code, details, reason, _ = _refusal(
        node.address, [_restore_open(_edited(snapshot, case), downsample_ratio=0)]
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RESTORE_STATE_INVALID")
    assert message in details
    assert node.wait_idle() == 0


def test_a_restore_at_another_ratio_than_asked_is_refused(
    node: NodeThread, snapshot: pb.StateSnapshot
) -> None:
    code, details, reason, metadata = _refusal(node.address, [_restore_open(snapshot, downsample_ratio=0.25)])
    assert (code, reason, metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "RESTORE_STATE_INVALID",
        "open.restore.downsample_ratio",
    )
    assert "the stream asks for 0.25" in details


def test_a_good_restore_continues_with_higher_frame_numbers(
    node: NodeThread, snapshot: pb.StateSnapshot, clip_frames: np.ndarray
) -> None:
    frame = clip_frames[2].transpose(1, 2, 0)
    responses = raw_stream(node.address, [_restore_open(snapshot, downsample_ratio=0), _frame(1003, frame)])
    assert [r.WhichOneof("kind") for r in responses] == ["accepted", "part"]
    assert responses[0].accepted.downsample_ratio == pytest.approx(0.5)
    code, details, reason, metadata = _refusal(
        node.address, [_restore_open(snapshot, downsample_ratio=0), _frame(1002, frame)]
    )
    assert (code, reason, metadata["frame"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FRAME_NUMBER_OUT_OF_ORDER",
        "1002",
    )
    assert "the last was 1002" in details


@pytest.mark.parametrize(("numbers", "bad"), [([5, 5], 5), ([5, 4], 4), ([-1], -1), ([1, 3, 2], 2)])
def test_frame_numbers_must_increase(node: NodeThread, numbers: list[int], bad: int) -> None:
    pixels = np.zeros((48, 64, 3), np.uint8)
    code, _, reason, metadata = _refusal(
        node.address, [open_request(), *(_frame(n, pixels) for n in numbers)]
    )
    assert (code, reason, metadata["frame"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FRAME_NUMBER_OUT_OF_ORDER",
        str(bad),
    )


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", [pb.SAMPLE_FORMAT_FLOAT32, pb.SAMPLE_FORMAT_FLOAT16])
def test_non_finite_samples_are_refused_naming_the_frame(node: NodeThread, poison: float, fmt: int) -> None:
    dtype = np.float32 if fmt == pb.SAMPLE_FORMAT_FLOAT32 else np.float16
    clean = np.full((48, 64, 3), 0.5, dtype)
    bad = clean.copy()
    bad[10, 20, 1] = poison
    got: list[str] = []
    with grpc.insecure_channel(node.address) as channel:
        call = pb_grpc.MattingServiceStub(channel).Matte(
            iter([open_request(input_format=fmt), _frame(1, clean), _frame(2, bad), _frame(3, clean)]),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as info:
            for response in call:
                got.append(response.WhichOneof("kind"))
    assert got == ["accepted", "part"]  # frame 1 came back, nothing after the poisoned frame
    reason, metadata = error_info(info.value)
    assert (info.value.code(), reason, metadata["frame"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "SAMPLES_NOT_FINITE",
        "2",
    )
    assert "frame 2: NaN or infinite samples" in (info.value.details() or "")


def test_the_engine_refuses_non_finite_frames_too(backend: Any) -> None:
    session = backend.new_session(0.5)
    frames = np.full((2, 3, 48, 64), 0.5, np.float32)
    frames[1, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteSamplesError, match="NaN or infinite"):
        session.process(frames)
    assert session.state is None  # the state never saw it


@pytest.mark.parametrize(
    ("requests", "code", "reason", "message"),
    [
        ([pb.MatteRequest()], grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_INVALID", "holds nothing"),
        (
            [open_request(), pb.MatteRequest()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_INVALID",
            "holds nothing",
        ),
        (
            [open_request(), pb.MatteRequest(control=pb.Control())],
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_INVALID",
            "no action given",
        ),
        (
            [pb.MatteRequest(open=pb.OpenStream())],
            grpc.StatusCode.INVALID_ARGUMENT,
            "SETTINGS_INVALID",
            "settings are required",
        ),
        (
            [open_request(planes=[7])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "SETTINGS_INVALID",
            "unknown plane 7",
        ),
        (
            [open_request(output_format=9)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "SETTINGS_INVALID",
            "settings.output_format",
        ),
    ],
)
def test_empty_and_incomplete_messages(
    node: NodeThread, requests: list[pb.MatteRequest], code: grpc.StatusCode, reason: str, message: str
) -> None:
    got_code, details, got_reason, _ = _refusal(node.address, requests)
    assert (got_code, got_reason) == (code, reason)
    assert message in details


def test_bad_settings_carry_a_bad_request_naming_the_field(node: NodeThread) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with pytest.raises(grpc.RpcError) as info:
        raw_stream(node.address, [open_request(downsample_ratio=1.5)])
    status = rpc_status.from_call(info.value)
    violations = [
        v.field
        for d in status.details
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)
        for v in (lambda b: (d.Unpack(b), b)[1])(error_details_pb2.BadRequest()).field_violations
    ]
    assert violations == ["open.settings.downsample_ratio"]


def test_controls_are_empty_messages(node: NodeThread, backend: Any, clip_frames: np.ndarray) -> None:
    frames = clip_frames[:2].transpose(0, 2, 3, 1)
    requests = [
        open_request(WIDTH, HEIGHT),
        _frame(1, frames[0]),
        pb.MatteRequest(control=pb.Control(reset=pb.Control.Reset())),
        _frame(2, frames[1]),
        pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot())),
    ]
    kinds = [r.WhichOneof("kind") for r in raw_stream(node.address, requests)]
    assert kinds == ["accepted", "part", "reset_done", "part", "snapshot"]


def test_accepted_holds_the_resolved_settings(node: NodeThread) -> None:
    accepted = raw_stream(node.address, [open_request(WIDTH, HEIGHT, downsample_ratio=0, label="sh010")])[
        0
    ].accepted
    settings = accepted.settings
    assert settings.variant == "mobilenetv3"
    assert list(settings.planes) == [pb.PLANE_ALPHA]
    assert (settings.transport, settings.return_transport) == (pb.TRANSPORT_RAW, pb.TRANSPORT_RAW)
    assert settings.downsample_ratio == accepted.downsample_ratio == pytest.approx(1.0)  # auto: 512 / 176 > 1
    assert (settings.width, settings.height, settings.label) == (WIDTH, HEIGHT, "sh010")
    zstd = raw_stream(
        node.address,
        [
            open_request(
                transport=pb.TRANSPORT_ZSTD, planes=[pb.PLANE_FOREGROUND, pb.PLANE_ALPHA, pb.PLANE_FOREGROUND]
            )
        ],
    )[0].accepted.settings
    assert zstd.return_transport == pb.TRANSPORT_ZSTD  # unspecified: the same as the frames'
    assert list(zstd.planes) == [pb.PLANE_FOREGROUND, pb.PLANE_ALPHA]


def test_labels_cannot_forge_or_flood_log_lines(node: NodeThread, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rvm_node.node"):
        accepted = raw_stream(node.address, [open_request(label="sh010\nERROR forged line\x1b[2J")])[
            0
        ].accepted
        raw_stream(node.address, [open_request(label="x" * (8 << 20))])
    opened = [r.getMessage() for r in caplog.records if "opened" in r.getMessage()]
    assert len(opened) == 2
    assert all("\n" not in line and "\x1b" not in line for line in opened)
    first_line = opened[0]
    assert "sh010\\nERROR forged line\\x1b[2J" in first_line
    assert len(opened[1]) < 1000
    assert accepted.settings.label == "sh010\\nERROR forged line\\x1b[2J"


def test_undecodable_messages_are_invalid_argument_logged_without_traceback(
    node: NodeThread, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(7)
    with caplog.at_level(logging.INFO), grpc.insecure_channel(node.address) as channel:
        matte = channel.stream_stream(
            "/rvm_node.v1.MattingService/Matte",
            request_serializer=lambda data: data,
            response_deserializer=pb.MatteResponse.FromString,
        )
        for junk in (b"\xff\xff\xff", b"\x0a\x05\x0a\x03\x30", rng.bytes(300)):
            with pytest.raises(grpc.RpcError) as info:
                list(matte(iter([junk]), timeout=10))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(info.value)[0] == "MESSAGE_INVALID"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert node.wait_idle() == 0


class _FailingBackend:
    """A stand-in for a broken model: the real backend, but every forward pass raises."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def new_session(self, *args: Any, **kwargs: Any) -> Any:
        session = self._real.new_session(*args, **kwargs)
        session.backend = self
        return session

    def infer(self, *_args: Any) -> Any:
        raise RuntimeError("Unexpected RuntimeError in the network")


def test_the_nodes_own_failures_are_internal_naming_the_stream(
    backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = NodeThread(_FailingBackend(backend), metrics_port=0)
    try:
        with caplog.at_level(logging.INFO, logger="rvm_node.node"):
            code, details, reason, metadata = _refusal(
                server.address, [open_request(), _frame(1, np.zeros((48, 64, 3), np.uint8))]
            )
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.node.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        assert server.wait_idle() == 0
    finally:
        server.stop()
    assert (code, reason, metadata["stream"]) == (grpc.StatusCode.INTERNAL, "INTERNAL", "s1")
    assert "stream s1: internal error (RuntimeError)" in details
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # one traceback, for the bug report
    assert 'rvm_node_errors_total{code="INTERNAL",reason="INTERNAL"} 1.0' in text


def test_refusals_carry_retry_info_and_are_counted(backend: Any, clip_frames: np.ndarray) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    server = NodeThread(backend, limits=Limits(max_streams=1), metrics_port=0)
    try:
        client = NodeClient(server.address, retries=0)
        holder = client.open_stream(width=WIDTH, height=HEIGHT)
        with pytest.raises(NodeBusyError) as busy:
            client.open_stream(width=WIDTH, height=HEIGHT)
        assert busy.value.reason == "STREAM_SLOTS_FULL"
        with pytest.raises(grpc.RpcError) as info:
            raw_stream(server.address, [open_request()])
        holder.cancel()
        assert server.wait_idle() == 0
        server.node.servicer.draining = True
        code, _, reason, _ = _refusal(server.address, [open_request()])
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "NODE_DRAINING")
        server.node.servicer.draining = False
        metrics = f"http://127.0.0.1:{server.node.metrics_port}"
        text = urllib.request.urlopen(f"{metrics}/metrics", timeout=10).read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{metrics}/", timeout=10)
        client.close()
    finally:
        server.stop()
    status = rpc_status.from_call(info.value)
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    assert retry.retry_delay.seconds > 0
    assert 'rvm_node_errors_total{code="RESOURCE_EXHAUSTED",reason="STREAM_SLOTS_FULL"} 2.0' in text
    assert 'rvm_node_errors_total{code="UNAVAILABLE",reason="NODE_DRAINING"} 1.0' in text
    assert "rvm_node_streams_started_total 1.0" in text
    build = (
        f'rvm_node_build_info{{backend="{backend.name}",device="cpu",precision="fp32",variant="mobilenetv3"'
    )
    assert build in text
    assert "_created" not in text
    assert missing.value.code == 404


@pytest.mark.slow  # a real `rvm-node serve`: it loads the official weights
def test_serve_prints_the_metrics_port_it_bound() -> None:
    process = subprocess.Popen(
        rvm_node_command("serve", "--port", "0", "--metrics-port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        address = process.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        line = next(line for line in process.stderr if line.startswith("metrics: "))
        url = line.split(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        assert "rvm_node_active_streams 0.0" in urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        process.kill()
        process.wait()


def test_the_client_names_the_reason_of_a_rejection(node: NodeThread) -> None:
    with NodeClient(node.address) as client, pytest.raises(NodeRejectedError) as info:
        client.open_stream(width=100_000, height=100_000)
    assert info.value.reason == "FRAME_TOO_LARGE"
    assert info.value.metadata["field"] == "open.settings.width"
    assert f"node {node.address}: settings: 100000x100000 exceeds" in str(info.value)


class _MisbehavingNode(pb_grpc.MattingServiceServicer):
    """A stand-in for a broken or hostile node: it accepts, then answers the first frame with ``part``."""

    def __init__(self, part: pb.PlanePart, settings: dict[str, Any] | None = None) -> None:
        self.part, self.settings = part, settings or {}

    def Matte(self, request_iterator: Iterator[pb.MatteRequest], _context: Any) -> Iterator[pb.MatteResponse]:
        first = next(request_iterator)
        settings = pb.StreamSettings()
        settings.CopyFrom(first.open.settings)
        for key, value in self.settings.items():
            setattr(settings, key, value)
        if not settings.planes:
            settings.planes.append(pb.PLANE_ALPHA)
        yield pb.MatteResponse(accepted=pb.StreamAccepted(settings=settings, stream_id="s1"))
        next(request_iterator)
        yield pb.MatteResponse(part=self.part)


@pytest.mark.parametrize(
    ("part", "settings", "message"),
    [
        (
            pb.PlanePart(number=1, plane=1, total_bytes=2**62, data=b"\0" * 16),
            None,
            "plane of 4611686018427387904 bytes",
        ),
        (
            pb.PlanePart(number=1, plane=1, total_bytes=100, data=b"\0" * 100),
            None,
            "plane of 100 bytes, expected 12288",
        ),
        (
            pb.PlanePart(number=1, plane=7, total_bytes=12288, data=b"\0" * 12288),
            None,
            "got plane 7 of frame 1",
        ),
        (
            pb.PlanePart(number=9, plane=1, total_bytes=12288, data=b"\0" * 12288),
            None,
            "got plane 1 of frame 9",
        ),
        (
            pb.PlanePart(number=1, plane=1, offset=64, total_bytes=12288, data=b"\0" * 64),
            None,
            "does not continue",
        ),
        (
            pb.PlanePart(number=1, plane=1, total_bytes=12288, data=b"\0" * 12288),
            {"width": 32},
            "other settings than asked",
        ),
    ],
)
def test_the_client_checks_what_a_node_sends(
    part: pb.PlanePart, settings: dict[str, Any] | None, message: str
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_MattingServiceServicer_to_server(_MisbehavingNode(part, settings), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            NodeClient(f"127.0.0.1:{port}", retries=0) as client,
            pytest.raises(NodeProtocolError) as info,
            client.open_stream(width=64, height=48) as stream,
        ):
            list(stream.process([(1, np.zeros((48, 64, 3), np.uint8))]))
    finally:
        server.stop(0)
    assert f"node 127.0.0.1:{port}: " in str(info.value)
    assert message in str(info.value)


def test_a_chunk_sent_as_the_node_shuts_down_is_unavailable_not_invalid(
    standin: Any, clip_frames: np.ndarray
) -> None:
    """The scheduler closed under a stream: NODE_DRAINING (UNAVAILABLE), so a farm moves the shot."""
    import asyncio

    from rvm_node.node.scheduler import Scheduler
    from rvm_node.node.status import REASON_CODES, StreamRefused

    scheduler = Scheduler(standin)
    scheduler.close(wait=5)
    session = standin.new_session(0.5)
    with pytest.raises(StreamRefused) as caught:
        asyncio.run(scheduler.process(session, clip_frames[:1]))
    assert (
        caught.value.reason == "NODE_DRAINING"
        and REASON_CODES["NODE_DRAINING"] == grpc.StatusCode.UNAVAILABLE
    )
