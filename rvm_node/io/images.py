"""Still images: PNG, JPEG and TIFF at 8 or 16 bits through PyAV, EXR through OpenEXR.

Readers return ``HxWx3`` RGB (alpha dropped, gray expanded) as uint8, uint16
or float32. Writers are atomic and take ``HxW`` (one channel) or ``HxWxC``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvm_node.errors import InvalidInputError
from rvm_node.fsutil import atomic_write

__all__ = [
    "EXR_EXTS",
    "IMAGE_EXTS",
    "Image",
    "read_image",
    "write_exr",
    "write_image",
]

EXR_EXTS = (".exr",)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")
_PNG_FORMATS = {
    (1, 8): "gray",
    (1, 16): "gray16be",
    (3, 8): "rgb24",
    (3, 16): "rgb48be",
    (4, 8): "rgba",
    (4, 16): "rgba64be",
}
_TIFF_FORMATS = {
    (1, 8): "gray",
    (1, 16): "gray16le",
    (3, 8): "rgb24",
    (3, 16): "rgb48le",
    (4, 8): "rgba",
    (4, 16): "rgba64le",
}


@dataclass(frozen=True)
class Image:
    """Decoded pixels ``HxWx3`` and whether the file is scene-linear by convention (EXR)."""

    pixels: np.ndarray
    scene_linear: bool

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.pixels.shape[1], self.pixels.shape[0]


def _read_exr(path: Path) -> np.ndarray:
    import OpenEXR

    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = {name: ch.pixels for name, ch in exr.channels().items()}
    except Exception as exc:  # OpenEXR raises RuntimeError/ValueError/... on damaged files
        raise InvalidInputError(f"{path}: not a readable EXR image ({exc})") from exc
    if all(name in channels for name in "RGB"):
        planes = [channels[name] for name in "RGB"]
    elif "Y" in channels:
        planes = [channels["Y"]] * 3
    else:
        raise InvalidInputError(
            f"{path}: expected R, G, B (or Y) channels, found {', '.join(sorted(channels)) or 'none'}"
        )
    if any(p.dtype.kind != "f" for p in planes):
        raise InvalidInputError(
            f"{path}: unsupported EXR pixel type {planes[0].dtype}; expected half or float"
        )
    return np.stack(planes, axis=-1).astype(np.float32)


def _read_with_av(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable image ({exc or 'no picture'})") from exc
    fmt = frame.format
    depth = max((c.bits for c in fmt.components), default=8)
    if depth > 16 or fmt.name.startswith(("gbrpf", "grayf")):
        raise InvalidInputError(
            f"{path}: unsupported pixel format {fmt.name}; expected 8 or 16-bit integer RGB or gray"
        )
    return frame.to_ndarray(format="rgb48le" if depth > 8 else "rgb24")


def read_image(path: Path) -> Image:
    """Read a PNG, JPEG, TIFF (8/16-bit) or EXR (half/float) image."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such image")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTS:
        raise InvalidInputError(
            f"{path}: unsupported image type {ext or '(none)'}; expected {', '.join(IMAGE_EXTS)}"
        )
    if ext in EXR_EXTS:
        return Image(_read_exr(path), scene_linear=True)
    return Image(_read_with_av(path), scene_linear=False)


def write_exr(path: Path, pixels: np.ndarray, channels: str, *, group_writable: bool = False) -> None:
    """Write half-float EXR, ZIP compressed, scanline.

    ``channels`` names the planes, e.g. ``"RGBA"`` or ``"A"``; a single plane
    given for several channels is written to each of them.
    """
    import OpenEXR

    data = np.asarray(pixels, np.float16)
    planes = data[..., None] if data.ndim == 2 else data
    if planes.shape[-1] == 1 and len(channels) > 1:  # one plane shared by every channel (RGBA = matte)
        named = dict.fromkeys(channels, np.ascontiguousarray(planes[..., 0]))
    elif planes.shape[-1] == len(channels):
        named = {name: np.ascontiguousarray(planes[..., i]) for i, name in enumerate(channels)}
    else:
        raise InvalidInputError(f"{path}: {planes.shape[-1]} planes for EXR channels {channels!r}")
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}

    def write(tmp: Path) -> None:
        with OpenEXR.File(header, named) as exr:
            exr.write(str(tmp))

    atomic_write(path, write, group_writable=group_writable)


def _encode(codec_name: str, pix_fmt: str, pixels: np.ndarray, options: dict[str, str]) -> bytes:
    import av

    codec: Any = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = pixels.shape[1], pixels.shape[0], pix_fmt
    for key, value in options.items():
        codec.options[key] = value
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=pix_fmt)
    packets = list(codec.encode(frame)) + list(codec.encode(None))
    return b"".join(bytes(p) for p in packets)


def write_image(path: Path, pixels: np.ndarray, *, group_writable: bool = False) -> None:
    """Write uint8 or uint16 pixels (``HxW``, ``HxWx3`` or ``HxWx4``) as PNG or TIFF, atomically."""
    ext = Path(path).suffix.lower()
    bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(pixels.dtype)
    planes = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    channels = 1 if planes.ndim == 2 else planes.shape[-1]
    if bits is None:
        raise InvalidInputError(f"{path}: expected uint8 or uint16 pixels, got {pixels.dtype}")
    if ext == ".png":
        # zlib level 3: lossless, half the encode time of the default for ~20% larger files.
        data = _encode("png", _PNG_FORMATS[(channels, bits)], planes, {"compression_level": "3"})
    elif ext in (".tif", ".tiff"):
        data = _encode("tiff", _TIFF_FORMATS[(channels, bits)], planes, {"compression_algo": "deflate"})
    else:
        raise InvalidInputError(
            f"{path}: cannot write {ext or '(no extension)'}; expected .png, .tif or .exr"
        )

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write, group_writable=group_writable)
