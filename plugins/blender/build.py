"""Build the Blender add-on: an extension zip with bundled wheels, or a legacy add-on folder.

    python plugins/blender/build.py                       # dist/rvm_blender-<version>.zip, every platform
    python plugins/blender/build.py --platform linux-x64  # one platform: a smaller zip
    python plugins/blender/build.py --legacy ~/blender/scripts/addons --platform linux-x64

Blender 4.2 to 5.0 run Python 3.11, Blender 5.1 and later Python 3.13; the
zip carries wheels for both, and Blender installs the ones for its own. The
wheels are downloaded with pip (binary only, for each interpreter and
platform) at build time; rvm-node's own wheel is built from this checkout.
numpy is not bundled: Blender ships it.

The zip carries the CPU engine too (onnxruntime and onnx, no torch), so "This
computer" mattes with nothing else installed: the private node runs the
official ONNX weights as they are, fetched once into the user's cache.
onnxruntime is taken at the version this Python has, where it has one, so
the add-on's mattes equal those of rvm-node installed beside it, bit for bit.
``--no-engine`` leaves the engine out, for studios that only use render nodes.
``--openvino`` adds OpenVINO where it has wheels (Linux, Windows, Apple
silicon): the faster CPU engine, which the private node then takes
(``serve --backend auto``), at the cost of a larger zip (see the README).
``--numba`` adds numba and llvmlite: the full-resolution stage
(``rvm_node.engine.fullres``) then runs as compiled loops instead of numpy,
the same numbers to the bit, faster at HD and 4K, and a larger zip again.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGE = HERE / "rvm_blender"
PYTHONS = ("3.11", "3.13")  # Blender 4.2-5.0, and 5.1 on
CLIENT_REQUIREMENTS = [
    "grpcio>=1.60",
    "protobuf>=4.25",
    "av>=12",
    "OpenEXR>=3.3",
    "opencolorio>=2.2",
    "platformdirs>=3",
    "typing-extensions>=4.12",  # grpcio's
    "pyyaml>=6",  # farm job bundles (Open Job Description templates)
]
ENGINE_REQUIREMENTS = [  # the private node: the engine and what `rvm-node serve` imports beside the client
    "onnxruntime>=1.17",  # pinned to this Python's version, where it has one (see engine_requirements)
    "onnx>=1.15",  # our refiner policy is applied to the official graph
    "ml_dtypes>=0.5.4,<0.6",  # onnx's; 0.6 and later need numpy 2, and Blender 4.2 to 5.0 ship numpy 1.26
    "flatbuffers",  # onnxruntime's
    "packaging",  # onnxruntime's
    "grpcio-health-checking>=1.60",
    "grpcio-reflection>=1.60",
    "grpcio-status>=1.60",
    "googleapis-common-protos>=1.5",  # grpcio-status's
    "prometheus-client>=0.17",
    "zstandard>=0.22",
]
# --openvino; its usage telemetry package stays out: rvm-node imports OpenVINO without it (the README)
OPENVINO_REQUIREMENTS = ["openvino>=2024.0"]
NUMBA_REQUIREMENTS = ["numba>=0.59", "llvmlite>=0.42"]  # --numba
PINNED_AS_HERE = ("onnxruntime", "openvino", "numba", "llvmlite")
# Where onnxruntime has wheels: the engine goes there. Intel Macs have none (onnxruntime stopped
# building them), so "This computer" there runs an rvm-node installed beside Blender.
ENGINE_PLATFORMS = ("linux-x64", "windows-x64", "macos-arm64")
# Blender's platform names, and the pip platform tags whose wheels run there.
PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_11_0_arm64", "macosx_12_0_arm64", "macosx_13_0_arm64", "macosx_14_0_arm64"],
    "macos-x64": ["macosx_10_9_x86_64", "macosx_10_15_x86_64", "macosx_11_0_x86_64", "macosx_12_0_x86_64"],
}


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


@dataclass(frozen=True)
class Engine:
    """What of the CPU engine a zip carries: none (render nodes only), onnxruntime, and on request
    OpenVINO and numba (the full-resolution stage's compiled loops)."""

    bundled: bool = True
    openvino: bool = False
    numba: bool = False

    def requirements(self) -> list[str]:
        """The engine's requirements, the engines at the versions this Python has."""
        if not self.bundled:
            return []
        extra = (
            *(OPENVINO_REQUIREMENTS if self.openvino else ()),
            *(NUMBA_REQUIREMENTS if self.numba else ()),
        )
        return [_as_here(r) for r in (*ENGINE_REQUIREMENTS, *extra)]

    def suffix(self) -> str:
        """The zip name's part for this engine."""
        if not self.bundled:
            return "-client"
        return ("-openvino" if self.openvino else "") + ("-numba" if self.numba else "")


def _as_here(requirement: str) -> str:
    """An engine at the version this Python has, where it has one, so the add-on's mattes equal those of
    the rvm-node installed beside it, bit for bit; any other requirement as it is."""
    name = _requirement_name(requirement)
    if name not in PINNED_AS_HERE:
        return requirement
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return requirement


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]


def _project(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned_like(requirements: list[str], wheels: set[Path]) -> list[str]:
    """``requirements`` pinned to the versions of ``wheels``: an abi3 wheel then serves every Python,
    rather than a newer one for a newer Python beside it (Blender would install both)."""
    versions = {_project(w.name.split("-")[0]): w.name.split("-")[1] for w in wheels}
    pinned = []
    for requirement in requirements:
        name = _project(_requirement_name(requirement))
        pinned.append(f"{name}=={versions[name]}" if name in versions else requirement)
    return pinned


def fetch_wheels(
    platforms: list[str],
    out: Path,
    engine: Engine,
    *,
    pythons: tuple[str, ...] = PYTHONS,
) -> list[Path]:
    """rvm-node's wheel from this checkout, and the client's (and engine's) dependencies for each
    platform and Python."""
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    for platform in platforms:
        requirements = CLIENT_REQUIREMENTS
        if platform in ENGINE_PLATFORMS:
            requirements = [*requirements, *engine.requirements()]
        tags = [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
        for python in pythons:
            # the versions already fetched, for every other Python and platform: one of each in the zip
            wanted = pinned_like(requirements, set(out.glob("*.whl")))
            subprocess.run(
                [
                    *pip,
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--python-version",
                    python,
                    *tags,
                    "-d",
                    str(out),
                    *wanted,
                ],
                check=True,
            )
    return sorted(out.glob("*.whl"))


def _package_files() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and "site-packages" not in p.parts
    ]


def manifest(wheels: list[Path], platforms: list[str]) -> str:
    text = (PACKAGE / "blender_manifest.toml").read_text(encoding="utf-8")
    version = project_version()
    listed = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if listed is None or listed.group(1) != version:
        raise SystemExit(f"blender_manifest.toml: version should be {version}, as in pyproject.toml")
    entries = ",\n".join(f'  "./wheels/{w.name}"' for w in wheels)
    text = text.replace(
        "wheels = []", f"wheels = [\n{entries},\n]\nplatforms = {platforms!r}".replace("'", '"')
    )
    tomllib.loads(text)  # still valid TOML
    return text


def build_zip(platforms: list[str], dist: Path, engine: Engine) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels(platforms, Path(tmp), engine)
        dist.mkdir(parents=True, exist_ok=True)
        suffix = "" if len(platforms) == len(PLATFORMS) else "-" + "-".join(platforms)
        suffix += engine.suffix()
        target = dist / f"rvm_blender-{project_version()}{suffix}.zip"
        partial = target.with_suffix(".zip.partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in _package_files():
                name = path.relative_to(PACKAGE).as_posix()
                if name == "blender_manifest.toml":
                    archive.writestr(name, manifest(wheels, platforms))
                else:
                    archive.write(path, name)
            for wheel in wheels:
                archive.write(wheel, f"wheels/{wheel.name}")
        partial.replace(target)
    return target


def build_legacy(platform: str, addons: Path, engine: Engine, *, python: str = PYTHONS[0]) -> Path:
    """``addons/rvm_blender``: the add-on with its dependencies unpacked into ``site-packages``, for one
    Blender's Python (a legacy folder has no per-interpreter choice of wheels)."""
    target = addons / "rvm_blender"
    if target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels([platform], Path(tmp), engine, pythons=(python,))
        for path in _package_files():
            destination = target / path.relative_to(PACKAGE)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target / "site-packages")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--platform",
        action="append",
        choices=sorted(PLATFORMS),
        help="bundle wheels for this platform (repeatable; default: all)",
    )
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the zip goes")
    parser.add_argument("--legacy", type=Path, default=None, help="install as a legacy add-on folder here")
    parser.add_argument(
        "--no-engine", action="store_true", help="leave out the CPU engine: render nodes only, a smaller zip"
    )
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="add OpenVINO, the faster CPU engine, where it has wheels: a larger zip",
    )
    parser.add_argument(
        "--numba",
        action="store_true",
        help="add numba, the full-resolution stage's compiled loops: faster HD and 4K mattes, a larger zip",
    )
    parser.add_argument(
        "--python", choices=PYTHONS, default=PYTHONS[0], help="--legacy: the Python of that Blender"
    )
    args = parser.parse_args(argv)
    platforms = args.platform or sorted(PLATFORMS)
    for flag in ("openvino", "numba"):
        if getattr(args, flag) and args.no_engine:
            parser.error(f"--{flag} is part of the engine: it cannot go with --no-engine")
    engine = Engine(bundled=not args.no_engine, openvino=args.openvino, numba=args.numba)
    if args.legacy is not None:
        if len(platforms) != 1:
            parser.error("--legacy: name exactly one --platform")
        print(build_legacy(platforms[0], args.legacy, engine, python=args.python))
    else:
        print(build_zip(platforms, args.dist, engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
