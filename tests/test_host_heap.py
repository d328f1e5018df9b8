"""Freed host memory stays in the process once a CPU torch backend is made (glibc only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux-only")

# Allocates a 64 MB buffer and reports how many more bytes glibc serves from mmap while it lives: a block that
# large is unmapped (and faulted in again next time) unless the thresholds were raised.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "torch":
        from rvm_node.engine.loader import load_model
        load_model(backend="torch", random_weights=True)
    elif sys.argv[1] == "torch-off":
        from rvm_node.engine.loader import load_model
        from rvm_node.engine.torch_backend import TorchOptions
        load_model(backend="torch", random_weights=True, options=TorchOptions(retain_heap=False))
    elif sys.argv[1] == "direct":
        from rvm_node.engine.host_heap import retain_freed_memory
        print("set", retain_freed_memory())
    before = libc.mallinfo2().hblkhd
    buffer = np.ones(64 << 20, np.uint8)
    print("mmapped", libc.mallinfo2().hblkhd - before)
    """
)


def _mmapped(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split("mmapped")[1])


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("mode", ["direct", "torch"])
def test_large_blocks_come_from_the_heap_once_set(mode: str) -> None:
    assert _mmapped("none") >= 64 << 20  # glibc's default: the block is its own mapping
    assert _mmapped(mode) == 0  # kept in the heap and reused frame after frame


@pytest.mark.skipif(not _glibc(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_the_torch_option_turns_it_off() -> None:
    assert _mmapped("torch-off") >= 64 << 20
