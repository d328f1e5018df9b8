"""Mattes written through a node equal a local convert of the same shot, to the bit, for every output format,
while the node sends only the planes and the sample format the writers need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rvm_node.client import NodeClient, matte_shot
from rvm_node.convert import convert_video
from rvm_node.convert.pipeline import output_spec
from rvm_node.engine.samples import OutputSpec
from rvm_node.io.sequence import FramePattern, FrameRange
from rvm_node.io.writers import SequenceWriter, VideoWriter, WriterSettings
from tests.node_support import NodeThread

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender


FRAMES = FrameRange(1, 6)
# (outputs, writer settings, the sample format the stream must ask for, whether it needs the foreground)
CASES: dict[str, tuple[dict[str, str], dict[str, Any], str, bool]] = {
    "alpha exr rgba": ({"output_alpha": "m.####.exr"}, {}, "float16", False),
    "alpha exr A": ({"output_alpha": "m.####.exr"}, {"exr_channels": "A"}, "float16", False),
    "alpha png16": ({"output_alpha": "m.####.png"}, {}, "uint16", False),
    "alpha png8": ({"output_alpha": "m.####.png"}, {"bit_depth": 8}, "uint8", False),
    "alpha tiff": ({"output_alpha": "m.####.tif"}, {}, "uint16", False),
    "alpha h264": ({"output_alpha": "m.mp4"}, {}, "uint8", False),
    "foreground exr": ({"output_foreground": "f.####.exr"}, {}, "float16", True),
    "foreground png16 premultiplied": (
        {"output_foreground": "f.####.png"},
        {"premultiplied": True},
        "float32",
        True,
    ),
    "foreground prores": ({"output_foreground": "f.mov"}, {}, "uint16", True),
    "composition png8": ({"output_composition": "c.####.png"}, {"bit_depth": 8}, "float32", True),
    "alpha exr + foreground png16": (
        {"output_alpha": "m.####.exr", "output_foreground": "f.####.png"},
        {},
        "float32",
        True,
    ),
}


def _decoded_video(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgba64le") for f in container.decode(video=0)])


def _same_files(ours: Path, reference: Path) -> None:
    """Image files equal to the byte. A video's pictures went to the encoder identical (checked where they
    are written); what the encoder makes of them is its own, so its decoded pictures need only agree closely."""
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names and names
    for name in names:
        if name.endswith((".mp4", ".mov")):
            a, b = _decoded_video(ours / name), _decoded_video(reference / name)
            assert a.shape == b.shape, name
            difference = np.abs(a.astype(np.int32) - b.astype(np.int32)) / 257  # in 8-bit levels
            assert difference.mean() < 0.5 and difference.max() <= 16, name
        else:
            assert (ours / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize("transport", ["shm", "raw"])
@pytest.mark.parametrize("case", list(CASES))
def test_node_mattes_equal_local_convert_to_the_bit(
    node: NodeThread, backend, tmp_path: Path, case: str, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvm_node.example import example_clip

    encoded: dict[str, list[tuple[int, np.ndarray]]] = {"node": [], "local": []}
    write = VideoWriter.write

    def recording_write(self: VideoWriter, number: int, image: np.ndarray, time: Any = None) -> None:
        encoded[self.path.parent.name].append((number, image.copy()))  # the real write, noted
        write(self, number, image, time)

    monkeypatch.setattr(VideoWriter, "write", recording_write)

    targets, settings, wire_format, foreground = CASES[case]
    asked: list[dict[str, Any]] = []
    used: list[str] = []
    client = NodeClient(node.address)
    open_stream = client.open_stream

    def recording_open_stream(**kwargs: Any) -> Any:  # the real call, with its settings noted
        asked.append(kwargs)
        stream = open_stream(**kwargs)
        used.append(stream.transport)
        return stream

    client.open_stream = recording_open_stream  # type: ignore[method-assign]
    for where in ("node", "local"):
        outputs = {k: str(tmp_path / where / v) for k, v in targets.items()}
        options: dict[str, Any] = {
            "downsample_ratio": 0.5,
            "frames": FRAMES,
            "settings": WriterSettings(**settings),
            "progress": False,
            "seq_chunk": 3,
            **outputs,
        }
        if where == "node":
            matte_shot(client, example_clip(), transport=transport, **options)
        else:
            convert_video(backend, example_clip(), **options)
    client.close()
    assert [a["output_format"] for a in asked] == [wire_format]
    assert used == [transport]  # the frames and mattes went the way asked (shm: through the ring)
    assert asked[0]["planes"] == (("alpha", "foreground") if foreground else ("alpha",))
    assert len(encoded["node"]) == len(encoded["local"])
    for (n_ours, ours), (n_ref, ref) in zip(encoded["node"], encoded["local"], strict=True):
        assert n_ours == n_ref and ours.dtype == ref.dtype and np.array_equal(ours, ref), n_ours
    _same_files(tmp_path / "node", tmp_path / "local")
    assert node.wait_idle() == 0


def test_output_spec_follows_the_writers(tmp_path: Path) -> None:
    def seq(kind: str, ext: str, **settings: Any) -> SequenceWriter:
        return SequenceWriter(kind, FramePattern(tmp_path, "m.", 4, ext), WriterSettings(**settings))  # type: ignore[arg-type]

    assert output_spec([seq("alpha", ".png")]) == OutputSpec(False, "uint16")
    assert output_spec([seq("alpha", ".png", bit_depth=8)]) == OutputSpec(False, "uint8")
    assert output_spec([seq("alpha", ".exr"), seq("foreground", ".exr")]) == OutputSpec(True, "float16")
    assert output_spec([seq("alpha", ".png", bit_depth=8), seq("alpha", ".tif")]) == OutputSpec(
        False, "float32"
    )
    assert output_spec([seq("composition", ".exr")]) == OutputSpec(True, "float32")
    # premultiplying computes with the foreground only: alpha beside it keeps its format
    assert output_spec([seq("alpha", ".png", premultiplied=True)]) == OutputSpec(False, "uint16")
    assert output_spec([seq("foreground", ".png", premultiplied=True)]) == OutputSpec(True, "float32")
    video = VideoWriter("alpha", tmp_path / "a.mp4", rate=24, size=(64, 48), settings=WriterSettings())  # type: ignore[arg-type]
    try:
        assert output_spec([video]) == OutputSpec(False, "uint8")
    finally:
        video.abort()


@pytest.mark.parametrize("case", ["alpha png16", "alpha exr + foreground png16"])
def test_frames_decoded_into_the_ring_matte_as_a_local_convert(
    node: NodeThread, backend, tmp_path: Path, case: str
) -> None:
    """After the stream opens, the reader decodes every frame straight into a ring slot, and the chunk
    is sent from there; the mattes are those of a local convert, to the bit."""
    from rvm_node.example import example_clip

    chunk, frames = 2, FrameRange(1, 40)
    streams: list[Any] = []
    rings: list[Any] = []
    client = NodeClient(node.address)
    open_stream = client.open_stream

    def recording_open_stream(**kwargs: Any) -> Any:
        streams.append(open_stream(**kwargs))
        rings.append(streams[-1].ring)
        return streams[-1]

    client.open_stream = recording_open_stream  # type: ignore[method-assign]
    targets, settings, _, _ = CASES[case]
    for where in ("node", "local"):
        options: dict[str, Any] = {
            "downsample_ratio": 0.5,
            "frames": frames,
            "settings": WriterSettings(**settings),
            "progress": False,
            "seq_chunk": chunk,
            **{k: str(tmp_path / where / v) for k, v in targets.items()},
        }
        if where == "node":
            matte_shot(client, example_clip(), transport="shm", **options)
        else:
            convert_video(backend, example_clip(), **options)
    client.close()
    (stream,) = streams
    (ring,) = rings
    assert stream.transport == "shm" and ring is not None
    # Only the chunks read before the stream opened are copied in: the first one, the reader's queue
    # (4 frames or two chunks) and the chunk of the frame in the reader's hand.
    assert ring.frames_in_place >= 40 - (2 * chunk + max(4, 2 * chunk))
    _same_files(tmp_path / "node", tmp_path / "local")
    assert node.wait_idle() == 0
