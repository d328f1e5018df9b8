"""Exceptions raised by rvm-node.

Every error rvm-node raises on purpose derives from :class:`RvmNodeError`.
Where a builtin exception has the same meaning, the class also derives from
it, so ``except FileNotFoundError`` keeps working for callers that expect it.

The tree::

    RvmNodeError
    ├── WeightsError                 model weights could not be used
    │   ├── WeightsNotFoundError     (+ FileNotFoundError) no such file / not fetched yet
    │   ├── WeightsIntegrityError    hash, size or content does not match what is expected
    │   ├── WeightsFormatError       a file of an unknown or unsupported kind
    │   └── WeightsFetchError        the fetch through pip failed
    ├── InvalidInputError            (+ ValueError) bad frames, shapes, dtypes or settings
    │   ├── ResolutionChangedError   a session saw a new frame size without a reset
    │   ├── NonFiniteSamplesError    float frames holding NaN or infinity
    │   └── StateMismatchError       a recurrent state that does not fit the model, size or ratio
    ├── BackendError                 a backend cannot run as asked
    │   ├── BackendUnavailableError  (+ ImportError) its package or device is missing
    │   └── UnsupportedPrecisionError the device cannot run that precision
    ├── OutputError                  (+ OSError) an output could not be written: a full disk, a
    │                                read-only folder, a quota, a folder deleted under the job
    ├── OutputInUseError             another run is writing the same output (its lock names it)
    ├── ExportError                  exporting a model failed
    ├── JobCancelledError            the user cancelled a job (complete frames stay)
    ├── MissingToolError             (+ ImportError) an optional package or tool is not installed
    ├── SubmitError                  handing a job to a farm manager failed
    └── NodeError                    talking to a render node failed
        ├── NodeUnavailableError     the node cannot be reached or is shutting down (UNAVAILABLE)
        ├── NodeBusyError            the node takes no more streams now (RESOURCE_EXHAUSTED)
        ├── NodeAuthError            missing or wrong token, TLS refused (UNAUTHENTICATED)
        ├── NodeTimeoutError         a deadline or the idle timeout passed (DEADLINE_EXCEEDED)
        ├── NodeRejectedError        the node refused the request itself (INVALID_ARGUMENT,
        │                            FAILED_PRECONDITION): another node would refuse it too
        └── NodeProtocolError        the node failed (INTERNAL) or answered out of protocol

Messages are one line and name the file, frame or field at fault together with
what was expected. :class:`InvalidInputError` may also say so in fields
(``reason``, ``field``, ``frame``), which the render node sends to its
clients as machine-readable error details, and :class:`NodeError` carries
back what the node sent (``reason``, ``metadata``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ExportError",
    "InvalidInputError",
    "JobCancelledError",
    "MissingToolError",
    "NodeAuthError",
    "NodeBusyError",
    "NodeError",
    "NodeProtocolError",
    "NodeRejectedError",
    "NodeTimeoutError",
    "NodeUnavailableError",
    "NonFiniteSamplesError",
    "OutputError",
    "OutputInUseError",
    "ResolutionChangedError",
    "RvmNodeError",
    "StateMismatchError",
    "SubmitError",
    "UnsupportedPrecisionError",
    "WeightsError",
    "WeightsFetchError",
    "WeightsFormatError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
]


class RvmNodeError(Exception):
    """Root of every error rvm-node raises on purpose."""


class WeightsError(RvmNodeError):
    """Model weights could not be found, verified or read."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file does not exist, or the official weights were never fetched."""


class WeightsIntegrityError(WeightsError):
    """A weights file's hash, size or content is not what was expected."""


class WeightsFormatError(WeightsError):
    """A weights file is of an unknown or unsupported kind."""


class WeightsFetchError(WeightsError):
    """Fetching the official weights through pip failed."""


class InvalidInputError(RvmNodeError, ValueError):
    """Frames, shapes, dtypes or settings that the engine cannot accept.

    ``reason`` is a stable name for the fault (see the node protocol's
    ``ErrorReason``), ``field`` the setting and ``frame`` the frame number at
    fault, where known.
    """

    default_reason = "INPUT_INVALID"

    def __init__(
        self, message: str, *, reason: str | None = None, field: str | None = None, frame: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.field = field
        self.frame = frame


class ResolutionChangedError(InvalidInputError):
    """A session received frames of a new size while holding state for another."""

    default_reason = "FRAME_SIZE_MISMATCH"


class NonFiniteSamplesError(InvalidInputError):
    """Float frames hold NaN or infinity, which would poison the recurrent state.

    ``index``: the position of the first such frame in its chunk, where the
    frame's number is not known (the engine's own check).
    """

    default_reason = "SAMPLES_NOT_FINITE"

    def __init__(
        self, message: str, *, index: int | None = None, field: str | None = None, frame: int | None = None
    ) -> None:
        super().__init__(message, field=field, frame=frame)
        self.index = index


class StateMismatchError(InvalidInputError):
    """A recurrent state that does not fit the model variant, frame size or ratio it is used with."""

    default_reason = "RESTORE_STATE_INVALID"


class BackendError(RvmNodeError):
    """A backend cannot run as asked."""


class BackendUnavailableError(BackendError, ImportError):
    """A backend's package, provider or device is not available here."""


class UnsupportedPrecisionError(BackendError):
    """The chosen device cannot run the chosen precision."""


class OutputError(RvmNodeError, OSError):
    """An output file could not be written; the message names the file and the frame.

    The frames written before it stay valid, and ``--resume`` continues once
    the cause is mended.
    """

    @classmethod
    def of(cls, path: Path | str, error: BaseException, what: str) -> OutputError:
        """``path: reason (what)`` from the OSError (or codec error) that stopped the write."""
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return cls(f"{path}: {reason[:1].lower()}{reason[1:]} ({what})")


class OutputInUseError(RvmNodeError):
    """Another run holds the lock beside an output; the message names the output and the holder."""


class ExportError(RvmNodeError):
    """Exporting a model to ONNX or TorchScript failed."""


class NodeError(RvmNodeError):
    """Talking to a render node failed.

    ``reason`` and ``metadata`` are the node's error details (empty when it
    sent none, or the fault is on this side).
    """

    def __init__(self, message: str, *, reason: str = "", metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class NodeUnavailableError(NodeError):
    """The node cannot be reached, or is shutting down."""


class NodeBusyError(NodeError):
    """The node takes no more streams now (all --max-streams are open)."""


class NodeAuthError(NodeError):
    """The node refused the credentials (token or TLS)."""


class NodeTimeoutError(NodeError):
    """A deadline or the node's idle timeout passed."""


class NodeRejectedError(NodeError):
    """The node refused the request itself (settings, frames, restore state, order of messages).

    Retrying it, here or on another node, gives the same answer.
    """


class NodeProtocolError(NodeError):
    """The node failed while serving the stream, or answered out of protocol."""


class JobCancelledError(RvmNodeError):
    """The user cancelled a job; the frames written so far are complete and a resume finishes it."""


class MissingToolError(RvmNodeError, ImportError):
    """An optional package or tool is not installed; the message says what to install."""


class SubmitError(RvmNodeError):
    """Handing a job to a farm manager failed (its submit command, or its server)."""
