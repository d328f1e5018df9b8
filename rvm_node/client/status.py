"""gRPC statuses from a node as exceptions of the rvm-node tree, with the node's reason and metadata."""

from __future__ import annotations

import grpc

from rvm_node.errors import (
    NodeAuthError,
    NodeBusyError,
    NodeError,
    NodeProtocolError,
    NodeRejectedError,
    NodeTimeoutError,
    NodeUnavailableError,
)

__all__ = ["map_rpc_error"]

_KINDS: dict[grpc.StatusCode, type[NodeError]] = {
    grpc.StatusCode.UNAVAILABLE: NodeUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: NodeBusyError,
    grpc.StatusCode.UNAUTHENTICATED: NodeAuthError,
    grpc.StatusCode.DEADLINE_EXCEEDED: NodeTimeoutError,
    grpc.StatusCode.INVALID_ARGUMENT: NodeRejectedError,
    grpc.StatusCode.FAILED_PRECONDITION: NodeRejectedError,
}


def _details(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata a node sent with a status (empty when none)."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ImportError, ValueError, AttributeError):
        return "", {}
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


def map_rpc_error(error: grpc.RpcError, address: str) -> NodeError:
    """The rvm-node exception for a gRPC status, with the node's reason and metadata."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    reason, metadata = _details(error)
    kind = _KINDS.get(code, NodeProtocolError) if isinstance(code, grpc.StatusCode) else NodeProtocolError
    return kind(f"node {address}: {details}", reason=reason, metadata=metadata)
