"""The layers import one way: the protocol under both the node and its clients, the engine under both,
and no module side effects on import."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m for m in sys.modules if m.startswith('rvm_node'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    ("statement", "never"),
    [
        ("import rvm_node.client, rvm_node.client.private_node", "rvm_node.node"),  # clients: not the node
        ("import rvm_node.v1.protocol, rvm_node.v1.codec", "rvm_node.node"),  # the protocol: neither side
        ("import rvm_node.v1.protocol, rvm_node.v1.codec", "rvm_node.client"),
        ("import rvm_node.engine.states", "rvm_node.engine.session"),  # no session <-> states circle
        ("import rvm_node.engine.static_spec", "rvm_node.engine.exporters"),  # the spec: no exporters
    ],
)
def test_imports_flow_one_way(statement: str, never: str) -> None:
    loaded = _loaded_after(statement)
    assert not [m for m in loaded if m == never or m.startswith(never + ".")]


def test_the_onnxruntime_engine_and_the_node_do_not_import_torch() -> None:
    """What the Blender extension bundles (onnxruntime, no torch) must load without it."""
    code = (
        "import sys\n"
        "import rvm_node.engine.loader, rvm_node.engine.ort_backend, rvm_node.node.server, rvm_node.cli\n"
        "import rvm_node.client.private_node\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
