"""The converter toolchains of the static export formats, each in an environment of its own.

TensorFlow, TensorFlow.js and coremltools pin versions of numpy, protobuf and
torch that clash with ours (and with each other), so each runs in its own
virtual environment, under ``$RVM_NODE_CACHE_DIR/toolchains/<name>`` (or
``$RVM_NODE_TOOLCHAINS/<name>``), made by::

    python -m rvm_node.engine.toolchains install tensorflow tfjs coreml   # scripts/setup-export-tools

The main environment stays light. The exporter hands each toolchain a file
(a static ONNX graph, a traced TorchScript module) and runs one of the worker
scripts in ``rvm_node/engine/exporters/`` with the toolchain's own Python;
the workers import nothing from rvm-node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rvm_node.errors import ExportError, InvalidInputError, MissingToolError

__all__ = ["FORMAT_TOOLCHAIN", "TOOLCHAINS", "Toolchain", "install", "run_worker", "toolchain_python"]

ROOT_ENV = "RVM_NODE_TOOLCHAINS"
WORKERS = Path(__file__).with_name("exporters")


@dataclass(frozen=True)
class Toolchain:
    name: str
    packages: tuple[str, ...]  # pinned: these are the versions proven here
    what: str


TOOLCHAINS = {
    "tensorflow": Toolchain(
        "tensorflow",
        # onnx2tf 1.29 is the last line for Python 3.11; it pins TensorFlow 2.19, onnxsim and ai-edge-litert.
        ("onnx2tf==1.29.24",),
        "onnx2tf and TensorFlow (SavedModel, TFLite)",
    ),
    "tfjs": Toolchain(
        "tfjs",
        # tensorflowjs 4.22 pulls TensorFlow 2.19; ydf 0.11.0 avoids its converter's protobuf mismatch.
        ("tensorflowjs==4.22.0", "ydf==0.11.0"),
        "tensorflowjs (TensorFlow.js graph models)",
    ),
    "coreml": Toolchain(
        "coreml",
        ("coremltools==9.0", "torch==2.13.0", "numpy<2.4"),
        "coremltools (CoreML ML Programs)",
    ),
}
FORMAT_TOOLCHAIN = {"tensorflow": "tensorflow", "tflite": "tensorflow", "tfjs": "tfjs", "coreml": "coreml"}


def _root() -> Path:
    override = os.environ.get(ROOT_ENV)
    if override:
        return Path(override).expanduser()
    from rvm_node.engine.weights import cache_dir

    return cache_dir() / "toolchains"


def _python(directory: Path) -> Path:
    return directory / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def toolchain_python(name: str, *, purpose: str = "export") -> Path:
    """The Python of toolchain ``name``; MissingToolError in one line, saying how to install it."""
    toolchain = TOOLCHAINS[name]
    directory = _root() / name
    python = _python(directory)
    if not (directory / "installed").is_file() or not python.is_file():
        raise MissingToolError(
            f"{purpose}: the {name} toolchain ({toolchain.what}) is not installed in {directory}; "
            f"run: python -m rvm_node.engine.toolchains install {name}"
        )
    return python


def run_worker(name: str, worker: str, args: list[str], *, purpose: str, timeout: float = 3600) -> str:
    """Run ``exporters/<worker>.py ARGS`` with toolchain ``name``'s Python; its stdout. A failure raises
    ExportError with the worker's last line."""
    python = toolchain_python(name, purpose=purpose)
    environment = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("PYTHONPATH", None)
    try:
        done = subprocess.run(
            [str(python), str(WORKERS / f"{worker}.py"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"{purpose}: {name} did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ExportError(
            f"{purpose}: {name} failed: {lines[-1].strip() if lines else f'exit {done.returncode}'}"
        )
    return done.stdout


def install(names: list[str]) -> list[Path]:
    """Make (or keep) the environments of toolchains ``names``; their folders."""
    unknown = sorted(set(names) - set(TOOLCHAINS))
    if unknown:
        raise InvalidInputError(f"toolchains: unknown {', '.join(unknown)}; expected {', '.join(TOOLCHAINS)}")
    made = []
    for name in names:
        toolchain, directory = TOOLCHAINS[name], _root() / name
        marker = directory / "installed"
        wanted = "\n".join(toolchain.packages) + "\n"
        if marker.is_file() and marker.read_text() == wanted:
            made.append(directory)
            continue
        directory.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(directory)], check=True)
        python = str(_python(directory))
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *toolchain.packages], check=True)
        marker.write_text(wanted)
        made.append(directory)
    return made


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "install":
        print(
            f"usage: python -m rvm_node.engine.toolchains install {'|'.join(TOOLCHAINS)} ...", file=sys.stderr
        )
        return 2
    for directory in install(args[1:]):
        print(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
