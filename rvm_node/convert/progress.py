"""Progress reporting: a one-line bar on a terminal, or JSON lines for plugins."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Counts frames written and reports frames/s and ETA.

    ``mode``: ``"bar"`` (a single updating line on stderr, only on a terminal),
    ``"json"`` (one JSON object per line on stdout: frame, done, total, fps,
    eta, state) or ``"off"``.
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

    def _rate(self) -> tuple[float, float | None]:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        fps = self.done / elapsed
        eta = (self.total - self.done) / fps if self.total is not None and fps > 0 else None
        return fps, eta

    def frame(self, number: int) -> None:
        self.done += 1
        if self.mode == "off":
            return
        fps, eta = self._rate()
        if self.mode == "json":
            self._json(
                {
                    "frame": number,
                    "done": self.done,
                    "total": self.total,
                    "fps": round(fps, 3),
                    "eta": None if eta is None else round(eta, 1),
                    "state": "running",
                }
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

    def finish(self, state: str = "done", message: str | None = None) -> None:
        fps, _ = self._rate()
        if self.mode == "json":
            self._json(
                {
                    "frame": None,
                    "done": self.done,
                    "total": self.total,
                    "fps": round(fps, 3),
                    "eta": 0 if state == "done" else None,
                    "state": state,
                    "message": message,
                }
            )
        elif self.mode == "bar":
            (self._stream or sys.stderr).write("\n")

    def _json(self, record: dict[str, object]) -> None:
        stream = self._stream or sys.stdout
        stream.write(json.dumps(record) + "\n")
        stream.flush()
