"""What a static-shape export is (its format, frame size, ratio and precision) and the network made static
for it: the spec and graph steps the exporters (:mod:`rvm_node.engine.exporters`) build on, apart from the
export driver (:mod:`rvm_node.engine.static_export`) that calls them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rvm_node.engine.ratio import check_downsample_ratio
from rvm_node.errors import InvalidInputError

__all__ = [
    "FP16_FORMATS",
    "MIN_SIDE",
    "STATIC_FORMATS",
    "SUFFIX",
    "StaticSpec",
    "check_spec",
    "metadata",
    "parse_size",
    "static_onnx",
    "traced_module",
]


STATIC_FORMATS = ("tensorflow", "tflite", "tfjs", "coreml")


FP16_FORMATS = ("tflite", "coreml")  # fp16 weights (TFLite) or compute (CoreML)


SUFFIX = {"tensorflow": "_savedmodel", "tflite": ".tflite", "tfjs": "_tfjs", "coreml": ".mlpackage"}


MIN_SIDE = 64  # the encoder halves the downsampled frame five times


@dataclass(frozen=True)
class StaticSpec:
    variant: str
    width: int
    height: int
    ratio: float
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return f"rvm_{self.variant}_{self.width}x{self.height}_r{self.ratio:g}_{self.precision}"

    def state_shapes(self) -> list[tuple[int, int, int, int]]:
        from rvm_node.engine.states import state_shapes

        return state_shapes(self.variant, (self.height, self.width), self.ratio, 1)[0]


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise InvalidInputError(f"size: expected WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(width), int(height)


def check_spec(format: str, spec: StaticSpec) -> None:
    """InvalidInputError for a format, size, ratio or precision that cannot be exported."""
    if format not in STATIC_FORMATS:
        raise InvalidInputError(f"format: expected one of {', '.join(STATIC_FORMATS)}, got {format!r}")
    check_downsample_ratio(spec.ratio)
    small = min(spec.width, spec.height) * spec.ratio
    if min(spec.width, spec.height) < 1 or small < MIN_SIDE:
        raise InvalidInputError(
            f"size {spec.width}x{spec.height} at ratio {spec.ratio:g}: the network would run at "
            f"{small:.0f} px on the short side; it needs at least {MIN_SIDE}"
        )
    if spec.precision not in ("fp32", "fp16"):
        raise InvalidInputError(f"precision: expected fp32 or fp16, got {spec.precision!r}")
    if spec.precision == "fp16" and format not in FP16_FORMATS:
        raise InvalidInputError(
            f"precision fp16: {format} exports are fp32 (fp16: {', '.join(FP16_FORMATS)})"
        )


def static_onnx(net: Any, spec: StaticSpec) -> Any:
    """Our fp32 ONNX export with the ratio frozen and every input of static shape (batch 1)."""
    import onnx

    from rvm_node.engine.export import onnx_bytes
    from rvm_node.engine.onnx_graph import freeze_ratio, policy_graphs, prune

    refined, unrefined = policy_graphs(onnx.load_from_string(onnx_bytes(net)))
    model = freeze_ratio(unrefined if spec.ratio == 1 else refined, spec.ratio)
    shapes = {"src": (1, 3, spec.height, spec.width)}
    shapes.update({f"r{i + 1}i": shape for i, shape in enumerate(spec.state_shapes())})
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = size
    prune(model)
    return model


def traced_module(net: Any, spec: StaticSpec) -> Any:
    """The network at the spec's ratio, traced with full-shape states: ``(src, r1i..r4i) -> 6 outputs``."""
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, src: Any, r1: Any, r2: Any, r3: Any, r4: Any) -> Any:
            return tuple(self.net(src, r1, r2, r3, r4, spec.ratio))

    sample = [torch.rand(1, 3, spec.height, spec.width)] + [torch.zeros(s) for s in spec.state_shapes()]
    with torch.inference_mode():
        return torch.jit.trace(Fixed().eval(), tuple(sample), check_trace=False)


def metadata(format: str, spec: StaticSpec) -> dict[str, Any]:
    from rvm_node.version import __version__

    last = format != "coreml"  # TensorFlow formats are channels-last
    states = spec.state_shapes()

    def layout(shape: tuple[int, ...]) -> list[int]:
        return [shape[0], shape[2], shape[3], shape[1]] if last else list(shape)

    return {
        "format": format,
        **asdict(spec),
        "layout": "NHWC" if last else "NCHW",
        "inputs": {
            "src": layout((1, 3, spec.height, spec.width)),
            **{f"r{i + 1}i": layout(s) for i, s in enumerate(states)},
        },
        "outputs": {
            "fgr": layout((1, 3, spec.height, spec.width)),
            "pha": layout((1, 1, spec.height, spec.width)),
            **{f"r{i + 1}o": layout(s) for i, s in enumerate(states)},
        },
        "rvm_node": __version__,
    }
