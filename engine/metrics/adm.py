"""The ADM (guided-diffusion, Dhariwal & Nichol 2021) evaluation file formats.

- Sample batch ``.npz`` (written by guided-diffusion's sampling scripts): ``arr_0``
  uint8 images N x H x W x C (C = 3, or 1 for grey), ``arr_1`` optional integer labels
  of length N. :func:`to_uint8_images` converts float images as ``engine.data.to_uint8``
  does: round((x + 1) * 127.5), clamped to [0, 255] (guided-diffusion's sampling script
  truncates instead; rounding is unbiased and makes uint8 -> float -> uint8 exact).
- Reference batch ``.npz`` (e.g. ``VIRTUAL_imagenet128_labeled.npz`` for
  ``evaluations/evaluator.py``): ``arr_0`` images as above and, in the published
  files, precomputed statistics ``mu`` (D,) / ``sigma`` (D, D) of Inception pool_3
  features and ``mu_s`` / ``sigma_s`` of the spatial (sFID) features. Either part may be
  absent; at least one must be there.

Note: the published ``mu`` / ``sigma`` come from the TensorFlow Inception graph. The
PyTorch port (:class:`engine.metrics.features.InceptionV3Features`) is close but not
bit-identical, so for FIDs of record compute both sides with the same extractor.

Inside the engine images are float NCHW in [-1, 1]: :func:`to_float_images` converts,
:func:`iter_float_batches` does it a batch at a time for sets too big as floats.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]


class AdmFormatError(ValueError):
    """A file is not in the ADM evaluation format; the message says what is wrong."""


# --------------------------------------------------------------------------- conversions
def check_uint8_images(images: np.ndarray, where: str = "arr_0") -> None:
    """Raise :class:`AdmFormatError` unless ``images`` is uint8 N x H x W x C, C in {1, 3}."""
    if not isinstance(images, np.ndarray):
        raise AdmFormatError(f"{where} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        hint = (" (float images in [-1, 1] convert with engine.metrics.adm.to_uint8_images)"
                if np.issubdtype(images.dtype, np.floating) else "")
        raise AdmFormatError(f"{where} must be uint8 (0..255) N x H x W x C images, got dtype {images.dtype}{hint}")
    if images.ndim != 4:
        hint = " (grey images need a trailing channel axis: arr[..., None])" if images.ndim == 3 else ""
        raise AdmFormatError(f"{where} must have 4 dimensions N x H x W x C, got shape {images.shape}{hint}")
    if images.shape[-1] not in (1, 3):
        hint = " (this looks channels-first; transpose to N x H x W x C)" if images.shape[1] in (1, 3) else ""
        raise AdmFormatError(f"{where} must have 1 or 3 channels last, got shape {images.shape}{hint}")
    if images.shape[0] == 0:
        raise AdmFormatError(f"{where} holds no images")


def to_float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float32 N x C x H x W in [-1, 1]: x / 127.5 - 1."""
    check_uint8_images(images, "images")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return tensor.float().div_(127.5).sub_(1.0).contiguous()


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [-1, 1] -> uint8 N x H x W x C:
    uint8(clamp(round((x + 1) * 127.5), 0, 255)), the project's conversion (engine.data)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise AdmFormatError("images must be a float N x C x H x W tensor in [-1, 1]")
    scaled = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def iter_float_batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Float NCHW [-1, 1] batches of a uint8 NHWC array, converted one batch at a time."""
    check_uint8_images(images, "images")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, images.shape[0], batch_size):
        yield to_float_images(images[start:start + batch_size])


# --------------------------------------------------------------------------- files
@dataclass
class SampleBatch:
    """A sample batch: uint8 NHWC ``images`` and optional (N,) int64 ``labels``."""

    images: np.ndarray
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def float_images(self) -> torch.Tensor:
        """All images as float NCHW in [-1, 1] (4 bytes per value: mind large sets)."""
        return to_float_images(self.images)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return iter_float_batches(self.images, batch_size)


@dataclass
class ReferenceBatch:
    """A reference batch: ``images`` (uint8 NHWC) and / or precomputed statistics."""

    images: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None
    mu_s: Optional[np.ndarray] = None
    sigma_s: Optional[np.ndarray] = None
    source: str = ""

    @property
    def has_images(self) -> bool:
        return self.images is not None

    @property
    def has_stats(self) -> bool:
        return self.mu is not None and self.sigma is not None

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The precomputed (mu, sigma) of pool features (float64)."""
        if not self.has_stats:
            raise AdmFormatError(f"reference batch {self.source} has no precomputed mu / sigma; "
                                 "compute statistics from its images instead")
        return self.mu, self.sigma  # type: ignore[return-value]


def _read_npz(path: PathLike) -> dict[str, np.ndarray]:
    source = Path(path).expanduser()
    if not source.is_file():
        raise AdmFormatError(f"{source} does not exist or is not a file")
    try:
        with np.load(source, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise AdmFormatError(f"{source} is a single .npy array, not an .npz archive with arr_0 / arr_1")
            return {key: data[key] for key in data.files}
    except AdmFormatError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise AdmFormatError(f"cannot read {source} as .npz ({exc.__class__.__name__}: {str(exc)[:200]}); "
                             "object arrays are refused, and the file may be truncated") from exc


def _check_labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise AdmFormatError(f"{source}: arr_1 (labels) must be integers, got dtype {labels.dtype}")
    if labels.shape != (count,):
        raise AdmFormatError(f"{source}: arr_1 (labels) must have shape ({count},) to match arr_0, "
                             f"got {labels.shape}")
    if count and labels.min() < 0:
        raise AdmFormatError(f"{source}: arr_1 (labels) must be non-negative class indices")
    return labels.astype(np.int64)


def _check_stats(arrays: dict[str, np.ndarray], mu_key: str, sigma_key: str,
                 source: str) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    has_mu, has_sigma = mu_key in arrays, sigma_key in arrays
    if has_mu != has_sigma:
        present, absent = (mu_key, sigma_key) if has_mu else (sigma_key, mu_key)
        raise AdmFormatError(f"{source} has {present} but no {absent}; statistics need both")
    if not has_mu:
        return None, None
    mu, sigma = arrays[mu_key], arrays[sigma_key]
    for key, value in ((mu_key, mu), (sigma_key, sigma)):
        if not np.issubdtype(value.dtype, np.floating):
            raise AdmFormatError(f"{source}: {key} must be floating point, got dtype {value.dtype}")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise AdmFormatError(f"{source}: {mu_key} must be (D,) and {sigma_key} (D, D), "
                             f"got {mu.shape} and {sigma.shape}")
    return mu.astype(np.float64), sigma.astype(np.float64)


def load_samples(path: PathLike) -> SampleBatch:
    """Read a sample batch ``.npz``: ``arr_0`` uint8 NHWC (required), ``arr_1`` labels
    (optional). Raises :class:`AdmFormatError` saying what is missing or malformed."""
    arrays = _read_npz(path)
    source = str(path)
    if "arr_0" not in arrays:
        raise AdmFormatError(f"{source} has no arr_0 (uint8 N x H x W x C images); keys: {sorted(arrays)}")
    images = arrays["arr_0"]
    check_uint8_images(images, f"{source}: arr_0")
    labels = _check_labels(arrays["arr_1"], images.shape[0], source) if "arr_1" in arrays else None
    return SampleBatch(images=images, labels=labels)


def load_reference_batch(path: PathLike) -> ReferenceBatch:
    """Read a guided-diffusion reference batch: images (``arr_0``), precomputed
    statistics (``mu`` / ``sigma``, and ``mu_s`` / ``sigma_s``), or both."""
    arrays = _read_npz(path)
    source = str(path)
    mu, sigma = _check_stats(arrays, "mu", "sigma", source)
    mu_s, sigma_s = _check_stats(arrays, "mu_s", "sigma_s", source)
    if "arr_0" not in arrays and mu is None:
        raise AdmFormatError(f"{source} has neither arr_0 (images) nor mu / sigma (statistics); "
                             f"keys: {sorted(arrays)}")
    images = labels = None
    if "arr_0" in arrays:
        images = arrays["arr_0"]
        check_uint8_images(images, f"{source}: arr_0")
        if "arr_1" in arrays:
            labels = _check_labels(arrays["arr_1"], images.shape[0], source)
    return ReferenceBatch(images=images, labels=labels, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, source=source)


def save_samples(path: PathLike, images: Union[np.ndarray, torch.Tensor], labels: Optional[object] = None) -> Path:
    """Write a sample batch ``.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` labels if given),
    readable by guided-diffusion's evaluator. Float tensors are converted with
    :func:`to_uint8_images`."""
    array = to_uint8_images(images) if isinstance(images, torch.Tensor) else images
    check_uint8_images(array, "images")
    target = Path(path).expanduser()
    if target.suffix != ".npz":
        raise AdmFormatError(f"sample files end in .npz, got {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if labels is None:
        np.savez(target, array)
    else:
        label_array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        np.savez(target, array, _check_labels(label_array, array.shape[0], str(target)))
    return target
