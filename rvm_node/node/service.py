"""The Matte and GetNodeInfo RPCs (grpc.aio).

Each Matte stream runs as three tasks joined by queues, so receiving the
next chunk, inferring the current one and sending the previous one's results
overlap. At most ``Limits.max_chunks_in_flight`` chunks of one stream are held
at once (being received, waiting, inferring, or being sent), so a client that
stops reading holds only that much memory, and a write that cannot proceed
for the idle timeout ends the stream. Unpacking and packing samples (copies,
zstd, PNG) run on a small thread pool, never on the event loop; inference
runs on the scheduler's worker thread.

Domain errors become status codes here, at the service edge, and nowhere else:

=================================  ==================================================
INVALID_ARGUMENT                   bad settings, transports, frame sizes, byte counts, restore state
FAILED_PRECONDITION                the first message was not ``open``; a frame size change
RESOURCE_EXHAUSTED                 every stream slot is taken
UNAVAILABLE                        the node is draining for shutdown
DEADLINE_EXCEEDED                  the stream sat idle, or its client stopped reading, longer than the idle timeout
UNAUTHENTICATED                    (auth interceptor) missing or wrong bearer token
INTERNAL                           anything else (a bug: please report it)
=================================  ==================================================
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from rvm_node.engine.samples import OutputSpec
from rvm_node.engine.session import MattingBackend, check_downsample_ratio
from rvm_node.errors import BackendError, InvalidInputError, ResolutionChangedError
from rvm_node.node.metrics import NodeMetrics
from rvm_node.node.protocol import (
    DTYPES,
    PLANE_CHANNELS,
    SAMPLE_NAMES,
    TRANSPORTS,
    check_transport,
)
from rvm_node.node.scheduler import Scheduler
from rvm_node.node.stream import Abort, Stream, StreamPlan
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc

__all__ = ["Limits", "MattingServicer", "Scheduler"]

log = logging.getLogger("rvm_node.node")
_PART_HEADROOM = 64 * 1024
_END = object()


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_streams: int = 4
    max_message_bytes: int = 64 * 1024 * 1024
    max_frame_pixels: int = 8192 * 4320
    max_width: int = 16384
    max_height: int = 16384
    idle_timeout: float = 60.0
    max_chunks_in_flight: int = 4


class MattingServicer(pb_grpc.MattingServiceServicer):
    """One model shared by every stream; each stream's state is its own session."""

    def __init__(self, scheduler: Scheduler, limits: Limits, version: str) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.version = version
        self.active_streams = 0
        self.peak_chunks_in_flight = 0  # the most chunks any one stream held at once
        self.draining = False
        self._ids = itertools.count(1)
        self.codec = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="rvm-node-codec"
        )

    @property
    def backend(self) -> MattingBackend[Any]:
        return self.scheduler.backend

    def close(self) -> None:
        self.codec.shutdown(wait=False, cancel_futures=True)

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: Any) -> pb.GetNodeInfoResponse:  # noqa: ARG002
        info = self.backend.describe()
        limits = self.limits
        policy = self.scheduler.policy
        return pb.GetNodeInfoResponse(
            version=self.version,
            device=str(info["device"]),
            backend=str(info["backend"]),
            precision=str(info["precision"]),
            variants=[str(info["variant"])],
            active_streams=self.active_streams,
            limits=pb.Limits(
                max_message_bytes=limits.max_message_bytes,
                max_frame_pixels=limits.max_frame_pixels,
                max_streams=limits.max_streams,
                max_width=limits.max_width,
                max_height=limits.max_height,
                idle_timeout_seconds=limits.idle_timeout,
                max_chunks_in_flight=limits.max_chunks_in_flight,
                max_batch=policy.max_batch,
                batch_delay_seconds=policy.delay,
            ),
            transports=list(TRANSPORTS.values()),
            sample_formats=list(DTYPES),
        )

    async def Matte(self, request_iterator: AsyncIterator[pb.MatteRequest], context: Any) -> None:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down; use another node")
        if self.active_streams >= self.limits.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self.limits.max_streams} stream slots are taken; retry later or use another node",
            )
        self._set_active(+1)
        stream = Stream(self, f"s{next(self._ids)}", request_iterator, context)
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
            await stream.run()
        except Abort as exc:
            failure = (exc.code, exc.details)
        except ResolutionChangedError as exc:
            failure = (grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidInputError as exc:
            failure = (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except BackendError as exc:
            log.exception("stream %s: backend failure", stream.stream_id)
            failure = (grpc.StatusCode.INTERNAL, str(exc))
        finally:
            stream.close()
            self._set_active(-1)
        if failure is not None:
            log.info("stream %s ended: %s %s", stream.stream_id, failure[0].name, failure[1])
            if self.metrics is not None:
                self.metrics.errors.labels(code=failure[0].name).inc()
            await context.abort(*failure)

    @property
    def metrics(self) -> NodeMetrics | None:
        return self.scheduler.metrics

    def _set_active(self, change: int) -> None:
        self.active_streams += change
        if self.metrics is not None:
            self.metrics.active_streams.set(self.active_streams)

    def check_settings(self, settings: pb.StreamSettings) -> StreamPlan:
        limits = self.limits
        width, height = settings.width, settings.height
        if width < 1 or height < 1:
            raise InvalidInputError(f"settings: width and height must be positive, got {width}x{height}")
        if width > limits.max_width or height > limits.max_height or width * height > limits.max_frame_pixels:
            raise InvalidInputError(
                f"settings: {width}x{height} exceeds this node's limits ({limits.max_width}x{limits.max_height}, "
                f"{limits.max_frame_pixels} pixels)"
            )
        if settings.input_format not in DTYPES or settings.output_format not in DTYPES:
            raise InvalidInputError("settings: input_format and output_format must be set")
        if any(plane not in PLANE_CHANNELS for plane in settings.planes):
            raise InvalidInputError("settings: unknown plane requested")
        variant = str(self.backend.describe()["variant"])
        if settings.variant and settings.variant != variant:
            raise InvalidInputError(f"settings: this node runs {variant}, not {settings.variant}")
        in_transport = check_transport(settings.transport, settings.input_format, "settings.transport")
        out_transport = check_transport(  # unspecified: the same as the frames sent
            settings.return_transport or in_transport, settings.output_format, "settings.return_transport"
        )
        ratio = None if settings.downsample_ratio == 0 else float(settings.downsample_ratio)
        planes = tuple(dict.fromkeys(settings.planes)) or (pb.PLANE_ALPHA,)
        return StreamPlan(
            width=width,
            height=height,
            planes=planes,
            in_dtype=DTYPES[settings.input_format],
            in_transport=in_transport,
            out_transport=out_transport,
            outputs=OutputSpec(
                foreground=pb.PLANE_FOREGROUND in planes, sample_format=SAMPLE_NAMES[settings.output_format]
            ),
            ratio=check_downsample_ratio(ratio, "settings.downsample_ratio"),
        )
