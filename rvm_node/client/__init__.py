"""Client side of the render node: one node, and a node as an engine backend."""

from rvm_node.client.node_client import NodeClient, NodeInfo
from rvm_node.client.remote_backend import RemoteBackend
from rvm_node.client.shots import matte_shot
from rvm_node.client.status import map_rpc_error
from rvm_node.client.stream import ChunkReply, MatteResult, MatteStream, StreamChunk

__all__ = [
    "ChunkReply",
    "MatteResult",
    "MatteStream",
    "NodeClient",
    "NodeInfo",
    "RemoteBackend",
    "StreamChunk",
    "map_rpc_error",
    "matte_shot",
]
