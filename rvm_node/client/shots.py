"""``matte_shot``: stream a video or image sequence to a node and write the mattes locally."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvm_node.client.node_client import NodeClient
from rvm_node.client.remote_backend import RemoteBackend
from rvm_node.convert.api import convert_video
from rvm_node.convert.pipeline import ConvertReport, encoder_threads

__all__ = ["NODE_SEQ_CHUNK", "NodeJobCut", "matte_shot", "node_job_cut"]

NODE_SEQ_CHUNK = 8  # frames per forward pass on a node: a round trip carries a chunk


@dataclass(frozen=True)
class NodeJobCut:
    """How a shot on a node is cut, wherever one is made (matte, the farm, the example, the benches)."""

    seq_chunk: int  # frames a round trip
    num_workers: int  # threads encoding image sequences


def node_job_cut() -> NodeJobCut:
    return NodeJobCut(NODE_SEQ_CHUNK, encoder_threads())


def matte_shot(
    node: NodeClient | str, input_source: str | Path, *, transport: str = "auto", **options: Any
) -> ConvertReport:
    """Matte one shot on a node, with the converter's readers and writers.

    ``options`` are those of :func:`rvm_node.convert_video` (outputs, frame
    range, formats, resume, ...): frame numbers are preserved, frames are
    written atomically, and ``resume=True`` continues a killed run.
    ``transport``: how frames and mattes travel (``auto``: shared memory to a
    node on this host, else raw; see :meth:`NodeClient.open_stream`).
    """
    client = NodeClient(node) if isinstance(node, str) else node
    cut = node_job_cut()
    options.setdefault("seq_chunk", cut.seq_chunk)
    options.setdefault("num_workers", cut.num_workers)
    backend = RemoteBackend(client, label=Path(str(input_source)).name, transport=transport)
    try:
        return convert_video(backend, input_source, **options)
    finally:
        if isinstance(node, str):
            client.close()
