"""The OpenVINO backend, for CPU render nodes.

OpenVINO is fastest here with static shapes, so each stream's frame size and
ratio get a model of their own: the ratio frozen into the graph (so the
resize and the refiner's shapes fold into constants), every input reshaped
to the stream's size, and the sample conversions in the graph (see
``onnx_samples``). Compiled models are kept in a small LRU cache and the
compile time is logged. A fresh stream starts from full-shape zero states,
which gives the same numbers as starting from none.

Precision is always pinned (``INFERENCE_PRECISION_HINT``): on CPUs with bf16
units OpenVINO would otherwise choose bf16 by itself, and that breaks the
matte. States travel as float32 host arrays, so a snapshot taken here
restores on any other backend and back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rvm_node.engine.onnx_graph import freeze_ratio, policy_graphs
from rvm_node.engine.onnx_samples import with_samples
from rvm_node.engine.samples import OutputSpec, SampleFormat, sample_format_of
from rvm_node.engine.session import MattingBackend, RecurrentState
from rvm_node.engine.states import state_shapes
from rvm_node.errors import BackendUnavailableError, InvalidInputError, UnsupportedPrecisionError

__all__ = ["OpenVinoBackend", "OpenVinoOptions"]

log = logging.getLogger("rvm_node.engine")
OvState = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_HINTS = ("LATENCY", "THROUGHPUT")
_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
_STATE_INPUTS = ("r1i", "r2i", "r3i", "r4i")
_STATE_OUTPUTS = ("r1o", "r2o", "r3o", "r4o")


@dataclass(frozen=True, kw_only=True)
class OpenVinoOptions:
    """OpenVINO settings.

    ``threads``: inference threads (0: OpenVINO's choice). ``streams``: CPU
    streams (1 suits one recurrent stream; more only help several streams at
    once on many cores). ``hint``: ``LATENCY`` (default) or ``THROUGHPUT``
    (measured slower for one recurrent stream). ``max_compiled``: compiled
    models kept (one per frame size, ratio, input format and outputs).
    """

    threads: int = 0
    streams: int = 1
    hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    max_compiled: int = 4

    def __post_init__(self) -> None:
        if self.hint not in _HINTS:
            raise InvalidInputError(f"hint: expected LATENCY or THROUGHPUT, got {self.hint!r}")
        if self.threads < 0 or self.streams < 1 or self.max_compiled < 1:
            raise InvalidInputError("threads must be >= 0, streams and max_compiled >= 1")


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend openvino: the openvino package is not installed (pip install rvm-node[openvino])"
        ) from exc
    return openvino


class OpenVinoBackend(MattingBackend[OvState]):
    name = "openvino"

    def __init__(
        self,
        model: Path | Any,
        *,
        variant: str,
        device: str = "cpu",
        precision: str = "fp32",
        options: OpenVinoOptions | None = None,
        where: str = "model",
    ) -> None:
        import onnx

        ov = _import_openvino()
        if device != "cpu":
            raise BackendUnavailableError(f"device {device}: the openvino backend runs on cpu")
        if precision not in _PRECISIONS:
            raise InvalidInputError(f"precision: openvino runs fp32 or bf16, got {precision!r}")
        self.options = options or OpenVinoOptions()
        self.variant, self.device, self.precision = variant, device, precision
        self._core = ov.Core()
        capabilities = set(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if precision == "bf16" and "BF16" not in capabilities:
            raise UnsupportedPrecisionError(
                "precision bf16: this CPU has no bf16 units (OpenVINO reports "
                f"{', '.join(sorted(capabilities))}); use fp32"
            )
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        src_type = next(i.type.tensor_type.elem_type for i in proto.graph.input if i.name == "src")
        if src_type != onnx.TensorProto.FLOAT:
            raise InvalidInputError(f"{where}: the openvino backend takes an fp32 ONNX model")
        self._graphs = policy_graphs(proto, where)
        self._compiled: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._requests: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()
        self.compile_seconds: list[float] = []

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            hint=self.options.hint, streams=self.options.streams, threads=self.options.threads or "auto"
        )
        return info

    def _config(self) -> dict[str, str]:
        config = {
            "INFERENCE_PRECISION_HINT": _PRECISIONS[self.precision],
            "PERFORMANCE_HINT": self.options.hint,
            "NUM_STREAMS": str(self.options.streams),
        }
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.options.threads)
        return config

    def _model_for(
        self, shape: tuple[int, ...], ratio: float, src_format: SampleFormat, outputs: OutputSpec
    ) -> tuple[Any, tuple[Any, ...]]:
        """The compiled model for ``[B, 3, H, W]`` frames at ``ratio``, and its key; compiled on first use."""
        key = (shape, ratio, src_format, outputs)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled, key
        batch, _, height, width = shape
        started = time.perf_counter()
        graph = with_samples(freeze_ratio(self._graphs[1 if ratio == 1.0 else 0], ratio), src_format, outputs)
        model = self._core.read_model(graph.SerializeToString())
        states = state_shapes(self.variant, (height, width), ratio, batch)[0]
        model.reshape({"src": list(shape), **{f"r{i + 1}i": list(s) for i, s in enumerate(states)}})
        compiled = self._core.compile_model(model, "CPU", self._config())
        seconds = time.perf_counter() - started
        self.compile_seconds.append(seconds)
        log.info(
            "openvino: compiled %dx%d x%d ratio %.4g (%s in, %s out) in %.2f s",
            width, height, batch, ratio, src_format, outputs.sample_format, seconds,
        )  # fmt: skip
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self.options.max_compiled:
                dropped, _ = self._compiled.popitem(last=False)
                self._requests.pop(dropped, None)
        return compiled, key

    def _request(self, compiled: Any, key: tuple[Any, ...]) -> Any:
        """An idle infer request of ``compiled`` (made once, then reused: making one costs milliseconds)."""
        with self._lock:
            idle = self._requests.setdefault(key, [])
            if idle:
                return idle.pop()
        return compiled.create_infer_request()

    def _release(self, key: tuple[Any, ...], request: Any) -> None:
        with self._lock:
            if key in self._compiled:
                self._requests.setdefault(key, []).append(request)

    def prepare(self, frames: Any) -> np.ndarray:
        """Frames are given to the graph as they arrived; it converts them."""
        array = np.asarray(frames)
        sample_format_of(array.dtype)  # InvalidInputError for any other dtype
        return array

    def infer(
        self, src: np.ndarray, state: OvState | None, downsample_ratio: float, outputs: OutputSpec
    ) -> tuple[np.ndarray | None, np.ndarray, OvState]:
        batch, frames, channels, height, width = src.shape
        compiled, key = self._model_for(
            (batch, channels, height, width), downsample_ratio, sample_format_of(src.dtype), outputs
        )
        if state is None:  # full-shape zeros equal no state
            states = state_shapes(self.variant, (height, width), downsample_ratio, batch)[0]
            rec = [np.zeros(s, np.float32) for s in states]
        else:
            rec = list(state)
        planes = ("fgr", "pha") if outputs.foreground else ("pha",)
        results: dict[str, list[np.ndarray]] = {name: [] for name in planes}
        request = self._request(compiled, key)
        try:
            for t in range(frames):
                feed = {"src": np.ascontiguousarray(src[:, t]), **dict(zip(_STATE_INPUTS, rec, strict=True))}
                request.infer(feed, share_inputs=True)
                for name in planes:
                    results[name].append(request.get_tensor(name).data.copy())
                rec = [request.get_tensor(name).data.copy() for name in _STATE_OUTPUTS]
        finally:
            self._release(key, request)
        stacked = {
            name: values[0][:, None] if len(values) == 1 else np.stack(values, axis=1)
            for name, values in results.items()
        }
        return stacked.get("fgr"), stacked["pha"], (rec[0], rec[1], rec[2], rec[3])

    def state_to_host(self, state: OvState) -> OvState:
        return state

    def state_from_host(self, state: RecurrentState) -> OvState:
        r1, r2, r3, r4 = (np.ascontiguousarray(a, np.float32) for a in state.arrays())
        return r1, r2, r3, r4
