"""A node of several worker processes on one port (``--workers``): one node to its clients.

The fast tier runs the real supervisor, workers, service and client over the benchmark's constant
stand-in model (``python -m rvm_node.bench.standins``); the slow tier runs ``rvm-node serve --workers 2``
with the real model. A worker that dies is replaced while the others serve on: the tests SIGKILL real
worker processes, found by the line each logs when it serves.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rvm_node.bench.standins import FAIL_FILE_VARIABLE, bench_matte
from rvm_node.client import NodeClient
from rvm_node.client.node_client import MatteStream
from rvm_node.engine.samples import to_samples
from rvm_node.errors import NodeBusyError, NodeUnavailableError, RvmNodeError
from rvm_node.node.launch import spawn_node, spawn_server, stop_process
from rvm_node.node.workers import restart_delay
from tests.helpers import wait_until

W, H = 64, 48
STANDIN = [sys.executable, "-m", "rvm_node.bench.standins", "--standin", "constant", "--port", "0"]


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[subprocess.Popen[str], str]]:
    command = [sys.executable, "-m", "rvm_node.bench.standins", "--standin", "constant", "--port", "0"]
    process, address = spawn_server([*command, "--workers", "2", "--max-streams", "12"], "a stand-in node")
    yield process, address
    stop_process(process)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_streams_spread_over_workers_and_the_node_counts_them_all(
    two_workers: tuple[subprocess.Popen[str], str],
) -> None:
    _, address = two_workers
    clients = [NodeClient(address, retries=0) for _ in range(4)]
    streams = []
    try:
        assert clients[0].info().workers == 2
        for client in clients:  # each client spreads its streams over connections of their own
            for _ in range(3):
                streams.append(client.open_stream(width=W, height=H, output_format="uint16"))
        workers = {stream.accepted.stream_id.split("-")[0] for stream in streams}
        assert workers == {"w0", "w1"}  # 16 connections all on one worker: odds of 1 in 32,768
        assert {client.info().active_streams for client in clients} == {
            12
        }  # the node's total, from any worker
        with pytest.raises(NodeBusyError, match="all 12 streams the node takes are open"):
            clients[0].open_stream(width=W, height=H)
        expected = to_samples(bench_matte(H, W), "uint16")
        frame = np.zeros((H, W, 3), np.uint8)
        for stream in streams:  # every stream, on either worker, answers on its own
            (result,) = stream.process([(1, frame)])
            assert np.array_equal(result.alpha, expected)
    finally:
        for stream in streams:
            stream.close()
        for client in clients:
            client.close()
    with NodeClient(address) as client:
        assert client.info().active_streams == 0


def test_sigterm_drains_every_worker() -> None:
    command = [sys.executable, "-m", "rvm_node.bench.standins", "--standin", "constant", "--port", "0"]
    process, address = spawn_server([*command, "--workers", "2"], "a stand-in node")
    children = _children(process.pid)  # the workers, and multiprocessing's resource tracker
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    with NodeClient(address) as client:
        stream = client.open_stream(width=W, height=H, output_format="uint16")
        process.send_signal(signal.SIGTERM)
        (result,) = stream.process([(1, np.zeros((H, W, 3), np.uint8))])  # a running stream finishes
        stream.close()
    assert result.number == 1
    assert process.wait(30) == 0
    assert len(workers) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in workers)


@pytest.mark.slow
def test_serve_with_two_workers_gives_the_mattes_of_one(clip_frames: np.ndarray) -> None:
    """Real `rvm-node serve --workers 2`: streams on either worker equal a one-process node's."""
    frames = [(n + 1, clip_frames[n].transpose(1, 2, 0)) for n in range(6)]
    results = {}
    for workers in ("1", "2"):
        metrics_port = _free_port()
        process, address = spawn_node(
            "--workers", workers, "--backend", "onnxruntime", "--metrics-port", str(metrics_port)
        )
        try:
            clients = [NodeClient(address) for _ in range(3)]
            for index, client in enumerate(clients):
                with client.open_stream(
                    width=176, height=144, output_format="uint16", downsample_ratio=0.5
                ) as s:
                    results[(workers, index, s.accepted.stream_id[:2])] = np.stack(
                        [r.alpha for r in s.process(frames)]
                    )
            for client in clients:
                client.close()
            metrics = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            )
            assert "rvm_node_frames_total 18.0" in metrics  # every worker's frames, summed
            assert "rvm_node_streams_started_total 3.0" in metrics
        finally:
            stop_process(process)
        assert process.returncode == 0
    mattes = list(results.values())
    assert all(np.array_equal(mattes[0], m) for m in mattes[1:])


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout`` seconds."""
    value: list[Any] = [None]

    def ready() -> bool:
        value[0] = predicate()
        return bool(value[0])

    if not wait_until(ready, timeout):
        raise AssertionError(f"not within {timeout:.0f} s: {what}")
    return value[0]


def _serving(log: Path) -> dict[int, list[int]]:
    """The pids each worker index served with, in order, from the node's log."""
    pids: dict[int, list[int]] = {}
    for index, pid in re.findall(r"worker (\d+) serving \(pid (\d+)\)", log.read_text()):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


class _HealthProbe(threading.Thread):
    """Asks the node's health, one call at a time, each on a fresh channel (a new connection), until stopped.

    ``calls`` holds, for each call, when it started (``time.monotonic``) and the status the node answered,
    or the call's error when the node gave none.
    """

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.calls: list[tuple[float, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                with grpc.insecure_channel(self.address) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=10
                    )
                self.calls.append((started, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)))
            except grpc.RpcError as exc:
                self.calls.append((started, f"{exc.code()}: {exc.details()}"))

    def stop(self) -> list[tuple[float, str]]:
        self.done.set()
        self.join(30)
        return self.calls


def _assert_serving_throughout(calls: list[tuple[float, str]], died: float, replaced: float) -> None:
    """Every answer was SERVING, answers came while one worker lived (after the test saw the supervisor log
    the death, before it saw the replacement serve), and only calls started before the death was logged
    got no answer, as UNAVAILABLE: those that the killed worker's sockets took. The kernel resets the
    connections queued at a killed process's socket; SO_REUSEPORT hands them to a live socket instead only
    with ``net.ipv4.tcp_migrate_req = 1``."""
    answered = [(started, status) for started, status in calls if not status.startswith("StatusCode.")]
    cut = [(started, status) for started, status in calls if status.startswith("StatusCode.")]
    assert {status for _, status in answered} == {"SERVING"}
    assert any(died < started < replaced for started, _ in answered)
    assert all(status.startswith("StatusCode.UNAVAILABLE") and started < died for started, status in cut), cut


def _streams_on_each_worker(
    address: str, workers: int, **settings: Any
) -> tuple[list[Any], list[MatteStream]]:
    """A stream on each worker, in worker order: clients open streams until every worker has one."""
    clients: list[Any] = []
    found: dict[int, MatteStream] = {}
    for _ in range(24):  # each client's first stream takes a connection of its own
        client = NodeClient(address, retries=0)
        stream = client.open_stream(**settings)
        worker = int(stream.accepted.stream_id.split("-")[0][1:])
        if worker in found:
            stream.close()
            client.close()
            continue
        clients.append(client)
        found[worker] = stream
        if len(found) == workers:
            return clients, [found[index] for index in range(workers)]
    raise AssertionError(f"24 connections reached only workers {sorted(found)}")


def test_restart_delays_double_up_to_30_seconds() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(1000) == 30.0


def test_a_killed_worker_is_replaced_while_the_other_streams_on(tmp_path: Path) -> None:
    """SIGKILL one worker mid-stream: the other's stream goes on, health stays SERVING, the node has two
    workers again, counts the restart and forgets the dead worker's stream."""
    log, metrics_port = tmp_path / "node.log", _free_port()
    with log.open("w") as err:
        process, address = spawn_server(
            [*STANDIN, "--workers", "2", "--metrics-port", str(metrics_port)], "a stand-in node", err
        )
    try:
        first = _wait_for(lambda: (p := _serving(log)) and len(p) == 2 and p, 10, "both workers serving")
        clients, streams = _streams_on_each_worker(address, 2, width=W, height=H, output_format="uint16")
        expected = to_samples(bench_matte(H, W), "uint16")
        frame = np.zeros((H, W, 3), np.uint8)
        for stream in streams:
            assert len(list(stream.process([(1, frame)]))) == 1  # both streams are mid-stream
        assert clients[0].info().active_streams == 2
        victim, survivor = 1, streams[0]
        probe = _HealthProbe(address)
        probe.start()
        _wait_for(lambda: len(probe.calls) >= 3, 10, "health answering before the kill")
        (victim_pid,) = first[victim]
        os.kill(victim_pid, signal.SIGKILL)
        results: list[Any] = []

        def stream_until(done: Callable[[], bool], what: str) -> float:
            """The survivor streams on, a frame at a time, while its neighbour dies and comes back."""

            def step() -> bool:
                results.extend(survivor.process([(len(results) + 2, frame)]))
                return done()

            _wait_for(step, 10, what)
            return time.monotonic()

        died = stream_until(lambda: "rvm-node-worker-1 exited" in log.read_text(), "worker 1's death logged")
        replaced = stream_until(lambda: len(_serving(log)[victim]) == 2, "worker 1 serving again")
        results.extend(survivor.process([(len(results) + 2, frame)]))
        _assert_serving_throughout(probe.stop(), died, replaced)
        assert [r.number for r in results] == list(range(2, len(results) + 2))
        assert all(np.array_equal(r.alpha, expected) for r in results)
        assert _serving(log)[victim][1] != victim_pid
        text = log.read_text()
        assert (
            "rvm-node-worker-1 exited with -9 (killed by SIGKILL); restarting it in 0.5 s (restart 1)" in text
        )
        with NodeClient(address) as client:
            assert client.info().active_streams == 1  # the dead worker's stream is not counted
        metrics = _metrics(metrics_port)
        assert 'rvm_node_worker_restarts_total{worker="1"} 1.0' in metrics
        assert 'rvm_node_worker_restarts_total{worker="0"} 0.0' in metrics
        assert "rvm_node_active_streams 1.0" in metrics  # nor its gauge
        with pytest.raises(NodeUnavailableError):  # the dead worker's own stream ended: its client moves it
            list(streams[victim].process([(2, frame)]))
        with contextlib.suppress(RvmNodeError):
            streams[victim].close()
        survivor.close()
        for client in clients:
            client.close()
    finally:
        stop_process(process)
    assert process.returncode == 0


def test_a_worker_that_keeps_failing_to_start_stops_the_node_after_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement that dies before serving is started again later each time; the fifth failure in a row
    drains the other worker and stops the node with one line: the failing worker's own, or how it exited."""
    fail_file, log = tmp_path / "no-device", tmp_path / "node.log"
    monkeypatch.setenv(FAIL_FILE_VARIABLE, str(fail_file))
    with log.open("w") as err:
        process, _ = spawn_server([*STANDIN, "--workers", "2"], "a stand-in node", err)
    try:
        first = _wait_for(lambda: (p := _serving(log)) and len(p) == 2 and p, 10, "both workers serving")
        fail_file.touch()  # from now on a stand-in worker fails as it starts, with a line
        os.kill(first[1][0], signal.SIGKILL)
        _wait_for(lambda: "(restart 5)" in log.read_text(), 60, "a fifth restart scheduled")
        fail_file.write_text("7\n")  # the fifth replacement crashes without a line (8 s away: ample)
        code = process.wait(120)
    finally:
        process.kill()
        process.wait()
    text = log.read_text()
    line = f"stand-in worker: {fail_file} exists, so it fails before serving"
    restarts = re.findall(
        r"rvm-node-worker-1 exited with (.*); restarting it in (.*) s \(restart (\d)\)", text
    )
    assert restarts == [
        ("-9 (killed by SIGKILL)", "0.5", "1"),
        *(
            (f"4 before serving ({line})", delay, str(n))
            for n, delay in ((2, "1.0"), (3, "2.0"), (4, "4.0"), (5, "8.0"))
        ),
    ]
    assert code == 1
    assert text.strip().splitlines()[-1] == (
        "python -m rvm_node.bench.standins: error: rvm-node-worker-1 failed to start 5 times in a row; "
        "the last time it exited with 7"
    )
    assert "rvm-node-worker-0" not in text and _serving(log)[0] == first[0]  # drained, never restarted


def test_a_restarted_worker_0_serves_the_unix_socket_again(tmp_path: Path) -> None:
    """The socket file a killed worker 0 leaves behind is replaced by its successor, which serves there."""
    path, log = tmp_path / "node.sock", tmp_path / "node.log"
    with log.open("w") as err:
        process, _ = spawn_server([*STANDIN, "--workers", "2", "--unix", str(path)], "a stand-in node", err)
    expected = to_samples(bench_matte(H, W), "uint16")
    frame = np.zeros((H, W, 3), np.uint8)
    try:
        first = _wait_for(lambda: (p := _serving(log)) and len(p) == 2 and p, 10, "both workers serving")
        for attempt in range(2):
            with (
                NodeClient(f"unix://{path}", retries=0) as client,
                client.open_stream(width=W, height=H, output_format="uint16") as stream,
            ):
                assert stream.accepted.stream_id.startswith("w0-")
                (result,) = stream.process([(1, frame)])
                assert np.array_equal(result.alpha, expected)
            if attempt == 0:
                os.kill(first[0][0], signal.SIGKILL)
                _wait_for(lambda: len(_serving(log).get(0, [])) == 2, 10, "worker 0 serving again")
    finally:
        stop_process(process)
    assert process.returncode == 0
    assert (
        "rvm-node-worker-0 exited with -9 (killed by SIGKILL); restarting it in 0.5 s (restart 1)"
        in log.read_text()
    )


def test_workers_that_cannot_start_stop_the_node_at_once_with_their_line() -> None:
    """The first start fails fast: the workers' own line (a bad setting), exit 3, nothing restarted."""
    from tests.helpers import run_rvm_node

    result = run_rvm_node(
        "serve", "--port", "0", "--workers", "2", "--threads", "-1", check=False, timeout=120
    )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == ["rvm-node: error: --threads: expected 0 or more, got -1"]


def _local_alpha(frames: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The mattes of a local session (onnxruntime, with the options a node uses) at ratio 0.5."""
    from rvm_node.engine.loader import load_model, shared_cpu_options

    backend = load_model(backend="onnxruntime", options=shared_cpu_options("onnxruntime"))
    return backend.new_session(0.5).process(np.stack([f for _, f in frames]).transpose(0, 3, 1, 2)).pha[:, 0]


@pytest.mark.slow
def test_serve_replaces_a_worker_killed_mid_stream(clip_frames: np.ndarray, tmp_path: Path) -> None:
    """Real `rvm-node serve --workers 2 --unix`: SIGKILL worker 0 mid-stream. The stream on worker 1 completes
    bit-exact against a local session, health stays SERVING, worker 0 serves again, on the Unix socket too."""
    frames = [(1001 + n, clip_frames[n].transpose(1, 2, 0)) for n in range(16)]
    path, log = tmp_path / "node.sock", tmp_path / "node.log"
    settings = {"width": 176, "height": 144, "downsample_ratio": 0.5}
    with log.open("w") as err:
        process, address = spawn_node(
            "--workers", "2", "--backend", "onnxruntime", "--unix", str(path), stderr=err
        )
    try:
        first = _wait_for(lambda: (p := _serving(log)) and len(p) == 2 and p, 10, "both workers serving")
        clients, (victim, survivor) = _streams_on_each_worker(address, 2, **settings)
        assert len(list(victim.process(frames[:4]))) == 4
        mattes = [r.alpha for r in survivor.process(frames[:4])]
        probe = _HealthProbe(address)
        probe.start()
        _wait_for(lambda: len(probe.calls) >= 3, 10, "health answering before the kill")
        os.kill(first[0][0], signal.SIGKILL)  # worker 0, with a stream mid-way
        _wait_for(lambda: "rvm-node-worker-0 exited" in log.read_text(), 10, "the supervisor seeing it die")
        died = time.monotonic()
        mattes += [r.alpha for r in survivor.process(frames[4:10])]
        _wait_for(lambda: len(_serving(log).get(0, [])) == 2, 10, "worker 0 serving again")
        replaced = time.monotonic()
        mattes += [r.alpha for r in survivor.process(frames[10:])]
        _assert_serving_throughout(probe.stop(), died, replaced)
        with (
            NodeClient(f"unix://{path}", retries=0) as client,
            client.open_stream(**settings) as stream,
        ):
            assert stream.accepted.stream_id.startswith("w0-")  # the new worker 0, on the socket
            again = np.stack([r.alpha for r in stream.process(frames)])
        with pytest.raises(NodeUnavailableError):
            list(victim.process(frames[4:6]))
        with contextlib.suppress(RvmNodeError):
            victim.close()
        survivor.close()
        for client in clients:
            client.close()
    finally:
        stop_process(process)
    assert process.returncode == 0
    local = _local_alpha(frames)
    assert np.array_equal(np.stack(mattes), local) and np.array_equal(again, local)
    assert (
        "rvm-node-worker-0 exited with -9 (killed by SIGKILL); restarting it in 0.5 s (restart 1)"
        in log.read_text()
    )


@pytest.mark.slow
def test_serve_backoff_starts_over_and_a_worker_that_cannot_start_again_stops_the_node(
    tmp_path: Path,
) -> None:
    """Real `rvm-node serve --workers 2 --unix`: worker 0 killed soon after it serves waits longer each time,
    one that served 10 s restarts at once again; when its socket path has become a file, it fails to start,
    and the fifth failure in a row stops the node with the worker's own line, exit 3."""
    path, log = tmp_path / "node.sock", tmp_path / "node.log"
    with log.open("w") as err:
        process, _ = spawn_node("--workers", "2", "--backend", "onnxruntime", "--unix", str(path), stderr=err)
    try:
        _wait_for(lambda: (p := _serving(log)) and len(p) == 2 and p, 10, "both workers serving")
        for serving in (1, 2):  # killed soon after it served: 0.5 s, then 1 s
            os.kill(_serving(log)[0][-1], signal.SIGKILL)
            _wait_for(lambda n=serving: len(_serving(log)[0]) == n + 1, 30, "worker 0 serving again")
        served_at = time.monotonic()  # a worker that has served 10 s starts its backoff over: let it serve 11
        _wait_for(lambda: time.monotonic() - served_at > 11, 30, "worker 0 serving for 11 s")
        path.unlink()
        path.write_text("not a socket\n")
        os.kill(_serving(log)[0][-1], signal.SIGKILL)
        code = process.wait(180)
    finally:
        process.kill()
        process.wait()
    text = log.read_text()
    line = f"unix_socket: {path} exists and is not a socket"
    restarts = re.findall(
        r"rvm-node-worker-0 exited with (.*); restarting it in (.*) s \(restart (\d)\)", text
    )
    killed = "-9 (killed by SIGKILL)"
    failed = f"3 before serving ({line})"
    assert restarts == [
        (killed, "0.5", "1"),
        (killed, "1.0", "2"),
        (killed, "0.5", "3"),  # it had served 10 s: the backoff starts over
        (failed, "1.0", "4"),
        (failed, "2.0", "5"),
        (failed, "4.0", "6"),
        (failed, "8.0", "7"),
    ]
    assert code == 3
    assert text.strip().splitlines()[-1] == (
        f"rvm-node: error: --unix: {path} exists and is not a socket (rvm-node-worker-0 failed to start 5 times in a row)"
    )
    assert "rvm-node-worker-1" not in text and len(_serving(log)[1]) == 1  # drained, never restarted


def test_shared_memory_spreads_over_workers_and_holds_for_the_whole_node(tmp_path: Path) -> None:
    """Each worker has its own local endpoint; a ring handed to one worker is that worker's alone, the same
    memory serves one stream on the whole node, and a replaced worker's endpoint is found again."""
    from rvm_node.v1 import matting_pb2 as pb
    from rvm_node.v1 import matting_pb2_grpc as pb_grpc
    from rvm_node.v1.protocol import DTYPES, SlotLayout
    from tests.helpers import offer_ring

    log = tmp_path / "node.log"
    with log.open("w") as err:
        process, address = spawn_server([*STANDIN, "--workers", "2"], "a stand-in node", err)
    try:
        _wait_for(lambda: len(_serving(log)) == 2, 10, "both workers serving")
        with NodeClient(address) as client:
            info = client.info()
            assert len(info.local_endpoints) == 2 and len({e.pid for e in info.local_endpoints}) == 2
            for endpoint in info.local_endpoints:  # every endpoint answers as the same node
                with NodeClient(endpoint.address) as local:
                    assert local.info().node_id == info.node_id
            streams = [
                client.open_stream(width=W, height=H, output_format="uint16", transport="shm")
                for _ in range(4)
            ]
            assert {s.transport for s in streams} == {"shm"}
            assert {s.accepted.stream_id.split("-")[0] for s in streams} == {"w0", "w1"}
            frame0 = np.zeros((H, W, 3), np.uint8)
            for stream in streams:
                assert [r.number for r in stream.process([(1, frame0)])] == [1]
            # Worker 0's ring, named on worker 1's endpoint: worker 1 knows no such handle.
            ring_of_w0 = next(s.ring for s in streams if s.accepted.stream_id.startswith("w0"))
            assert ring_of_w0 is not None
            layout = SlotLayout.of(W, H, DTYPES[pb.SAMPLE_FORMAT_UINT8], DTYPES[pb.SAMPLE_FORMAT_UINT16], [1])
            settings = pb.StreamSettings(
                width=W,
                height=H,
                input_format=pb.SAMPLE_FORMAT_UINT8,
                output_format=pb.SAMPLE_FORMAT_UINT16,
                transport=pb.TRANSPORT_SHM,
                ring=pb.SharedMemoryRing(handle=ring_of_w0.handle, slots=4, slot_bytes=layout.slot_bytes),
            )
            w1 = next(e for e in info.local_endpoints if e.address.endswith("-w1"))
            with grpc.insecure_channel(w1.address) as channel, pytest.raises(grpc.RpcError) as refused:
                list(
                    pb_grpc.MattingServiceStub(channel).Matte(
                        iter([pb.MatteRequest(open=pb.OpenStream(settings=settings))]), timeout=30
                    )
                )
            assert "no ring was handed over to this worker" in (refused.value.details() or "")
            # The same memory, offered to worker 1 while it serves a stream on worker 0: refused.
            fd = os.open(f"/proc/self/fd/{ring_of_w0._fd}", os.O_RDWR)
            try:
                receipt = offer_ring(w1.ring_socket, [fd])
                assert receipt.reason == "RING_INVALID" and "handed over already" in receipt.message
            finally:
                os.close(fd)
            for stream in streams:
                stream.close()
            # Worker 1 replaced: the client's description names a process that is gone; it asks again.
            (old_pid,) = _serving(log)[1]
            os.kill(old_pid, signal.SIGKILL)
            _wait_for(lambda: len(_serving(log)[1]) == 2, 10, "worker 1 serving again")
            kinds = set()
            for _ in range(4):
                with client.open_stream(width=W, height=H, output_format="uint16", transport="shm") as stream:
                    kinds.add((stream.transport, stream.accepted.stream_id.split("-")[0]))
                    list(stream.process([(1, frame0)]))
            assert kinds == {("shm", "w0"), ("shm", "w1")}
    finally:
        stop_process(process)
