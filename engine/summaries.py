"""Summaries of a run for display: gradient stability per column (GradCheck), frame picking,
what an attack changed.

- :func:`record_every_for`: the trace's ``record_every`` that keeps about ``frames``
  image-sized snapshots of a ``num_steps`` run (memory stays bounded on big models);
- :func:`evenly_spaced`: ``k`` indices spread evenly over ``0 .. n-1``, ends included
  (the paper's Figure 5 shows predicted x0 at uniformly spaced steps);
- :func:`column_stability`: one row per guidance column of a :class:`SampleResult`
  traced with :class:`TraceOptions`: the batch-and-step mean of the per-sample cosine
  similarity between consecutive guidance gradients (Vaeth et al. 2024, Figure 1), its
  mean over the second half of the run (the low-noise steps), the mean gradient norm, the final log p(y | x_t) of the
  column's own guide, and the judge's class accuracy of the final images with its
  binomial standard error sqrt(p (1 - p) / n);
- :func:`perturbation`: what a targeted attack changed (delta and its L2 / Linf norms);
- :func:`gradient_problems`: why a gradient map shows nothing (zero, not finite, constant).

Means ignore NaN entries (the first step has no previous gradient; unguided columns
have no gradient at all) and are NaN when nothing is finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .metrics import class_accuracy
from .sampler import SampleResult


def record_every_for(num_steps: int, frames: int) -> int:
    """``record_every`` giving at most ``frames + 1`` snapshots over ``num_steps`` steps
    (the trace always adds the last step)."""
    if num_steps < 1 or frames < 1:
        raise ValueError("num_steps and frames must be positive")
    if frames == 1:
        return num_steps
    return max(1, math.ceil((num_steps - 1) / (frames - 1)))


def evenly_spaced(n: int, k: int) -> list[int]:
    """``min(n, k)`` distinct indices spread evenly over ``0 .. n-1``, first and last included."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _nanmean(values: torch.Tensor) -> float:
    values = values.double().flatten()
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.nan


@dataclass
class StabilityRow:
    """The stability figures of one guidance column."""

    column: str
    method: str
    guide: str
    source: str
    stabiliser: str
    denoiser_mode: str
    scale: float
    images: int
    mean_cos: float
    late_cos: float
    mean_grad_norm: float
    final_log_prob: float
    judge_accuracy: float
    judge_accuracy_se: float = math.nan  # binomial standard error of judge_accuracy over the images

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_stability(result: SampleResult, judge: nn.Module | None = None, gradient: str = "raw") -> list[StabilityRow]:
    """Stability figures of every column of a traced run.

    ``gradient='raw'`` uses the classifier gradient as computed; ``'applied'`` the one
    the step used (after normalisation, stabiliser and scale). ``judge`` (a bundle's
    judge) scores the final images against their labels; NaN without one."""
    if gradient not in ("raw", "applied"):
        raise ValueError("gradient must be 'raw' or 'applied'")
    if not result.traces:
        raise ValueError("this run was not traced; sample with trace=TraceOptions(...)")
    rows = []
    labels = torch.as_tensor(result.labels)
    for config in result.configs:
        trace = result.traces[config.name]
        cos = trace.series("cos_raw" if gradient == "raw" else "cos_applied")
        norms = trace.series("grad_norm" if gradient == "raw" else "applied_norm")
        log_prob = trace.series("log_prob")
        late = cos[cos.shape[0] // 2:] if cos.numel() else cos
        # the judge reads the image as shown and saved: the last step's mean (plus the guide's
        # shift) can overshoot [-1, 1], and every export clamps it (engine.data.to_uint8)
        shown = result.images[config.name].clamp(-1, 1)
        accuracy = class_accuracy(judge, shown, labels) if judge is not None else math.nan
        accuracy_se = binomial_se(accuracy, int(labels.numel()))
        is_classifier = config.method == "classifier"
        rows.append(StabilityRow(
            column=config.name, method=config.method, guide=config.classifier or "",
            source=config.gradient_source if is_classifier else "",
            stabiliser=config.stabiliser if is_classifier else "",
            denoiser_mode=config.denoiser_mode, scale=float(config.scale) if config.method != "unguided" else 0.0,
            images=int(labels.numel()), mean_cos=_nanmean(cos), late_cos=_nanmean(late), mean_grad_norm=_nanmean(norms),
            final_log_prob=_nanmean(log_prob[-1]) if log_prob.numel() else math.nan, judge_accuracy=accuracy,
            judge_accuracy_se=accuracy_se))
    return rows


def binomial_se(p: float, n: int) -> float:
    """Standard error sqrt(p (1 - p) / n) of a fraction ``p`` measured on ``n`` trials
    (NaN when ``p`` is NaN or ``n`` < 1)."""
    if n < 1 or math.isnan(p):
        return math.nan
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def perturbation(x_start: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """delta = x_adv - x_start with its L2 and Linf norms (over all elements): what a
    targeted attack changed, for display beside the attacked image."""
    delta = (x_adv.detach().float() - x_start.detach().float()).cpu()
    return delta, float(delta.flatten().norm()), float(delta.abs().max()) if delta.numel() else 0.0


GRADIENT_PROBLEMS = {
    "not finite": "the gradient has NaN or infinite entries (an overflow in the classifier or the denoiser)",
    "zero, x0 clipped": "the gradient is exactly 0: every pixel of the predicted x0 is at the clip limit +-1 "
                        "(early, noisy steps), so nothing flows back through the clip",
    "zero": "the gradient is exactly 0 (e.g. the classifier is certain: p(y) rounds to 1 in float32)",
    "constant": "the gradient is the same at every pixel, so a min-max map has nothing to show",
}


def gradient_problems(grads: torch.Tensor, pred_x0: torch.Tensor | None = None) -> list[str]:
    """Per image of (N, C, H, W) ``grads``: ``""`` when its map shows something, else a
    key of :data:`GRADIENT_PROBLEMS`: "not finite", "zero" ("zero, x0 clipped" when the
    matching ``pred_x0`` lies at +-1 everywhere, i.e. the gradient went through a fully
    clipped x0), or "constant"."""
    g = grads.detach().float().flatten(1)
    clipped = None
    if pred_x0 is not None:
        clipped = (pred_x0.detach().float().flatten(1).abs() >= 1.0).all(dim=1)
    out = []
    for i in range(g.shape[0]):
        row = g[i]
        if not torch.isfinite(row).all():
            out.append("not finite")
        elif not row.any():
            out.append("zero, x0 clipped" if clipped is not None and bool(clipped[i]) else "zero")
        elif row.numel() > 1 and bool((row == row[0]).all()):
            out.append("constant")
        else:
            out.append("")
    return out


__all__ = ["GRADIENT_PROBLEMS", "StabilityRow", "binomial_se", "column_stability", "evenly_spaced",
           "gradient_problems", "perturbation", "record_every_for"]
