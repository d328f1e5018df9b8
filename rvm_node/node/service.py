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

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from rvm_node.engine.samples import OutputSpec
from rvm_node.engine.session import MatteChunk, MattingBackend, MattingSession, check_downsample_ratio
from rvm_node.errors import BackendError, InvalidInputError, ResolutionChangedError
from rvm_node.node.metrics import NodeMetrics
from rvm_node.node.protocol import (
    DTYPES,
    PLANE_CHANNELS,
    SAMPLE_NAMES,
    TRANSPORTS,
    FrameAssembler,
    check_transport,
    pack,
    packed_limit,
    split_parts,
    state_from_message,
    state_to_message,
    transport_name,
    unpack,
)
from rvm_node.node.scheduler import Scheduler
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


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class _Plan:
    """A stream's settings, checked and resolved."""

    width: int
    height: int
    planes: tuple[pb.Plane, ...]
    in_dtype: np.dtype
    in_transport: pb.Transport
    out_transport: pb.Transport
    outputs: OutputSpec
    ratio: float | None


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
        stream = _Stream(self, f"s{next(self._ids)}", request_iterator, context)
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
            await stream.run()
        except _Abort as exc:
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

    def check_settings(self, settings: pb.StreamSettings) -> _Plan:
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
        out_transport = (
            in_transport
            if settings.return_transport == pb.TRANSPORT_UNSPECIFIED
            else check_transport(
                settings.return_transport, settings.output_format, "settings.return_transport"
            )
        )
        if out_transport == pb.TRANSPORT_PNG and DTYPES[settings.output_format].kind != "u":
            raise InvalidInputError(
                "settings.return_transport: PNG transport carries uint8 or uint16 samples only"
            )
        ratio = None if settings.downsample_ratio == 0 else float(settings.downsample_ratio)
        planes = tuple(dict.fromkeys(settings.planes)) or (pb.PLANE_ALPHA,)
        return _Plan(
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


class _Stream:
    """One Matte call: receive, infer and send run as three tasks joined by queues."""

    def __init__(
        self,
        servicer: MattingServicer,
        stream_id: str,
        requests: AsyncIterator[pb.MatteRequest],
        context: Any,
    ) -> None:
        self.servicer = servicer
        self.stream_id = stream_id
        self.limits = servicer.limits
        self._requests = requests
        self._context = context
        self._next: asyncio.Future[pb.MatteRequest] | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max(1, self.limits.max_chunks_in_flight))
        self._held = 0  # items between the receiver and the end of their sending
        self.session: MattingSession | None = None
        self.last_number = -1

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        if self.session is not None:
            self.session.close()

    def _hold(self) -> None:
        self._held += 1
        self.servicer.peak_chunks_in_flight = max(self.servicer.peak_chunks_in_flight, self._held)

    async def _read(self) -> pb.MatteRequest | None:
        """The next request; the idle timeout runs only while the node holds nothing of this stream."""
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(anext(self._requests))
            done, _ = await asyncio.wait({self._next}, timeout=self.limits.idle_timeout)
            if done:
                task, self._next = self._next, None
                try:
                    return task.result()
                except StopAsyncIteration:
                    return None
            if self._held == 0:
                raise _Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"stream idle for more than {self.limits.idle_timeout:g} s; its state was released",
                )

    async def _write(self, response: pb.MatteResponse) -> None:
        # gRPC's write does not give way to cancellation, so it is awaited at arm's length:
        # a cancelled stream never waits on it, and a client that stops reading times out.
        write = asyncio.ensure_future(self._context.write(response))
        done, _ = await asyncio.wait({write}, timeout=self.limits.idle_timeout)
        if not done:
            raise _Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the client read nothing for more than {self.limits.idle_timeout:g} s; "
                "the stream's state was released",
            )
        write.result()

    async def run(self) -> None:
        first = await self._read()
        if first is None:
            return  # an empty stream: nothing to do
        if first.WhichOneof("kind") != "open":
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message of a stream must be `open`")
        settings = first.open.settings
        plan = self.servicer.check_settings(settings)
        session = self.servicer.backend.new_session(plan.ratio, plan.outputs)
        self.session = session
        if first.open.HasField("restore"):
            self.last_number, state = state_from_message(first.open.restore)
            if state.frame_size != (plan.height, plan.width):
                raise InvalidInputError(
                    f"restore: the state is for {state.frame_size[1]}x{state.frame_size[0]}, "
                    f"the stream is {plan.width}x{plan.height}"
                )
            session.restore(state)
        resolved = session.ratio_for(plan.height, plan.width)
        log.info(
            "stream %s opened: %s %dx%d ratio %.4g, %s in, %s out",
            self.stream_id,
            settings.label or "-",
            plan.width,
            plan.height,
            resolved,
            transport_name(plan.in_transport),
            transport_name(plan.out_transport),
        )
        await self._write(
            pb.MatteResponse(
                accepted=pb.StreamAccepted(
                    settings=settings, downsample_ratio=resolved, stream_id=self.stream_id
                )
            )
        )
        tasks = [
            asyncio.ensure_future(self._receive(plan)),
            asyncio.ensure_future(self._infer(session)),
            asyncio.ensure_future(self._send(plan)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("stream %s closed after frame %d", self.stream_id, self.last_number)

    async def _receive(self, plan: _Plan) -> None:
        loop = asyncio.get_running_loop()
        raw_bytes = plan.width * plan.height * 3 * plan.in_dtype.itemsize
        assembler = FrameAssembler(
            packed_limit(plan.in_transport, raw_bytes), exact=plan.in_transport == pb.TRANSPORT_RAW
        )
        while True:
            await self._slots.acquire()  # a free chunk slot before reading on
            request = await self._read()
            if request is None:
                if assembler.pending:
                    raise InvalidInputError("stream ended in the middle of a frame")
                await self._inbox.put(_END)
                return
            kind = request.WhichOneof("kind")
            if kind == "chunk":
                complete = []
                for part in request.chunk.parts:
                    frame = assembler.add(part.number, part.offset, part.total_bytes, part.data)
                    if frame is not None:
                        complete.append((part.number, frame))
                if not complete:
                    self._slots.release()
                    continue
                self._hold()
                frames = await asyncio.gather(
                    *(
                        loop.run_in_executor(self.servicer.codec, self._unpack_frame, plan, number, data)
                        for number, data in complete
                    )
                )
                chunk = frames[0][None] if len(frames) == 1 else np.stack(frames)
                await self._inbox.put(("chunk", [n for n, _ in complete], chunk.transpose(0, 3, 1, 2)))
            elif kind == "control":
                action = request.control.WhichOneof("action")
                if action not in ("reset", "snapshot"):
                    raise InvalidInputError("control: no action given")
                self._hold()
                await self._inbox.put((action,))
            else:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "`open` may only be the first message")

    @staticmethod
    def _unpack_frame(plan: _Plan, number: int, data: bytes | bytearray) -> np.ndarray:
        shape = (plan.height, plan.width, 3)
        return unpack(data, plan.in_transport, plan.in_dtype, shape, f"frame {number}")

    async def _infer(self, session: MattingSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._inbox.get()
            if item is _END:
                await self._outbox.put(_END)
                return
            if item[0] == "chunk":
                _, numbers, frames = item
                out = await self.servicer.scheduler.process(session, frames)
                self.last_number = numbers[-1]
                await self._outbox.put(("chunk", numbers, out))
            elif item[0] == "reset":
                session.reset()
                await self._outbox.put(("message", pb.MatteResponse(reset_done=True)))
            else:
                snapshot = await loop.run_in_executor(self.servicer.codec, session.snapshot)
                if snapshot is None:
                    raise InvalidInputError("snapshot: no frame has been processed yet")
                message = pb.MatteResponse(snapshot=state_to_message(snapshot, self.last_number))
                await self._outbox.put(("message", message))

    async def _send(self, plan: _Plan) -> None:
        loop = asyncio.get_running_loop()
        part_limit = max(1024, self.limits.max_message_bytes - _PART_HEADROOM)
        while True:
            item = await self._outbox.get()
            if item is _END:
                return
            if item[0] == "chunk":
                _, numbers, out = item
                jobs = [
                    loop.run_in_executor(self.servicer.codec, self._pack_plane, plan, out, t, plane)
                    for t in range(len(numbers))
                    for plane in plan.planes
                ]
                packed = iter(await asyncio.gather(*jobs))
                for number in numbers:
                    for plane in plan.planes:
                        data = next(packed)
                        for offset, piece in split_parts(data, part_limit):
                            await self._write(
                                pb.MatteResponse(
                                    part=pb.PlanePart(
                                        number=number,
                                        plane=plane,
                                        offset=offset,
                                        total_bytes=len(data),
                                        data=piece,
                                    )
                                )
                            )
            else:
                await self._write(item[1])
            self._held -= 1
            self._slots.release()

    @staticmethod
    def _pack_plane(plan: _Plan, out: MatteChunk, t: int, plane: pb.Plane) -> bytes:
        if plane == pb.PLANE_ALPHA:
            values = out.pha[t, 0]
        else:
            if out.fgr is None:
                raise BackendError("the backend returned no foreground though the stream asked for it")
            values = out.fgr[t].transpose(1, 2, 0)
        return pack(values, plan.out_transport)
