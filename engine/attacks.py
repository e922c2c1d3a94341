"""Projected gradient descent (Madry et al. 2018) against (time-dependent) classifiers.

Untargeted: maximise CE(f(x'), y); targeted: minimise CE(f(x'), target). Each step
    L2:   x' <- x' + a * g / ||g||_2,  then project x' - x onto the ball ||.||_2 <= eps
    Linf: x' <- x' + a * sign(g),      then clip x' - x to [-eps, eps]
with g the input gradient of the objective. Default step size a = 2.5 * eps / steps
(Kawar, Ganz & Elad 2023, Appendix E).

Early stopping (Kawar et al., Eq. 5 and Section 4): a sample leaves the attack as soon
as it is misclassified (untargeted) or classified as the target (targeted); samples
that already are cost no attack compute, because only the active rows are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

NORMS = ("l2", "linf")

# forward(x_rows, row_indices) -> logits of those rows
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttackResult:
    """The attacked inputs and per-sample bookkeeping."""

    x_adv: torch.Tensor
    steps_used: torch.Tensor  # (B,) gradient steps applied to each sample
    initial_pred: torch.Tensor  # (B,) prediction on the unattacked input
    final_pred: torch.Tensor  # (B,) prediction on x_adv
    success: torch.Tensor  # (B,) bool: misclassified (untargeted) / hit the target (targeted) at the end


def default_step_size(eps: float, steps: int) -> float:
    """a = 2.5 * eps / steps (the paper's CIFAR-10 rule)."""
    return 2.5 * eps / steps


def time_dependent(net: torch.nn.Module, t: torch.Tensor) -> Forward:
    """Forward of a classifier f(x, t) at fixed per-sample timesteps."""
    return lambda x, idx: net(x, t[idx])


def time_free(net: torch.nn.Module) -> Forward:
    """Forward of a classifier f(x)."""
    return lambda x, idx: net(x)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project perturbations onto the eps-ball of the norm, per sample."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.reshape(-1, *([1] * (delta.dim() - 1)))


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norms.reshape(-1, *([1] * (grad.dim() - 1)))


def random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random point of the eps-ball around each sample."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator).to(x.device)
        return (2 * u - 1) * eps
    direction = torch.randn(x.shape, generator=generator).to(x.device)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (x.dim() - 1)))
    radius = torch.rand(x.shape[0], generator=generator).to(x.device) ** (1.0 / x[0].numel())
    return direction * (eps * radius).reshape(-1, *([1] * (x.dim() - 1)))


def _done(pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    return pred == labels if targeted else pred != labels


def pgd(
    forward: Forward,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "l2",
    eps: float = 0.5,
    steps: int = 7,
    step_size: float | None = None,
    targeted: bool = False,
    early_stop: bool = True,
    rand_start: bool = False,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = None,
    final_check: bool = True,
) -> AttackResult:
    """Attack ``x`` (labels = true classes, or target classes when ``targeted``).

    ``forward(x_rows, idx)`` returns logits for the rows ``idx`` of the batch, so the
    attack evaluates only active samples: each iteration runs one forward on the active
    rows, retires those that are already done (early stopping) and takes a gradient
    step on the rest. ``clamp`` keeps x' inside a value range (use (-1, 1) for clean
    images; leave None for noisy x_t). With ``final_check=False`` the last forward over
    the whole batch is skipped (``final_pred`` / ``success`` are then -1 / False for
    samples still attacked at the end; callers that evaluate x_adv anyway use this)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if eps < 0 or steps < 0:
        raise ValueError("eps and steps must be non-negative")
    a = default_step_size(eps, steps) if step_size is None and steps > 0 else float(step_size or 0.0)
    x = x.detach()
    batch = x.shape[0]
    device = x.device
    all_idx = torch.arange(batch, device=device)
    x_adv = x.clone()
    initial_pred = torch.full((batch,), -1, dtype=torch.long, device=device)
    if rand_start and eps > 0:
        with torch.no_grad():
            initial_pred = forward(x, all_idx).argmax(-1)
        x_adv = x + random_start(x, norm, eps, generator)
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
    steps_used = torch.zeros(batch, dtype=torch.long, device=device)
    last_pred = torch.full((batch,), -1, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    # the extra last iteration only checks where the samples ended up
    for iteration in range(steps + (0 if final_check else 1)):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0:
            break
        take_step = iteration < steps
        with torch.enable_grad():
            rows = x_adv[idx].detach().requires_grad_(take_step)
            logits = forward(rows, idx)
            pred = logits.detach().argmax(-1)
            last_pred[idx] = pred
            if iteration == 0 and not (rand_start and eps > 0):
                initial_pred[idx] = pred
            keep = ~_done(pred, labels[idx], targeted) if early_stop else torch.ones_like(pred, dtype=torch.bool)
            if early_stop:
                active[idx[~keep]] = False
            if not take_step or not bool(keep.any()):
                continue
            sel = keep.nonzero()[:, 0]
            loss = F.cross_entropy(logits[sel].float(), labels[idx[sel]], reduction="sum")
            grad = torch.autograd.grad(loss, rows)[0][sel]
        moving = idx[sel]
        direction = _ascent_direction(grad, norm)
        if targeted:
            direction = -direction
        moved = x[moving] + project(rows.detach()[sel] + a * direction - x[moving], norm, eps)
        if clamp is not None:
            moved = moved.clamp(*clamp)
        x_adv[moving] = moved
        steps_used[moving] += 1
        last_pred[moving] = -1  # not evaluated at its new position yet
    if final_check:
        with torch.no_grad():
            final_pred = forward(x_adv, all_idx).argmax(-1)
    else:
        final_pred = last_pred
    success = _done(final_pred, labels, targeted) & (final_pred >= 0)
    return AttackResult(x_adv.detach(), steps_used, initial_pred, final_pred, success)
