"""Prometheus metrics of a node, served on an optional port at ``/metrics`` (any other path is 404).

rvm_node_build_info{version,backend,device,precision,variant}   1, with what the node runs
rvm_node_streams_started_total     streams accepted
rvm_node_active_streams            streams open now
rvm_node_frames_total              frames matted
rvm_node_chunk_seconds             time to matte one chunk (histogram)
rvm_node_queue_depth               chunks waiting for the inference worker
rvm_node_batch_size                streams per forward pass (histogram)
rvm_node_errors_total{code,reason} calls refused or ended with an error (refusals for a full node or
                                   a draining one included), by gRPC status code and error reason
rvm_node_worker_restarts_total{worker}  worker processes started again after one died (``--workers``;
                                   served by the supervisor)

No ``_created`` series are exported. With ``serve --workers N`` every
worker keeps its metrics in prometheus_client's multiprocess files and the
supervisor serves them summed (:func:`serve_multiprocess`): counters and
histograms add up, and the gauges are the workers' live sum (build info:
the most); the gauges of a worker that died are dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["MetricsServer", "NodeMetrics", "serve_multiprocess"]


class NodeMetrics:
    """One registry per node, so several nodes can live in one process (tests)."""

    def __init__(self, build: dict[str, str] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()
        self.registry = CollectorRegistry()
        build = build or {}
        info = Gauge(
            "rvm_node_build_info",
            "What the node runs",
            sorted(build),
            registry=self.registry,
            multiprocess_mode="max",
        )
        (info.labels(**build) if build else info).set(1)
        self.streams = Counter("rvm_node_streams_started", "Streams accepted", registry=self.registry)
        self.active_streams = Gauge(
            "rvm_node_active_streams", "Streams open now", registry=self.registry, multiprocess_mode="livesum"
        )
        self.frames = Counter("rvm_node_frames", "Frames matted", registry=self.registry)
        self.chunk_seconds = Histogram(
            "rvm_node_chunk_seconds",
            "Time to matte one chunk",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.queue_depth = Gauge(
            "rvm_node_queue_depth",
            "Chunks waiting for the inference worker",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "rvm_node_batch_size",
            "Streams per forward pass",
            registry=self.registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
        )
        self.errors = Counter(
            "rvm_node_errors",
            "Calls refused or ended with an error",
            ["code", "reason"],
            registry=self.registry,
        )
        self._server: MetricsServer | None = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on a daemon thread; returns the bound port."""
        self._server = MetricsServer(self.registry, port, host)
        return self._server.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class MetricsServer:
    """``/metrics`` of ``registry`` over HTTP on a daemon thread (any other path is 404)."""

    def __init__(self, registry: Any, port: int, host: str) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "metrics are served at /metrics")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes are not worth a log line each
                pass

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        threading.Thread(target=self._http.serve_forever, name="rvm-node-metrics", daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def serve_multiprocess(
    folder: str, port: int, host: str = "127.0.0.1", restarts: Callable[[], list[int]] | None = None
) -> MetricsServer:
    """Serve the summed metrics of the worker processes that keep them in ``folder``, and the
    supervisor's ``rvm_node_worker_restarts_total`` from ``restarts`` (one count per worker index)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    if restarts is not None:
        registry.register(_RestartsCollector(restarts))
    return MetricsServer(registry, port, host)


class _RestartsCollector:
    """``rvm_node_worker_restarts_total{worker}``, read from the supervisor at each scrape."""

    def __init__(self, restarts: Callable[[], list[int]]) -> None:
        self._restarts = restarts

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "rvm_node_worker_restarts", "Worker processes started again after one died", labels=["worker"]
        )
        for index, count in enumerate(self._restarts()):
            family.add_metric([str(index)], count)
        yield family
