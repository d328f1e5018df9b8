"""The PyTorch backend: eager or TorchScript, on cpu, cuda or mps.

On a CPU, below ratio 1, the network runs at the small size only
(``MattingNetwork.coefficients``): each frame is resized down from its own
samples, and the full-resolution planes are made in one pass
(:mod:`rvm_node.engine.fullres`), as on the other backends. On a GPU the
whole network runs on the device.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rvm_node.engine import fullres
from rvm_node.engine.backend import MattingBackend, fused_refiner_choice
from rvm_node.engine.host_heap import retain_freed_memory
from rvm_node.engine.network import MattingNetwork
from rvm_node.engine.samples import OutputSpec
from rvm_node.engine.states import RecurrentState
from rvm_node.errors import BackendUnavailableError, InvalidInputError, UnsupportedPrecisionError

__all__ = ["TorchBackend", "TorchOptions", "cpu_has_bf16", "fold_batchnorm"]

TorchState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SAMPLE_TYPES = {
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "float16": torch.float16,
    "float32": torch.float32,
}
_RAW_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_samples_tensor(values: torch.Tensor, fmt: str) -> torch.Tensor:
    """:func:`rvm_node.engine.samples.to_samples` on the tensor's own device, to the bit."""
    unit = values.float()
    if fmt in ("uint8", "uint16"):
        top = 255.0 if fmt == "uint8" else 65535.0
        scaled = torch.round(unit.clamp(0.0, 1.0) * top)  # round half to even, as numpy's rint
        return scaled.to(torch.int32).to(_SAMPLE_TYPES[fmt])
    return unit.to(_SAMPLE_TYPES[fmt])


def from_samples_tensor(values: torch.Tensor, top: float) -> torch.Tensor:
    """Integer samples to float32 0..1 on the tensor's device, as the host conversion does."""
    return values.to(torch.float32) * torch.tensor(1.0 / top, dtype=torch.float32)


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@dataclass(frozen=True, kw_only=True)
class TorchOptions:
    """How the torch backend runs the network.

    ``torchscript``: None for eager, ``"script"`` or ``"freeze"`` (script, then
    ``torch.jit.freeze``). ``channels_last`` uses NHWC memory layout.
    ``fold_bn`` folds each BatchNorm into its convolution at load time.
    ``retain_heap`` (on a CPU) keeps freed memory in the process, so a
    frame's large buffers are reused by the next frame instead of being
    faulted in again (see :mod:`rvm_node.engine.host_heap`).
    ``fused_refiner``: below ratio 1 on a CPU, run the network at the small
    size only and make the full-resolution planes in one pass on the host
    (:mod:`rvm_node.engine.fullres`). None: where it can (an official
    TorchScript file has no ``coefficients`` method and runs whole); True: or
    an :class:`InvalidInputError`; False: never.
    """

    channels_last: bool = False
    torchscript: Literal["script", "freeze"] | None = None
    fold_bn: bool = True
    retain_heap: bool = True
    fused_refiner: bool | None = None


def _check_device_precision(device: torch.device, precision: str) -> None:
    if precision not in _DTYPES:
        raise InvalidInputError(f"precision: expected one of fp32, fp16, bf16, got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device cuda: this torch build or machine has no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailableError("device mps: not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise BackendUnavailableError(f"device {device}: expected cpu, cuda or mps")
    if precision == "fp16" and device.type == "cpu":
        raise UnsupportedPrecisionError(
            "precision fp16: not supported on cpu; use fp32, or bf16 on a CPU with bf16 units"
        )
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_bf16():
            raise UnsupportedPrecisionError("precision bf16: this CPU has no bf16 units (AVX512-BF16 or AMX)")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UnsupportedPrecisionError("precision bf16: this CUDA device does not support bf16")
        if device.type == "mps":
            raise UnsupportedPrecisionError("precision bf16: not supported on mps; use fp16")


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a bias-free conv into that conv.

    Works in place on ``nn.Sequential`` pairs and on ``convN``/``bnN`` pairs;
    the folded BatchNorm becomes ``nn.Identity``.
    """

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # type: ignore[operator,arg-type]
        conv.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias.detach() - bn.running_mean * scale)  # type: ignore[operator]

    for parent in list(module.modules()):
        children = list(parent.named_children())
        by_name = dict(children)
        for (_, child), (next_name, following) in itertools.pairwise(children):
            if isinstance(child, nn.Conv2d) and child.bias is None and isinstance(following, nn.BatchNorm2d):
                fold(child, following)
                setattr(parent, next_name, nn.Identity())
        for name, child in children:
            if name.startswith("conv") and isinstance(child, nn.Conv2d) and child.bias is None:
                bn = by_name.get("bn" + name[4:])
                if isinstance(bn, nn.BatchNorm2d):
                    fold(child, bn)
                    setattr(parent, "bn" + name[4:], nn.Identity())
    return module


class TorchBackend(MattingBackend[TorchState]):
    """Runs a :class:`MattingNetwork` (or an official TorchScript module) with torch."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        variant: str,
        device: str = "cpu",
        precision: str = "fp32",
        options: TorchOptions | None = None,
    ) -> None:
        self.options = options or TorchOptions()
        self.variant = variant
        torch_device = torch.device(device)
        _check_device_precision(torch_device, precision)
        self.device = str(torch_device)
        self.precision = precision
        self._device = torch_device
        self._dtype = _DTYPES[precision]
        if torch_device.type == "cpu" and self.options.retain_heap:
            retain_freed_memory()
        self._memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        model = model.eval()
        if self.options.fold_bn and isinstance(model, MattingNetwork):
            model = fold_batchnorm(model)
        model = model.to(self._device, self._dtype, memory_format=self._memory_format)  # type: ignore[call-overload]
        if self.options.torchscript is not None and not isinstance(model, torch.jit.ScriptModule):
            model = torch.jit.script(model)
            if self.options.torchscript == "freeze":
                model = torch.jit.freeze(model, preserved_attrs=["coefficients"])
        self.model = model
        why_not = None
        if torch_device.type != "cpu":
            why_not = f"it runs on a CPU, not {self.device}"
        elif not hasattr(model, "coefficients"):
            why_not = "this TorchScript module has no coefficients method (an official file?)"
        self.fused_refiner = fused_refiner_choice(self.options.fused_refiner, True, why_not, "model")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            channels_last=self.options.channels_last,
            torchscript=self.options.torchscript,
        )
        return info

    @torch.inference_mode()
    def infer_tensor(
        self, src: torch.Tensor, state: TorchState | None, downsample_ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor, TorchState]:
        """Frames ``[B, T, 3, H, W]`` already on the device; returns device tensors."""
        src = src.to(self._device, self._dtype, non_blocking=True)
        rec: list[torch.Tensor | None] = list(state) if state is not None else [None] * 4
        fgr, pha, r1, r2, r3, r4 = self.model(src, rec[0], rec[1], rec[2], rec[3], float(downsample_ratio))
        return fgr, pha, (r1, r2, r3, r4)

    def prepare(self, frames: Any) -> np.ndarray:
        """Integer frames are kept as they are: a GPU scales them on the device; on a CPU the full-resolution
        stage reads them as they are (and the whole network at ratio 1 scales them itself)."""
        array = np.asarray(frames)
        if (self._device.type != "cpu" or self.fused_refiner) and array.dtype in _RAW_SCALE:
            return array
        return super().prepare(frames)

    def infer(
        self, src: np.ndarray, state: TorchState | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, TorchState]:
        if self.fused_refiner and downsample_ratio != 1.0:
            return self._infer_fused(src, state, downsample_ratio, outputs)
        tensor = torch.from_numpy(np.ascontiguousarray(src))
        if self._device.type == "cuda":
            tensor = tensor.pin_memory()
        top = _RAW_SCALE.get(src.dtype)
        if top is not None:  # raw samples (a GPU): scale on the device
            tensor = from_samples_tensor(tensor.to(self._device, non_blocking=True), top)
        fgr, pha, new_state = self.infer_tensor(tensor, state, downsample_ratio)
        fmt = outputs.sample_format
        pha_host = to_samples_tensor(pha, fmt).cpu().numpy()
        fgr_host = to_samples_tensor(fgr, fmt).cpu().numpy() if outputs.foreground else None
        return fgr_host, pha_host, new_state

    @torch.inference_mode()
    def _infer_fused(
        self, src: np.ndarray, state: TorchState | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, TorchState]:
        """The network at the small size, and the full-resolution planes in one pass."""

        def step(small: np.ndarray, rec: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
            tensor = (
                torch.from_numpy(small)
                .to(self._device, self._dtype)
                .contiguous(memory_format=self._memory_format)
            )
            network: Any = self.model  # a MattingNetwork, or one scripted with its coefficients method
            a, b, r1, r2, r3, r4 = network.coefficients(tensor, rec[0], rec[1], rec[2], rec[3])
            return a.float().numpy(), b.float().numpy(), [r1, r2, r3, r4]

        rec: list[Any] = list(state) if state is not None else [None] * 4
        fgr, pha, rec = fullres.run_refined(src, downsample_ratio, outputs, step, rec)
        return fgr, pha, (rec[0], rec[1], rec[2], rec[3])

    def stack_states(self, states: list[TorchState]) -> TorchState:
        r1, r2, r3, r4 = (torch.cat([s[i] for s in states]) for i in range(4))
        return r1, r2, r3, r4

    def split_state(self, state: TorchState, count: int) -> list[TorchState]:
        parts = [t.split(1) for t in state]
        if any(len(p) != count for p in parts):
            raise InvalidInputError(f"state: expected a batch of {count}, got {len(parts[0])}")
        return [(parts[0][i], parts[1][i], parts[2][i], parts[3][i]) for i in range(count)]

    def zero_state_like(self, state: TorchState) -> TorchState:
        r1, r2, r3, r4 = (torch.zeros_like(t) for t in state)
        return r1, r2, r3, r4

    def state_to_host(self, state: TorchState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        r1, r2, r3, r4 = (t.float().cpu().numpy() for t in state)
        return r1, r2, r3, r4

    def state_from_host(self, state: RecurrentState) -> TorchState:
        r1, r2, r3, r4 = (
            torch.from_numpy(np.asarray(a, np.float32)).to(self._device, self._dtype) for a in state.arrays()
        )
        return r1, r2, r3, r4
