"""Build the Blender add-on: an extension zip with bundled wheels, or a legacy add-on folder.

    python plugins/blender/build.py                       # dist/rvm_blender-<version>.zip, every platform
    python plugins/blender/build.py --platform linux-x64  # one platform: a smaller zip
    python plugins/blender/build.py --legacy ~/blender/scripts/addons --platform linux-x64

Blender 4.2+ runs Python 3.11. The wheels are downloaded with pip (binary
only, for that interpreter and each platform) at build time; rvm-node's own
wheel is built from this checkout. numpy is not bundled: Blender ships it.
torch and onnxruntime are not needed: the add-on talks to render nodes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGE = HERE / "rvm_blender"
PYTHON = "3.11"
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


def fetch_wheels(platforms: list[str], out: Path) -> list[Path]:
    """rvm-node's wheel from this checkout, and the client's dependencies for each platform."""
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    for platform in platforms:
        tags = [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
        subprocess.run(
            [
                *pip,
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                PYTHON,
                *tags,
                "-d",
                str(out),
                *CLIENT_REQUIREMENTS,
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


def build_zip(platforms: list[str], dist: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels(platforms, Path(tmp))
        dist.mkdir(parents=True, exist_ok=True)
        suffix = "" if len(platforms) == len(PLATFORMS) else "-" + "-".join(platforms)
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


def build_legacy(platform: str, addons: Path) -> Path:
    """``addons/rvm_blender``: the add-on with its dependencies unpacked into ``site-packages``."""
    target = addons / "rvm_blender"
    if target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = fetch_wheels([platform], Path(tmp))
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
    args = parser.parse_args(argv)
    platforms = args.platform or sorted(PLATFORMS)
    if args.legacy is not None:
        if len(platforms) != 1:
            parser.error("--legacy: name exactly one --platform")
        print(build_legacy(platforms[0], args.legacy))
    else:
        print(build_zip(platforms, args.dist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
