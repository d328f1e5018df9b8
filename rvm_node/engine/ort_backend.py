"""The onnxruntime backend, with I/O binding.

The recurrent state stays on the device between calls (as ``OrtValue``s
bound as inputs). The model's state type follows the model (fp32 or fp16);
``downsample_ratio`` is always fp32. Every graph is run with our refiner
policy (see ``onnx_graph``) and, by default, with the sample conversions in
the graph (see ``onnx_samples``): frames are bound as they arrived and only
the planes a stream asked for come back, in its sample format. Each
combination of ratio rule, input format and outputs gets its own session,
made on first use and kept in a small LRU cache.

On a CPU, below ratio 1, the model runs at the small size only (the graph's
coefficient part, see ``onnx_coefficients``): each frame is resized down
from its own samples, and the full-resolution planes are made in one pass
(``fullres``), not by the graph's chain of full-resolution tensors.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rvm_node.engine import fullres
from rvm_node.engine.backend import MattingBackend, fused_refiner_choice
from rvm_node.engine.onnx_coefficients import COEFFICIENTS, NOT_SPLIT, SMALL_INPUT, coefficient_graph
from rvm_node.engine.onnx_graph import policy_graphs
from rvm_node.engine.onnx_samples import with_samples
from rvm_node.engine.samples import OutputSpec, SampleFormat, convert_outputs, sample_format_of
from rvm_node.engine.states import RecurrentState
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
    ``samples_in_graph``: convert frames and mattes inside the graph (on the
    device), not on the host. None: yes, except for an fp16 model on the CPU,
    where onnxruntime runs fp16 through float32 and folds the graph's casts
    away, so the numbers would drift from the host rule. For fp32 they are
    the same either way, and the graph path is faster even on a CPU.
    ``max_sessions``: how many sessions (one per ratio rule, input format and
    outputs) are kept. ``fused_refiner``: below ratio 1, run only the model's
    small-resolution part and make the full-resolution planes in one pass on
    the host (``rvm_node.engine.fullres``). None: for an fp32 model on a CPU,
    where the graph has the deep guided filter; on a GPU the whole graph stays
    on the device.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    tensorrt: bool = False
    spin: bool = True
    samples_in_graph: bool | None = None
    max_sessions: int = 8
    fused_refiner: bool | None = None


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
        self._sessions: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
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
        src_type = next(i.type.tensor_type.elem_type for i in proto.graph.input if i.name == "src")
        self._np_dtype = np.float16 if src_type == onnx.TensorProto.FLOAT16 else np.float32
        self.precision = "fp16" if self._np_dtype == np.float16 else "fp32"
        coefficients = coefficient_graph(self._graphs[0]) if self.options.fused_refiner is not False else None
        fused = fused_refiner_choice(
            self.options.fused_refiner,
            device == "cpu" and self.precision == "fp32",  # fp16 on a CPU: half-float coefficients lose more
            None if coefficients is not None else NOT_SPLIT,
            where,
        )
        self._coefficients = coefficients if fused else None
        self.fused_refiner = fused
        self._model_format: SampleFormat = "float16" if self._np_dtype == np.float16 else "float32"
        in_graph = self.options.samples_in_graph
        self.samples_in_graph = (
            in_graph if in_graph is not None else not (self.precision == "fp16" and device == "cpu")
        )
        self.session = self._session(False, self._model_format, OutputSpec(True, self._model_format))
        self._ort_device = "cuda" if device.startswith("cuda") else "cpu"
        self._device_id = int(device.split(":", 1)[1]) if ":" in device else 0

    def _session(self, unit_ratio: bool, src_format: SampleFormat, outputs: OutputSpec) -> Any:
        """The session for ratio 1 (no refiner) or below 1 (refiner), taking ``src_format`` frames and
        giving ``outputs``."""

        def graph() -> Any:
            whole = self._graphs[1 if unit_ratio else 0]
            if (src_format, outputs) == (self._model_format, OutputSpec(True, self._model_format)):
                return whole
            return with_samples(whole, src_format, outputs)

        return self._cached((unit_ratio, src_format, outputs), graph)

    def _cached(self, key: tuple[Any, ...], graph: Callable[[], Any]) -> Any:
        """The session of ``graph()`` under ``key``: made on first use, the least recently used dropped past
        ``max_sessions``."""
        import onnxruntime as ort

        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = ort.InferenceSession(
                    graph().SerializeToString(), sess_options=self._settings, providers=self.providers
                )
                self._sessions[key] = session
                while len(self._sessions) > max(1, self.options.max_sessions):
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(key)
            return session

    def prepare(self, frames: Any) -> np.ndarray:
        """With the conversions in the graph, frames are bound as they arrived."""
        if not self.samples_in_graph:
            return super().prepare(frames)
        array = np.asarray(frames)
        sample_format_of(array.dtype)  # InvalidInputError for any other dtype
        return array

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["providers"] = self.session.get_providers()
        info["samples_in_graph"] = self.samples_in_graph
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

        if self._coefficients is not None and downsample_ratio != 1.0:
            return self._infer_fused(self._coefficients, src, state, downsample_ratio, outputs)
        in_graph = self.samples_in_graph
        if in_graph:
            src_format, asked = sample_format_of(src.dtype), outputs
        else:
            src, src_format = src.astype(self._np_dtype, copy=False), self._model_format
            asked = OutputSpec(True, self._model_format)
        session = self._session(downsample_ratio == 1.0, src_format, asked)
        planes = ("fgr", "pha") if asked.foreground else ("pha",)
        binding = session.io_binding()
        ratio = ort.OrtValue.ortvalue_from_numpy(
            np.asarray([downsample_ratio], np.float32), self._ort_device, self._device_id
        )
        rec: list[Any] = list(state) if state is not None else [self._zeros()] * 4
        results: dict[str, list[np.ndarray]] = {name: [] for name in planes}
        for t in range(src.shape[1]):
            binding.bind_cpu_input("src", np.ascontiguousarray(src[:, t]))
            for name, value in zip(_INPUTS[1:5], rec, strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_input("downsample_ratio", ratio)
            for name in planes:
                binding.bind_output(name, "cpu")
            for name in _OUTPUTS[2:]:
                binding.bind_output(name, self._ort_device, self._device_id)
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
            for name, value in zip(planes, values, strict=False):
                results[name].append(value.numpy())
            rec = list(values[len(planes) :])
        stacked = {
            name: (frames[0][:, None] if len(frames) == 1 else np.stack(frames, axis=1))  # one frame: a view
            for name, frames in results.items()
        }
        if in_graph:
            return stacked.get("fgr"), stacked["pha"], (rec[0], rec[1], rec[2], rec[3])
        fgr_samples, pha_samples = convert_outputs(
            stacked["fgr"].astype(np.float32, copy=False),
            stacked["pha"].astype(np.float32, copy=False),
            outputs,
        )
        return fgr_samples, pha_samples, (rec[0], rec[1], rec[2], rec[3])

    def _infer_fused(
        self, coefficients: Any, src: np.ndarray, state: OrtState | None, downsample_ratio: float,
        outputs: OutputSpec,
    ) -> tuple[np.ndarray | None, np.ndarray, OrtState]:  # fmt: skip
        """The coefficient graph at the small size, and the full-resolution planes in one pass."""
        session = self._cached(("coefficients",), lambda: coefficients)
        binding = session.io_binding()

        def step(small: np.ndarray, rec: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
            binding.bind_cpu_input(SMALL_INPUT, small.astype(self._np_dtype, copy=False))
            for name, value in zip(_INPUTS[1:5], rec, strict=True):
                binding.bind_ortvalue_input(name, value)
            for name in COEFFICIENTS:
                binding.bind_output(name, "cpu")
            for name in _OUTPUTS[2:]:
                binding.bind_output(name, self._ort_device, self._device_id)
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
            return values[0].numpy(), values[1].numpy(), list(values[2:])

        rec: list[Any] = list(state) if state is not None else [self._zeros()] * 4
        fgr, pha, rec = fullres.run_refined(src, downsample_ratio, outputs, step, rec)
        return fgr, pha, (rec[0], rec[1], rec[2], rec[3])

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
