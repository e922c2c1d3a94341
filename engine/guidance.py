"""Guidance methods: what gradient steers a sampling step, and how it is shaped.

A guidance run is described by a plain, serialisable :class:`GuidanceConfig`. The
pieces, in the order the sampler applies them at each step:

1. **source** of the gradient (``gradient_source``):
   - ``x_t``: grad_{x_t} log p_phi(y | x_t, t) of a time-dependent classifier
     (Dhariwal & Nichol 2021; Kawar, Ganz & Elad 2023);
   - ``x0_detached``: grad_{x0} log p_phi(y | x0_hat, 0) at the denoiser's clipped
     prediction x0_hat = clip((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)), used as is
     (GradCheck's cheap variant);
   - ``x0_through_denoiser``: grad_{x_t} log p_phi(y | x0_hat(x_t), 0), back-propagated
     through the denoiser (GradCheck's x0-prediction guidance).
2. **objective** (``loss``): ``log_softmax`` = sum_c log p(c | x) over the target classes
   (one class normally; several for multi-class guidance), or ``logit`` = sum_c f_c(x).
3. optional per-sample L2 **normalisation** g <- g / ||g||.
4. **stabiliser** carried across the steps of one trajectory, per sample and element,
   reset for every new trajectory (GradCheck, Vaeth et al. 2024):
   EMA m <- b m + (1 - b) g; Adam m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
   g_hat = m / (sqrt(v) + eps) (optionally bias-corrected).
5. **scale** s, optionally scheduled over the steps; the applied gradient is s * g_hat.

Classifier-free guidance (Ho & Salimans 2021) instead mixes two denoiser outputs,
eps = eps(x_t, null) + (1 + s) (eps(x_t, y) - eps(x_t, null)); ``unguided`` uses none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import torch
from torch import nn

METHODS = ("unguided", "classifier", "cfg")
SOURCES = ("x_t", "x0_detached", "x0_through_denoiser")
LOSSES = ("log_softmax", "logit")
STABILISERS = ("none", "ema", "adam")
SCHEDULES = ("constant", "linear_decay", "linear_ramp", "cosine_decay")
DENOISER_MODES = ("conditional", "unconditional")


class GuidanceError(RuntimeError):
    """A guidance run cannot go on (e.g. a non-finite classifier gradient)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """One column of a side-by-side run. Serialise with :meth:`to_dict`; every image the
    system writes stores this next to it so it can be regenerated.

    ``name`` labels the column; ``classifier`` names a guide of the bundle (``vanilla``,
    ``robust``, ``nonrobust`` in the demo bundle). ``classes`` switches to multi-class
    guidance: the objective sums over these classes instead of each sample's label.
    ``denoiser_mode='unconditional'`` feeds the denoiser its null label (GradCheck's
    setting: an unconditional model steered only by the classifier)."""

    name: str = "guided"
    method: str = "classifier"
    classifier: str | None = None
    scale: float = 1.0
    scale_schedule: str = "constant"
    gradient_source: str = "x_t"
    loss: str = "log_softmax"
    normalize_gradient: bool = False
    stabiliser: str = "none"
    ema_beta: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-4
    adam_bias_correction: bool = False
    classes: tuple[int, ...] | None = None
    denoiser_mode: str = "conditional"

    def __post_init__(self) -> None:
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the allowed values."""
        def check(value: Any, allowed: Sequence[str], what: str) -> None:
            if value not in allowed:
                raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")

        check(self.method, METHODS, "method")
        check(self.gradient_source, SOURCES, "gradient_source")
        check(self.loss, LOSSES, "loss")
        check(self.stabiliser, STABILISERS, "stabiliser")
        check(self.scale_schedule, SCHEDULES, "scale_schedule")
        check(self.denoiser_mode, DENOISER_MODES, "denoiser_mode")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        if self.method == "classifier" and not self.classifier:
            raise ValueError(f"config {self.name!r}: classifier guidance needs a classifier name")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"ema_beta must lie in [0, 1), got {self.ema_beta}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0 and self.adam_eps > 0):
            raise ValueError("Adam needs 0 <= beta1, beta2 < 1 and eps > 0")
        if self.classes is not None and len(self.classes) == 0:
            raise ValueError("classes, when given, must name at least one class")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if values["classes"] is not None:
            values["classes"] = list(values["classes"])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GuidanceConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown guidance settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    @property
    def uses_classifier(self) -> bool:
        return self.method == "classifier"


def unguided(name: str = "unguided", denoiser_mode: str = "conditional") -> GuidanceConfig:
    """The plain conditional (or unconditional) denoiser."""
    return GuidanceConfig(name=name, method="unguided", denoiser_mode=denoiser_mode)


def classifier_guided(classifier: str, scale: float, name: str | None = None, **options: Any) -> GuidanceConfig:
    """Classifier guidance by the bundle guide ``classifier`` with scale ``scale``."""
    return GuidanceConfig(name=name or classifier, method="classifier", classifier=classifier, scale=scale, **options)


def classifier_free(scale: float, name: str = "cfg") -> GuidanceConfig:
    """Classifier-free guidance with strength ``scale`` (needs a null label)."""
    return GuidanceConfig(name=name, method="cfg", scale=scale)


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


def classifier_gradient(
    guide: Guide,
    x: torch.Tensor,
    t: torch.Tensor,
    targets: torch.Tensor,
    loss: str = "log_softmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_x sum_i J(x_i) and the per-sample log p(y | x, t) of the first target.

    The classifier runs in float32 whatever the denoiser's precision."""
    with torch.enable_grad():
        x_in = x.detach().float().requires_grad_(True)
        logits = guide.logits(x_in, t)
        objective = guidance_objective(logits, targets, loss)
        grad = torch.autograd.grad(objective.sum(), x_in)[0]
    first = targets if targets.dim() == 1 else targets[:, 0]
    log_prob = torch.log_softmax(logits.detach().float(), -1).gather(1, first[:, None])[:, 0]
    return grad, log_prob


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


__all__ = [
    "GuidanceConfig",
    "GuidanceError",
    "Guide",
    "Stabiliser",
    "as_guide",
    "classifier_free",
    "classifier_gradient",
    "classifier_guided",
    "guidance_objective",
    "per_sample_normalise",
    "scale_at",
    "targets_for",
    "unguided",
    "check_finite",
]
