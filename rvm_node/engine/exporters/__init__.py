"""The converters behind :func:`rvm_node.engine.static_export.export_static`.

``tensorflow`` (TensorFlow SavedModel, TFLite, TF.js) and ``coreml`` run in
this process and prepare what their toolchain converts; the ``*_worker.py``
scripts beside them run inside the toolchain environments
(:mod:`rvm_node.engine.toolchains`) and import nothing from rvm-node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build"]


def build(format: str, net: Any, spec: Any, info: dict[str, Any], work: Path) -> Path:
    """Convert ``net`` for ``spec`` into the folder ``work``; the export's path inside it."""
    if format == "coreml":
        from rvm_node.engine.exporters.coreml import build_coreml

        return build_coreml(net, spec, info, work)
    from rvm_node.engine.exporters.tensorflow import build_tensorflow

    return build_tensorflow(format, net, spec, info, work)
