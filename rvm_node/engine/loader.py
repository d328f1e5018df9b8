"""One-line loading: ``load_model("mobilenetv3", backend=..., device=..., precision=...)``.

Weights come from, in order: the ``weights`` path a user gives (official
``.pth``, ``.onnx`` fp32/fp16 or ``.torchscript``), or the official
MobileNetV3 weights fetched by ``rvm-node weights fetch`` and imported into
PyTorch once (cached as a ``.pth``). Files whose name is in the official
registry are checked against their SHA-256 first. There is never a silent
fallback to random weights: ``random_weights=True`` must be asked for.

The official weights in fp32 on onnxruntime are the official
``rvm_mobilenetv3_fp32.onnx`` run as it is, with our refiner policy applied to
its graph: the official model exactly, no torch needed, and as fast as our
export. OpenVINO runs our export, whose graph its merged resizes need (the
official file where torch is not installed). Other precisions, other weights
files and the torch backend go through PyTorch (our export, cached by the
weights' hash); where torch is not installed (the Blender extension's bundled
engine) they say so in one line.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvm_node.engine.backend import BACKENDS, MattingBackend, fastest_parity_backend
from rvm_node.engine.weights import (
    IMPORTED_PTH_NAME,
    OFFICIAL_ONNX_MOBILENETV3,
    cache_dir,
    find_official,
    official_path,
    verify_file,
)
from rvm_node.errors import (
    BackendUnavailableError,
    InvalidInputError,
    WeightsFormatError,
    WeightsIntegrityError,
    WeightsNotFoundError,
)
from rvm_node.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from rvm_node.engine.network import MattingNetwork

__all__ = [
    "BACKENDS",
    "imported_official_weights",
    "load_model",
    "load_network",
    "read_state_dict",
    "shared_cpu_options",
    "torch_installed",
]

_PTH = (".pth", ".pt", ".ckpt")
_TORCHSCRIPT = (".torchscript", ".ts", ".jit")


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a module set to None
        return False


def _needs_torch(what: str) -> None:
    if not torch_installed():
        raise BackendUnavailableError(
            f"{what} needs torch, which is not installed here: install rvm-node with its engine "
            "(pip install rvm-node), or run the official ONNX weights on onnxruntime"
        )


def _check_known(path: Path) -> None:
    entry = find_official(path.name)
    if entry is not None and entry.sha256 is not None:
        verify_file(path, entry.sha256, entry.size)


def _variant_of(state: dict[str, torch.Tensor]) -> str:
    return "resnet50" if "backbone.conv1.weight" in state else "mobilenetv3"


def read_state_dict(path: Path, variant: str, refiner: str = "deep_guided_filter") -> dict[str, torch.Tensor]:
    """A state dict of official structure from a ``.pth``, ``.onnx`` or ``.torchscript`` file."""
    _needs_torch(f"reading weights into PyTorch ({Path(path).name})")
    import torch

    from rvm_node.engine.onnx_import import state_dict_from_onnx

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such weights file")
    _check_known(path)
    suffix = path.suffix.lower()
    try:
        if suffix in _PTH:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
            if not isinstance(state, dict):
                raise WeightsFormatError(f"{path}: expected a state dict, found {type(loaded).__name__}")
        elif suffix in _TORCHSCRIPT:
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        elif suffix == ".onnx":
            return state_dict_from_onnx(path, variant, refiner)
        else:
            raise WeightsFormatError(
                f"{path}: expected a .pth, .onnx or .torchscript file, got {suffix or 'no suffix'}"
            )
    except (WeightsFormatError, WeightsIntegrityError):
        raise
    except Exception as exc:  # torch.load raises many kinds on truncated or foreign files
        raise WeightsFormatError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def imported_official_weights() -> Path:
    """The official ONNX weights as a cached ``.pth``, imported on first use."""
    onnx_path = official_path(OFFICIAL_ONNX_MOBILENETV3)
    target = cache_dir() / IMPORTED_PTH_NAME
    if not target.is_file():
        import io

        import torch

        from rvm_node.engine.onnx_import import state_dict_from_onnx

        buffer = io.BytesIO()
        torch.save(state_dict_from_onnx(onnx_path, "mobilenetv3"), buffer)
        atomic_write_bytes(target, buffer.getvalue(), private=True)
    return target


def load_network(
    variant: str = "mobilenetv3",
    weights: str | Path | None = None,
    *,
    refiner: str = "deep_guided_filter",
    random_weights: bool = False,
) -> MattingNetwork:
    """A :class:`MattingNetwork` in eval mode with verified weights."""
    _needs_torch("the PyTorch network")
    from rvm_node.engine.network import MattingNetwork
    from rvm_node.engine.onnx_import import SEGMENTATION_KEYS

    try:
        net = MattingNetwork(variant, refiner)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    if random_weights:
        if weights is not None:
            raise InvalidInputError("weights: give a weights file or random_weights=True, not both")
        return net.eval()
    if weights is None:
        if variant != "mobilenetv3":
            raise WeightsNotFoundError(
                f"{variant}: no official weights are reachable from a package index; "
                "pass the path of the official rvm_resnet50.pth (or .onnx/.torchscript)"
            )
        weights = imported_official_weights()
    path = Path(weights)
    state = read_state_dict(path, variant, refiner)
    found = _variant_of(state)
    if found != variant:
        raise WeightsFormatError(f"{path}: expected {variant} weights, found {found} weights")
    if refiner == "fast_guided_filter":  # the fast refiner has no parameters
        state = {k: v for k, v in state.items() if not k.startswith("refiner.")}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and k not in SEGMENTATION_KEYS]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        )
        raise WeightsFormatError(f"{path}: not RVM {variant} weights ({detail})")
    net.load_state_dict(state, strict=False)
    net.has_segmentation = all(k in state for k in SEGMENTATION_KEYS)
    return net.eval()


def _exported_onnx(net: MattingNetwork, source: Path | None, precision: str) -> Path:
    """Our ONNX export of ``net``, cached by the source weights' hash."""
    from rvm_node.engine.export import DEFAULT_OPSET, export_onnx
    from rvm_node.engine.weights import sha256_file

    if source is None:
        digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in net.state_dict().values())).hexdigest()
    else:
        digest = sha256_file(source)
    from rvm_node.version import __version__

    name = (
        f"{net.variant}-{net.refiner_name}-{digest[:16]}-{precision}-opset{DEFAULT_OPSET}-v{__version__}.onnx"
    )
    target = cache_dir() / "exports" / name
    if not target.is_file():
        export_onnx(net, target, precision=precision, private=True)
    return target


def shared_cpu_options(backend: str) -> Any:
    """Backend options for a model that shares the CPU with I/O threads (converter, node).

    onnxruntime's idle workers spin by default, which starves decoding,
    encoding and gRPC threads on the same cores; this turns the spinning off.
    """
    if backend != "onnxruntime":
        return None
    from rvm_node.engine.ort_backend import OrtOptions

    return OrtOptions(spin=False)


def load_model(
    variant: str = "mobilenetv3",
    *,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    weights: str | Path | None = None,
    refiner: str = "deep_guided_filter",
    random_weights: bool = False,
    options: Any = None,
) -> MattingBackend[Any]:
    """Load RVM on a backend and device; ``.new_session()`` on the result starts a stream.

    ``backend``: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` (CPU; the
    ``openvino`` extra) or ``"auto"`` (:func:`fastest_parity_backend`). ``precision``: fp32, fp16 (cuda, mps, or
    onnxruntime), bf16 (torch or openvino on a CPU with bf16 units, or cuda).
    ``options``: a :class:`TorchOptions`, :class:`OrtOptions` or
    :class:`OpenVinoOptions`. With ``backend="onnxruntime"`` or
    ``"openvino"`` and an ``.onnx`` weights file, that file is run as it is;
    otherwise our own export of the weights is run.
    """
    if backend == "auto":
        backend = fastest_parity_backend(device)
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend: expected auto or one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        _needs_torch("the torch backend")
        from rvm_node.engine.torch_backend import TorchBackend

        net = load_network(variant, weights, refiner=refiner, random_weights=random_weights)
        return TorchBackend(net, variant=variant, device=device, precision=precision, options=options)

    if backend == "openvino":
        from rvm_node.engine.openvino_backend import OpenVinoBackend

        model = _onnx_file(variant, weights, refiner, random_weights, "fp32", as_is=True)
        return OpenVinoBackend(
            model, variant=variant, device=device, precision=precision, options=options, where=str(model)
        )

    from rvm_node.engine.ort_backend import OrtBackend

    if precision not in ("fp32", "fp16"):
        raise InvalidInputError(f"precision: onnxruntime runs fp32 or fp16, got {precision!r}")
    model = _onnx_file(variant, weights, refiner, random_weights, precision, as_is=True)
    ort_backend = OrtBackend(model, variant=variant, device=device, options=options, where=str(model))
    if ort_backend.precision != precision:
        raise InvalidInputError(
            f"precision: {model} is an {ort_backend.precision} model, but {precision} was asked for"
        )
    return ort_backend


def _onnx_file(
    variant: str,
    weights: str | Path | None,
    refiner: str,
    random_weights: bool,
    precision: str,
    *,
    as_is: bool,
) -> Path:
    """The ONNX file to run: an ``.onnx`` weights file as it is; with ``as_is``, the official weights in fp32
    as the official file itself; else our export of the weights."""
    if weights is not None and Path(weights).suffix.lower() == ".onnx":
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: no such weights file")
        _check_known(path)
        return path
    if as_is and weights is None and not random_weights and variant == "mobilenetv3" and precision == "fp32":
        return official_path(OFFICIAL_ONNX_MOBILENETV3)
    net = load_network(variant, weights, refiner=refiner, random_weights=random_weights)
    source = (
        None
        if weights is None and random_weights
        else Path(weights)
        if weights
        else imported_official_weights()
    )
    return _exported_onnx(net, source, precision)
