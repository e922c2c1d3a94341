"""Fréchet distance between Gaussian fits of two feature sets (the "FID" when the
features are Inception-v3 pool features; Heusel et al. 2017, "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium").

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Stable trace term: S1 S2 has the same eigenvalues as the symmetric positive
semi-definite matrix M = S1^{1/2} S2 S1^{1/2} (eig(AB) = eig(BA) with A = S1^{1/2},
B = S1^{1/2} S2), so

    tr((S1 S2)^{1/2}) = sum_i sqrt(max(lambda_i(M), 0)),

with S1^{1/2} from ``eigh`` (negative eigenvalues, which are rounding noise, clipped
to 0). Everything is float64 and real; no ``scipy.linalg.sqrtm`` (whose ``disp=False``
form, used by most FID code, is deprecated in scipy 1.17) and no complex parts to drop.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_float64(array: ArrayLike, name: str = "array") -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor (any device)."""
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64).numpy()
    out = np.asarray(array, dtype=np.float64)
    if out.dtype == object:
        raise TypeError(f"{name} must be numeric, got an object array")
    return out


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof = 1, as ``np.cov(rowvar=False)`` in the
    reference FID code) of an (N, D) feature set, in float64."""
    x = as_float64(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must be an (N, D) matrix, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf; check the images and the feature extractor")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _sym_sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """S^{1/2} of a symmetric PSD matrix by eigh, eigenvalues clipped to >= 0."""
    sym = (matrix + matrix.T) / 2.0
    eigenvalues, vectors = np.linalg.eigh(sym)
    root = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (vectors * root) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) = sum sqrt(clip(eig(S1^{1/2} S2 S1^{1/2}), 0))."""
    root1 = _sym_sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def _check_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> None:
    if mu.ndim != 1:
        raise ValueError(f"mu{which} must be a vector, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{which} must be {mu.shape[0]} x {mu.shape[0]} to match mu{which}, "
                         f"got shape {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{which} / sigma{which} contain NaN or inf")


def frechet_distance_from_stats(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}) (Heusel et al. 2017).

    Symmetric in its two Gaussians. Rounding can push the exact value 0 (identical
    statistics) a hair below zero; the result is clipped at 0."""
    m1, s1 = as_float64(mu1, "mu1"), as_float64(sigma1, "sigma1")
    m2, s2 = as_float64(mu2, "mu2"), as_float64(sigma2, "sigma2")
    _check_stats(m1, s1, "1")
    _check_stats(m2, s2, "2")
    if m1.shape != m2.shape:
        raise ValueError(f"the two feature spaces differ: {m1.shape[0]} vs {m2.shape[0]} dimensions "
                         "(were the statistics computed with different feature extractors?)")
    diff = m1 - m2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(value, 0.0)


def frechet_distance(features1: ArrayLike, features2: ArrayLike) -> float:
    """Fréchet distance between Gaussian fits of two (N, D) feature sets (FID when the
    features are Inception pool features)."""
    return frechet_distance_from_stats(*gaussian_stats(features1), *gaussian_stats(features2))
