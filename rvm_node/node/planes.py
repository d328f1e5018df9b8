"""A stream's samples in and out of bytes: frames unpacked and checked, planes taken from a chunk's
results and packed for the wire."""

from __future__ import annotations

import numpy as np

from rvm_node.engine.chunks import MatteChunk
from rvm_node.errors import BackendError, InvalidInputError, NonFiniteSamplesError
from rvm_node.node.plan import StreamPlan
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import pack, unpack, wire_bytes

__all__ = ["check_finite", "not_finite", "pack_plane", "plane_bytes", "plane_of", "unpack_frame"]


def unpack_frame(plan: StreamPlan, number: int, data: bytes | bytearray | memoryview) -> np.ndarray:
    """Frame ``number``'s ``HxWx3`` samples from the wire, checked."""
    shape = (plan.height, plan.width, 3)
    try:
        frame = unpack(data, plan.in_transport, plan.in_dtype, shape, f"frame {number}")
    except InvalidInputError as exc:
        exc.frame = number
        raise
    check_finite(frame, number)
    return frame


def check_finite(frame: np.ndarray, number: int) -> None:
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        raise not_finite(number)


def not_finite(number: int) -> NonFiniteSamplesError:
    return NonFiniteSamplesError(
        f"frame {number}: NaN or infinite samples; float samples must be finite (display-referred 0..1)",
        frame=number,
    )


def plane_of(out: MatteChunk, t: int, plane: pb.Plane) -> np.ndarray:
    """Frame ``t``'s samples of ``plane``: ``HxW`` alpha or ``HxWx3`` foreground."""
    if plane == pb.PLANE_ALPHA:
        return out.pha[t, 0]
    if out.fgr is None:
        raise BackendError("the backend returned no foreground though the stream asked for it")
    return out.fgr[t].transpose(1, 2, 0)


def plane_bytes(out: MatteChunk, t: int, plane: pb.Plane) -> memoryview:
    """The plane's raw samples, as they go on the wire uncompressed."""
    return wire_bytes(plane_of(out, t, plane))


def pack_plane(plan: StreamPlan, out: MatteChunk, t: int, plane: pb.Plane) -> bytes:
    """The plane packed for the stream's return transport."""
    return pack(plane_of(out, t, plane), plan.out_transport)
