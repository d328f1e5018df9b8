"""The public API: exported names, the error tree, and no side effects at import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import rvm_node
from rvm_node import errors


def test_exported_names_are_pinned() -> None:
    assert sorted(rvm_node.__all__) == sorted(
        [
            "BACKENDS",
            "BackendError",
            "BackendUnavailableError",
            "JobCancelledError",
            "ExportError",
            "InvalidInputError",
            "MatteChunk",
            "MattingBackend",
            "MattingNetwork",
            "MattingSession",
            "MissingToolError",
            "NodeAuthError",
            "NodeBusyError",
            "NodeError",
            "NodeProtocolError",
            "NodeRejectedError",
            "NodeTimeoutError",
            "NodeUnavailableError",
            "NonFiniteSamplesError",
            "OpenVinoOptions",
            "OutputError",
            "OutputInUseError",
            "OrtOptions",
            "RecurrentState",
            "ResolutionChangedError",
            "RvmNodeError",
            "StateMismatchError",
            "SubmitError",
            "TorchOptions",
            "UnsupportedPrecisionError",
            "WeightsError",
            "WeightsFetchError",
            "WeightsFormatError",
            "WeightsIntegrityError",
            "WeightsNotFoundError",
            "__version__",
            "auto_downsample_ratio",
            "convert_video",
            "load_model",
            "load_network",
        ]
    )
    for name in rvm_node.__all__:
        assert hasattr(rvm_node, name)


def test_every_error_derives_from_the_root_and_is_documented() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.RvmNodeError)
        assert name in (errors.__doc__ or "")
    assert issubclass(errors.WeightsNotFoundError, FileNotFoundError)
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.BackendUnavailableError, ImportError)
    assert issubclass(errors.OutputError, OSError)


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "RVM_NODE_CACHE_DIR": str(cache), "HOME": str(tmp_path)}
    code = (
        "import rvm_node, rvm_node.cli, rvm_node.engine.loader, rvm_node.bench, rvm_node.example, "
        "rvm_node.node.server, rvm_node.client, rvm_node.farm, rvm_node.convert"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
    assert not cache.exists()
    assert list(tmp_path.iterdir()) == [] or all(p.name != ".cache" for p in tmp_path.iterdir())
