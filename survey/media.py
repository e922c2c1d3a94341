"""Image files of a study: stored under random names (the name says nothing about the
method), with their sha256, written atomically.

Arrays are uint8, (H, W), (H, W, 1) or (H, W, 3); one channel is saved as a grey PNG
(mode "L"), three as RGB.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

FILE_NAME = re.compile(r"^[0-9a-f]{32}\.png$")


class MediaError(ValueError):
    """An image cannot be stored or read; the message says what to do."""


@dataclass(frozen=True)
class StoredFile:
    file_name: str
    sha256: str
    width: int
    height: int


def as_hwc_uint8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 with C in {1, 3}, from (H, W), (H, W, 1) or (H, W, 3)."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise MediaError(f"images must be uint8, got {array.dtype}; convert with engine.data.to_uint8")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise MediaError(f"an image must be (H, W), (H, W, 1) or (H, W, 3); got shape {array.shape}")
    return np.ascontiguousarray(array)


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    array = as_hwc_uint8(pixels)
    image = PILImage.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else PILImage.fromarray(array, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(pixels: np.ndarray, media_dir: Path) -> StoredFile:
    """Write ``pixels`` as ``<32 random hex>.png`` in ``media_dir`` (created if needed)."""
    media_dir = Path(media_dir)
    media_dir.mkdir(parents=True, exist_ok=True)
    array = as_hwc_uint8(pixels)
    data = png_bytes(array)
    name = secrets.token_hex(16) + ".png"
    tmp = media_dir / (name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, media_dir / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return StoredFile(name, hashlib.sha256(data).hexdigest(), int(array.shape[1]), int(array.shape[0]))


def media_path(media_dir: Path, file_name: str) -> Path:
    """Path of a stored file; refuses names that are not ours (no path tricks)."""
    if not FILE_NAME.match(file_name):
        raise MediaError(f"{file_name!r} is not a survey media file name")
    return Path(media_dir) / file_name


def verify(media_dir: Path, file_name: str, sha256: str) -> bool:
    path = media_path(media_dir, file_name)
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def read_png(path: Path) -> np.ndarray:
    """A PNG (or any PIL-readable image) as (H, W, C) uint8, C in {1, 3}."""
    try:
        with PILImage.open(path) as image:
            image.load()
            if image.mode in ("L", "LA", "1", "I", "I;16"):
                array = np.asarray(image.convert("L"))[:, :, None]
            else:
                array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise MediaError(f"cannot read image {path}: {exc}") from exc
    return np.ascontiguousarray(array)


def break_image(pixels: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """A deliberately broken copy for gold pairs: the image cut into grid x grid blocks,
    the blocks shuffled, and strong noise added (an attentive rater never prefers it)."""
    array = as_hwc_uint8(pixels).astype(np.int16)
    h, w = array.shape[0] // grid * grid, array.shape[1] // grid * grid
    bh, bw = h // grid, w // grid
    blocks = [array[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].copy() for i in range(grid) for j in range(grid)]
    order = rng.permutation(len(blocks))
    if np.all(order == np.arange(len(blocks))):
        order = order[::-1]
    out = array.copy()
    for k, src in enumerate(order):
        i, j = divmod(k, grid)
        out[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = blocks[src]
    out = out + rng.normal(0, 60, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


__all__ = ["MediaError", "StoredFile", "as_hwc_uint8", "break_image", "media_path", "png_bytes", "read_png",
           "save_png", "verify"]
