"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.engine.backend import MattingBackend
from rvm_node.io.images import read_image
from rvm_node.node import launch


def run_frames(
    backend: MattingBackend, frames: np.ndarray, ratio: float | None, chunk: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``[T, 3, H, W]`` frames through a fresh session in chunks; return (fgr, pha) ``[T, ...]``."""
    session = backend.new_session(ratio)
    fgr, pha = [], []
    for start in range(0, len(frames), chunk):
        out = session.process(frames[start : start + chunk])
        fgr.append(out.fgr)
        pha.append(out.pha)
    return np.concatenate(fgr), np.concatenate(pha)


def per_frame_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return diff.reshape(len(a), -1).max(axis=1)


def spawn_node(*options: str, stderr: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], str]:
    """A real `rvm-node serve --port 0` subprocess and the address it printed once SERVING."""
    return launch.spawn_node(*options, stderr=stderr)


def run_rvm_node(
    *args: str, check: bool = True, timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``rvm-node ARGS...`` to completion, output captured as text; with ``check``, it must exit 0."""
    result = subprocess.run(
        launch.rvm_node_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kwargs.pop("env", os.environ.copy()),
        check=False,
        **kwargs,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def direct_matte(
    source: Path | str, node: str, frames: str, out: Path, *extra: str, env: dict[str, str] | None = None
) -> None:
    """The reference: rvm-node matte from the command line, same node, same frames."""
    subprocess.run(
        launch.rvm_node_command(
            "matte",
            "--input-source",
            str(source),
            "--node",
            node,
            "--frames",
            frames,
            "--output-alpha",
            str(out),
            "--quiet",
            *extra,
        ),
        check=True,
        capture_output=True,
        env=env,
    )


def alpha(path: Path) -> np.ndarray:
    if path.suffix == ".exr":
        import OpenEXR

        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = exr.channels()
            a = channels["A"].pixels.astype(np.float32)
            for name in "RGB":  # R=G=B=A: Blender reads the matte from any channel
                assert np.array_equal(channels[name].pixels.astype(np.float32), a)
            return a
    pixels = read_image(path).pixels
    return pixels[..., 0].astype(np.float32) / (65535.0 if pixels.dtype == np.uint16 else 255.0)


def assert_same_mattes(
    ours: Path, reference: Path, numbers: range, name: str, ext: str = "exr", tolerance: float = 1e-3
) -> None:
    files = sorted(p.name for p in ours.iterdir())
    assert files == [f"{name}.{n:04d}.{ext}" for n in numbers]
    for n in numbers:
        a, b = alpha(ours / f"{name}.{n:04d}.{ext}"), alpha(reference / f"ref.{n:04d}.{ext}")
        assert np.abs(a - b).max() <= tolerance, f"frame {n}"


def error_info(error: Any) -> tuple[str, dict[str, str]]:
    """The (reason, metadata) of the ErrorInfo a node sent with a failed call; ("", {}) if none."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "rvm-node.v1"
            return info.reason, dict(info.metadata)
    return "", {}


def recorded_standin_submit(tmp_path: Path, exit_code: int = 0) -> tuple[str, Path]:
    """A recorded stand-in for the farm manager's submit command (not Deadline's): a Python script that
    records its argv to a JSON file and prints a fake job id line (or, exiting non-zero, a message on
    stderr). Returns the submit command setting (``{bundle}`` for the folder) and the record file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    record = tmp_path / "standin_submit_argv.json"
    script = tmp_path / "standin_submit.py"
    script.write_text(
        "import json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"if {exit_code}:\n"
        "    print('stand-in farm: queue rvm is closed', file=sys.stderr)\n"
        f"    sys.exit({exit_code})\n"
        "print('Submitted job bundle:', sys.argv[-1])\n"
        "print('job-0123')\n"
    )
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} bundle submit --yes {{bundle}}"
    return command, record


def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> bool:
    """Whether ``predicate`` holds within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def listing(folder: Path) -> list[str]:
    """Everything in ``folder``, recursively (folders end with a slash)."""
    return sorted(f"{p.relative_to(folder)}{'/' if p.is_dir() else ''}" for p in folder.rglob("*"))


def process_gone(pid: int, timeout: float = 30) -> bool:
    """Whether process ``pid`` has exited within ``timeout`` seconds."""
    from rvm_node.processes import process_exists

    return wait_until(lambda: not process_exists(pid), timeout)


# ``rvm-node`` in this Python as an engine of onnxruntime alone sees it (the Blender extension's bundle):
# an import hook refuses torch. The command's arguments follow it, as after ``rvm-node``.
_NO_TORCH = (
    "import sys\n"
    "class NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, NoTorch())\n"
    "from rvm_node.cli import main\n"
    "sys.exit(main())\n"
)
RVM_NODE_WITHOUT_TORCH = [sys.executable, "-c", _NO_TORCH]

# ``rvm-node`` whose model is the stand-in (``tests/standin.py``): a node that starts in a moment and needs no
# weights, for tests of how nodes start and stop. The command's arguments follow it, as after ``rvm-node``.
_STANDIN = (
    "import sys\n"
    f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
    "import rvm_node.cli.common, rvm_node.cli.serve\n"
    "from tests.standin import StandInBackend\n"
    "rvm_node.cli.common.load_local = lambda choice, options: StandInBackend()\n"
    "rvm_node.cli.serve._fetch_weights = lambda: None\n"
    "from rvm_node.cli import main\n"
    "sys.exit(main())\n"
)
RVM_NODE_STANDIN = [sys.executable, "-c", _STANDIN]


def no_package_index(monkeypatch: Any, tmp_path: Path) -> None:
    """pip finds nothing from here on, as on a machine that cannot reach PyPI."""
    (tmp_path / "no-wheels").mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))


def offer_ring(ring_socket: str, fds: list[int], token: str = "", data: bytes | None = None) -> Any:
    """A raw offer on a worker's ring socket (an abstract name), with ``fds`` attached (``data``: other bytes
    than a RingOffer's); the node's RingReceipt."""
    import socket

    from rvm_node.v1 import matting_pb2 as pb
    from rvm_node.v1.handover import frame, message_length, parse

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect("\0" + ring_socket)
        socket.send_fds(connection, [frame(pb.RingOffer(token=token)) if data is None else data], fds)
        received = b""
        while (message_length(received) or 1 << 30) > len(received):
            piece = connection.recv(4096)
            if not piece:
                raise AssertionError("the node closed the connection without a receipt")
            received += piece
    return parse(received, pb.RingReceipt(), "receipt")


BOUND = 2e-4  # parity: alpha and foreground within this of the official model, max-abs


def official_reference(path: Path, frames: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The official ONNX file in a plain onnxruntime session, as the official guide runs it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rec = [np.zeros([1, 1, 1, 1], np.float32)] * 4
    fgrs, phas = [], []
    for frame in frames:
        src = (frame.astype(np.float32) / 255)[None]
        fgr, pha, *rec = session.run(
            None,
            {
                "src": src,
                "r1i": rec[0],
                "r2i": rec[1],
                "r3i": rec[2],
                "r4i": rec[3],
                "downsample_ratio": np.asarray([ratio], np.float32),
            },
        )
        fgrs.append(fgr)
        phas.append(pha)
    return np.concatenate(fgrs), np.concatenate(phas)


FORMATS = ["uint8", "uint16", "float16", "float32"]


def edge_values() -> np.ndarray:
    """Random values plus every rounding edge: exact halves of both integer steps, 0, 1 and beyond."""
    rng = np.random.default_rng(0)
    halves = np.concatenate([(np.arange(256) + 0.5) / 255, (np.arange(0, 65535, 97) + 0.5) / 65535])
    return np.concatenate([rng.random(50_000), halves, [0.0, 1.0, -0.2, 1.3]]).astype(np.float32)


def read_exr(path: Path) -> dict[str, np.ndarray]:
    """An EXR file's channels by name."""
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as exr:
        return {name: ch.pixels for name, ch in exr.channels().items()}
