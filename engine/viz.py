"""Tensors -> uint8 pictures, at the edge of the engine.

- images in [-1, 1] -> uint8 HWC;
- gradient maps as in Kawar et al.'s Figure 3: per image, min-max normalised over all
  pixels and channels, (g - min) / (max - min); or signed: 0 maps to white, +max|g| to
  red and -max|g| to blue; signed values on one shared scale (:func:`signed_colours`);
- grids with padding, nearest-neighbour upscaling for small images, PNG writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8 (C = 1 or 3)."""
    arr = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def gradient_maps(grads: torch.Tensor, signed: bool = False, eps: float = 1e-12) -> np.ndarray:
    """(N, C, H, W) gradients -> (N, H, W, 3) uint8 pictures.

    min-max: (g - min g) / (max g - min g) per image (greyscale for one channel);
    signed: one channel (the mean over channels) on a blue-white-red scale, symmetric
    around zero."""
    g = torch.nan_to_num(grads.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)  # non-finite: shown as 0
    n = g.shape[0]
    if signed:
        v = g.mean(dim=1)
        scale = v.flatten(1).abs().max(dim=1).values.clamp_min(eps).reshape(n, 1, 1)
        v = (v / scale).clamp(-1, 1).numpy()
        pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
        rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
        return (rgb * 255).round().astype(np.uint8)
    flat = g.flatten(1)
    lo = flat.min(dim=1).values.reshape(n, 1, 1, 1)
    hi = flat.max(dim=1).values.reshape(n, 1, 1, 1)
    norm = ((g - lo) / (hi - lo).clamp_min(eps)).clamp(0, 1)
    if norm.shape[1] == 1:
        norm = norm.expand(-1, 3, -1, -1)
    return (norm.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def signed_colours(values: torch.Tensor, scale: float, eps: float = 1e-12) -> np.ndarray:
    """(N, C, H, W) signed values -> (N, H, W, 3) uint8 on one fixed blue-white-red scale:
    v = mean over channels, clipped to [-scale, scale]; 0 is white, +scale red, -scale
    blue. Unlike the signed :func:`gradient_maps` the scale is shared by every image, so
    colours compare across images (e.g. a difference of two images, ``scale`` = its max |d|)."""
    v = torch.nan_to_num(values.detach().float().cpu(), nan=0.0).mean(dim=1)
    v = (v / max(float(scale), eps)).clamp(-1, 1).numpy()
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(…, H, W, 1) -> (…, H, W, 3); RGB passes through."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor."""
    if factor <= 1:
        return images
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2)


def grid(images: np.ndarray | Sequence[np.ndarray], ncols: int | None = None, padding: int = 2,
         fill: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*H, cols*W, C) picture."""
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"grid expects (N, H, W, C) images, got shape {arr.shape}")
    n, h, w, c = arr.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    out = np.full((nrows * h + (nrows + 1) * padding, ncols * w + (ncols + 1) * padding, c), fill, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        out[y:y + h, x:x + w] = arr[i]
    return out


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, C) or (H, W) uint8 array as PNG."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path
