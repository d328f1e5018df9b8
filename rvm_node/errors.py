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
    │   └── ResolutionChangedError   a session saw a new frame size without a reset
    ├── BackendError                 a backend cannot run as asked
    │   ├── BackendUnavailableError  (+ ImportError) its package or device is missing
    │   └── UnsupportedPrecisionError the device cannot run that precision
    ├── ExportError                  exporting a model failed
    ├── JobCancelledError            the user cancelled a job (complete frames stay)
    └── NodeError                    talking to a render node failed
        ├── NodeUnavailableError     the node cannot be reached or is shutting down (UNAVAILABLE)
        ├── NodeBusyError            the node has no free stream slot (RESOURCE_EXHAUSTED)
        ├── NodeAuthError            missing or wrong token, TLS refused (UNAUTHENTICATED)
        ├── NodeTimeoutError         a deadline or the idle timeout passed (DEADLINE_EXCEEDED)
        └── NodeProtocolError        the node rejected the stream or answered out of protocol

Messages are one line and name the file, frame or field at fault together with
what was expected.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ExportError",
    "InvalidInputError",
    "JobCancelledError",
    "NodeAuthError",
    "NodeBusyError",
    "NodeError",
    "NodeProtocolError",
    "NodeTimeoutError",
    "NodeUnavailableError",
    "ResolutionChangedError",
    "RvmNodeError",
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
    """Frames, shapes, dtypes or settings that the engine cannot accept."""


class ResolutionChangedError(InvalidInputError):
    """A session received frames of a new size while holding state for another."""


class BackendError(RvmNodeError):
    """A backend cannot run as asked."""


class BackendUnavailableError(BackendError, ImportError):
    """A backend's package, provider or device is not available here."""


class UnsupportedPrecisionError(BackendError):
    """The chosen device cannot run the chosen precision."""


class ExportError(RvmNodeError):
    """Exporting a model to ONNX or TorchScript failed."""


class NodeError(RvmNodeError):
    """Talking to a render node failed."""


class NodeUnavailableError(NodeError):
    """The node cannot be reached, or is shutting down."""


class NodeBusyError(NodeError):
    """The node has no free stream slot."""


class NodeAuthError(NodeError):
    """The node refused the credentials (token or TLS)."""


class NodeTimeoutError(NodeError):
    """A deadline or the node's idle timeout passed."""


class NodeProtocolError(NodeError):
    """The node rejected the stream's settings or frames, or answered out of protocol."""


class JobCancelledError(RvmNodeError):
    """The user cancelled a job; the frames written so far are complete and a resume finishes it."""
