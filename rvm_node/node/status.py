"""Errors as gRPC statuses with ``google.rpc`` details: the node's one mapping from exceptions to codes.

Every failure a node sends has a stable reason (the proto's ``ErrorReason``
without its prefix). :data:`REASON_CODES` gives each reason its status code;
:func:`failure_of` turns any exception into a :class:`Failure`, and
:func:`abort` sends it with an ``ErrorInfo`` (reason, domain, metadata), a
``BadRequest`` for settings, and a ``RetryInfo`` where retrying helps.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import grpc

from rvm_node.errors import BackendError, InvalidInputError, RvmNodeError

__all__ = [
    "DOMAIN",
    "REASON_CODES",
    "Failure",
    "StreamRefused",
    "abort",
    "failure",
    "failure_of",
    "printable",
    "to_status",
]

DOMAIN = "rvm-node.v1"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_ORDER = grpc.StatusCode.FAILED_PRECONDITION
REASON_CODES: dict[str, grpc.StatusCode] = {
    "SETTINGS_INVALID": _INVALID,
    "FRAME_TOO_LARGE": _INVALID,
    "TRANSPORT_UNSUPPORTED": _INVALID,
    "VARIANT_UNAVAILABLE": _INVALID,
    "RESTORE_STATE_INVALID": _INVALID,
    "FRAME_SIZE_MISMATCH": _INVALID,
    "FRAME_PARTS_INVALID": _INVALID,
    "FRAME_UNDECODABLE": _INVALID,
    "SAMPLES_NOT_FINITE": _INVALID,
    "FRAME_NUMBER_OUT_OF_ORDER": _INVALID,
    "MESSAGE_INVALID": _INVALID,
    "INPUT_INVALID": _INVALID,
    "RING_INVALID": _INVALID,
    "OPEN_REQUIRED": _ORDER,
    "OPEN_REPEATED": _ORDER,
    "NOTHING_TO_SNAPSHOT": _ORDER,
    "STREAM_SLOTS_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "SHM_BUDGET_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NODE_DRAINING": grpc.StatusCode.UNAVAILABLE,
    "STREAM_IDLE": grpc.StatusCode.DEADLINE_EXCEEDED,
    "CLIENT_NOT_READING": grpc.StatusCode.DEADLINE_EXCEEDED,
    "TOKEN_INVALID": grpc.StatusCode.UNAUTHENTICATED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}
_RETRY_AFTER = {"STREAM_SLOTS_FULL": 5.0, "NODE_DRAINING": 1.0}
_LABEL_CHARS = 256


class StreamRefused(RvmNodeError):
    """The node ends a stream for a protocol reason (out-of-order messages, idleness, capacity).

    Raised inside the node only; the service edge turns it into its status.
    """

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata


@dataclass(frozen=True)
class Failure:
    """One status to send: code, one-line message, reason, metadata and bad-request fields."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str], ...] = ()

    @property
    def expected(self) -> bool:
        """False for the node's own failures (logged with their traceback)."""
        return self.code != grpc.StatusCode.INTERNAL


def failure(reason: str, message: str, **metadata: str) -> Failure:
    return Failure(REASON_CODES[reason], message, reason, dict(metadata))


def failure_of(exc: BaseException, stream_id: str = "") -> Failure:
    """The status for ``exc``; anything not raised on purpose is INTERNAL, naming the stream."""
    where = {"stream": stream_id} if stream_id else {}
    if isinstance(exc, StreamRefused):
        return failure(exc.reason, str(exc), **where, **exc.metadata)
    if isinstance(exc, InvalidInputError):
        metadata = dict(where)
        if exc.field:
            metadata["field"] = exc.field
        if exc.frame is not None:
            metadata["frame"] = str(exc.frame)
        reason = exc.reason if exc.reason in REASON_CODES else "INPUT_INVALID"
        violations = ((exc.field, str(exc)),) if exc.field else ()
        return Failure(REASON_CODES[reason], str(exc), reason, metadata, violations)
    if isinstance(exc, BackendError):
        return failure("INTERNAL", f"stream {stream_id}: the model failed: {exc}", **where)
    return failure(
        "INTERNAL", f"stream {stream_id}: internal error ({type(exc).__name__}); please report it", **where
    )


def to_status(failed: Failure) -> Any:
    """A ``grpc.Status`` carrying ``google.rpc.Status`` details."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=failed.reason, domain=DOMAIN, metadata=failed.metadata))
    details.append(info)
    if failed.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=name, description=text)
                    for name, text in failed.violations
                ]
            )
        )
        details.append(bad)
    retry = _RETRY_AFTER.get(failed.reason)
    if retry is not None:
        delay = any_pb2.Any()
        delay.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(retry))))
        details.append(delay)
    code = getattr(code_pb2, failed.code.name)
    return rpc_status.to_status(status_pb2.Status(code=code, message=failed.message, details=details))


async def abort(context: Any, failed: Failure) -> None:
    """End the call with ``failed`` (raises, as ``context.abort`` does)."""
    status = to_status(failed)
    await context.abort(status.code, status.details, status.trailing_metadata)


def printable(text: str, limit: int = _LABEL_CHARS) -> str:
    """A client-supplied string made safe for one log line: bounded, control characters escaped."""
    cut = text[:limit]
    safe = "".join(
        c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii") for c in cut
    )
    return safe + ("…" if len(text) > limit else "")
