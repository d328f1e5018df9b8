"""The onnxruntime backend, with I/O binding.

The recurrent state stays on the device between calls (as ``OrtValue``s
bound as inputs); only fgr and pha cross to the host. The model's ``src`` and
state type follows the model (fp32 or fp16); ``downsample_ratio`` is always
fp32. Every graph is run with our refiner policy (see ``onnx_graph``): the
backend holds one session that always refines and, from the first call at
ratio 1, one without the refiner.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rvm_node.engine.onnx_graph import policy_graphs
from rvm_node.engine.samples import OutputSpec, convert_outputs
from rvm_node.engine.session import MattingBackend, RecurrentState
from rvm_node.errors import BackendUnavailableError, InvalidInputError, WeightsFormatError

__all__ = ["OrtBackend", "OrtOptions", "choose_providers"]

OrtState = tuple[Any, Any, Any, Any]
_INPUTS = ("src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio")
_OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")
_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True, kw_only=True)
class OrtOptions:
    """onnxruntime session settings.

    ``intra_op_threads``/``inter_op_threads``: 0 lets onnxruntime choose.
    ``graph_optimization``: one of disable, basic, extended, all.
    ``tensorrt``: put TensorRT ahead of CUDA where it is available.
    ``spin``: let idle worker threads spin; faster alone, but it takes CPU from
    decoding and encoding threads running beside the model.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    tensorrt: bool = False
    spin: bool = True


def choose_providers(device: str, tensorrt: bool = False) -> list[str]:
    """Execution providers in preference order: CUDA, then TensorRT (opt-in), then CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                "device cuda: onnxruntime has no CUDAExecutionProvider here "
                "(install rvm-node[gpu], which brings onnxruntime-gpu instead of onnxruntime)"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if tensorrt:
            if "TensorrtExecutionProvider" not in available:
                raise BackendUnavailableError("tensorrt: onnxruntime has no TensorrtExecutionProvider here")
            providers.insert(0, "TensorrtExecutionProvider")
        return providers
    raise BackendUnavailableError(f"device {device}: the onnxruntime backend runs on cpu or cuda")


class OrtBackend(MattingBackend[OrtState]):
    name = "onnxruntime"

    def __init__(
        self,
        model: Path | bytes | Any,
        *,
        variant: str,
        device: str = "cpu",
        options: OrtOptions | None = None,
        where: str = "model",
    ) -> None:
        import onnx
        import onnxruntime as ort

        self.options = options or OrtOptions()
        if self.options.graph_optimization not in _LEVELS:
            raise InvalidInputError(
                f"graph_optimization: expected one of {', '.join(_LEVELS)}, got {self.options.graph_optimization!r}"
            )
        self.variant = variant
        self.device = device
        proto = model if isinstance(model, onnx.ModelProto) else _load_proto(model, where)
        names_in = [i.name for i in proto.graph.input]
        names_out = [o.name for o in proto.graph.output]
        if names_in != list(_INPUTS) or names_out != list(_OUTPUTS):
            raise WeightsFormatError(
                f"{where}: expected inputs {list(_INPUTS)} and outputs {list(_OUTPUTS)}, "
                f"got {names_in} and {names_out}"
            )
        self._graphs = policy_graphs(proto, where)
        self._sessions: dict[bool, Any] = {}
        self._lock = threading.Lock()
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = self.options.intra_op_threads
        settings.inter_op_num_threads = self.options.inter_op_threads
        settings.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.options.spin else "0"
        )
        settings.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.graph_optimization]
        self.providers = choose_providers(device, self.options.tensorrt)
        self._settings = settings
        self.session = self._session(unit_ratio=False)
        src_type = self.session.get_inputs()[0].type
        self._np_dtype = np.float16 if src_type == "tensor(float16)" else np.float32
        self.precision = "fp16" if self._np_dtype == np.float16 else "fp32"
        self._ort_device = "cuda" if device.startswith("cuda") else "cpu"
        self._device_id = int(device.split(":", 1)[1]) if ":" in device else 0

    def _session(self, unit_ratio: bool) -> Any:
        """The session for ratio 1 (no refiner) or below 1 (refiner), created on first use."""
        import onnxruntime as ort

        with self._lock:
            if unit_ratio not in self._sessions:
                graph = self._graphs[1 if unit_ratio else 0]
                self._sessions[unit_ratio] = ort.InferenceSession(
                    graph.SerializeToString(), sess_options=self._settings, providers=self.providers
                )
            return self._sessions[unit_ratio]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["providers"] = self.session.get_providers()
        return info

    def _zeros(self) -> Any:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(
            np.zeros([1, 1, 1, 1], self._np_dtype), self._ort_device, self._device_id
        )

    def infer(
        self, src: np.ndarray, state: OrtState | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, OrtState]:
        import onnxruntime as ort

        session = self._session(unit_ratio=downsample_ratio == 1.0)
        binding = session.io_binding()
        ratio = ort.OrtValue.ortvalue_from_numpy(
            np.asarray([downsample_ratio], np.float32), self._ort_device, self._device_id
        )
        rec: list[Any] = list(state) if state is not None else [self._zeros()] * 4
        frames = src.astype(self._np_dtype, copy=False)
        fgr_out, pha_out = [], []
        for t in range(frames.shape[1]):
            binding.bind_cpu_input("src", np.ascontiguousarray(frames[:, t]))
            for name, value in zip(_INPUTS[1:5], rec, strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_input("downsample_ratio", ratio)
            binding.bind_output("fgr", "cpu")
            binding.bind_output("pha", "cpu")
            for name in _OUTPUTS[2:]:
                binding.bind_output(name, self._ort_device, self._device_id)
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
            fgr_out.append(values[0].numpy())
            pha_out.append(values[1].numpy())
            rec = list(values[2:])
        if len(fgr_out) == 1:  # one frame: a view, no copy
            fgr, pha = fgr_out[0][:, None], pha_out[0][:, None]
        else:
            fgr, pha = np.stack(fgr_out, axis=1), np.stack(pha_out, axis=1)
        fgr_samples, pha_samples = convert_outputs(
            fgr.astype(np.float32, copy=False), pha.astype(np.float32, copy=False), outputs
        )
        return fgr_samples, pha_samples, (rec[0], rec[1], rec[2], rec[3])

    def state_to_host(self, state: OrtState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        r1, r2, r3, r4 = (np.asarray(v.numpy(), np.float32) for v in state)
        return r1, r2, r3, r4

    def state_from_host(self, state: RecurrentState) -> OrtState:
        import onnxruntime as ort

        r1, r2, r3, r4 = (
            ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(a, self._np_dtype), self._ort_device, self._device_id
            )
            for a in state.arrays()
        )
        return r1, r2, r3, r4


def _load_proto(model: Path | bytes, where: str) -> Any:
    import onnx

    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(str(model))
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... on damaged files
        raise WeightsFormatError(f"{where}: not a readable ONNX model ({exc})") from exc
