"""The render node: a real gRPC server on 127.0.0.1, in-process and as `rvm-node serve`, with the real client."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rvm_node.client import NodeClient
from rvm_node.errors import (
    InvalidInputError,
    NodeAuthError,
    NodeBusyError,
    NodeProtocolError,
    NodeTimeoutError,
    NodeUnavailableError,
)
from rvm_node.node.launch import rvm_node_command
from rvm_node.node.limits import Limits
from rvm_node.node.server import TlsFiles
from rvm_node.v1 import matting_pb2 as pb
from tests.helpers import error_info, spawn_node, wait_until
from tests.node_support import RATIO, NodeThread, chunk_request, frames_of, open_request, raw_stream

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

ROOT = Path(__file__).resolve().parent.parent


def local_alpha(backend: Any, frames: list[tuple[int, np.ndarray]], ratio: float = RATIO) -> np.ndarray:
    session = backend.new_session(ratio)
    return session.process(np.stack([f for _, f in frames]).transpose(0, 3, 1, 2)).pha[:, 0]


def remote_alpha(
    address: str, frames: list[tuple[int, np.ndarray]], **kwargs: Any
) -> tuple[list[int], np.ndarray]:
    height, width = frames[0][1].shape[:2]
    with (
        NodeClient(address, **{k: v for k, v in kwargs.items() if k in ("token",)}) as client,
        client.open_stream(width=width, height=height, downsample_ratio=RATIO) as stream,
    ):
        results = list(stream.process(frames))
    return [r.number for r in results], np.stack([r.alpha for r in results])


def test_node_equals_local_engine(node: NodeThread, backend, clip_frames: np.ndarray) -> None:
    frames = frames_of(clip_frames, 12)
    numbers, alpha = remote_alpha(node.address, frames)
    assert numbers == [n for n, _ in frames]
    diff = float(np.abs(alpha - local_alpha(backend, frames)).max())
    print(f"\nnode vs local engine, 12 frames: alpha max {diff:.2e}")
    assert diff <= 1e-5
    assert node.wait_idle() == 0


def test_node_info_health_and_reflection(node: NodeThread) -> None:
    with NodeClient(node.address) as client:
        info = client.info()
    assert info.backend == "onnxruntime" and info.variants == ["mobilenetv3"] and info.max_streams == 8
    assert info.max_message_bytes == 64 * 1024 * 1024 and info.idle_timeout == 30
    with grpc.insecure_channel(node.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="rvm_node.v1.MattingService")
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in reply.list_services_response.service}
        # v1 is the same protocol under a new name: v1alpha's messages serve to call it
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="rvm_node.v1.MattingService")
        described = next(v1(iter([request]), timeout=10)).file_descriptor_response.file_descriptor_proto
    assert "rvm_node.v1.MattingService" in names and "grpc.health.v1.Health" in names
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert any(b"rvm_node/v1/matting.proto" in d for d in described)


def test_concurrent_streams_at_mixed_sizes_equal_each_alone(
    node: NodeThread, backend, clip_frames: np.ndarray
) -> None:
    sizes = [(176, 144), (160, 120), (128, 96), (176, 144), (96, 64), (144, 112), (176, 144), (64, 64)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            frames = frames_of(np.roll(clip_frames, index, axis=0), 6, sizes[index])
            results[index] = remote_alpha(node.address, frames)[1]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for index in range(8):
        frames = frames_of(np.roll(clip_frames, index, axis=0), 6, sizes[index])
        assert float(np.abs(results[index] - local_alpha(backend, frames)).max()) <= 1e-5
    assert node.wait_idle() == 0


def test_snapshot_and_restore_on_another_in_process_node(
    node: NodeThread, backend, clip_frames: np.ndarray
) -> None:
    frames = frames_of(clip_frames, 16)
    straight = local_alpha(backend, frames)
    other = NodeThread(backend)
    try:
        with (
            NodeClient(node.address) as first,
            first.open_stream(width=176, height=144, downsample_ratio=RATIO) as stream,
        ):
            list(stream.process(frames[:9]))
            after, state = stream.snapshot()
        assert after == frames[8][0]
        with (
            NodeClient(other.address) as second,
            second.open_stream(
                width=176, height=144, downsample_ratio=RATIO, restore=(after, state)
            ) as stream,
        ):
            rest = np.stack([r.alpha for r in stream.process(frames[9:])])
        assert float(np.abs(rest - straight[9:]).max()) <= 1e-5
    finally:
        other.stop()


def test_reset_at_a_cut_starts_fresh(node: NodeThread, backend, clip_frames: np.ndarray) -> None:
    frames = frames_of(clip_frames, 8)
    with (
        NodeClient(node.address) as client,
        client.open_stream(width=176, height=144, downsample_ratio=RATIO) as stream,
    ):
        list(stream.process(frames[:4]))
        stream.reset()
        after_cut = np.stack([r.alpha for r in stream.process(frames[4:])])
    assert float(np.abs(after_cut - local_alpha(backend, frames[4:])).max()) <= 1e-5


def test_empty_stream(node: NodeThread) -> None:
    assert raw_stream(node.address, []) == []
    assert node.wait_idle() == 0


@pytest.mark.parametrize(
    "requests, code, reason, message",
    [
        (
            [chunk_request(1, b"\0" * 10)],
            grpc.StatusCode.FAILED_PRECONDITION,
            "OPEN_REQUIRED",
            "first message of a stream must be `open`",
        ),
        (
            [open_request(), chunk_request(1, b"\0" * 100)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "FRAME_SIZE_MISMATCH",
            "declared 100 bytes, expected 9216",
        ),
        (
            [open_request(), chunk_request(1, b"\0" * 10, total=9216, offset=5)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "FRAME_PARTS_INVALID",
            "offset 0",
        ),
        (
            [open_request(), chunk_request(1, b"\0" * 9217, total=9216)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "FRAME_PARTS_INVALID",
            "overruns",
        ),
        (
            [open_request(width=100_000, height=100_000)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "FRAME_TOO_LARGE",
            "exceeds this node's limits",
        ),
        ([open_request(width=0)], grpc.StatusCode.INVALID_ARGUMENT, "SETTINGS_INVALID", "must be positive"),
        (
            [open_request(input_format=0)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "SETTINGS_INVALID",
            "input_format",
        ),
        (
            [open_request(downsample_ratio=1.5)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "SETTINGS_INVALID",
            "downsample_ratio",
        ),
        (
            [open_request(variant="resnet50")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "VARIANT_UNAVAILABLE",
            "runs mobilenetv3",
        ),
        (
            [open_request(), open_request()],
            grpc.StatusCode.FAILED_PRECONDITION,
            "OPEN_REPEATED",
            "only be the first",
        ),
        (
            [open_request(), pb.MatteRequest(control=pb.Control(snapshot=pb.Control.Snapshot()))],
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOTHING_TO_SNAPSHOT",
            "no frame",
        ),
        (
            [open_request(), chunk_request(1, b"\0" * 100, total=9216)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "FRAME_PARTS_INVALID",
            "middle of a frame",
        ),
    ],
)
def test_protocol_errors(
    node: NodeThread, requests: list[pb.MatteRequest], code: grpc.StatusCode, reason: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        raw_stream(node.address, requests)
    assert info.value.code() == code
    assert message in (info.value.details() or "")
    assert error_info(info.value)[0] == reason
    assert node.wait_idle() == 0


def test_frames_of_the_wrong_size_are_refused_by_the_client(
    node: NodeThread, clip_frames: np.ndarray
) -> None:
    with (
        NodeClient(node.address) as client,
        client.open_stream(width=176, height=144) as stream,
        pytest.raises(InvalidInputError, match="expected 176x144x3"),
    ):
        list(stream.process([(1, clip_frames[0].transpose(1, 2, 0)[:100])]))
    assert node.wait_idle() == 0


def test_large_frames_travel_in_parts(backend, clip_frames: np.ndarray) -> None:
    """A node with a tiny message limit still takes and returns whole frames, split into parts."""
    small = NodeThread(backend, limits=Limits(max_message_bytes=96 * 1024))
    try:
        frames = frames_of(np.repeat(np.repeat(clip_frames, 2, 2), 2, 3), 3)  # 352x288: 304 KB per frame
        with (
            NodeClient(small.address, max_message_bytes=96 * 1024) as client,
            client.open_stream(
                width=352, height=288, downsample_ratio=RATIO, planes=("alpha", "foreground")
            ) as stream,
        ):
            results = list(stream.process(frames))
        assert results[0].foreground is not None and results[0].foreground.shape == (288, 352, 3)
        assert (
            float(np.abs(np.stack([r.alpha for r in results]) - local_alpha(backend, frames)).max()) <= 1e-5
        )
    finally:
        small.stop()


def test_capacity_cancel_deadline_and_slot_leaks(backend, clip_frames: np.ndarray) -> None:
    server = NodeThread(backend, limits=Limits(max_streams=2, idle_timeout=30))
    try:
        client = NodeClient(server.address, retries=0)
        first = client.open_stream(width=176, height=144)
        second = client.open_stream(width=176, height=144)
        with pytest.raises(NodeBusyError, match="streams the node takes are open"):
            client.open_stream(width=176, height=144)
        first.cancel()  # cancel after the first response
        second.cancel()
        assert server.wait_idle() == 0
        for _ in range(9):  # open and abandon more than 4x the capacity
            stream = client.open_stream(width=176, height=144)
            list(stream.process(frames_of(clip_frames, 1)))
            stream.cancel()
        assert server.wait_idle() == 0
        stream = client.open_stream(width=176, height=144, timeout=1.5)
        with pytest.raises(NodeTimeoutError):
            time.sleep(2)
            list(stream.process(frames_of(clip_frames, 1)))
        assert server.wait_idle() == 0
        client.close()
    finally:
        server.stop()


def test_idle_timeout_releases_the_stream(backend) -> None:
    server = NodeThread(backend, limits=Limits(max_streams=1, idle_timeout=0.5))
    try:
        with NodeClient(server.address) as client:
            stream = client.open_stream(width=64, height=48)
            time.sleep(1.0)
            with pytest.raises(NodeTimeoutError, match=r"idle for more than 0\.5 s"):
                stream.snapshot()
            assert server.wait_idle() == 0
    finally:
        server.stop()


def test_token_auth_with_health_exempt(backend) -> None:
    server = NodeThread(backend, token="s3cret")
    try:
        for token in (None, "wrong"):
            with NodeClient(server.address, token=token, retries=0) as client:
                with pytest.raises(NodeAuthError, match="bearer token"):
                    client.info()
                with pytest.raises(NodeAuthError):
                    client.open_stream(width=64, height=48)
        with NodeClient(server.address, token="s3cret") as client:
            assert client.info().backend == "onnxruntime"
        with grpc.insecure_channel(server.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert server.wait_idle() == 0
    finally:
        server.stop()


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def test_tls_right_and_wrong_ca(backend, tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, "node")
    _, other_cert = make_cert(tmp_path, "other")
    server = NodeThread(backend, tls=TlsFiles(cert=cert, key=key))
    try:
        with NodeClient(server.address, root_certificates=cert.read_bytes()) as client:
            assert client.info().backend == "onnxruntime"
        with (
            NodeClient(server.address, root_certificates=other_cert.read_bytes(), retries=0) as client,
            pytest.raises(NodeUnavailableError),
        ):
            client.info()
    finally:
        server.stop()


def start_serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    return spawn_node(*args)


def test_snapshot_round_trip_across_two_node_processes(backend, clip_frames: np.ndarray) -> None:
    frames = frames_of(clip_frames, 14)
    straight = local_alpha(backend, frames)
    node_a, address_a = start_serve()
    node_b, address_b = start_serve()
    try:
        with (
            NodeClient(address_a) as client,
            client.open_stream(width=176, height=144, downsample_ratio=RATIO) as stream,
        ):
            first = np.stack([r.alpha for r in stream.process(frames[:7])])
            snapshot = stream.snapshot()
        node_a.kill()  # the first node dies; the shot moves on
        with (
            NodeClient(address_b) as client,
            client.open_stream(width=176, height=144, downsample_ratio=RATIO, restore=snapshot) as stream,
        ):
            rest = np.stack([r.alpha for r in stream.process(frames[7:])])
        diff = float(np.abs(np.concatenate([first, rest]) - straight).max())
        print(f"\nshot moved between node processes at frame 7: alpha max {diff:.2e}")
        assert diff <= 1e-5
    finally:
        for process in (node_a, node_b):
            process.kill()
            process.wait()


def test_sigterm_drains(clip_frames: np.ndarray) -> None:
    process, address = start_serve("--grace", "20")
    try:
        client = NodeClient(address, retries=0)
        stream = client.open_stream(width=176, height=144, downsample_ratio=RATIO)
        list(stream.process(frames_of(clip_frames, 2)))
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises((NodeUnavailableError, NodeProtocolError)):
            client.open_stream(width=176, height=144)
        # the running stream finishes within the grace period
        assert len(list(stream.process(frames_of(clip_frames, 5)[2:]))) == 3
        stream.close()
        assert process.wait(timeout=30) == 0
        client.close()
    finally:
        process.kill()


def test_a_drain_whose_grace_runs_out_ends_streams_as_draining_and_exits_0(
    clip_frames: np.ndarray, tmp_path: Path
) -> None:
    """`serve --grace 1` with two busy streams: both end UNAVAILABLE NODE_DRAINING (so a farm moves the
    shots), and the node exits 0 instead of aborting under a running pass."""
    log = (tmp_path / "node.log").open("w")
    process, address = spawn_node("--grace", "1", "--backend", "onnxruntime", stderr=log)
    errors: list[BaseException] = []

    def busy(stream: Any) -> None:
        frame = clip_frames[0].transpose(1, 2, 0)
        try:
            for _ in stream.process((n, frame) for n in range(1, 100_000)):
                pass
        except BaseException as exc:  # the stream's end is what is checked
            errors.append(exc)

    try:
        clients = [NodeClient(address, retries=0) for _ in range(2)]
        streams = [
            c.open_stream(width=176, height=144, downsample_ratio=RATIO, transport="raw") for c in clients
        ]
        threads = [threading.Thread(target=busy, args=(s,)) for s in streams]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert process.wait(timeout=60) == 0
        assert len(errors) == 2
        for error in errors:
            assert isinstance(error, NodeUnavailableError) and error.reason == "NODE_DRAINING", error
        for client in clients:
            client.close()
    finally:
        process.kill()
        log.close()
    assert "terminate called" not in (tmp_path / "node.log").read_text()


def test_client_killed_mid_stream_frees_its_stream(
    node: NodeThread, clip_frames: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        "import sys, time, numpy as np\n"
        "from rvm_node.client import NodeClient\n"
        "stream = NodeClient(sys.argv[1]).open_stream(width=64, height=48)\n"
        "list(stream.process([(1, np.zeros((48, 64, 3), np.uint8))]))\n"
        "print('streaming', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(script), node.address], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "streaming"
    assert node.active >= 1
    with caplog.at_level(logging.INFO, "rvm_node.node"):
        process.kill()
        process.wait()
        assert node.wait_idle() == 0
    # A client killed between chunks reaches gRPC either as a cancel or as the end of its requests,
    # whichever the connection's teardown delivers first: either way one line says it closed, no error.
    closed = [r.getMessage() for r in caplog.records if "closed after frame 1" in r.getMessage()]
    assert len(closed) == 1, closed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_matte_cli_equals_convert(node: NodeThread, tmp_path: Path) -> None:
    from rvm_node.example import example_clip
    from rvm_node.io.images import read_image

    clip = str(example_clip())
    common = ["--input-source", clip, "--frames", "1-6", "--downsample-ratio", "0.5", "--quiet"]
    for command, out in (("matte", "node"), ("convert", "local")):  # the node's engine on both sides
        extra = ["--node", node.address] if command == "matte" else ["--backend", "onnxruntime"]
        result = subprocess.run(
            rvm_node_command(
                command,
                *common,
                *extra,
                "--output-alpha",
                str(tmp_path / out / "m.####.png"),
            ),
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
    for n in range(1, 7):
        a = read_image(tmp_path / "node" / f"m.{n:04d}.png").pixels
        b = read_image(tmp_path / "local" / f"m.{n:04d}.png").pixels
        assert np.array_equal(a, b)
    assert node.wait_idle() == 0


def test_matte_cli_unreachable_node(tmp_path: Path) -> None:
    from rvm_node.cli import EXIT_BACKEND, main
    from rvm_node.example import example_clip

    code = main(
        [
            "matte",
            "--node",
            "127.0.0.1:9",
            "--input-source",
            str(example_clip()),
            "--output-alpha",
            str(tmp_path / "m.####.png"),
            "--quiet",
        ]
    )
    assert code == EXIT_BACKEND
    assert not list(tmp_path.iterdir())


def test_generated_code_is_current(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from setup import generate_protos
    finally:
        sys.path.remove(str(ROOT))
    generate_protos(tmp_path)
    for name in ("matting_pb2.py", "matting_pb2_grpc.py", "matting_pb2.pyi"):
        assert (tmp_path / "rvm_node" / "v1" / name).read_text() == (
            ROOT / "rvm_node" / "v1" / name
        ).read_text(), name


def test_metrics_endpoint(backend, clip_frames: np.ndarray) -> None:
    import urllib.request

    server = NodeThread(backend, metrics_port=0)
    try:
        remote_alpha(server.address, frames_of(clip_frames, 3))
        with pytest.raises(grpc.RpcError):
            raw_stream(server.address, [chunk_request(1, b"")])
        server.wait_idle()
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.node.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
    finally:
        server.stop()
    assert "rvm_node_frames_total 3.0" in text
    assert "rvm_node_active_streams 0.0" in text
    assert 'rvm_node_errors_total{code="FAILED_PRECONDITION",reason="OPEN_REQUIRED"} 1.0' in text
    assert "rvm_node_chunk_seconds_count 3.0" in text and "rvm_node_queue_depth 0.0" in text


def test_matte_killed_then_resumed_equals_an_uninterrupted_run(node: NodeThread, tmp_path: Path) -> None:
    from rvm_node.client import matte_shot
    from rvm_node.example import example_clip
    from rvm_node.io.images import read_image
    from rvm_node.io.sequence import parse_frame_range

    clip = example_clip()
    frames = parse_frame_range("1-80")
    matte_shot(
        node.address,
        clip,
        output_alpha=tmp_path / "ref" / "m.####.png",
        frames=frames,
        downsample_ratio=RATIO,
        progress=False,
    )
    run = tmp_path / "run"
    process = subprocess.Popen(
        rvm_node_command(
            "matte",
            "--node",
            node.address,
            "--input-source",
            str(clip),
            "--frames",
            "1-80",
            "--downsample-ratio",
            str(RATIO),
            "--output-alpha",
            str(run / "m.####.png"),
            "--quiet",
        ),
        env=os.environ.copy(),
    )
    wait_until(lambda: len(list(run.glob("m.*.png"))) >= 40, 120)
    process.kill()
    process.wait()
    written = len(list(run.glob("m.*.png")))
    assert 0 < written < 80
    assert node.wait_idle() == 0  # the killed client's slot is free again
    report = matte_shot(
        node.address,
        clip,
        output_alpha=run / "m.####.png",
        frames=frames,
        downsample_ratio=RATIO,
        progress=False,
        resume=True,
    )
    assert report.resumed_from_checkpoint
    for n in range(1, 81):
        assert np.array_equal(
            read_image(run / f"m.{n:04d}.png").pixels, read_image(tmp_path / "ref" / f"m.{n:04d}.png").pixels
        ), n


def test_mutual_tls_requires_a_client_certificate(backend, tmp_path: Path) -> None:
    key, cert = make_cert(tmp_path, "node")
    client_key, client_cert = make_cert(tmp_path, "client")
    server = NodeThread(backend, tls=TlsFiles(cert=cert, key=key, client_ca=client_cert))
    try:
        with NodeClient(
            server.address,
            root_certificates=cert.read_bytes(),
            client_certificate=(client_key.read_bytes(), client_cert.read_bytes()),
        ) as client:
            assert client.info().backend == "onnxruntime"
        with (
            NodeClient(server.address, root_certificates=cert.read_bytes(), retries=0) as client,
            pytest.raises(NodeUnavailableError),
        ):
            client.info()
    finally:
        server.stop()


def test_busy_node_is_retried_with_backoff(backend) -> None:
    server = NodeThread(backend, limits=Limits(max_streams=1))
    try:
        with NodeClient(server.address, retries=4, backoff=0.1) as client:
            holder = client.open_stream(width=64, height=48)
            threading.Timer(0.3, holder.close).start()
            started = time.monotonic()
            with client.open_stream(width=64, height=48) as stream:  # waits for the slot, then gets it
                assert stream.accepted.stream_id
            assert time.monotonic() - started >= 0.1
        assert server.wait_idle() == 0
    finally:
        server.stop()


def test_structured_logs(clip_frames: np.ndarray) -> None:
    import json

    process = subprocess.Popen(
        rvm_node_command("serve", "--port", "0", "--log-format", "json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        remote_alpha(address, frames_of(clip_frames, 1))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("opened" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_serve_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rvm_node.cli import EXIT_INPUT, main

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    (tmp_path / "empty").write_text("\n")
    for args, message in (
        (["--threads", "-1"], "--threads: expected 0 or more"),
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", str(cert)], "--tls-client-ca needs --tls-cert"),
        (["--token-file", str(tmp_path / "missing")], "cannot read the token file"),
        (["--token-file", str(cert.with_name("empty"))], "the token file is empty"),
        (["--max-streams", "0"], "--max-streams: expected 1 or more"),
        (["--max-frame-pixels", "0"], "--max-frame-pixels: expected 1 or more"),
        (["--workers", "0"], "--workers: expected 1 or more"),
        (["--shm", "maybe"], "--shm: expected one of on, off, got 'maybe'"),
        (["--unix-group", "wheel"], "--unix-group: it opens the --unix socket to a group; give --unix too"),
        (
            ["--unix", str(tmp_path / "n.sock"), "--unix-group", "no-such-group-here"],
            "--unix-group: no group named 'no-such-group-here'",
        ),
        (["--shm-budget", "lots"], "--shm-budget: expected a size such as 8G, 512M or 1048576, got 'lots'"),
        (["--shm-budget", "0"], "--shm-budget: expected a size"),
        (["--max-ring-slots", "0"], "--max-ring-slots: expected 1 or more, got 0"),
    ):
        assert main(["serve", "--port", "0", *args]) in (EXIT_INPUT, 2)
        assert message in capsys.readouterr().err


def test_tls_files_are_checked_before_anything_loads_or_binds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, junk, or a key of another certificate: one line naming the file, exit 3."""
    from rvm_node.cli import EXIT_INPUT, main

    key, cert = make_cert(tmp_path, "a")
    other_key, _ = make_cert(tmp_path, "b")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for args, message in (
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)], "missing.pem does not exist"),
        (
            ["--tls-cert", str(junk), "--tls-key", str(key)],
            "are not a PEM certificate chain and its private key",
        ),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "are not a PEM certificate chain"),
        (
            ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(junk)],
            "--tls-client-ca: " + str(junk) + " is not a PEM CA certificate",
        ),
    ):
        assert main(["serve", "--port", "0", *args]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_shm_budget_sizes_read_as_people_write_them() -> None:
    from rvm_node.cli.serve import _size

    assert _size("8G", "x") == 8 << 30
    assert _size("512M", "x") == 512 << 20
    assert _size("1.5GiB", "x") == 3 << 29
    assert _size("64k", "x") == 64 << 10
    assert _size("1048576", "x") == 1 << 20
