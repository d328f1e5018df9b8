"""A node of several worker processes on one port (``--workers``): one node to its clients.

The fast tier runs the real supervisor, workers, service and client over the benchmark's constant
stand-in model (``python -m rvm_node.bench.standins``); the slow tier runs ``rvm-node serve --workers 2``
with the real model.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rvm_node.bench.standins import bench_matte
from rvm_node.client import NodeClient
from rvm_node.engine.samples import to_samples
from rvm_node.errors import NodeBusyError
from rvm_node.node.launch import spawn_node, spawn_server, stop_process

W, H = 64, 48


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
        with pytest.raises(NodeBusyError, match="all 12 stream slots are taken"):
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
