"""One Matte stream on the node: receive, infer and send as three tasks joined by queues.

The receiver reads requests (only while the stream holds fewer than
``max_chunks_in_flight`` chunks), reassembles frames from their parts and
unpacks them on the codec pool. The inference task hands each chunk to the
scheduler and handles controls in order with the frames. The sender packs
each chunk's planes on the codec pool and writes them. A request the
receiver waits for, or a write the sender waits on, longer than the idle
timeout ends the stream (while the node still holds work of the stream,
waiting for the next request is not idleness).

Errors keep the order too: a bad request, or a chunk whose forward pass
fails, travels down the queues behind the work before it, so every frame
received before the fault is answered, and then the stream ends with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rvm_node.engine.chunks import MatteChunk
from rvm_node.engine.session import MattingSession
from rvm_node.errors import InvalidInputError, NonFiniteSamplesError, StateMismatchError
from rvm_node.node.handover import RingDesk
from rvm_node.node.limits import Limits
from rvm_node.node.plan import StreamPlan
from rvm_node.node.planes import check_finite, not_finite, pack_plane, plane_bytes, plane_of, unpack_frame
from rvm_node.node.ring import NodeRing, RingBudget, open_ring
from rvm_node.node.scheduler import Scheduler
from rvm_node.node.stages import StageClock, timed
from rvm_node.node.status import StreamRefused
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.codec import ChunkRequest, PartReply, Undecodable
from rvm_node.v1.protocol import (
    FrameAssembler,
    packed_limit,
    split_parts,
    state_from_message,
    state_to_message,
    transport_name,
)

__all__ = ["ChunkCount", "Stream", "StreamContext"]

log = logging.getLogger("rvm_node.node")
_PART_HEADROOM = 64 * 1024
_INLINE_COPY = 1 << 20  # planes smaller than this are copied into a ring on the event loop itself


@dataclass(frozen=True)
class StreamContext:
    """What a stream uses of its node: nothing more."""

    limits: Limits
    scheduler: Scheduler
    codec: Executor  # unpacking, packing, snapshots and large copies, off the event loop
    plan: Callable[[pb.StreamSettings, str], StreamPlan]  # the stream's settings and peer, checked
    ring_budget: RingBudget
    rings: RingDesk | None = None  # the worker's ring socket, where the node takes shared memory
    stages: StageClock | None = None  # CPU time per stage, for `bench node` only
    chunks: ChunkCount = field(default_factory=lambda: ChunkCount())


class ChunkCount:
    """The most chunks any one stream of the node held at once (received, inferring, sending)."""

    def __init__(self) -> None:
        self.peak = 0

    def saw(self, held: int) -> None:
        self.peak = max(self.peak, held)


@dataclass(frozen=True)
class _Chunk:
    """Frames received, for the inference task."""

    numbers: list[int]
    frames: np.ndarray  # [T, 3, H, W]
    slots: list[int] | None  # the ring slots they lie in


@dataclass(frozen=True)
class _Control:
    action: str  # reset or snapshot


@dataclass(frozen=True)
class _Pass:
    """A chunk handed to the scheduler, for the sender."""

    numbers: list[int]
    done: asyncio.Future[MatteChunk]
    slots: list[int] | None


@dataclass(frozen=True)
class _Reply:
    response: pb.MatteResponse


@dataclass(frozen=True)
class _Failed:
    """A failure, travelling behind the work before it."""

    error: Exception


@dataclass(frozen=True)
class _End:
    """The client half-closed: nothing more comes."""


_END = _End()


class Stream:
    """One Matte call: receive, infer and send run as three tasks joined by queues."""

    def __init__(
        self, node: StreamContext, stream_id: str, requests: AsyncIterator[pb.MatteRequest], call: Any
    ) -> None:
        self.node = node
        self.stream_id = stream_id
        self.limits = node.limits
        self._requests = requests
        self._call = call  # gRPC's context of the call
        self._next: asyncio.Future[pb.MatteRequest] | None = None
        self._inbox: asyncio.Queue[_Chunk | _Control | _Failed | _End] = asyncio.Queue()
        self._outbox: asyncio.Queue[_Pass | _Reply | _Failed | _End] = asyncio.Queue()
        self._chunk_room = asyncio.Semaphore(max(1, self.limits.max_chunks_in_flight))
        self._held = 0  # items between the receiver and the end of their sending
        self._passes: set[asyncio.Future[MatteChunk]] = set()  # chunks handed to the scheduler
        self._stopped: asyncio.Future[None] | None = None
        self.session: MattingSession | None = None
        self.ring: NodeRing | None = None
        self._unpack = timed(node.stages, "unpack", unpack_frame)
        self._wire_plane = timed(node.stages, "pack", plane_bytes)
        self.last_number = -1  # the last frame inferred
        self._last_received = -1  # the last frame received: numbers must increase

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        for waiting in self._passes:  # chunks still queued leave the scheduler
            waiting.cancel()
        if self.session is not None:
            self.session.close()
        if self.ring is not None:
            self.ring.close()

    def _hold(self) -> None:
        self._held += 1
        self.node.chunks.saw(self._held)

    async def _read(self) -> ChunkRequest | pb.MatteRequest | None:
        """The next request; the idle timeout runs only while the node holds nothing of this stream."""
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(anext(self._requests))
            done, _ = await asyncio.wait({self._next}, timeout=self.limits.idle_timeout)
            if done:
                task, self._next = self._next, None
                try:
                    request = task.result()
                except StopAsyncIteration:
                    return None
                if isinstance(request, Undecodable):
                    raise InvalidInputError(
                        f"request: not a MatteRequest message ({request.problem})", reason="MESSAGE_INVALID"
                    )
                return request
            if self._held == 0:
                raise StreamRefused(
                    "STREAM_IDLE",
                    f"stream idle for more than {self.limits.idle_timeout:g} s; its state was released",
                )

    async def _write(self, response: PartReply | pb.MatteResponse) -> None:
        # gRPC's write does not give way to cancellation, so it is awaited at arm's length:
        # a cancelled stream never waits on it, and a client that stops reading times out.
        write = asyncio.ensure_future(self._call.write(response))
        write.add_done_callback(_retrieve)  # a write the stream no longer waits for fails quietly
        done, _ = await asyncio.wait({write}, timeout=self.limits.idle_timeout)
        if not done:
            raise StreamRefused(
                "CLIENT_NOT_READING",
                f"the client read nothing for more than {self.limits.idle_timeout:g} s; "
                "the stream's state was released",
            )
        write.result()

    async def _open(self, first: ChunkRequest | pb.MatteRequest) -> tuple[StreamPlan, MattingSession]:
        """Check the first request, restore the state it carries, and answer `accepted`."""
        kind = "chunk" if isinstance(first, ChunkRequest) else first.WhichOneof("kind")
        if kind is None:
            raise _empty_request()
        if isinstance(first, ChunkRequest) or kind != "open":
            raise StreamRefused("OPEN_REQUIRED", "the first message of a stream must be `open`")
        if not first.open.HasField("settings"):
            raise InvalidInputError(
                "open: settings are required", reason="SETTINGS_INVALID", field="open.settings"
            )
        settings = first.open.settings
        node = self.node
        plan = node.plan(settings, self._call.peer())
        if plan.ring is not None and node.rings is not None:  # planning refuses shm without rings
            self.ring = await open_ring(
                plan.ring,
                plan.layout,
                desk=node.rings,
                budget=node.ring_budget,
                max_slots=self.limits.max_ring_slots,
                stream_id=self.stream_id,
                executor=node.codec,
            )
        session = node.scheduler.backend.new_session(plan.ratio, plan.outputs)
        self.session = session
        if first.open.HasField("restore"):
            after, state = state_from_message(first.open.restore, plan.variant)
            if state.frame_size != (plan.height, plan.width):
                raise StateMismatchError(
                    f"restore: the state is for {state.frame_size[1]}x{state.frame_size[0]}, "
                    f"the stream is {plan.width}x{plan.height}",
                    field="open.restore.width",
                )
            if plan.ratio is not None and np.float32(plan.ratio) != np.float32(state.downsample_ratio):
                raise StateMismatchError(
                    f"restore: the state is at ratio {state.downsample_ratio:g}, the stream asks for {plan.ratio:g}",
                    field="open.restore.downsample_ratio",
                )
            if after < -1:
                raise StateMismatchError(
                    f"restore: after_frame must be -1 or more, got {after}", field="open.restore.after_frame"
                )
            session.restore(state, "restore")
            self.last_number = self._last_received = after
        resolved = session.ratio_for(plan.height, plan.width)
        log.info(
            "stream %s opened: %s %dx%d ratio %.4g, %s in, %s out",
            self.stream_id,
            plan.label or "-",
            plan.width,
            plan.height,
            resolved,
            transport_name(plan.in_transport),
            transport_name(plan.out_transport),
        )
        accepted = pb.StreamSettings()
        accepted.CopyFrom(settings)
        accepted.variant = plan.variant
        accepted.downsample_ratio = resolved
        accepted.label = plan.label
        del accepted.planes[:]
        accepted.planes.extend(plan.planes)
        accepted.transport = plan.in_transport
        accepted.return_transport = plan.out_transport
        await self._write(
            pb.MatteResponse(
                accepted=pb.StreamAccepted(
                    settings=accepted, downsample_ratio=resolved, stream_id=self.stream_id
                )
            )
        )
        return plan, session

    async def run(self) -> None:
        """Serve the stream until it ends, fails, or :meth:`stop` ends it (a drain whose grace ran out)."""
        self._stopped = asyncio.get_running_loop().create_future()
        work = asyncio.ensure_future(self._serve())
        try:
            await asyncio.wait({work, self._stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        finished = not work.cancelled() and work.exception() is None
        if not finished and self._stopped.done() and not self._stopped.cancelled():
            raise self._stopped.exception()  # type: ignore[misc]
        self._stopped.cancel()  # a stop from now on finds the stream over
        work.result()  # the stream's own failure, if any

    def stop(self, error: Exception) -> None:
        """End the stream with ``error`` (its status goes to the client), whatever it is doing."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(error)

    async def _serve(self) -> None:
        first = await self._read()
        if first is None:
            return  # an empty stream: nothing to do
        plan, session = await self._open(first)
        tasks = [
            asyncio.ensure_future(self._errors_behind(self._receive(plan), self._inbox)),
            asyncio.ensure_future(self._errors_behind(self._infer(session), self._outbox)),
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

    @staticmethod
    async def _errors_behind(work: Awaitable[None], downstream: asyncio.Queue[Any]) -> None:
        """Run ``work``; its failure goes down the queue behind what it already put there, so the
        frames before a bad request or a failed pass are answered first."""
        try:
            await work
        except Exception as exc:
            await downstream.put(_Failed(exc))

    async def _receive(self, plan: StreamPlan) -> None:
        raw_bytes = plan.frame_bytes
        assembler = FrameAssembler(
            packed_limit(plan.in_transport, raw_bytes), exact=plan.in_transport == pb.TRANSPORT_RAW
        )
        while True:
            await self._chunk_room.acquire()  # room for one more chunk before reading on
            request = await self._read()
            if request is None:
                if assembler.pending:
                    raise InvalidInputError(
                        "stream ended in the middle of a frame", reason="FRAME_PARTS_INVALID"
                    )
                await self._inbox.put(_END)
                return
            if isinstance(request, ChunkRequest):
                received: tuple[list[int], list[np.ndarray], list[int] | None] | None
                if self.ring is not None:
                    received = await self._from_ring(plan, self.ring, request)
                else:
                    received = await self._from_wire(plan, request, assembler)
                if received is None:  # only parts of a frame so far
                    self._chunk_room.release()
                    continue
                numbers, frames, slots = received
                chunk = frames[0][None] if len(frames) == 1 else np.stack(frames)
                await self._inbox.put(_Chunk(numbers, chunk.transpose(0, 3, 1, 2), slots))
                continue
            kind = request.WhichOneof("kind")
            if kind == "chunk":  # parsed as a view above whenever it is a chunk
                raise _empty_request()
            elif kind == "control":
                action = request.control.WhichOneof("action")
                if action is None:
                    raise InvalidInputError(
                        "control: no action given; expected reset or snapshot", reason="MESSAGE_INVALID"
                    )
                self._hold()
                await self._inbox.put(_Control(action))
            elif kind == "open":
                raise StreamRefused("OPEN_REPEATED", "`open` may only be the first message of a stream")
            else:
                raise _empty_request()

    async def _from_wire(
        self, plan: StreamPlan, request: ChunkRequest, assembler: FrameAssembler
    ) -> tuple[list[int], list[np.ndarray], None] | None:
        """The chunk's complete frames from the bytes that carried them."""
        complete = []
        for part in request.parts:
            frame = assembler.add(part.number, part.offset, part.total_bytes, part.data)
            if frame is not None:
                self._check_number(part.number)
                complete.append((part.number, frame))
        if not complete:
            return None
        self._hold()
        if plan.in_transport == pb.TRANSPORT_RAW and plan.in_dtype.kind == "u":
            # Raw integer samples are used where they arrived: nothing to gain from another thread.
            frames = [self._unpack(plan, number, data) for number, data in complete]
        else:  # float frames are checked for NaN, compressed ones inflated, on the codec pool
            loop = asyncio.get_running_loop()
            frames = await asyncio.gather(
                *(
                    loop.run_in_executor(self.node.codec, self._unpack, plan, number, data)
                    for number, data in complete
                )
            )
        return [number for number, _ in complete], frames, None

    async def _from_ring(
        self, plan: StreamPlan, ring: NodeRing, request: ChunkRequest
    ) -> tuple[list[int], list[np.ndarray], list[int]]:
        """The chunk's frames from the stream's ring, every slot reference checked first."""
        numbers, slots = [], []
        for index, part in enumerate(request.parts):
            if part.offset != 0 or part.total_bytes != plan.frame_bytes:
                raise InvalidInputError(
                    f"frame {part.number}: a shared-memory frame is whole: offset 0 and total_bytes "
                    f"{plan.frame_bytes}, got {part.offset} and {part.total_bytes}",
                    reason="FRAME_PARTS_INVALID",
                    frame=part.number,
                )
            slots.append(ring.check_frame(index, part.shm, len(part.data)))
            self._check_number(part.number)
            numbers.append(part.number)
        if not numbers:
            raise _empty_request()
        self._hold()
        shape = (plan.height, plan.width, 3)

        def read_frame(number: int, slot: int) -> np.ndarray:
            frame = ring.frame(slot, plan.in_dtype, shape)
            check_finite(frame, number)
            return frame

        read = timed(self.node.stages, "unpack", read_frame)

        if plan.in_dtype.kind == "u":  # read in place: nothing to check
            frames = [read(number, slot) for number, slot in zip(numbers, slots, strict=True)]
        else:
            loop = asyncio.get_running_loop()
            frames = await asyncio.gather(
                *(
                    loop.run_in_executor(self.node.codec, read, number, slot)
                    for number, slot in zip(numbers, slots, strict=True)
                )
            )
        return numbers, frames, slots

    def _check_number(self, number: int) -> None:
        if number < 0 or number <= self._last_received:
            raise InvalidInputError(
                f"frame {number}: frame numbers must be 0 or more and increase along the stream; "
                f"the last was {self._last_received}",
                reason="FRAME_NUMBER_OUT_OF_ORDER",
                frame=number,
            )
        self._last_received = number

    async def _infer(self, session: MattingSession) -> None:
        """Hand chunks to the scheduler as they arrive, without waiting for the one before.

        The scheduler runs one stream's chunks in order and never two in one
        pass, so the next chunk waits at the device while this one runs,
        rather than after it (a GPU would idle between them). Controls wait
        for the chunks before them: they act on the state those leave.
        """
        loop = asyncio.get_running_loop()
        last: asyncio.Future[MatteChunk] | None = None
        after = self.last_number  # the number of the last frame handed over (the state follows it)
        while True:
            item = await self._inbox.get()
            if isinstance(item, _End | _Failed):
                await self._outbox.put(item)
                return
            if isinstance(item, _Chunk):
                last = asyncio.ensure_future(self.node.scheduler.process(session, item.frames))
                after = item.numbers[-1]
                last.add_done_callback(_retrieve)  # awaited by the sender; a stream that ends drops it
                self._passes.add(last)
                last.add_done_callback(self._passes.discard)
                await self._outbox.put(_Pass(item.numbers, last, item.slots))
                continue
            if last is not None:
                await asyncio.wait({last})  # its failure, if any, reaches the client through the sender
            if item.action == "reset":
                session.reset()
                await self._outbox.put(_Reply(pb.MatteResponse(reset_done=pb.ResetDone())))
            else:
                snapshot = await loop.run_in_executor(self.node.codec, session.snapshot)
                if snapshot is None:
                    raise StreamRefused("NOTHING_TO_SNAPSHOT", "snapshot: no frame has been processed yet")
                await self._outbox.put(_Reply(pb.MatteResponse(snapshot=state_to_message(snapshot, after))))

    async def _send(self, plan: StreamPlan) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):  # everything before it is sent: now the stream ends with it
                raise item.error
            if isinstance(item, _Pass):
                try:
                    out = await item.done  # in order; a failed pass ends the stream here, after all before it
                except NonFiniteSamplesError as exc:  # the engine's check: name the frame, as ours do
                    if exc.index is None or exc.frame is not None:
                        raise
                    raise not_finite(item.numbers[exc.index]) from None
                self.last_number = item.numbers[-1]
                if self.ring is not None and item.slots is not None:
                    await self._send_to_ring(plan, self.ring, item.numbers, out, item.slots)
                else:
                    await self._send_parts(plan, item.numbers, out)
            else:
                await self._write(item.response)
            self._held -= 1
            self._chunk_room.release()

    async def _send_parts(self, plan: StreamPlan, numbers: list[int], out: MatteChunk) -> None:
        """The chunk's planes as parts that carry their samples."""
        part_limit = max(1024, self.limits.max_message_bytes - _PART_HEADROOM)
        packed: Iterator[bytes | memoryview]
        if plan.out_transport == pb.TRANSPORT_RAW:  # written from the samples, in one copy
            packed = iter(
                [self._wire_plane(out, t, plane) for t in range(len(numbers)) for plane in plan.planes]
            )
        else:
            loop = asyncio.get_running_loop()
            jobs = [
                loop.run_in_executor(self.node.codec, pack_plane, plan, out, t, plane)
                for t in range(len(numbers))
                for plane in plan.planes
            ]
            packed = iter(await asyncio.gather(*jobs))
        for number in numbers:
            for plane in plan.planes:
                data = next(packed)
                for offset, piece in split_parts(data, part_limit):
                    await self._write(PartReply(number, plane, offset, len(data), piece))

    async def _send_to_ring(
        self, plan: StreamPlan, ring: NodeRing, numbers: list[int], out: MatteChunk, slots: list[int]
    ) -> None:
        """The chunk's planes written into each frame's slot, after the frame; the parts say where.

        A frame's slot is released before its parts are sent: the client may
        refill it the moment the last part arrives, and the node has nothing
        left to do with it by then.
        """
        loop = asyncio.get_running_loop()
        write = timed(self.node.stages, "pack", ring.write_plane)
        for t, (number, slot) in enumerate(zip(numbers, slots, strict=True)):
            parts = []
            for index, plane in enumerate(plan.planes):
                values = plane_of(out, t, plane)
                if values.nbytes < _INLINE_COPY:
                    write(slot, index, values)
                else:  # a large copy (numpy lets go of the GIL) beside the event loop's other work
                    await loop.run_in_executor(self.node.codec, write, slot, index, values)
                size = ring.layout.plane_bytes[index]
                ref = pb.SlotRef(slot=slot, offset=ring.layout.plane_at(slot, index), size=size)
                parts.append(pb.PlanePart(number=number, plane=plane, total_bytes=size, shm=ref))
            ring.release(slot)
            for part in parts:
                await self._write(pb.MatteResponse(part=part))


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a finished task's outcome (a write, a pass), so a stream that ended first leaves no unretrieved
    exception."""
    if not task.cancelled():
        task.exception()


def _empty_request() -> InvalidInputError:
    return InvalidInputError(
        "request: holds nothing; expected one of open, chunk or control", reason="MESSAGE_INVALID"
    )
