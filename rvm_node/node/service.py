"""The Matte and GetNodeInfo RPCs (grpc.aio).

Each Matte stream runs as three tasks joined by queues, so receiving the
next chunk, inferring the current one and sending the previous one's results
overlap. At most ``Limits.max_chunks_in_flight`` chunks of one stream are held
at once (being received, waiting, inferring, or being sent), so a client that
stops reading holds only that much memory, and a write that cannot proceed
for the idle timeout ends the stream. Unpacking and packing samples (copies,
zstd, PNG) run on a small thread pool, never on the event loop; inference
runs on the scheduler's worker thread.

Exceptions become statuses here, at the service edge, and nowhere else
(:mod:`rvm_node.node.status` has the table of reasons and codes): refusals
of the request are logged as one line at INFO; anything else is the node's
own failure, logged once with its traceback and sent as INTERNAL naming the
stream. Every failure is counted in ``rvm_node_errors_total{code,reason}``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rvm_node.engine.backend import MattingBackend
from rvm_node.node.handover import RingDesk
from rvm_node.node.limits import Limits
from rvm_node.node.metrics import NodeMetrics
from rvm_node.node.plan import NodeTerms, plan_stream
from rvm_node.node.ring import RingBudget
from rvm_node.node.scheduler import Scheduler
from rvm_node.node.stages import StageClock, timed
from rvm_node.node.status import Failure, StreamRefused, abort, failure, failure_of
from rvm_node.node.stream import ChunkCount, Stream, StreamContext
from rvm_node.node.table import NodeTable, WorkerTable
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc
from rvm_node.v1.codec import Undecodable, encode_response, lenient_parser, parse_request
from rvm_node.v1.protocol import DTYPES, TRANSPORTS

__all__ = ["MattingServicer", "add_matting_service", "endpoint_names"]

log = logging.getLogger("rvm_node.node")


def endpoint_names(node_id: str, worker: int) -> tuple[str, str]:
    """A worker's local gRPC socket and ring socket, as names in the abstract namespace."""
    base = f"rvm-node-{node_id}-w{worker}"
    return base, f"{base}-rings"


class MattingServicer(pb_grpc.MattingServiceServicer):
    """One model shared by every stream; each stream's state is its own session."""

    def __init__(
        self,
        scheduler: Scheduler,
        limits: Limits,
        version: str,
        rings: RingDesk | None = None,
        stages: StageClock | None = None,
        streams: NodeTable | None = None,
        shm_budget: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.rings = rings  # the worker's ring socket, where the node takes shared memory
        self.stages = stages  # CPU time per stage, for `bench node` only
        self.version = version
        self.streams = streams or NodeTable()  # the node's open streams, across workers too
        self.draining = False
        self._streams: set[Stream] = set()
        self._ids = itertools.count(1)
        self.codec = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="rvm-node-codec"
        )
        terms = NodeTerms(limits, str(self.backend.describe()["variant"]), rings is not None)
        self.stream_context = StreamContext(
            limits=limits,
            scheduler=scheduler,
            codec=self.codec,
            plan=functools.partial(plan_stream, node=terms),
            ring_budget=RingBudget(self.streams, shm_budget),
            rings=rings,
            stages=stages,
            chunks=ChunkCount(),
        )

    @property
    def backend(self) -> MattingBackend[Any]:
        return self.scheduler.backend

    def close(self) -> None:
        self.codec.shutdown(wait=False, cancel_futures=True)

    def end_streams(self) -> int:
        """End every running stream with UNAVAILABLE NODE_DRAINING (a drain's grace ran out); how many."""
        for stream in list(self._streams):
            stream.stop(
                StreamRefused(
                    "NODE_DRAINING",
                    "the node is shutting down and its grace ran out; continue on another node",
                )
            )
        return len(self._streams)

    async def GetNodeInfo(
        self, request: pb.GetNodeInfoRequest | Undecodable, context: Any
    ) -> pb.GetNodeInfoResponse:
        if isinstance(request, Undecodable):
            refusal = failure(
                "MESSAGE_INVALID", f"request: not a GetNodeInfoRequest message ({request.problem})"
            )
            self._count(refusal)
            await abort(context, refusal)
        info = self.backend.describe()
        limits = self.limits
        policy = self.scheduler.policy
        return pb.GetNodeInfoResponse(
            version=self.version,
            device=str(info["device"]),
            backend=str(info["backend"]),
            precision=str(info["precision"]),
            variants=[str(info["variant"])],
            active_streams=self.streams.total,
            limits=pb.Limits(
                max_message_bytes=limits.max_message_bytes,
                max_frame_pixels=limits.max_frame_pixels,
                max_streams=limits.max_streams,
                max_width=limits.max_width,
                max_height=limits.max_height,
                idle_timeout=_duration(limits.idle_timeout),
                max_chunks_in_flight=limits.max_chunks_in_flight,
                max_batch=policy.max_batch,
                batch_delay=_duration(policy.delay),
                max_ring_slots=limits.max_ring_slots,
            ),
            transports=[t for t in TRANSPORTS.values() if t != pb.TRANSPORT_SHM or self.rings is not None],
            sample_formats=list(DTYPES),
            workers=self.streams.workers,
            node_id=self.streams.node_id,
            local_endpoints=self._local_endpoints(),
        )

    def _local_endpoints(self) -> list[pb.LocalEndpoint]:
        """Where clients on this host reach each worker for shared memory (none where it is off)."""
        if self.rings is None:
            return []
        endpoints = []
        for worker, pid in enumerate(self.streams.pids()):
            grpc_name, ring_name = endpoint_names(self.streams.node_id, worker)
            if pid:  # a worker being replaced has none for now
                endpoints.append(
                    pb.LocalEndpoint(address=f"unix-abstract:{grpc_name}", ring_socket=ring_name, pid=pid)
                )
        return endpoints

    async def Matte(self, request_iterator: AsyncIterator[pb.MatteRequest], context: Any) -> None:
        refusal = None
        if self.draining:
            refusal = failure("NODE_DRAINING", "the node is shutting down; use another node")
        elif not self.streams.try_open(self.limits.max_streams):
            refusal = failure(
                "STREAM_SLOTS_FULL",
                f"all {self.limits.max_streams} streams the node takes are open; retry later or use another node",
            )
        if refusal is not None:
            self._count(refusal)
            await abort(context, refusal)
        self._set_active()
        if self.metrics is not None:
            self.metrics.streams.inc()
        prefix = f"w{self.streams.worker}-" if isinstance(self.streams, WorkerTable) else ""
        stream = Stream(self.stream_context, f"{prefix}s{next(self._ids)}", request_iterator, context)
        failed: Failure | None = None
        self._streams.add(stream)
        try:
            await stream.run()
        except Exception as exc:  # the service edge: every exception becomes a status
            failed = failure_of(exc, stream.stream_id)
            if failed.expected:
                log.info(
                    "stream %s ended: %s %s: %s",
                    stream.stream_id,
                    failed.code.name,
                    failed.reason,
                    failed.message,
                )
            else:
                log.exception("stream %s: %s", stream.stream_id, failed.message)
        except asyncio.CancelledError:  # the client cancelled, went away or was killed
            log.info(
                "stream %s closed after frame %d: the client cancelled or went away",
                stream.stream_id,
                stream.last_number,
            )
            raise
        finally:
            self._streams.discard(stream)
            stream.close()
            self.streams.close()
            self._set_active()
        if failed is not None:
            self._count(failed)
            await abort(context, failed)

    def _count(self, failed: Failure) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(code=failed.code.name, reason=failed.reason).inc()

    @property
    def metrics(self) -> NodeMetrics | None:
        return self.scheduler.metrics

    @property
    def active_streams(self) -> int:
        """Streams open in this process (a worker's own, with ``--workers``)."""
        return self.streams.mine

    def _set_active(self) -> None:
        self.scheduler.open_streams = self.streams.mine  # the streams this process's scheduler serves
        if self.metrics is not None:
            self.metrics.active_streams.set(self.streams.mine)


def _duration(seconds: float) -> Any:
    from google.protobuf import duration_pb2

    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def add_matting_service(servicer: MattingServicer, server: Any) -> None:
    """Register the service with request parsers that never raise: a request that does not decode
    reaches the servicer, which refuses it with INVALID_ARGUMENT (gRPC itself would answer UNKNOWN)."""
    import grpc

    handlers = {
        "Matte": grpc.stream_stream_rpc_method_handler(
            servicer.Matte,
            request_deserializer=timed(servicer.stages, "receive/parse", parse_request),
            response_serializer=timed(servicer.stages, "send/serialize", encode_response),
        ),
        "GetNodeInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetNodeInfo,
            request_deserializer=lenient_parser(pb.GetNodeInfoRequest),
            response_serializer=pb.GetNodeInfoResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["MattingService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
