"""Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019,
"Improved Precision and Recall Metric for Assessing Generative Models").

Each set's manifold is the union of balls around its points, the radius of a point
being the distance to its k-th nearest neighbour in the same set (self excluded;
k = 3 as in the paper and in guided-diffusion's evaluator):

    r_k(x) = || x - NN_k(x, X \\ {x}) ||
    covered(y, X) = exists x in X with ||y - x|| <= r_k(x)          (inclusive)
    precision = mean over fake y of covered(y, Real)
    recall    = mean over real x of covered(x, Fake)

Distances come from ``torch.cdist`` over row x column blocks, so 50k x 50k needs only
``batch_size^2`` distances in memory at a time (a few hundred MB at the default).

Two samples of the same distribution score well below 1 (the balls are finite), so
always report :func:`real_baseline` (real vs real, two halves of the real set) beside
the numbers: it says what "as good as real data" looks like at this sample size.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

DEFAULT_BATCH_SIZE = 5000
BASELINE_SEED = 0


def _as_tensor(features: ArrayLike, name: str, device: Optional[torch.device | str],
               dtype: torch.dtype) -> torch.Tensor:
    x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) matrix, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must be numeric, got {x.dtype}")
    x = x.detach().to(device=device if device is not None else x.device, dtype=dtype)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf")
    return x


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def knn_radii(features: ArrayLike, k: int = 3, batch_size: int = DEFAULT_BATCH_SIZE,
              device: Optional[torch.device | str] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """r_k(x_i) = distance from x_i to its k-th nearest neighbour among the other points.

    Blocked: for each block of rows, a running set of the k smallest distances is merged
    with every column block; a point's own distance (the diagonal) is masked out, so a
    duplicate of x_i still counts as a neighbour at distance 0. Returns (N,) on the
    compute device in ``dtype``."""
    _check_dtype(dtype)
    _check_batch_size(batch_size)
    x = _as_tensor(features, "features", device, dtype)
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k + 1:
        raise ValueError(f"k-NN radii with k={k} need at least {k + 1} points, got {n}")
    radii = torch.empty(n, dtype=dtype, device=x.device)
    for r0 in range(0, n, batch_size):
        rows = x[r0:r0 + batch_size]
        best = torch.full((rows.shape[0], k), float("inf"), dtype=dtype, device=x.device)
        for c0 in range(0, n, batch_size):
            dist = torch.cdist(rows, x[c0:c0 + batch_size])
            lo, hi = max(r0, c0), min(r0 + rows.shape[0], c0 + dist.shape[1])
            if lo < hi:  # this block holds part of the diagonal: exclude self
                idx = torch.arange(lo, hi, device=x.device)
                dist[idx - r0, idx - c0] = float("inf")
            best = torch.cat([best, dist], dim=1).topk(k, dim=1, largest=False).values
        radii[r0:r0 + rows.shape[0]] = best[:, k - 1]
    return radii


def _coverage(real: torch.Tensor, real_radii: torch.Tensor, fake: torch.Tensor, fake_radii: torch.Tensor,
              batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake covered by the real manifold, real covered by the fake manifold), one pass
    over the real x fake distance blocks."""
    fake_in_real = torch.zeros(fake.shape[0], dtype=torch.bool, device=real.device)
    real_in_fake = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for r0 in range(0, real.shape[0], batch_size):
        rows = real[r0:r0 + batch_size]
        rows_radii = real_radii[r0:r0 + batch_size]
        for c0 in range(0, fake.shape[0], batch_size):
            dist = torch.cdist(rows, fake[c0:c0 + batch_size])
            cols = slice(c0, c0 + dist.shape[1])
            fake_in_real[cols] |= (dist <= rows_radii[:, None]).any(dim=0)
            real_in_fake[r0:r0 + rows.shape[0]] |= (dist <= fake_radii[cols][None, :]).any(dim=1)
    return fake_in_real, real_in_fake


def precision_recall(real_features: ArrayLike, fake_features: ArrayLike, k: int = 3,
                     batch_size: int = DEFAULT_BATCH_SIZE, device: Optional[torch.device | str] = None,
                     dtype: torch.dtype = torch.float32,
                     real_radii: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake_features``
    against ``real_features`` (both (N, D)).

    precision = fraction of fake samples inside some real point's k-NN ball,
    recall = fraction of real samples inside some fake point's k-NN ball (inclusive).
    ``real_radii`` (from :func:`knn_radii` with the same k, device and dtype) skips
    recomputing the real manifold when one real set is compared with many fake sets.
    The device defaults to that of ``real_features``."""
    _check_dtype(dtype)
    _check_batch_size(batch_size)
    if device is None and isinstance(real_features, torch.Tensor):
        device = real_features.device
    real = _as_tensor(real_features, "real_features", device, dtype)
    fake = _as_tensor(fake_features, "fake_features", real.device, dtype)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features have different dimensions: {real.shape[1]} vs {fake.shape[1]}")
    if real_radii is None:
        real_radii = knn_radii(real, k, batch_size, real.device, dtype)
    else:
        real_radii = real_radii.to(device=real.device, dtype=dtype)
        if real_radii.shape != (real.shape[0],):
            raise ValueError(f"real_radii must have shape ({real.shape[0]},), got {tuple(real_radii.shape)}")
    fake_radii = knn_radii(fake, k, batch_size, real.device, dtype)
    fake_in_real, real_in_fake = _coverage(real, real_radii, fake, fake_radii, batch_size)
    return {
        "precision": float(fake_in_real.double().mean()),
        "recall": float(real_in_fake.double().mean()),
        "k": int(k),
        "num_real": int(real.shape[0]),
        "num_fake": int(fake.shape[0]),
    }


def split_halves(num: int, seed: int = BASELINE_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint index sets of size num // 2 from a fixed-seed permutation (CPU
    generator, so the split is the same on every machine)."""
    if num < 2:
        raise ValueError(f"cannot split {num} samples into two halves")
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    half = num // 2
    return perm[:half], perm[half:2 * half]


def real_baseline(real_features: ArrayLike, k: int = 3, batch_size: int = DEFAULT_BATCH_SIZE,
                  device: Optional[torch.device | str] = None, dtype: torch.dtype = torch.float32,
                  seed: int = BASELINE_SEED) -> dict[str, Any]:
    """Precision / recall of one half of the real set against the other half
    (split by :func:`split_halves` with a fixed seed): the score of a perfect model at
    N/2 samples. Report it beside every precision / recall; it is below 1 because finite
    samples never cover each other's manifolds completely."""
    if device is None and isinstance(real_features, torch.Tensor):
        device = real_features.device
    real = _as_tensor(real_features, "real_features", device, dtype)
    first, second = split_halves(real.shape[0], seed)
    first, second = first.to(real.device), second.to(real.device)
    result = precision_recall(real[first], real[second], k=k, batch_size=batch_size, device=real.device, dtype=dtype)
    result["seed"] = int(seed)
    return result


def precision_recall_with_baseline(real_features: ArrayLike, fake_features: ArrayLike, k: int = 3,
                                   batch_size: int = DEFAULT_BATCH_SIZE,
                                   device: Optional[torch.device | str] = None,
                                   dtype: torch.dtype = torch.float32,
                                   seed: int = BASELINE_SEED) -> dict[str, Any]:
    """:func:`precision_recall` plus ``baseline_precision`` / ``baseline_recall`` from
    :func:`real_baseline`, in one dict."""
    result = precision_recall(real_features, fake_features, k=k, batch_size=batch_size, device=device, dtype=dtype)
    baseline = real_baseline(real_features, k=k, batch_size=batch_size, device=device, dtype=dtype, seed=seed)
    result["baseline_precision"] = baseline["precision"]
    result["baseline_recall"] = baseline["recall"]
    result["baseline_num"] = baseline["num_real"]
    return result
