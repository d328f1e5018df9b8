"""The converter: decode, infer and encode concurrently, with bounded queues.

Decoding runs in a reader thread, inference in the calling thread, and
encoding in a writer thread (plus ``num_workers`` threads for image
sequences). The queues between them are bounded, so memory stays flat over a
shot of any length and a slow disk holds the model back instead of growing
memory.

Resume: each output frame that exists is re-checked (it decodes and has the
right size). The run restarts from the newest recurrent-state checkpoint at
or before the first missing frame (see ``checkpoint``), which makes the
resumed mattes equal an uninterrupted run. Without one, it starts
``RESUME_WARMUP`` frames before the first missing frame and feeds them through
the network without writing, so the state is warm again when writing
restarts. That warm-up is approximate: RVM's state has a long memory (on the
test clip, 30 warm-up frames leave a mean alpha error of 6e-4 but up to 0.26
on a few edge pixels), so checkpoints are the normal path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.convert.checkpoint import STATE_EVERY, checkpoint_path, load_checkpoint
from rvm_node.convert.progress import Progress
from rvm_node.convert.shot import ShotSpec
from rvm_node.convert.shown import VideoTiming, report_orientation, video_timing
from rvm_node.convert.writer_thread import Checkpoint, MatteFrame, WriterThread
from rvm_node.engine.backend import MattingBackend
from rvm_node.engine.chunks import ChunkJob, FrameMemory, MatteChunk
from rvm_node.engine.samples import OutputSpec, finest_format, holds_samples
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import InvalidInputError, JobCancelledError
from rvm_node.io.outlock import OutputLock, lock_path
from rvm_node.io.sequence import FramePattern
from rvm_node.io.sources import FrameSource, SourceFrame, open_source
from rvm_node.io.writers import (
    SEQUENCE_EXTS,
    VIDEO_EXTS,
    Background,
    FrameWriter,
    OutputKind,
    SequenceWriter,
    VideoWriter,
    verify_frame,
)

__all__ = [
    "RESUME_WARMUP",
    "ConvertJob",
    "ConvertReport",
    "encoder_threads",
    "output_spec",
    "run_job",
]

# Frames fed through the network before the first missing frame on --resume.
RESUME_WARMUP = 30
_NO_MORE_FRAMES = object()  # the reader has put its last frame


@dataclass(kw_only=True)
class ConvertJob:
    """One conversion: the backend, the shot (:class:`ShotSpec`, checked), and how this run goes."""

    backend: MattingBackend[Any]
    shot: ShotSpec
    seq_chunk: int = 1
    num_workers: int = 0
    resume: bool = False
    overwrite: bool = False
    resume_warmup: int = RESUME_WARMUP
    state_every: int = STATE_EVERY
    # Frames before this number are run to warm the state but not written (a pre-roll).
    write_from: int | None = None
    progress: str = "bar"
    # Called from the writer thread with each frame number once it is written (or queued to the pool).
    on_frame: Callable[[int], None] | None = None
    # Called once the source is open, with the number of frames in the shot (None: unknown).
    on_total: Callable[[int | None], None] | None = None
    # Set from another thread to stop after the current chunk; run_job then raises JobCancelledError.
    cancel: threading.Event | None = None


@dataclass
class ConvertReport:
    frames_written: int
    frames_skipped: int
    warmup_frames: int
    resumed_from_checkpoint: bool
    outputs: dict[str, str]
    first_frame: int | None
    last_frame: int | None


def _validate(job: ConvertJob) -> None:
    """The run's own settings (the shot checked itself when it was made)."""
    if job.seq_chunk < 1:
        raise InvalidInputError(f"seq_chunk: expected 1 or more, got {job.seq_chunk}")
    if job.num_workers < 0:
        raise InvalidInputError(f"num_workers: expected 0 or more, got {job.num_workers}")
    if job.resume and job.overwrite:
        raise InvalidInputError("resume and overwrite: cannot be used together")
    if job.resume_warmup < 0:
        raise InvalidInputError(f"resume_warmup: expected 0 or more, got {job.resume_warmup}")


def _check_writable(path: Path) -> None:
    directory = path
    while not directory.exists():
        directory = directory.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{path}: cannot write here ({directory} is not a writable directory)")


def _make_writer(
    job: ConvertJob,
    kind: OutputKind,
    target: str,
    source: FrameSource,
    count: int | None,
    timing: Callable[[], VideoTiming],
) -> FrameWriter:
    size = (source.width, source.height)
    pattern = FramePattern.detect(target)
    path = Path(target)
    settings = job.shot.settings
    if pattern is None and job.shot.output_type == "png_sequence" and path.suffix.lower() not in VIDEO_EXTS:
        # The official form: a directory of 0000.png, 0001.png, ... 8-bit.
        pattern = FramePattern(path, "", 4, ".png")
        settings = dataclasses.replace(settings, bit_depth=8, official_png_composition=True)
    if pattern is not None:  # its folder was checked writable before the run took its lock
        return SequenceWriter(kind, pattern, settings)
    if path.suffix.lower() in SEQUENCE_EXTS:
        if count != 1:
            raise InvalidInputError(
                f"{target}: an image output for several frames needs a frame field, e.g. name.####{path.suffix}"
            )
        return SequenceWriter(kind, FramePattern(path.parent, path.stem, 0, path.suffix), settings)
    if path.exists() and not job.overwrite:
        raise InvalidInputError(f"{path}: already exists; pass --overwrite to replace it")
    video = timing()
    return VideoWriter(
        kind,
        path,
        rate=video.rate,
        size=size,
        settings=settings,
        audio_from=source.path if source.has_audio else None,
        timing=video.variable,
        display_matrix=video.display_matrix,
    )


def _lock_targets(job: ConvertJob) -> list[tuple[str, Path]]:
    """(output, its lock file) for every output of the job, each folder checked writable first."""
    targets = []
    for target in job.shot.outputs.values():
        pattern = FramePattern.detect(target)
        path = Path(target)
        if pattern is not None:
            lock = lock_path(pattern.directory, pattern.prefix)
        elif job.shot.output_type == "png_sequence" and path.suffix.lower() not in VIDEO_EXTS:
            lock = lock_path(path, "")  # the official directory of 0000.png, ...
        else:
            lock = lock_path(path)
        _check_writable(lock.parent)
        targets.append((target, lock))
    return targets


def encoder_threads() -> int:
    """Image encoders for a shot whose model runs elsewhere (a node): one per core, up to 4."""
    return min(4, os.cpu_count() or 1)


def output_spec(writers: list[FrameWriter]) -> OutputSpec:
    """What the writers need from the model: the foreground only if an output uses it, in their sample format."""
    return OutputSpec(
        foreground=any(w.kind != "alpha" for w in writers),
        sample_format=finest_format([w.sample_format for w in writers]),
    )


class _Numbering:
    """Maps source frame numbers to output numbers (the official png_sequence counts from 0)."""

    def __init__(self, numbers: list[int] | None, by_index: bool) -> None:
        self._index = {n: i for i, n in enumerate(numbers or [])} if by_index else None

    def __call__(self, number: int) -> int:
        return number if self._index is None else self._index[number]


@dataclass
class _Plan:
    start: int | None = None  # the frame number decoding starts at (None: the first)
    done: set[int] = field(default_factory=set)  # frames already on disk and verified
    state: RecurrentState | None = None  # checkpoint to restore before ``start``
    checkpoint: Path | None = None  # where this run saves checkpoints


def _plan_resume(
    job: ConvertJob,
    writers: list[FrameWriter],
    numbering: _Numbering,
    numbers: list[int] | None,
    size: tuple[int, int],
    fingerprint: dict[str, Any],
) -> _Plan:
    sequences = [w for w in writers if isinstance(w, SequenceWriter)]
    plan = _Plan(
        checkpoint=checkpoint_path(sequences[0].pattern, numbers[0]) if sequences and numbers else None
    )
    if not job.resume:
        for writer in sequences:
            clash = [
                n
                for n in (numbers or [])
                if (job.write_from is None or n >= job.write_from) and writer.path(numbering(n)).exists()
            ]
            if clash and not job.overwrite:
                raise InvalidInputError(
                    f"{writer.path(numbering(clash[0]))}: already exists; pass --overwrite to replace or --resume to continue"
                )
        return plan
    if len(sequences) != len(writers):
        raise InvalidInputError("resume: needs image-sequence outputs; a video cannot be continued")
    if numbers is None:
        raise InvalidInputError(
            f"{job.shot.input_source}: --resume needs a source whose frame count is known"
        )
    for writer in sequences:
        writer.remove_stale_temporaries([numbering(n) for n in numbers])
    plan.done = {n for n in numbers if all(verify_frame(w.path(numbering(n)), size) for w in sequences)}
    missing = [i for i, n in enumerate(numbers) if n not in plan.done]
    if not missing:
        plan.start = numbers[-1] + 1
        return plan
    saved = load_checkpoint(plan.checkpoint, fingerprint) if plan.checkpoint else None
    if saved is not None and saved[0] in numbers and numbers.index(saved[0]) < missing[0]:
        plan.state = saved[1]
        plan.start = numbers[numbers.index(saved[0]) + 1]
    elif missing[0] <= max(job.resume_warmup, job.state_every + job.seq_chunk if job.state_every > 0 else 0):
        # Before the first checkpoint (or a kill between a chunk's frames and its checkpoint): the
        # frames from the first one are few, so replaying all of them is exact and costs little.
        plan.start = numbers[0]
    else:
        plan.start = numbers[missing[0] - job.resume_warmup]
    return plan


def _reader(
    source: FrameSource,
    start: int | None,
    out: queue.Queue[Any],
    stop: threading.Event,
    memory: FrameMemory | None,
    chunk: int,
) -> None:
    try:
        block: np.ndarray | None = None
        for index, frame in enumerate(source.frames(start)):
            if memory is not None and index % chunk == 0:  # the chunks _chunks() will make, one block each
                block = memory.lend(chunk, frame.pixels.shape, frame.pixels.dtype)
            pixels = frame.pixels
            if (
                block is not None
                and block.shape[1:] == pixels.shape
                and holds_samples(block.dtype, pixels.dtype)
            ):
                target = block[index % chunk]  # straight from the decoder into the backend's memory
                np.copyto(target, pixels, casting="unsafe")
                frame = dataclasses.replace(frame, pixels=target)
            while not stop.is_set():
                try:
                    out.put(frame, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_NO_MORE_FRAMES)
    except BaseException as exc:  # handed to the main thread, which re-raises it
        out.put(exc)


def _chunks(frames: queue.Queue[Any], size: int) -> Iterator[list[SourceFrame]]:
    chunk: list[SourceFrame] = []
    while True:
        item = frames.get()
        if isinstance(item, BaseException):
            raise item
        if item is _NO_MORE_FRAMES:
            if chunk:
                yield chunk
            return
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []


def run_job(job: ConvertJob) -> ConvertReport:
    """Run one conversion end to end."""
    _validate(job)
    source = open_source(
        job.shot.input_source,
        frame_range=job.shot.frames,
        start_frame=job.shot.start_frame,
        colourspace=job.shot.input_colorspace,
        resize=job.shot.input_resize,
        allow_gaps=job.shot.allow_gaps,
        autorotate=not job.shot.no_autorotate,
    )
    report_orientation(source, autorotate=not job.shot.no_autorotate)
    numbers = source.frame_numbers
    count = len(numbers) if numbers is not None else None
    if count == 0:
        raise InvalidInputError(f"{job.shot.input_source}: zero frames to process")
    if job.on_total is not None:
        job.on_total(count)
    writers: list[FrameWriter] = []
    try:
        # One run per output: a second one refuses, naming the first.
        with OutputLock(_lock_targets(job), group_writable=job.shot.settings.group_writable):
            timing = functools.cache(lambda: video_timing(source, job.shot.frame_rate))  # said once, if asked
            for kind, target in job.shot.outputs.items():
                writers.append(_make_writer(job, kind, target, source, count, timing))
            return _run_writers(job, source, writers, numbers)
    except BaseException:
        for w in writers:
            w.abort()  # a no-op for finished outputs and for image sequences
        raise


def _fingerprint(job: ConvertJob, source: FrameSource, numbers: list[int] | None) -> dict[str, Any]:
    """What the state depends on; not the device or node, so a shot can resume elsewhere."""
    model = job.backend.describe()
    fingerprint = {
        "input": str(Path(job.shot.input_source).resolve()),
        "first": numbers[0] if numbers else None,
        "size": [source.width, source.height],
        "ratio": job.shot.downsample_ratio,
        "variant": str(model["variant"]),
        "precision": str(model["precision"]),
    }
    if source.display is not None:  # a square picture turned upright keeps its size
        fingerprint["upright"] = source.upright
    return fingerprint


@dataclass
class _Written:
    """The frame numbers a run sent to its writers, and how many it ran only to warm the state."""

    first: int | None = None
    last: int | None = None
    warmup: int = 0


def _run_writers(
    job: ConvertJob, source: FrameSource, writers: list[FrameWriter], numbers: list[int] | None
) -> ConvertReport:
    numbering = _Numbering(numbers, by_index=_official_dirs(job))
    size = (source.width, source.height)
    fingerprint = _fingerprint(job, source, numbers)
    plan = _plan_resume(job, writers, numbering, numbers, size, fingerprint)
    done_frames = plan.done
    if job.write_from is not None:
        done_frames = done_frames | {n for n in (numbers or []) if n < job.write_from}
    to_write = [n for n in (numbers or []) if n not in done_frames] if numbers is not None else None
    progress = Progress(len(to_write) if to_write is not None else None, job.progress)
    targets: dict[str, str] = {k: str(w.target) for k, w in zip(job.shot.outputs, writers, strict=True)}
    if to_write == []:
        progress.finish("done", "every frame is already written")
        first, last = (numbers[0], numbers[-1]) if numbers else (None, None)
        return ConvertReport(0, len(done_frames), 0, False, targets, first, last)

    session = job.backend.new_session(job.shot.downsample_ratio, output_spec(writers))
    if plan.state is not None:
        session.restore(plan.state)
    stop = threading.Event()
    frames: queue.Queue[Any] = queue.Queue(maxsize=max(4, 2 * job.seq_chunk))
    reader = threading.Thread(
        target=_reader,
        args=(source, plan.start, frames, stop, session.frame_memory, job.seq_chunk),
        name="rvm-node-reader",
        daemon=True,
    )
    background = Background(job.shot.background, size) if "composition" in job.shot.outputs else None
    writer = WriterThread(
        writers,
        numbering,
        background,
        progress,
        num_workers=job.num_workers,
        group_writable=job.shot.settings.group_writable,
        on_frame=job.on_frame,
    )
    reader.start()
    checkpoint = plan.checkpoint if job.state_every > 0 else None
    written = _Written()
    try:
        for done in session.run(_chunk_jobs(job, frames, session.frame_memory, checkpoint is not None)):
            _hand_to_writer(done.job.tag, done.out, writer, done_frames, written)
            if done.state is not None and checkpoint is not None:
                writer.put(Checkpoint(done.job.tag[-1].number, done.state, checkpoint, fingerprint))
            _check_cancel(job)  # chunks still in flight on a node are dropped, not written
        writer.join()
        for w in writers:
            w.close()
    except BaseException as exc:
        stop.set()
        writer.stop()
        progress.finish(
            "cancelled" if isinstance(exc, (KeyboardInterrupt, JobCancelledError)) else "failed",
            str(exc) or type(exc).__name__,
        )
        raise
    finally:
        stop.set()
        session.close()
    if plan.checkpoint is not None:
        plan.checkpoint.unlink(missing_ok=True)  # the shot is complete
    progress.finish("done")
    resumed = plan.state is not None
    return ConvertReport(
        writer.written, len(done_frames), written.warmup, resumed, targets, written.first, written.last
    )


def _official_dirs(job: ConvertJob) -> bool:
    """Whether the outputs are folders of PNGs the official converter's way (numbered from 0)."""
    return any(
        FramePattern.detect(t) is None
        and job.shot.output_type == "png_sequence"
        and Path(t).suffix.lower() not in VIDEO_EXTS
        for t in job.shot.outputs.values()
    )


def _check_cancel(job: ConvertJob) -> None:
    if job.cancel is not None and job.cancel.is_set():
        raise JobCancelledError(f"{job.shot.input_source}: cancelled; complete frames were kept")


def _chunk_jobs(
    job: ConvertJob, frames: queue.Queue[Any], memory: FrameMemory | None, checkpointing: bool
) -> Iterator[ChunkJob]:
    """The reader's frames as chunks of ``seq_chunk``, a snapshot asked for every ``state_every`` frames."""
    since_checkpoint = 0
    for chunk in _chunks(frames, job.seq_chunk):
        _check_cancel(job)
        since_checkpoint += len(chunk)
        snapshot = checkpointing and since_checkpoint >= job.state_every
        if snapshot:
            since_checkpoint = 0
        pixels = [f.pixels for f in chunk]
        stacked = np.stack(pixels).transpose(0, 3, 1, 2) if memory is None else memory.chunk_of(pixels)
        yield ChunkJob(stacked, snapshot, chunk)


def _hand_to_writer(
    chunk: list[SourceFrame], out: MatteChunk, writer: WriterThread, done_frames: set[int], written: _Written
) -> None:
    """A chunk's planes to the writer, but for frames already on disk (run only to warm the state)."""
    for t, frame in enumerate(chunk):
        if frame.number in done_frames:
            written.warmup += 1
            continue
        written.first = frame.number if written.first is None else written.first
        written.last = frame.number
        fgr = None if out.fgr is None else out.fgr[t].transpose(1, 2, 0)
        writer.put(MatteFrame(frame.number, fgr, out.pha[t, 0], frame.time))
