"""What a sampling run records along the way, per guidance column.

Scalars (classifier log-probability, top-1, gradient norms, step-to-step cosine
similarity of the gradients) are kept for every step; image-sized tensors (x_t, the
predicted x0, the raw and applied gradients) only every ``record_every`` steps and at
the last one, on the CPU, optionally in float16, so memory stays bounded.

The cosine similarity is GradCheck's gradient-stability measure (Vaeth et al. 2024,
Figure 1): cos(g_k, g_{k-1}) = <g_k, g_{k-1}> / (||g_k|| ||g_{k-1}||), each gradient
flattened over C x H x W, per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class TraceOptions:
    """How much a run records. ``monitors`` names guides whose log p(y | x_t, t) is
    evaluated on every column's x_t at every step (one extra forward each)."""

    record_every: int = 1
    keep_tensors: bool = True
    float16: bool = False
    monitors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {self.record_every}")
        object.__setattr__(self, "monitors", tuple(self.monitors))


@dataclass
class Snapshot:
    """Image-sized tensors of one recorded step (CPU)."""

    step: int
    t: int
    timestep: float
    x_t: torch.Tensor
    pred_x0: torch.Tensor
    grad_raw: torch.Tensor | None
    grad_applied: torch.Tensor | None


def cosine_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample's flattened a and b; NaN where either is exactly
    zero (e.g. guidance through a clipped x0 at the first step), where it is undefined."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    cos = (a * b).sum(1) / norms.clamp_min(1e-300)
    return torch.where(norms > 0, cos, torch.full_like(cos, float("nan"))).float()


@dataclass
class Trace:
    """The record of one column (guidance config) of a run."""

    config: dict[str, Any]
    seeds: list[int]
    labels: list[int]
    steps: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    log_prob: list[torch.Tensor] = field(default_factory=list)
    top1: list[torch.Tensor] = field(default_factory=list)
    grad_norm: list[torch.Tensor] = field(default_factory=list)
    applied_norm: list[torch.Tensor] = field(default_factory=list)
    cos_raw: list[torch.Tensor] = field(default_factory=list)
    cos_applied: list[torch.Tensor] = field(default_factory=list)
    monitor_log_prob: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    monitor_top1: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    _previous_raw: torch.Tensor | None = field(default=None, repr=False)
    _previous_applied: torch.Tensor | None = field(default=None, repr=False)

    def add_step(
        self,
        *,
        step: int,
        t: int,
        timestep: float,
        x_t: torch.Tensor,
        pred_x0: torch.Tensor,
        grad_raw: torch.Tensor | None,
        grad_applied: torch.Tensor | None,
        log_prob: torch.Tensor | None,
        top1: torch.Tensor | None,
        monitors: dict[str, tuple[torch.Tensor, torch.Tensor]],
        keep_tensors: bool,
        float16: bool,
    ) -> None:
        batch = x_t.shape[0]
        nan = torch.full((batch,), math.nan)
        self.steps.append(int(t))
        self.timesteps.append(float(timestep))
        self.log_prob.append(log_prob.detach().float().cpu() if log_prob is not None else nan)
        self.top1.append(top1.detach().cpu() if top1 is not None else torch.full((batch,), -1))
        if grad_raw is not None:
            self.grad_norm.append(grad_raw.flatten(1).norm(dim=1).float().cpu())
            self.applied_norm.append(grad_applied.flatten(1).norm(dim=1).float().cpu())
            self.cos_raw.append(
                cosine_per_sample(grad_raw, self._previous_raw).cpu() if self._previous_raw is not None else nan)
            self.cos_applied.append(
                cosine_per_sample(grad_applied, self._previous_applied).cpu()
                if self._previous_applied is not None else nan)
            self._previous_raw, self._previous_applied = grad_raw.detach(), grad_applied.detach()
        else:
            for series in (self.grad_norm, self.applied_norm, self.cos_raw, self.cos_applied):
                series.append(nan)
        for name, (lp, top) in monitors.items():
            self.monitor_log_prob.setdefault(name, []).append(lp.detach().float().cpu())
            self.monitor_top1.setdefault(name, []).append(top.detach().cpu())
        if keep_tensors:
            dtype = torch.float16 if float16 else torch.float32

            def keep(tensor: torch.Tensor | None) -> torch.Tensor | None:
                return None if tensor is None else tensor.detach().to("cpu", dtype)

            self.snapshots.append(Snapshot(step, int(t), float(timestep), keep(x_t), keep(pred_x0),
                                           keep(grad_raw), keep(grad_applied)))

    def series(self, name: str) -> torch.Tensor:
        """A per-step scalar series stacked to (steps, batch): log_prob, top1, grad_norm,
        applied_norm, cos_raw, cos_applied, or ``monitor:<guide>``."""
        if name.startswith("monitor:"):
            values = self.monitor_log_prob[name.split(":", 1)[1]]
        else:
            values = getattr(self, name)
        return torch.stack(values) if values else torch.empty(0)

    def summary(self) -> dict[str, Any]:
        """Per-step mean and standard deviation, and median and quartiles (``q25``,
        ``q75``), over the batch of every scalar series (NaN-aware), as plain lists for
        plotting or JSON. Quartiles stay inside the data's range (a norm's band never
        reaches below 0, as mean - std can)."""
        out: dict[str, Any] = {"t": list(self.steps), "timestep": list(self.timesteps)}
        names = ["log_prob", "grad_norm", "applied_norm", "cos_raw", "cos_applied"]
        names += [f"monitor:{m}" for m in self.monitor_log_prob]
        for name in names:
            values = self.series(name).double()
            finite = torch.isfinite(values)
            count = finite.sum(1).clamp_min(1)
            filled = torch.where(finite, values, torch.zeros_like(values))
            mean = filled.sum(1) / count
            var = (torch.where(finite, (values - mean[:, None]) ** 2, torch.zeros_like(values))).sum(1) / count
            mean = torch.where(finite.any(1), mean, torch.full_like(mean, math.nan))
            if values.numel():
                quartiles = torch.nanquantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype), dim=1)
            else:
                quartiles = torch.full((3, values.shape[0]), math.nan, dtype=values.dtype)
            out[name] = {"mean": mean.tolist(), "std": var.sqrt().tolist(), "q25": quartiles[0].tolist(),
                         "median": quartiles[1].tolist(), "q75": quartiles[2].tolist()}
        return out

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain types only, so ``torch.load(weights_only=True)`` reads it."""
        return {
            "config": self.config,
            "seeds": list(self.seeds),
            "labels": list(self.labels),
            "steps": list(self.steps),
            "timesteps": list(self.timesteps),
            **{name: self.series(name) for name in
               ("log_prob", "top1", "grad_norm", "applied_norm", "cos_raw", "cos_applied")},
            "monitor_log_prob": {k: torch.stack(v) for k, v in self.monitor_log_prob.items()},
            "monitor_top1": {k: torch.stack(v) for k, v in self.monitor_top1.items()},
            "snapshots": [
                {"step": s.step, "t": s.t, "timestep": s.timestep, "x_t": s.x_t, "pred_x0": s.pred_x0,
                 "grad_raw": s.grad_raw, "grad_applied": s.grad_applied}
                for s in self.snapshots
            ],
        }

    def save(self, path: str | Path) -> None:
        torch.save(self.to_dict(), path)
