"""Run rvm-node as a subprocess and follow its JSON progress lines (no bpy here).

Blender's Python must not start threads, and the gRPC streaming client
does; so the client runs in its own process. Its stdout goes to a file that
:meth:`MatteProcess.poll` reads from where it stopped, which never blocks
and works the same on every platform. Cancelling sends SIGTERM,
which rvm-node treats as Ctrl-C: it stops and keeps its complete frames
(Windows has no SIGTERM: there it is ended at once, and runs with no
console window).
Each frame is written to a temporary name and renamed, so only complete
frames remain whatever happens; temporaries of a killed run are removed.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rvm_node import fsutil
from rvm_node.errors import InvalidInputError
from rvm_node.events import ProgressEvent
from rvm_node.processes import popen_options

from .command import last_error

__all__ = ["MatteProcess", "ShotProgress", "remove_temporaries"]


@dataclass
class ShotProgress:
    total: int
    done: int = 0
    state: str = "pending"  # pending, running, done, failed, cancelled
    message: str = ""
    nodes: list[str] = field(default_factory=list)


class MatteProcess:
    """One ``rvm-node matte`` or ``rvm-node farm run`` with ``--progress-json``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        workdir: Path,
        shots: dict[str, int],
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.workdir = workdir
        self.shots = {name: ShotProgress(total) for name, total in shots.items()}
        self.fps = 0.0
        self.eta: float | None = None
        self.returncode: int | None = None
        self.cancelled = False
        self._started = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._offset = 0
        self._partial = b""

    # -- running ---------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stdout = (self.workdir / "progress.jsonl").open("wb")
        self._stderr = (self.workdir / "stderr.txt").open("wb")
        try:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                env=self.env,
                **popen_options(detach=False),
            )
        except OSError as exc:
            self._close_files()
            raise OSError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from exc
        self._started = time.monotonic()
        for shot in self.shots.values():
            shot.state = "running"

    def poll(self) -> bool:
        """Read new progress; True while the process runs."""
        if self._process is None:
            return False
        code = self._process.poll()
        self._read_lines()
        if code is None:
            return True
        if self.returncode is None:
            self.returncode = code
            self._read_lines()
            self._close_files()
            self._settle()
        return False

    def wait(self, on_progress: Callable[[MatteProcess], None] | None = None, interval: float = 0.2) -> int:
        """Block until the process ends (the ``blocking=True`` path)."""
        while self.poll():
            if on_progress is not None:
                on_progress(self)
            time.sleep(interval)
        if on_progress is not None:
            on_progress(self)
        return self.returncode if self.returncode is not None else -1

    def cancel(self, grace: float = 15.0) -> None:
        """Stop rvm-node and wait for it (killing it after ``grace`` seconds)."""
        process = self._process
        if process is None or process.poll() is not None:
            self.poll()  # it ended on its own: nothing to cancel
            return
        self.cancelled = True
        process.terminate()  # rvm-node stops on SIGTERM as on Ctrl-C; on Windows this ends it at once
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.poll()
        for shot in self.shots.values():
            if shot.state in ("running", "pending"):
                shot.state = "cancelled"

    # -- reading ---------------------------------------------------------------
    @property
    def done(self) -> int:
        return sum(min(s.done, s.total) for s in self.shots.values())

    @property
    def total(self) -> int:
        return sum(s.total for s in self.shots.values())

    def status_text(self) -> str:
        eta = f", ETA {int(self.eta) // 60}:{int(self.eta) % 60:02d}" if self.eta is not None else ""
        return f"RVM matte: {self.done}/{self.total} frames, {self.fps:.1f} frames/s{eta} (Esc to cancel)"

    def error_line(self) -> str:
        """The one line that says what went wrong: rvm-node's own error line when there is one."""
        try:
            stderr = (self.workdir / "stderr.txt").read_text(errors="replace")
        except OSError:
            stderr = ""
        if "rvm-node: error:" not in stderr:
            messages = [s.message for s in self.shots.values() if s.state == "failed" and s.message]
            if messages:
                return messages[-1].splitlines()[0]
        return last_error(stderr, self.returncode)

    def _close_files(self) -> None:
        for handle in (self._stdout, self._stderr):
            if handle is not None:
                handle.close()

    def _read_lines(self) -> None:
        path = self.workdir / "progress.jsonl"
        try:
            with path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            try:
                event = ProgressEvent.from_json(line)
            except InvalidInputError:  # not a progress event of the schema this add-on reads
                continue
            self._apply(event)

    def _apply(self, event: ProgressEvent) -> None:
        """Apply one event of rvm-node's progress-event schema."""
        # null shot: the one shot of a matte
        shot = next(iter(self.shots.values())) if event.shot is None else self.shots.get(event.shot)
        if shot is None:
            return
        # `done` counts this run's frames; frames kept on disk from an earlier run are the rest of the shot
        shot.done = event.done + (shot.total - event.total) if event.total is not None else event.done
        if event.kind == "done":
            shot.done = shot.total
        if event.final:
            shot.state = event.kind
        shot.message = event.message
        if event.node and event.node not in shot.nodes:
            shot.nodes.append(event.node)
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self.fps = event.fps if len(self.shots) == 1 else self.done / elapsed
        left = self.total - self.done
        self.eta = left / self.fps if self.fps > 0 else None

    def _settle(self) -> None:
        """After exit: a shot still marked running ended with the process."""
        for shot in self.shots.values():
            if shot.state in ("running", "pending"):
                if self.returncode == 0:
                    shot.state, shot.done = "done", shot.total
                else:
                    shot.state = "cancelled" if self.cancelled else "failed"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(s.state == "done" for s in self.shots.values())


def _frames_of(name: str) -> Callable[[str], bool]:
    """Whether a file name is one of the frames an output pattern such as ``m.####.exr`` names."""
    prefix, hashes, rest = name.partition("#")
    frame = re.compile(re.escape(prefix) + (r"-?\d+" + re.escape(rest.lstrip("#")) if hashes else "") + "$")
    return lambda final: frame.match(final) is not None


def remove_temporaries(patterns: Sequence[str]) -> int:
    """Delete rvm-node's temporaries of these output patterns' frames (left only by a killed run).

    Only temporaries of files the patterns name go: another job's in the same folder stay.
    """
    removed = 0
    for pattern in patterns:
        directory, name = os.path.split(pattern)
        removed += fsutil.remove_temporaries(Path(directory or "."), _frames_of(name))
    return removed
