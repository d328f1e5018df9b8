"""Build plugins/nuke/site-packages: the client's wheels for one Nuke Python and platform.

    python plugins/nuke/build_site_packages.py --python 3.10 --platform linux
    python plugins/nuke/build_site_packages.py --python 3.11 --platform windows --out D:/nuke/rvm/site-packages

Nuke 15 runs Python 3.10, Nuke 16 Python 3.11. The wheels are downloaded with
pip (binary only, for that interpreter and platform) and unpacked; rvm-node
itself is built from this checkout. torch and onnxruntime are not needed:
the plugin talks to render nodes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT_REQUIREMENTS = [
    "grpcio>=1.60",
    "protobuf>=4.25",
    "numpy>=1.24",
    "av>=12",
    "OpenEXR>=3.3",
    "opencolorio>=2.2",
    "platformdirs>=3",
    "tomli>=2",
    "pyyaml>=6",  # farm job bundles (Open Job Description templates)
]
PLATFORMS = {
    "linux": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "windows": ["win_amd64"],
    "macos": ["macosx_11_0_arm64", "macosx_12_0_arm64", "macosx_10_9_x86_64", "macosx_11_0_x86_64"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", choices=["3.10", "3.11"], default="3.11")
    parser.add_argument("--platform", choices=sorted(PLATFORMS), default="linux")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "site-packages")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True
        )
        platform_args = [arg for tag in PLATFORMS[args.platform] for arg in ("--platform", tag)]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--only-binary=:all:",
                "--python-version",
                args.python,
                *platform_args,
                "-d",
                str(wheels),
                *CLIENT_REQUIREMENTS,
            ],
            check=True,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(args.out)
            print(f"unpacked {wheel.name}")
    print(f"site-packages for Nuke (Python {args.python}, {args.platform}): {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
