"""Client side of the render node: one node, and a node as an engine backend."""

from rvm_node.client.node_client import MatteResult, MatteStream, NodeClient, NodeInfo, map_rpc_error
from rvm_node.client.remote_backend import RemoteBackend
from rvm_node.client.shots import matte_shot

__all__ = [
    "MatteResult",
    "MatteStream",
    "NodeClient",
    "NodeInfo",
    "RemoteBackend",
    "map_rpc_error",
    "matte_shot",
]
