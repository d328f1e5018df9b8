"""Progress reporting: a one-line bar on a terminal, or progress events as JSON lines for plugins."""

from __future__ import annotations

import sys
import time
from typing import Literal, TextIO

from rvm_node.events import ProgressEvent, eta_of

__all__ = ["Progress"]

EndState = Literal["done", "failed", "cancelled"]


class Progress:
    """Counts frames written and reports frames/s and ETA.

    ``mode``: ``"bar"`` (a single updating line on stderr, only on a
    terminal), ``"json"`` (one :class:`~rvm_node.events.ProgressEvent` per
    line on stdout: ``started``, a ``frame`` per frame written, then ``done``,
    ``failed`` or ``cancelled``) or ``"off"``.
    """

    def __init__(self, total: int | None, mode: str = "bar", stream: TextIO | None = None) -> None:
        if mode == "bar" and not (stream or sys.stderr).isatty():
            mode = "off"
        self.mode = mode
        self.total = total
        self.done = 0
        self._stream = stream
        self._start = time.monotonic()
        self._last_print = 0.0
        if mode == "json":
            self._emit(ProgressEvent("started", total=total))

    def _fps(self) -> float:
        return self.done / max(time.monotonic() - self._start, 1e-9)

    def frame(self, number: int) -> None:
        self.done += 1
        if self.mode == "off":
            return
        fps = self._fps()
        eta = eta_of(self.done, self.total, fps)
        if self.mode == "json":
            self._emit(
                ProgressEvent("frame", frame=number, done=self.done, total=self.total, fps=fps, eta=eta)
            )
            return
        now = time.monotonic()
        if now - self._last_print < 0.1 and self.done != self.total:
            return
        self._last_print = now
        total = f"/{self.total}" if self.total is not None else ""
        eta_text = f"  ETA {int(eta) // 60:02d}:{int(eta) % 60:02d}" if eta is not None else ""
        stream = self._stream or sys.stderr
        stream.write(f"\rframe {number}  {self.done}{total}  {fps:5.1f} frames/s{eta_text}   ")
        stream.flush()

    def finish(self, state: EndState = "done", message: str | None = None) -> None:
        if self.mode == "json":
            self._emit(
                ProgressEvent(
                    state,
                    done=self.done,
                    total=self.total,
                    fps=self._fps(),
                    eta=0.0 if state == "done" else None,
                    message=message or "",
                )
            )
        elif self.mode == "bar":
            (self._stream or sys.stderr).write("\n")

    def _emit(self, event: ProgressEvent) -> None:
        stream = self._stream or sys.stdout
        stream.write(event.to_json() + "\n")
        stream.flush()
