"""Start ``rvm-node serve`` (or another rvm-node server) as a subprocess, for benchmarks, tests and scripts.

A server prints its address on the first line of stdout once it serves;
:func:`spawn_node` waits for that line and returns the process with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from rvm_node.errors import RvmNodeError

__all__ = ["rvm_node_command", "spawn_node", "spawn_server", "stop_process"]


def rvm_node_command(*args: str) -> list[str]:
    """The command line of ``rvm-node ARGS...`` with this Python (no reliance on PATH)."""
    return [sys.executable, "-m", "rvm_node", *args]


def spawn_server(
    command: list[str], what: str, stderr: Any = subprocess.DEVNULL
) -> tuple[subprocess.Popen[str], str]:
    """A server subprocess and the address it printed on its first line once serving."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=os.environ.copy()
    )
    address = process.stdout.readline().strip() if process.stdout is not None else ""
    if not address:
        process.kill()
        process.wait()
        raise RvmNodeError(f"{what} did not start ({' '.join(command[1:])})")
    return process, address


def spawn_node(
    *options: str, pin_core: int | None = None, stderr: Any = subprocess.DEVNULL
) -> tuple[subprocess.Popen[str], str]:
    """An ``rvm-node serve --port 0 OPTIONS...`` subprocess (on one core with ``pin_core``) and its address."""
    command = rvm_node_command("serve", "--port", "0", *options)
    if pin_core is not None:
        command = ["taskset", "-c", str(pin_core), *command]
    return spawn_server(command, "rvm-node serve", stderr)


def stop_process(process: subprocess.Popen[str], timeout: float = 30) -> None:
    """SIGTERM (a node drains), then SIGKILL after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
