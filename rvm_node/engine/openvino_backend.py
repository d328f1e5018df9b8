"""The OpenVINO backend, for CPU render nodes.

OpenVINO is fastest here with static shapes, so each stream's frame size and
ratio get a model of their own: the ratio frozen into the graph (so the
resize and the refiner's shapes fold into constants), every input reshaped
to the stream's size, and the sample conversions in the graph (see
``onnx_samples``). Compiled models are kept in a small LRU cache and the
compile time is logged. A fresh stream starts from full-shape zero states,
which gives the same numbers as starting from none.

Below ratio 1 the compiled model is only the graph's small-resolution part
(``onnx_coefficients``), for the stream's small size: each frame is resized
down from its own samples, and the full-resolution planes are made in one
pass (``fullres``). Streams of any frame size, ratio, input format and
outputs that run at one small size share that model.

Precision is always pinned (``INFERENCE_PRECISION_HINT``): on CPUs with bf16
units OpenVINO would otherwise choose bf16 by itself, and that breaks the
matte. States travel as float32 host arrays, so a snapshot taken here
restores on any other backend and back.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rvm_node.engine import fullres
from rvm_node.engine.backend import MattingBackend, fused_refiner_choice
from rvm_node.engine.onnx_coefficients import COEFFICIENTS, NOT_SPLIT, SMALL_INPUT, coefficient_graph
from rvm_node.engine.onnx_graph import freeze_ratio, policy_graphs
from rvm_node.engine.onnx_samples import with_samples
from rvm_node.engine.samples import OutputSpec, SampleFormat, sample_format_of
from rvm_node.engine.states import RecurrentState, small_state_shapes, state_shapes
from rvm_node.errors import (
    BackendError,
    BackendUnavailableError,
    InvalidInputError,
    UnsupportedPrecisionError,
)

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
    models kept (one per small size; at ratio 1, per frame size, input format
    and outputs). ``fused_refiner``: below ratio 1, compile only the model's
    small-resolution part and make the full-resolution planes in one pass on
    the host (``rvm_node.engine.fullres``). None: where the graph has the deep
    guided filter; True: or an :class:`InvalidInputError`; False: never.
    """

    threads: int = 0
    streams: int = 1
    hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    max_compiled: int = 4
    fused_refiner: bool | None = None

    def __post_init__(self) -> None:
        if self.hint not in _HINTS:
            raise InvalidInputError(f"hint: expected LATENCY or THROUGHPUT, got {self.hint!r}")
        if self.threads < 0 or self.streams < 1 or self.max_compiled < 1:
            raise InvalidInputError("threads must be >= 0, streams and max_compiled >= 1")


def merge_resizes(model: Any) -> int:
    """Run resizes of the same geometry as one: concatenated along channels, resized once, then split.

    The refiner lifts its coefficient maps A and b to full resolution (two
    resizes of four channels in the official graph, four of 3, 3, 1 and 1 in a
    torch export). OpenVINO's CPU resize works channels-last, so its cost is
    per pixel rather than per sample: one resize of eight channels costs about
    what one of four does, and the numbers are the same to the bit.
    Only resizes to given sizes are merged (a resize by scales samples by the
    scale). ``model`` must have static shapes; returns how many resizes were
    merged away.
    """
    import openvino.opset13 as ops

    groups: dict[tuple[Any, ...], list[Any]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Interpolate" or not op.output(0).get_partial_shape().is_static:
            continue
        shape_in, shape_out = list(op.input(0).get_shape()), list(op.output(0).get_shape())
        if len(shape_in) != 4 or shape_in[0] != shape_out[0] or shape_in[1] != shape_out[1]:
            continue
        if op.get_attributes().get("shape_calculation_mode") != "sizes":
            continue  # a resize by scales samples by the scale, not by the sizes: left as it is
        attributes = tuple(sorted((k, str(v)) for k, v in op.get_attributes().items()))
        key = (shape_in[0], *shape_in[2:], *shape_out[2:], attributes, op.get_output_element_type(0))
        groups.setdefault(key, []).append(op)
    merged = 0
    for key, members in groups.items():
        members = _independent(members)
        if len(members) < 2:
            continue
        attributes = members[0].get_attributes()
        joined = ops.concat([m.input_value(0) for m in members], axis=1)
        resized = ops.interpolate(
            joined,
            np.asarray(key[3:5], np.int64),
            mode=attributes["mode"],
            shape_calculation_mode="sizes",
            pads_begin=attributes["pads_begin"],
            pads_end=attributes["pads_end"],
            coordinate_transformation_mode=attributes["coordinate_transformation_mode"],
            nearest_mode=attributes["nearest_mode"],
            antialias=attributes["antialias"],
            cube_coeff=attributes["cube_coeff"],
            axes=np.asarray([2, 3], np.int64),
        )
        channels = [int(m.input(0).get_shape()[1]) for m in members]
        parts = ops.variadic_split(resized, np.int64(1), np.asarray(channels, np.int64))
        for index, member in enumerate(members):
            member.output(0).replace(parts.output(index))
        merged += len(members) - 1
    if merged:
        model.validate_nodes_and_infer_types()
    return merged


def _independent(members: list[Any]) -> list[Any]:
    """The members whose input does not depend on another member's output (so they can run as one)."""
    names = {m.get_friendly_name() for m in members}
    kept = []
    for member in members:
        seen: set[str] = set()
        stack = [member.input_value(0).get_node()]
        while stack:
            node = stack.pop()
            name = node.get_friendly_name()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(value.get_node() for value in node.input_values())
        if not seen & names:
            kept.append(member)
    return kept


def import_openvino() -> Any:
    """Import OpenVINO with its usage telemetry left out.

    ``import openvino`` otherwise reports the import to an analytics service, from
    a process it forks off a thread: on a render node that is a network call
    nobody asked for, and a fork of a process that runs gRPC threads. OpenVINO
    falls back to its own silent stand-in when ``openvino_telemetry`` cannot be
    imported, so the package is hidden for the length of the import (and only
    then: ``sys.modules`` is left as it was).
    """
    hide = "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
    if hide:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend openvino: the openvino package is not installed (pip install rvm-node[openvino])"
        ) from exc
    finally:
        if hide:
            del sys.modules["openvino_telemetry"]
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

        ov = import_openvino()
        if device != "cpu":
            raise BackendUnavailableError(f"device {device}: the openvino backend runs on cpu")
        if precision not in _PRECISIONS:
            raise InvalidInputError(f"precision: openvino runs fp32 or bf16, got {precision!r}")
        self.options = options or OpenVinoOptions()
        self.variant, self.device, self.precision = variant, device, precision
        self._ov = ov
        self._core = ov.Core()
        capabilities = set(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if precision == "bf16" and "BF16" not in capabilities:
            raise UnsupportedPrecisionError(
                "precision bf16: this CPU has no bf16 units (OpenVINO reports "
                f"{', '.join(sorted(capabilities))}); use fp32"
            )
        if precision == "bf16":
            log.warning(
                "openvino: bf16 is a preview mode: it measured alpha errors up to 1.0 against the official "
                "model (the README, Speed); fp32 is the parity path"
            )
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        src_type = next(i.type.tensor_type.elem_type for i in proto.graph.input if i.name == "src")
        if src_type != onnx.TensorProto.FLOAT:
            raise InvalidInputError(f"{where}: the openvino backend takes an fp32 ONNX model")
        self._graphs = policy_graphs(proto, where)
        coefficients = coefficient_graph(self._graphs[0]) if self.options.fused_refiner is not False else None
        fused = fused_refiner_choice(
            self.options.fused_refiner, True, None if coefficients is not None else NOT_SPLIT, where
        )
        self._coefficients = coefficients if fused else None
        self.fused_refiner = fused
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
        """The compiled whole model for ``[B, 3, H, W]`` frames at ``ratio``, and its key."""
        batch, _, height, width = shape

        def model() -> Any:
            graph = freeze_ratio(self._graphs[1 if ratio == 1.0 else 0], ratio)
            compiled = self._core.read_model(with_samples(graph, src_format, outputs).SerializeToString())
            states = state_shapes(self.variant, (height, width), ratio, batch)[0]
            compiled.reshape({"src": list(shape), **{f"r{i + 1}i": list(s) for i, s in enumerate(states)}})
            merge_resizes(compiled)
            return compiled

        what = f"{width}x{height} x{batch} ratio {ratio:.4g} ({src_format} in, {outputs.sample_format} out)"
        return self._compiled_model((shape, ratio, src_format, outputs), model, what)

    def _small_model_for(self, coefficients: Any, shape: tuple[int, ...]) -> tuple[Any, tuple[Any, ...]]:
        """The compiled small-resolution part for ``[B, 3, h, w]`` small frames, and its key."""
        batch, _, height, width = shape

        def model() -> Any:
            compiled = self._core.read_model(coefficients.SerializeToString())
            states = small_state_shapes(self.variant, (height, width), batch)
            compiled.reshape(
                {SMALL_INPUT: list(shape), **{f"r{i + 1}i": list(s) for i, s in enumerate(states)}}
            )
            return compiled

        return self._compiled_model(
            ("small", shape), model, f"the small-resolution part at {width}x{height} x{batch}"
        )

    def _compiled_model(self, key: tuple[Any, ...], model: Any, what: str) -> tuple[Any, tuple[Any, ...]]:
        """The compiled ``model()`` under ``key``: compiled on first use (the time logged), kept in the LRU."""
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled, key
        started = time.perf_counter()
        try:
            compiled = self._core.compile_model(model(), "CPU", self._config())
        except RuntimeError as exc:  # OpenVINO's shape checks: a frame too small for the network's pools
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"openvino: cannot compile {what} ({first})") from None
        seconds = time.perf_counter() - started
        self.compile_seconds.append(seconds)
        log.info("openvino: compiled %s in %.2f s", what, seconds)
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
        if self._coefficients is not None and downsample_ratio != 1.0:
            return self._infer_fused(self._coefficients, src, state, downsample_ratio, outputs)
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
        # Every output is written by OpenVINO straight into its final array (frame t of the
        # chunk, time-major so each frame is contiguous), and the state ping-pongs between
        # two sets of buffers: no copy of a plane or a state per frame.
        ports = {port.get_any_name(): port for port in compiled.outputs}
        chunk = {
            name: np.empty((frames, *ports[name].get_shape()), ports[name].get_element_type().to_dtype())
            for name in planes
        }
        buffers = [[np.empty_like(r) for r in rec]]  # a second set from frame 1; the caller's state is kept
        request = self._request(compiled, key)
        try:
            for t in range(frames):
                if t == 1:
                    buffers.append([np.empty_like(r) for r in rec])
                written = buffers[t % 2]
                for name in planes:
                    request.set_tensor(name, self._ov.Tensor(chunk[name][t], shared_memory=True))
                for name, array in zip(_STATE_OUTPUTS, written, strict=True):
                    request.set_tensor(name, self._ov.Tensor(array, shared_memory=True))
                feed = {"src": np.ascontiguousarray(src[:, t]), **dict(zip(_STATE_INPUTS, rec, strict=True))}
                request.infer(feed, share_inputs=True)
                rec = written
        finally:
            self._release(key, request)
        stacked = {name: values.swapaxes(0, 1) for name, values in chunk.items()}
        return stacked.get("fgr"), stacked["pha"], (rec[0], rec[1], rec[2], rec[3])

    def _infer_fused(
        self, coefficients: Any, src: np.ndarray, state: OvState | None, downsample_ratio: float,
        outputs: OutputSpec,
    ) -> tuple[np.ndarray | None, np.ndarray, OvState]:  # fmt: skip
        """The small-resolution part, compiled for the stream's small size, and the full-resolution planes
        in one pass."""
        batch, _, _, height, width = src.shape
        small = fullres.small_size(height, width, downsample_ratio)
        compiled, key = self._small_model_for(coefficients, (batch, 3, *small))
        ports = {port.get_any_name(): port for port in compiled.outputs}
        a, b = (np.empty(ports[name].get_shape(), np.float32) for name in COEFFICIENTS)
        buffers = [
            [np.empty(s, np.float32) for s in small_state_shapes(self.variant, small, batch)] for _ in "ab"
        ]
        request = self._request(compiled, key)

        def step(frame: np.ndarray, rec: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
            written = buffers[1] if rec is buffers[0] else buffers[0]  # ping-pong: the caller's state is kept
            for name, array in zip((*COEFFICIENTS, *_STATE_OUTPUTS), (a, b, *written), strict=True):
                request.set_tensor(name, self._ov.Tensor(array, shared_memory=True))
            request.infer(
                {SMALL_INPUT: frame, **dict(zip(_STATE_INPUTS, rec, strict=True))}, share_inputs=True
            )
            return a, b, written

        if state is None:  # full-shape zeros equal no state
            rec = [np.zeros(s, np.float32) for s in small_state_shapes(self.variant, small, batch)]
        else:
            rec = list(state)
        try:
            fgr, pha, rec = fullres.run_refined(src, downsample_ratio, outputs, step, rec)
        finally:
            self._release(key, request)
        return fgr, pha, (rec[0], rec[1], rec[2], rec[3])

    def state_to_host(self, state: OvState) -> OvState:
        return state

    def state_from_host(self, state: RecurrentState) -> OvState:
        r1, r2, r3, r4 = (np.ascontiguousarray(a, np.float32) for a in state.arrays())
        return r1, r2, r3, r4
