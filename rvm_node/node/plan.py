"""A stream's settings, checked against the node and resolved: :class:`StreamPlan` and :func:`plan_stream`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvm_node.engine.ratio import check_downsample_ratio
from rvm_node.engine.samples import OutputSpec
from rvm_node.errors import InvalidInputError
from rvm_node.node.limits import Limits
from rvm_node.node.status import printable
from rvm_node.v1 import matting_pb2 as pb
from rvm_node.v1.protocol import DTYPES, PLANE_CHANNELS, SAMPLE_NAMES, SlotLayout, check_transport

__all__ = ["NodeTerms", "StreamPlan", "plan_stream"]


@dataclass(frozen=True)
class NodeTerms:
    """What a stream is planned against: the node's limits, its model's variant, whether it takes shared
    memory."""

    limits: Limits
    variant: str
    shm: bool


@dataclass(frozen=True)
class StreamPlan:
    """A stream's settings, checked and resolved."""

    width: int
    height: int
    planes: tuple[pb.Plane, ...]
    in_dtype: np.dtype
    in_transport: pb.Transport
    out_transport: pb.Transport
    outputs: OutputSpec
    ratio: float | None
    variant: str
    label: str  # printable, bounded: safe for logs
    layout: SlotLayout  # where a frame and its planes lie in a ring slot
    ring: pb.SharedMemoryRing | None = None  # the client's ring, with TRANSPORT_SHM

    @property
    def frame_bytes(self) -> int:
        """The raw size of one frame sent."""
        return self.layout.frame_bytes


def plan_stream(settings: pb.StreamSettings, peer: str, node: NodeTerms) -> StreamPlan:
    """The plan of a stream with ``settings`` from ``peer`` (gRPC's name of the client, which decides whether
    shared memory is allowed), on a node of ``node``'s terms; InvalidInputError names the field at fault."""
    limits = node.limits
    width, height = settings.width, settings.height
    if width < 1 or height < 1:
        raise InvalidInputError(
            f"settings: width and height must be positive, got {width}x{height}",
            reason="SETTINGS_INVALID",
            field="open.settings.width" if width < 1 else "open.settings.height",
        )
    if width > limits.max_width or height > limits.max_height or width * height > limits.max_frame_pixels:
        raise InvalidInputError(
            f"settings: {width}x{height} exceeds this node's limits ({limits.max_width}x{limits.max_height}, "
            f"{limits.max_frame_pixels} pixels)",
            reason="FRAME_TOO_LARGE",
            field="open.settings.width",
        )
    for name in ("input_format", "output_format"):
        if getattr(settings, name) not in DTYPES:
            raise InvalidInputError(
                f"settings.{name}: expected uint8, uint16, float16 or float32, got {getattr(settings, name)}",
                reason="SETTINGS_INVALID",
                field=f"open.settings.{name}",
            )
    unknown = [plane for plane in settings.planes if plane not in PLANE_CHANNELS]
    if unknown:
        raise InvalidInputError(
            f"settings.planes: unknown plane {unknown[0]}; expected alpha (1) or foreground (2)",
            reason="SETTINGS_INVALID",
            field="open.settings.planes",
        )
    variant = node.variant
    if settings.variant and settings.variant != variant:
        raise InvalidInputError(
            f"settings.variant: this node runs {variant}, not {printable(settings.variant, 64)}",
            reason="VARIANT_UNAVAILABLE",
            field="open.settings.variant",
        )
    in_transport = check_transport(settings.transport, settings.input_format, "open.settings.transport")
    out_transport = check_transport(  # unspecified: the same as the frames sent
        settings.return_transport or in_transport,
        settings.output_format,
        "open.settings.return_transport",
    )
    if pb.TRANSPORT_SHM in (in_transport, out_transport):
        _check_shm(settings, in_transport, out_transport, peer, node.shm)
    ratio = None if settings.downsample_ratio == 0 else float(settings.downsample_ratio)
    try:
        ratio = check_downsample_ratio(ratio, "settings.downsample_ratio")
    except InvalidInputError as exc:
        raise InvalidInputError(
            str(exc), reason="SETTINGS_INVALID", field="open.settings.downsample_ratio"
        ) from None
    planes = tuple(dict.fromkeys(settings.planes)) or (pb.PLANE_ALPHA,)
    return StreamPlan(
        width=width,
        height=height,
        planes=planes,
        in_dtype=DTYPES[settings.input_format],
        in_transport=in_transport,
        out_transport=out_transport,
        outputs=OutputSpec(
            foreground=pb.PLANE_FOREGROUND in planes, sample_format=SAMPLE_NAMES[settings.output_format]
        ),
        ratio=ratio,
        variant=variant,
        label=printable(settings.label),
        ring=settings.ring if in_transport == pb.TRANSPORT_SHM else None,
        layout=SlotLayout.of(
            width, height, DTYPES[settings.input_format], DTYPES[settings.output_format], planes
        ),
    )


def _check_shm(settings: pb.StreamSettings, sent: int, returned: int, peer: str, shm: bool) -> None:
    """Shared memory both ways, on a node that takes it, from a client on its host, with a ring."""
    field = "open.settings.transport"
    problem = None
    if sent != returned:
        problem = "a shared-memory stream uses shm for the frames sent and the planes returned"
        field = "open.settings.return_transport"
    elif not shm:
        problem = "this node does not take shared memory (serve --shm off); send raw frames"
    elif not peer.startswith("unix:"):
        problem = (
            "shared memory is taken only on the node's Unix sockets (GetNodeInfo's local_endpoints), "
            f"where the peer is on the node's host; this one is {printable(peer, 80)}"
        )
    if problem is not None:
        raise InvalidInputError(f"{field}: {problem}", reason="TRANSPORT_UNSUPPORTED", field=field)
    if not settings.HasField("ring"):
        raise InvalidInputError(
            "open.settings.ring: required with the shm transport",
            reason="RING_INVALID",
            field="open.settings.ring",
        )
