"""The Matte and GetNodeInfo RPCs (grpc.aio).

Domain errors become status codes here, at the service edge, and nowhere else:

=================================  ==================================================
INVALID_ARGUMENT                   bad settings, frame sizes, byte counts, restore state
FAILED_PRECONDITION                the first message was not ``open``; a frame size change
RESOURCE_EXHAUSTED                 every stream slot is taken
UNAVAILABLE                        the node is draining for shutdown
DEADLINE_EXCEEDED                  the stream sat idle longer than the idle timeout
UNAUTHENTICATED                    (auth interceptor) missing or wrong bearer token
INTERNAL                           anything else (a bug: please report it)
=================================  ==================================================
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from rvm_node.engine.session import MatteChunk, MattingBackend, MattingSession, check_downsample_ratio
from rvm_node.errors import BackendError, InvalidInputError, ResolutionChangedError
from rvm_node.node.metrics import NodeMetrics
from rvm_node.node.protocol import (
    DTYPES,
    PLANE_CHANNELS,
    FrameAssembler,
    decode_png,
    encode_png,
    encode_samples,
    split_parts,
    state_from_message,
    state_to_message,
)
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1 import matting_pb2_grpc as pb_grpc

__all__ = ["Limits", "MattingServicer", "Scheduler"]

log = logging.getLogger("rvm_node.node")
_PART_HEADROOM = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_streams: int = 4
    max_message_bytes: int = 64 * 1024 * 1024
    max_frame_pixels: int = 8192 * 4320
    max_width: int = 16384
    max_height: int = 16384
    idle_timeout: float = 60.0


class Scheduler:
    """Runs every stream's inference on one worker thread per device.

    Requests are taken one at a time in arrival order. The seam is here so
    that chunks of several streams with the same shape can later be batched
    into one forward pass; batching is off in this version.
    """

    def __init__(self, backend: MattingBackend[Any], metrics: NodeMetrics | None = None) -> None:
        self.backend = backend
        self.metrics = metrics
        self.pending = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvm-node-infer")

    async def process(self, session: MattingSession, frames: np.ndarray) -> MatteChunk:
        loop = asyncio.get_running_loop()
        self.pending += 1
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.pending)
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._worker, session.process, frames)
        finally:
            self.pending -= 1
            if self.metrics is not None:
                self.metrics.queue_depth.set(self.pending)
                self.metrics.chunk_seconds.observe(time.perf_counter() - started)
                self.metrics.frames.inc(len(frames))

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class MattingServicer(pb_grpc.MattingServiceServicer):
    """One model shared by every stream; each stream's state is its own session."""

    def __init__(self, scheduler: Scheduler, limits: Limits, version: str) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.version = version
        self.active_streams = 0
        self.draining = False
        self._ids = itertools.count(1)

    @property
    def backend(self) -> MattingBackend[Any]:
        return self.scheduler.backend

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: Any) -> pb.GetNodeInfoResponse:  # noqa: ARG002
        info = self.backend.describe()
        limits = self.limits
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
            ),
        )

    async def Matte(
        self, request_iterator: AsyncIterator[pb.MatteRequest], context: Any
    ) -> AsyncIterator[pb.MatteResponse]:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down; use another node")
        if self.active_streams >= self.limits.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self.limits.max_streams} stream slots are taken; retry later or use another node",
            )
        self._set_active(+1)
        stream_id = f"s{next(self._ids)}"
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
            async for response in self._stream(stream_id, request_iterator):
                yield response
        except _Abort as exc:
            failure = (exc.code, exc.details)
        except ResolutionChangedError as exc:
            failure = (grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidInputError as exc:
            failure = (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except BackendError as exc:
            log.exception("stream %s: backend failure", stream_id)
            failure = (grpc.StatusCode.INTERNAL, str(exc))
        finally:
            self._set_active(-1)
        if failure is not None:
            log.info("stream %s ended: %s %s", stream_id, failure[0].name, failure[1])
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

    async def _next(self, requests: AsyncIterator[pb.MatteRequest]) -> pb.MatteRequest | None:
        try:
            return await asyncio.wait_for(anext(requests), timeout=self.limits.idle_timeout)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise _Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream idle for more than {self.limits.idle_timeout:g} s; its state was released",
            ) from None

    def _check_settings(self, settings: pb.StreamSettings) -> float | None:
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
        ratio = None if settings.downsample_ratio == 0 else float(settings.downsample_ratio)
        return check_downsample_ratio(ratio, "settings.downsample_ratio")

    async def _stream(
        self, stream_id: str, requests: AsyncIterator[pb.MatteRequest]
    ) -> AsyncIterator[pb.MatteResponse]:
        first = await self._next(requests)
        if first is None:
            return  # an empty stream: nothing to do
        if first.WhichOneof("kind") != "open":
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message of a stream must be `open`")
        settings = first.open.settings
        ratio = self._check_settings(settings)
        width, height = settings.width, settings.height
        planes = list(settings.planes) or [pb.PLANE_ALPHA]
        in_dtype = DTYPES[settings.input_format]
        session = self.backend.new_session(ratio)
        last_number = -1
        if first.open.HasField("restore"):
            last_number, state = state_from_message(first.open.restore)
            if state.frame_size != (height, width):
                raise InvalidInputError(
                    f"restore: the state is for {state.frame_size[1]}x{state.frame_size[0]}, the stream is {width}x{height}"
                )
            session.restore(state)
        resolved = session.ratio_for(height, width)
        log.info(
            "stream %s opened: %s %dx%d ratio %.4g", stream_id, settings.label or "-", width, height, resolved
        )
        yield pb.MatteResponse(
            accepted=pb.StreamAccepted(settings=settings, downsample_ratio=resolved, stream_id=stream_id)
        )
        png = settings.transport == pb.TRANSPORT_PNG
        if png and in_dtype.kind != "u":
            raise InvalidInputError("settings: PNG transport takes uint8 or uint16 frames")
        raw_bytes = width * height * 3 * in_dtype.itemsize
        # A PNG of incompressible pixels is a little larger than the raw samples.
        assembler = FrameAssembler(raw_bytes + raw_bytes // 50 + 65536 if png else raw_bytes, exact=not png)
        part_limit = max(1024, self.limits.max_message_bytes - _PART_HEADROOM)
        while True:
            request = await self._next(requests)
            if request is None:
                break
            kind = request.WhichOneof("kind")
            if kind == "chunk":
                numbers, frames = [], []
                for part in request.chunk.parts:
                    frame = assembler.add(part.number, part.offset, part.total_bytes, part.data)
                    if frame is None:
                        continue
                    numbers.append(part.number)
                    if png:
                        frames.append(
                            decode_png(frame, (height, width, 3), f"frame {part.number}").astype(in_dtype)
                        )
                    else:
                        frames.append(np.frombuffer(frame, in_dtype).reshape(height, width, 3))
                if not frames:
                    continue
                out = await self.scheduler.process(session, np.stack(frames).transpose(0, 3, 1, 2))
                for t, number in enumerate(numbers):
                    for plane in planes:
                        values = out.pha[t, 0] if plane == pb.PLANE_ALPHA else out.fgr[t].transpose(1, 2, 0)
                        data = encode_png(values) if png else encode_samples(values, settings.output_format)
                        for offset, piece in split_parts(data, part_limit):
                            yield pb.MatteResponse(
                                part=pb.PlanePart(
                                    number=number,
                                    plane=plane,
                                    offset=offset,
                                    total_bytes=len(data),
                                    data=piece,
                                )
                            )
                    last_number = number
            elif kind == "control":
                action = request.control.WhichOneof("action")
                if action == "reset":
                    session.reset()
                    yield pb.MatteResponse(reset_done=True)
                elif action == "snapshot":
                    snapshot = session.snapshot()
                    if snapshot is None:
                        raise InvalidInputError("snapshot: no frame has been processed yet")
                    yield pb.MatteResponse(snapshot=state_to_message(snapshot, last_number))
                else:
                    raise InvalidInputError("control: no action given")
            else:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "`open` may only be the first message")
        if assembler.pending:
            raise InvalidInputError("stream ended in the middle of a frame")
        log.info("stream %s closed after frame %d", stream_id, last_number)
