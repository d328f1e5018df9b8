"""Prometheus metrics of a node, served on an optional port.

rvm_node_active_streams            streams open now
rvm_node_frames_total              frames matted
rvm_node_chunk_seconds             time to matte one chunk (histogram)
rvm_node_queue_depth               chunks waiting for the inference worker
rvm_node_batch_size                streams per forward pass (histogram)
rvm_node_errors_total{code}        streams ended with an error, by gRPC status code
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeMetrics"]


class NodeMetrics:
    """One registry per node, so several nodes can live in one process (tests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.active_streams = Gauge("rvm_node_active_streams", "Streams open now", registry=self.registry)
        self.frames = Counter("rvm_node_frames", "Frames matted", registry=self.registry)
        self.chunk_seconds = Histogram(
            "rvm_node_chunk_seconds",
            "Time to matte one chunk",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.queue_depth = Gauge(
            "rvm_node_queue_depth", "Chunks waiting for the inference worker", registry=self.registry
        )
        self.batch_size = Histogram(
            "rvm_node_batch_size",
            "Streams per forward pass",
            registry=self.registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
        )
        self.errors = Counter(
            "rvm_node_errors", "Streams ended with an error", ["code"], registry=self.registry
        )
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP; returns the bound port."""
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
