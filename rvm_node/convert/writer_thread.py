"""The converter's writer thread: frames rendered and written in order, checkpoints saved once every frame
before them is on disk; image sequences may use a small pool of threads."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.convert.checkpoint import save_checkpoint
from rvm_node.convert.progress import Progress
from rvm_node.engine.states import RecurrentState
from rvm_node.io.writers import Background, FrameWriter, SequenceWriter, render

__all__ = ["Checkpoint", "MatteFrame", "WriterThread"]

_DONE = object()


@dataclass(frozen=True)
class MatteFrame:
    """A frame's planes for the writer thread."""

    number: int
    fgr: np.ndarray | None
    pha: np.ndarray
    time: Fraction | None


@dataclass(frozen=True)
class Checkpoint:
    """The state after frame ``number``, saved once every frame up to it is on disk."""

    number: int
    state: RecurrentState
    path: Path
    fingerprint: dict[str, Any]


class WriterThread:
    """Renders and writes frames in order; image sequences may use a small pool."""

    def __init__(
        self,
        writers: list[FrameWriter],
        numbering: Callable[[int], int],
        background: Background | None,
        progress: Progress,
        *,
        num_workers: int,
        group_writable: bool,
        on_frame: Callable[[int], None] | None,
    ) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._writers, self._numbering = writers, numbering
        self._num_workers, self._group_writable, self._on_frame = num_workers, group_writable, on_frame
        self._videos = [w for w in writers if not isinstance(w, SequenceWriter)]
        self._images: list[FrameWriter] = [w for w in writers if isinstance(w, SequenceWriter)]
        self._background, self._progress = background, progress
        self._pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self._pending: deque[Future[None]] = deque()
        self.error: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="rvm-node-writer", daemon=True)
        self._thread.start()

    def _write_frame(
        self,
        writers: list[FrameWriter],
        number: int,
        fgr: np.ndarray | None,
        pha: np.ndarray,
        background: np.ndarray | None,
        time: Fraction | None = None,
    ) -> None:
        for writer in writers:
            image = render(writer.kind, writer.settings, fgr, pha, background)
            writer.write(self._numbering(number), image, time)

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Checkpoint):
                    while self._pending:  # every frame up to this one is on disk first
                        self._pending.popleft().result()
                    save_checkpoint(
                        item.path,
                        item.state,
                        item.number,
                        item.fingerprint,
                        group_writable=self._group_writable,
                    )
                    continue
                self._write(item)
            while self._pending:
                self._pending.popleft().result()
        except BaseException as exc:
            self.error = exc
            while True:  # drain so the producer never blocks on a dead consumer
                try:
                    if self.queue.get(timeout=0.5) is _DONE:
                        break
                except queue.Empty:
                    break
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _write(self, frame: MatteFrame) -> None:
        background = self._background.next() if self._background is not None else None
        planes = (frame.number, frame.fgr, frame.pha, background)
        if self._pool is None:
            self._write_frame(self._writers, *planes, frame.time)
        else:  # a video's frames go in order, here; image files on the pool
            self._write_frame(self._videos, *planes, frame.time)
            self._pending.append(self._pool.submit(self._write_frame, self._images, *planes))
            while len(self._pending) > 2 * self._num_workers:
                self._pending.popleft().result()
        self.written += 1
        self._progress.frame(frame.number)
        if self._on_frame is not None:
            self._on_frame(frame.number)

    def put(self, item: MatteFrame | Checkpoint | object) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def join(self) -> None:
        self.put(_DONE)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """End the thread after a failure elsewhere, without raising."""
        with contextlib.suppress(queue.Full):
            self.queue.put(_DONE, timeout=5)
        self._thread.join(timeout=30)
