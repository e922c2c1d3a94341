"""Comparisons of a side-by-side run, image by image: what the judge reads in every
final image, and what guidance alone changed between two columns.

- :func:`judge_verdicts`: the bundle's judge (an independent classifier that never
  guides, trained on the training split) on each final image x: p = softmax(judge(x)),
  the verdict argmax_k p_k with its probability, and whether it is the class the column
  was guided towards (Kawar et al. grade generated images with an independent
  classifier the same way);
- :func:`column_difference`: d = x_A - x_B per seed for two columns A and B of one run.
  Every column of a run starts from the same x_T and draws the same noise at every step
  (one generator per seed; see :mod:`engine.sampler`), so d is the effect of guidance
  alone; with it its L2 and Linf norms per image and the largest |d| (the symmetric
  range of a signed colour map).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from .sampler import SampleResult


@dataclass(frozen=True)
class JudgeVerdict:
    """The judge on one final image."""

    column: str
    seed: int
    requested: int  # the class the column was guided towards
    predicted: int  # argmax of the judge's softmax
    probability: float  # the judge's probability of ``predicted``
    requested_probability: float  # and of ``requested``

    @property
    def agrees(self) -> bool:
        return self.predicted == self.requested

    def to_dict(self) -> dict:
        return {**asdict(self), "agrees": self.agrees}


def judge_probabilities(judge: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """softmax(judge(x)) for (N, C, H, W) images in [-1, 1]: (N, classes), float32, CPU."""
    device = next(judge.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).float().clamp(-1, 1)  # as shown and saved
            out.append(torch.softmax(judge(x).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def judge_verdicts(judge: nn.Module, result: SampleResult, columns: Sequence[str] | None = None) -> list[JudgeVerdict]:
    """One verdict per (column, seed) of ``result``, columns in run order, seeds in order."""
    names = list(columns) if columns is not None else [c.name for c in result.configs]
    verdicts = []
    for name in names:
        if name not in result.images:
            raise KeyError(f"no column {name!r} in this run; columns: {list(result.images)}")
        probs = judge_probabilities(judge, result.images[name])
        for i, (seed, label) in enumerate(zip(result.seeds, result.labels)):
            k = int(probs[i].argmax())
            verdicts.append(JudgeVerdict(name, int(seed), int(label), k, float(probs[i, k]),
                                         float(probs[i, int(label)])))
    return verdicts


@dataclass
class ColumnDifference:
    """x_A - x_B per seed for two columns of one run."""

    a: str
    b: str
    seeds: list[int]
    images_a: torch.Tensor  # (N, C, H, W) in [-1, 1]
    images_b: torch.Tensor
    delta: torch.Tensor  # images_a - images_b, in [-2, 2]
    l2: list[float]  # ||d_i||_2 over all elements of image i
    linf: list[float]  # max |d_i|
    scale: float  # max |d| over the whole run (0 when A and B are identical)


def column_difference(result: SampleResult, a: str, b: str) -> ColumnDifference:
    """d = x_A - x_B for every seed (same seed, same noise: guidance alone)."""
    for name in (a, b):
        if name not in result.images:
            raise KeyError(f"no column {name!r} in this run; columns: {list(result.images)}")
    x_a, x_b = result.images[a].detach().float().cpu(), result.images[b].detach().float().cpu()
    delta = x_a - x_b
    flat = delta.flatten(1)
    l2 = flat.norm(dim=1).tolist() if flat.numel() else []
    linf = flat.abs().max(dim=1).values.tolist() if flat.numel() else []
    return ColumnDifference(a, b, [int(s) for s in result.seeds], x_a, x_b, delta, l2, linf, max(linf, default=0.0))


__all__ = ["ColumnDifference", "JudgeVerdict", "column_difference", "judge_probabilities", "judge_verdicts"]
