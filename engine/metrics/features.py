"""Feature extractors for FID / precision / recall, and the judge's class accuracy.

Every extractor has the same small interface (:class:`FeatureExtractor`): a ``name``,
the feature ``dim``, and ``extractor(images) -> (N, dim)`` float32 features on the CPU,
for float NCHW images in [-1, 1]. Work is done in batches of ``batch_size`` on
``device`` with gradients off. :func:`extract_features` feeds a stream of batches (for
sets too large to hold as float images).

- :class:`InceptionV3Features`: the standard FID feature space (2048-d pool_3 of the
  FID Inception-v3; see :mod:`engine.metrics.inception`). Images are resized to 299 x 299
  bilinearly (``align_corners=False``, no antialiasing, as pytorch-fid) and grey images
  are repeated to 3 channels. The network expects [-1, 1], which is the engine's range.
- :class:`JudgeFeatures`: the penultimate vector of a bundle's judge network, the demo's
  feature space (MNIST-sized images, where Inception features mean little).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inception import FEATURE_DIM, INPUT_SIZE, FIDInceptionV3, load_fid_inception

RANGE_TOLERANCE = 1e-3


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (N, C, H, W) float in [-1, 1] -> features (N, dim) float32 on the CPU."""

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a float NCHW tensor in [-1, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (float NCHW in [-1, 1]), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be NCHW (4 dimensions), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be float in [-1, 1], got {images.dtype}; convert uint8 NHWC arrays with "
                        "engine.metrics.adm.to_float_images")
    if images.numel() and (images.min() < -1 - RANGE_TOLERANCE or images.max() > 1 + RANGE_TOLERANCE):
        raise ValueError(f"{name} must lie in [-1, 1], got values in [{float(images.min()):.3g}, "
                         f"{float(images.max()):.3g}]")


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch a module to eval mode (restores the caller's mode)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


class BatchedExtractor:
    """Shared batching: subclasses implement ``_features(batch on device) -> (B, dim)``."""

    name: str = "features"
    dim: int = 0

    def __init__(self, batch_size: int, device: Union[str, torch.device]):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        outputs = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                batch = images[start:start + self.batch_size].to(self.device, torch.float32)
                outputs.append(self._features(batch).float().cpu())
        if not outputs:
            return torch.zeros(0, self.dim)
        return torch.cat(outputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"


def extract_features(extractor: FeatureExtractor, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Features of a stream of image batches, concatenated: (sum of N, dim)."""
    parts = [extractor(batch) for batch in batches]
    if not parts:
        return torch.zeros(0, extractor.dim)
    return torch.cat(parts)


class InceptionV3Features(BatchedExtractor):
    """2048-d FID Inception-v3 pool_3 features (the standard FID feature space).

    ``weights_path`` (else ``$RCG_INCEPTION_WEIGHTS``) must point to the user's copy of
    ``pt_inception-2015-12-05-6726825d.pth``; nothing is downloaded, and a missing file
    raises :class:`engine.metrics.inception.InceptionWeightsError` naming the file, where
    it is published and how to pass it. ``model`` injects an already built network
    (tests, or a model shared between extractors)."""

    name = "inception-v3-fid"
    dim = FEATURE_DIM

    def __init__(self, weights_path: Optional[Union[str, os.PathLike]] = None, device: Union[str, torch.device] = "cpu",
                 batch_size: int = 50, model: Optional[FIDInceptionV3] = None, verify_hash: bool = True):
        super().__init__(batch_size, device)
        net = model if model is not None else load_fid_inception(weights_path, verify_hash=verify_hash)
        self.model = net.eval().requires_grad_(False).to(self.device)

    @staticmethod
    def preprocess(batch: torch.Tensor) -> torch.Tensor:
        """Grey -> 3 channels; bilinear resize to 299 x 299; values stay in [-1, 1]
        (pytorch-fid maps [0, 1] to [-1, 1] after resizing; both steps are affine per
        pixel, so the order does not matter)."""
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        elif batch.shape[1] != 3:
            raise ValueError(f"Inception features need 1 or 3 channels, got {batch.shape[1]}")
        if tuple(batch.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            batch = F.interpolate(batch, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return batch

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(batch))


class JudgeFeatures(BatchedExtractor):
    """Penultimate features of a judge network (``judge.features(x)``, e.g.
    :class:`engine.nets.plain.JudgeNet`): the demo's FID / precision / recall space."""

    name = "judge"

    def __init__(self, judge: nn.Module, batch_size: int = 256, device: Optional[Union[str, torch.device]] = None):
        super().__init__(batch_size, device if device is not None else _module_device(judge))
        if not callable(getattr(judge, "features", None)):
            raise TypeError(f"{type(judge).__name__} has no features(x) method; JudgeFeatures needs a judge network "
                            "such as engine.nets.plain.JudgeNet")
        self.judge = judge.to(self.device)
        self.dim = int(getattr(judge, "feature_dim"))

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        _check_judge_channels(self.judge, batch)
        with _eval_mode(self.judge):
            return self.judge.features(batch)


def _check_judge_channels(judge: nn.Module, batch: torch.Tensor) -> None:
    expected = getattr(judge, "in_channels", None)
    if expected is not None and batch.shape[1] != expected:
        raise ValueError(f"the judge takes {expected}-channel images, got {batch.shape[1]} channels")


def _as_label_tensor(labels: Union[torch.Tensor, np.ndarray, Sequence[int]], count: int) -> torch.Tensor:
    out = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if out.is_floating_point() or out.dtype == torch.bool or out.is_complex():
        raise TypeError(f"labels must be integers, got {out.dtype}")
    out = out.reshape(-1).long().cpu()
    if out.shape[0] != count:
        raise ValueError(f"got {out.shape[0]} labels for {count} images")
    return out


def judge_predictions(judge: nn.Module, images: torch.Tensor, batch_size: int = 256,
                      device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """argmax_y judge(x)_y for each image, (N,) int64 on the CPU."""
    check_images(images)
    device = torch.device(device) if device is not None else _module_device(judge)
    judge = judge.to(device)
    predictions = []
    with torch.no_grad(), _eval_mode(judge):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device, torch.float32)
            _check_judge_channels(judge, batch)
            predictions.append(judge(batch).argmax(dim=1).cpu())
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def class_accuracy(judge: nn.Module, images: torch.Tensor, labels: Union[torch.Tensor, np.ndarray, Sequence[int]],
                   batch_size: int = 256, device: Optional[Union[str, torch.device]] = None) -> float:
    """Fraction of images the judge classifies as the class they were asked for:
    mean_i [argmax_y judge(x_i)_y == y_i]. "Does the image show the class asked for"."""
    check_images(images)
    targets = _as_label_tensor(labels, images.shape[0])
    if images.shape[0] == 0:
        raise ValueError("class accuracy of an empty set of images is undefined")
    predictions = judge_predictions(judge, images, batch_size, device)
    return float((predictions == targets).double().mean())
