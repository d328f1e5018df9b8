"""Build hook: generate the gRPC code from protos/ before the package is built."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ("rvm_node/v1/matting.proto",)


def generate_protos(out: Path = ROOT) -> None:
    """Run grpc_tools.protoc on every proto; Python modules land under ``out``."""
    import importlib.resources

    from grpc_tools import protoc

    include = importlib.resources.files("grpc_tools") / "_proto"
    for proto in PROTOS:
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "protos" / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithProtos})
