"""rvm-node: Robust Video Matting for VFX pipelines.

>>> import rvm_node
>>> model = rvm_node.load_model("mobilenetv3", backend="torch", device="cpu")
>>> session = model.new_session(downsample_ratio=None)  # None: auto
>>> chunk = session.process(frames)                      # [T, 3, H, W] RGB
>>> chunk.pha, chunk.fgr
>>> rvm_node.convert_video(model, "plate.####.exr", output_alpha="matte.####.exr")
"""

from rvm_node.convert import convert_video
from rvm_node.engine import (
    BACKENDS,
    MatteChunk,
    MattingBackend,
    MattingNetwork,
    MattingSession,
    OrtOptions,
    RecurrentState,
    TorchOptions,
    auto_downsample_ratio,
    load_model,
    load_network,
)
from rvm_node.errors import (
    BackendError,
    BackendUnavailableError,
    ExportError,
    InvalidInputError,
    JobCancelledError,
    ResolutionChangedError,
    RvmNodeError,
    UnsupportedPrecisionError,
    WeightsError,
    WeightsFetchError,
    WeightsFormatError,
    WeightsIntegrityError,
    WeightsNotFoundError,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendError",
    "BackendUnavailableError",
    "ExportError",
    "InvalidInputError",
    "JobCancelledError",
    "MatteChunk",
    "MattingBackend",
    "MattingNetwork",
    "MattingSession",
    "OrtOptions",
    "RecurrentState",
    "ResolutionChangedError",
    "RvmNodeError",
    "TorchOptions",
    "UnsupportedPrecisionError",
    "WeightsError",
    "WeightsFetchError",
    "WeightsFormatError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "__version__",
    "auto_downsample_ratio",
    "convert_video",
    "load_model",
    "load_network",
]
