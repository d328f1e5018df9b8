"""The protocol as an API: a Node.js client built from the .proto alone, buf lint and breaking checks,
and the error reasons the proto lists equal to the ones the node sends."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rvm_node.client import NodeClient
from rvm_node.node.status import REASON_CODES
from rvm_node.v1 import matting_pb2 as pb
from tests.node_support import NodeThread, frames_of
from tests.standin import StandInBackend


@pytest.fixture(scope="module")
def node(standin: StandInBackend) -> Iterator[NodeThread]:
    """A node on the stand-in model: the contract is under test, not the mattes."""
    server = NodeThread(standin)
    yield server
    server.stop()


ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tests" / "node_client"
BUF = TOOLS / "node_modules" / ".bin" / "buf"


def _tools() -> None:
    if shutil.which("node") is None:  # the protocol's tools are part of the test run, not optional
        pytest.fail("Node.js (node) is not on PATH: install Node.js 18+, then run scripts/setup-node-tools")
    if not (TOOLS / "node_modules" / "@grpc" / "grpc-js").is_dir() or not BUF.exists():
        pytest.fail("the Node.js tools are not installed: run scripts/setup-node-tools")


def test_a_nodejs_client_from_the_proto_alone_gets_the_python_clients_mattes(
    node: NodeThread, clip_frames: np.ndarray, tmp_path: Path
) -> None:
    _tools()
    frames = frames_of(clip_frames, 6)
    (tmp_path / "frames.rgb").write_bytes(b"".join(f.tobytes() for _, f in frames))
    result = subprocess.run(
        [
            "node",
            str(TOOLS / "client.js"),
            node.address,
            "176",
            "144",
            str(tmp_path / "frames.rgb"),
            str(tmp_path / "out"),
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 6
    assert summary["accepted"]["settings"]["variant"] == "mobilenetv3"
    theirs = np.frombuffer((tmp_path / "out").read_bytes(), "<u2").reshape(6, 144, 176)
    with (
        NodeClient(node.address) as client,
        client.open_stream(width=176, height=144, output_format="uint16", downsample_ratio=0.5) as stream,
    ):
        ours = np.stack([r.alpha for r in stream.process(frames)])
    assert np.array_equal(theirs, ours)


def test_a_nodejs_client_sees_the_error_details(node: NodeThread, tmp_path: Path) -> None:
    _tools()
    (tmp_path / "frames.rgb").write_bytes(b"\0" * 10)  # not a whole frame of 64x48: the node refuses it
    result = subprocess.run(
        [
            "node",
            str(TOOLS / "client.js"),
            node.address,
            "0",
            "48",
            str(tmp_path / "frames.rgb"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1
    assert report["error"] == 3 and report["has_status_details"]  # INVALID_ARGUMENT, with google.rpc.Status
    assert "width and height must be positive" in report["details"]


def test_buf_lint_passes() -> None:
    _tools()
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _buf_breaking(module_root: Path) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of the protos under ``module_root`` against the committed v1 baseline."""
    baseline = ROOT / "protos" / "baseline" / "rvm_node.v1.binpb"
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(baseline)],
        cwd=module_root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_buf_finds_no_breaking_change_against_the_v1_baseline() -> None:
    _tools()
    result = _buf_breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_would_catch_a_wire_change(tmp_path: Path) -> None:
    _tools()
    changed = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", changed, ignore=shutil.ignore_patterns("baseline"))
    proto = changed / "rvm_node" / "v1" / "matting.proto"
    proto.write_text(proto.read_text().replace("uint32 width = 6;", "uint64 width = 6;"))
    (tmp_path / "buf.yaml").write_text((ROOT / "buf.yaml").read_text())
    result = _buf_breaking(tmp_path)
    assert result.returncode != 0 and "width" in result.stdout


def test_the_proto_lists_exactly_the_reasons_the_node_sends() -> None:
    listed = {
        name.removeprefix("ERROR_REASON_")
        for name in pb.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert listed == set(REASON_CODES)
