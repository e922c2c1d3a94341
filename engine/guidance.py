"""Guidance: the gradient one column adds at a sampling step.

A guidance run is described by a plain, serialisable :class:`GuidanceConfig` (one per
column of a side-by-side run). :class:`ColumnGuidance`, built from it, owns everything the
column adds at step t, in this order:

1. **denoiser output** the step uses: eps_theta(x_t, y) (conditional), eps_theta(x_t, null)
   (``denoiser_mode='unconditional'``), or for classifier-free guidance (Ho & Salimans 2021,
   Eq. 6) eps~ = eps(x_t, null) + (1 + s) (eps(x_t, y) - eps(x_t, null)) (:func:`classifier_free_mix`);
2. **source** of the classifier gradient (``gradient_source``):
   - ``x_t``: grad_{x_t} log p_phi(y | x_t, t) of a time-dependent classifier
     (Dhariwal & Nichol 2021; Kawar, Ganz & Elad 2023);
   - ``x0_detached``: grad_{x0} log p_phi(y | x0_hat, 0) at the denoiser's clipped
     prediction x0_hat = clip((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)), used as is
     (GradCheck's cheap variant);
   - ``x0_through_denoiser``: grad_{x_t} log p_phi(y | x0_hat(x_t), 0), back-propagated
     through the denoiser (GradCheck's x0-prediction guidance);
3. **objective** (``loss``, :func:`guidance_objective`): ``log_softmax`` = sum_c log p(c | x)
   over the target classes (one class normally; several for multi-class guidance), or
   ``logit`` = sum_c f_c(x);
4. optional per-sample L2 **normalisation** g <- g / ||g||;
5. **stabiliser** carried across the steps of one trajectory, per sample and element,
   reset for every new trajectory (GradCheck, Vaeth et al. 2024):
   EMA m <- b m + (1 - b) g; Adam m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
   g_hat = m / (sqrt(v) + eps) (optionally bias-corrected);
6. **scale** s_t, optionally scheduled over the steps: the column adds g = s_t * g_hat.

The sampler (``engine.sampler``) then applies g: DDPM on the mean, mu + Sigma g; DDIM on the
score, eps - sqrt(1 - abar_t) g (Dhariwal & Nichol 2021, Algorithms 1 and 2).

GuidanceConfig, its constructors and the column-spec grammar live in ``engine.columns``
(torch-free) and are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .columns import (DENOISER_MODES, LOSSES, METHODS, SCHEDULES, SOURCES, STABILISERS, GuidanceConfig,  # noqa: F401
                      GuidanceSpec, canonical_method, canonical_source, classifier_free, classifier_guided,
                      format_spec, parse_spec, unguided)
from .diffusion.process import GaussianDiffusion


class GuidanceError(RuntimeError):
    """A guidance run cannot go on (e.g. a non-finite classifier gradient)."""


@dataclass
class Guide:
    """A classifier that can steer sampling: ``net(x, t) -> logits`` for a time-dependent
    classifier, ``net(x) -> logits`` otherwise (its gradient then normally goes through
    the predicted x0)."""

    net: nn.Module
    time_dependent: bool = True
    description: str = ""

    def logits(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t) if self.time_dependent else self.net(x)

    @property
    def num_classes(self) -> int:
        out = getattr(self.net, "out_channels", None) or getattr(self.net, "num_classes", None)
        if out is None:
            raise AttributeError("the guide's network does not say how many classes it has")
        return int(out)


def as_guide(guide: Guide | nn.Module) -> Guide:
    return guide if isinstance(guide, Guide) else Guide(guide)


def guidance_objective(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample objective J(x) whose input gradient guides the sample.

    ``targets`` is (B,) class ids or (B, K) for multi-class guidance (summed over K):
    J = sum_k log softmax(f(x))[y_k] (``log_softmax``) or sum_k f(x)[y_k] (``logit``)."""
    scores = torch.log_softmax(logits.float(), dim=-1) if loss == "log_softmax" else logits.float()
    if targets.dim() == 1:
        targets = targets[:, None]
    return scores.gather(1, targets).sum(dim=1)


def log_prob_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(y | x) of each sample's first target class (what the trace records)."""
    first = targets if targets.dim() == 1 else targets[:, 0]
    return guidance_objective(logits.detach(), first, "log_softmax")


def objective_gradient(guide: Guide, x_in: torch.Tensor, seen: torch.Tensor, t: torch.Tensor,
                       targets: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_{x_in} sum_i J(f_phi(seen_i, t_i)) and the classifier's logits.

    ``seen`` is what the classifier looks at: ``x_in`` itself, or a differentiable function
    of it (x0_hat(x_t) through the denoiser). The classifier runs in float32 whatever the
    denoiser's precision. Call under ``torch.enable_grad()``."""
    logits = guide.logits(seen.float(), t)
    objective = guidance_objective(logits, targets, loss)
    grad = torch.autograd.grad(objective.sum(), x_in)[0]
    return grad.float(), logits.detach().float()


def classifier_gradient(
    guide: Guide,
    x: torch.Tensor,
    t: torch.Tensor,
    targets: torch.Tensor,
    loss: str = "log_softmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_x sum_i J(x_i) and the per-sample log p(y | x, t) of the first target."""
    with torch.enable_grad():
        x_in = x.detach().float().requires_grad_(True)
        grad, logits = objective_gradient(guide, x_in, x_in, t, targets, loss)
    return grad, log_prob_of(logits, targets)


def per_sample_normalise(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """g / ||g||_2 per sample (flattened over C x H x W)."""
    norms = grad.flatten(1).norm(dim=1).clamp_min(eps)
    return grad / norms.reshape(-1, *([1] * (grad.dim() - 1)))


class Stabiliser:
    """Per-trajectory state that smooths the gradient across steps. A new instance (or
    :meth:`reset`) starts a new trajectory with empty state."""

    def __init__(self, config: GuidanceConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.count = 0

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.stabiliser == "none":
            return grad
        self.count += 1
        if c.stabiliser == "ema":
            self.m = grad.clone() * (1 - c.ema_beta) if self.m is None else c.ema_beta * self.m + (1 - c.ema_beta) * grad
            return self.m
        # Adam without a step size: the guidance scale plays that role (GradCheck).
        if self.m is None:
            self.m = torch.zeros_like(grad)
            self.v = torch.zeros_like(grad)
        self.m = c.adam_beta1 * self.m + (1 - c.adam_beta1) * grad
        self.v = c.adam_beta2 * self.v + (1 - c.adam_beta2) * grad * grad
        m, v = self.m, self.v
        if c.adam_bias_correction:
            m = m / (1 - c.adam_beta1**self.count)
            v = v / (1 - c.adam_beta2**self.count)
        return m / (v.sqrt() + c.adam_eps)


def scale_at(config: GuidanceConfig, t: int, num_steps: int) -> float:
    """The guidance scale at step index t of a num_steps process (t counts down to 0).

    constant: s; linear_decay: s * (t + 1) / T (strong early, at high noise);
    linear_ramp: s * (T - t) / T (strong late); cosine_decay: s * (1 - cos(pi (t + 1) / T)) / 2."""
    s = float(config.scale)
    if config.scale_schedule == "constant":
        return s
    frac = (t + 1) / num_steps
    if config.scale_schedule == "linear_decay":
        return s * frac
    if config.scale_schedule == "linear_ramp":
        return s * (num_steps - t) / num_steps
    return s * (1 - math.cos(math.pi * frac)) / 2


def check_finite(grad: torch.Tensor, config: GuidanceConfig, step: int) -> None:
    """Stop with a clear message when a classifier gradient is NaN or infinite."""
    bad = ~torch.isfinite(grad.flatten(1)).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero()[:, 0].tolist()
        raise GuidanceError(
            f"the gradient of guide {config.classifier!r} in column {config.name!r} is not finite at step "
            f"index {step} for batch rows {rows}; lower the scale, enable normalize_gradient, or check the "
            "classifier weights"
        )


def targets_for(config: GuidanceConfig, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """(B,) labels, or (B, K) when the config names several classes."""
    if config.classes is None:
        targets = labels
    else:
        targets = torch.tensor(config.classes, device=labels.device).expand(labels.shape[0], -1)
    if num_classes is not None and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"column {config.name!r}: target classes {sorted(set(targets.flatten().tolist()))} are outside "
            f"the classifier's range 0..{num_classes - 1}"
        )
    return targets


def classifier_free_mix(cond: torch.Tensor, null: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2021, Eq. 6, written with w = s):
    eps~ = eps(x_t, null) + (1 + s) (eps(x_t, y) - eps(x_t, null)) on the first ``channels``
    output channels; learned-variance channels come from the conditional output. s = 0 is
    the plain conditional model."""
    eps = null[:, :channels] + (1 + scale) * (cond[:, :channels] - null[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


# denoise(x, t, y) -> float32 network output at the (respaced) step indices t; y is None
# for a network without class input.
Denoise = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class ColumnStep:
    """What one column adds at one step: the denoiser output the step uses and the
    guidance gradient g = s_t * stabilise(normalise(grad)) (None without a classifier),
    with the raw gradient, log p(y | seen) of the first target and the classifier's top-1."""

    model_output: torch.Tensor
    grad: torch.Tensor | None = None
    grad_raw: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    top1: torch.Tensor | None = None


class ColumnGuidance:
    """The gradient one guidance column adds at step t (see the module docstring).

    Built from the column's :class:`GuidanceConfig`, its guide (None for ``unguided`` and
    ``cfg``), the process and ``denoise`` (:data:`Denoise`). Per step the sampler asks
    :meth:`denoiser_labels` which gradient-free denoiser evaluations to batch for it, then
    calls the column with (x_t, t, labels, those outputs). The column holds the
    stabiliser's state: :meth:`reset` starts a new trajectory."""

    def __init__(self, config: GuidanceConfig, guide: Guide | None, diffusion: GaussianDiffusion, denoise: Denoise,
                 *, class_conditional: bool, null_label: int | None = None, clip_denoised: bool = True):
        c = config
        if c.uses_classifier and guide is None:
            raise ValueError(f"column {c.name!r} asks for classifier {c.classifier!r} but got no guide")
        needs_null = c.method == "cfg" or c.denoiser_mode == "unconditional"
        if needs_null and class_conditional and null_label is None:
            raise ValueError(
                f"column {c.name!r} needs the denoiser's null label (classifier-free or unconditional mode), "
                "but this denoiser was not trained with one")
        if c.method == "cfg" and not class_conditional:
            raise ValueError(f"column {c.name!r}: classifier-free guidance needs a class-conditional denoiser")
        self.config, self.guide, self.diffusion, self.denoise = config, guide, diffusion, denoise
        self.class_conditional, self.null_label, self.clip_denoised = class_conditional, null_label, clip_denoised
        self.stabiliser = Stabiliser(config)

    def reset(self) -> None:
        """Start new trajectories: empty the stabiliser's state."""
        self.stabiliser.reset()

    @property
    def through_denoiser(self) -> bool:
        return self.config.uses_classifier and self.config.gradient_source == "x0_through_denoiser"

    def _label_rows(self, labels: torch.Tensor, conditional: bool = True) -> torch.Tensor | None:
        if not self.class_conditional:
            return None
        if conditional and self.config.denoiser_mode == "conditional":
            return labels
        return torch.full_like(labels, self.null_label)

    def denoiser_labels(self, labels: torch.Tensor) -> list[torch.Tensor | None]:
        """Class inputs of the gradient-free denoiser evaluations this column needs: y (the
        null label in unconditional mode), plus the null label for classifier-free guidance;
        none when the gradient goes through the denoiser (the column runs it with autograd)."""
        if self.through_denoiser:
            return []
        if self.config.method == "cfg":
            return [self._label_rows(labels, True), self._label_rows(labels, False)]
        return [self._label_rows(labels, True)]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                 outputs: Sequence[torch.Tensor]) -> ColumnStep:
        """The column's denoiser output and guidance gradient at x_t, step indices t."""
        c = self.config
        if c.method == "cfg":
            return ColumnStep(classifier_free_mix(outputs[0], outputs[1], c.scale, x_t.shape[1]))
        if not c.uses_classifier:
            return ColumnStep(outputs[0])
        targets = targets_for(c, labels, _num_classes(self.guide))
        model_output, grad_raw, logits = self._gradient(x_t, t, labels, targets, outputs[0] if outputs else None)
        step = int(t[0])
        check_finite(grad_raw, c, step)
        g = per_sample_normalise(grad_raw) if c.normalize_gradient else grad_raw
        g = scale_at(c, step, self.diffusion.num_timesteps) * self.stabiliser(g)
        return ColumnStep(model_output, g, grad_raw, log_prob_of(logits, targets), logits.argmax(-1))

    def _gradient(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                  model_output: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """grad of sum_i J over the column's source; returns (denoiser output, grad, logits)."""
        d, source = self.diffusion, self.config.gradient_source
        t_zero = torch.zeros_like(d.network_timesteps(t))
        with torch.enable_grad():
            if source == "x_t":
                x_in = x_t.detach().float().requires_grad_(True)
                seen, t_seen = x_in, d.network_timesteps(t)
            elif source == "x0_detached":  # the clean prediction, seen at timestep 0
                x_in = self._pred_x0(model_output, x_t, t).detach().float().requires_grad_(True)
                seen, t_seen = x_in, t_zero
            else:  # x0_through_denoiser: x0_hat(x_t) with autograd through the denoiser
                x_in = x_t.detach().requires_grad_(True)
                model_output = self.denoise(x_in, t, self._label_rows(labels))
                seen, t_seen = self._pred_x0(model_output, x_in, t), t_zero
            grad, logits = objective_gradient(self.guide, x_in, seen, t_seen, targets, self.config.loss)
        return model_output.detach(), grad, logits

    def _pred_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=self.clip_denoised)["pred_xstart"]


def _num_classes(guide: Guide) -> int | None:
    try:
        return guide.num_classes
    except AttributeError:
        return None


__all__ = [
    "ColumnGuidance",
    "ColumnStep",
    "GuidanceConfig",
    "GuidanceError",
    "GuidanceSpec",
    "Guide",
    "Stabiliser",
    "as_guide",
    "canonical_method",
    "canonical_source",
    "check_finite",
    "classifier_free",
    "classifier_free_mix",
    "classifier_gradient",
    "classifier_guided",
    "format_spec",
    "guidance_objective",
    "log_prob_of",
    "objective_gradient",
    "parse_spec",
    "per_sample_normalise",
    "scale_at",
    "targets_for",
    "unguided",
]
