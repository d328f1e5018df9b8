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
    └── ExportError                  exporting a model failed

Messages are one line and name the file, frame or field at fault together with
what was expected.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ExportError",
    "InvalidInputError",
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
