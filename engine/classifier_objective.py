"""The training objective of a time-dependent classifier p_phi(y | x_t, t), vanilla or robust.

Robust (Kawar, Ganz & Elad 2023, Eq. 5)::

    x~_t = PGD_{||d|| <= eps}(x_t; maximise CE(f_phi(x_t + d, t), y))     untargeted, at t
    L    = CE(f_phi(x~_t, t), y)                                          on the attacked batch

with per-sample early stopping (a sample leaves the attack once f_phi misclassifies it, so
early in training the model sees mostly unattacked inputs; Section 4). Vanilla (Dhariwal &
Nichol 2021): L = CE(f_phi(x_t, t), y). The attack runs against the current weights without
building a graph for them; the loss is taken by ``train_forward`` (e.g. the
DistributedDataParallel wrapper of the same model).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import NORMS, AttackResult, default_step_size, pgd, time_dependent


@dataclass(frozen=True)
class AttackSettings:
    """The threat model and PGD budget of robust training (paper, ImageNet 128: L2, eps 0.5,
    7 steps; step size 2.5 eps / steps unless given)."""

    norm: str = "l2"
    eps: float = 0.5
    steps: int = 7
    step_size: float | None = None
    early_stop: bool = True
    random_start: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.eps <= 0 or self.steps <= 0:
            raise ValueError("eps and steps must be positive for adversarial training")

    @property
    def resolved_step_size(self) -> float:
        """The PGD step size: the given one, else :func:`engine.attacks.default_step_size`."""
        return self.step_size if self.step_size is not None else default_step_size(self.eps, self.steps)


@dataclass
class ClassifierLoss:
    """The mean cross-entropy, the logits it was taken on, the batch those logits saw
    (x~_t when attacked) and the attack's bookkeeping (None for vanilla training)."""

    loss: torch.Tensor
    logits: torch.Tensor
    inputs: torch.Tensor
    attack: AttackResult | None


def classifier_loss(classifier: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                    attack: AttackSettings | None = None, *,
                    train_forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                    generator: torch.Generator | None = None,
                    precision: Callable[[], ContextManager] = contextlib.nullcontext) -> ClassifierLoss:
    """L = CE(f(x~_t, t), y) with x~_t the untargeted PGD attack on x_t against ``classifier``
    at the network timesteps ``t`` (Eq. 5), or CE(f(x_t, t), y) without ``attack``.

    ``train_forward(x, t)`` computes the logits the loss back-propagates through (default
    the classifier itself); ``precision()`` opens the autocast context of both passes;
    ``generator`` draws the attack's random start."""
    forward = train_forward or classifier
    inputs, result = x_t, None
    if attack is not None:
        with precision():
            result = pgd(time_dependent(classifier, t), x_t, y, norm=attack.norm, eps=attack.eps,
                         steps=attack.steps, step_size=attack.resolved_step_size, early_stop=attack.early_stop,
                         rand_start=attack.random_start, generator=generator, final_check=False)
        inputs = result.x_adv
    with precision():
        logits = forward(inputs, t)
    return ClassifierLoss(F.cross_entropy(logits.float(), y), logits, inputs, result)


__all__ = ["AttackSettings", "ClassifierLoss", "classifier_loss"]
