"""Guidance: the gradient one column adds at a sampling step, and the one spec grammar.

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

Column specs
------------
One line of text names a column on every command line, in JSON configs and in the lab
(:func:`parse_spec`, :func:`format_spec`; ``parse_spec(format_spec(c)) == c``)::

    [NAME=]KIND[@SOURCE][+STABILISER][:SCALE][*FACTOR][/KEY=VALUE]...

- KIND: ``unguided``, ``cfg`` (classifier-free; aliases ``classifier-free``,
  ``classifier_free``; ``none`` means unguided) or the name of a guide (classifier guidance).
- SOURCE: ``x_t`` (alias ``xt``), ``x0`` (= ``x0_through_denoiser``), ``x0_detached``.
- STABILISER: ``none``, ``ema``, ``adam``.
- SCALE: the guidance scale; FACTOR multiplies it (``nonrobust@x0+adam*0.05`` scales every
  swept scale by 0.05).
- KEY=VALUE: any other :class:`GuidanceConfig` field, e.g. ``/loss=logit``,
  ``/scale_schedule=cosine_decay`` (alias ``schedule``), ``/denoiser_mode=unconditional``
  (alias ``mode``), ``/normalize_gradient=true`` (alias ``normalize``), ``/ema_beta=0.99``,
  ``/classes=1+7`` (multi-class guidance).
- Left out: NAME is the spec's text before ``:``/``*``/``/`` (``robust@x0``); SOURCE and
  SCALE are the guide's defaults in the bundle (else ``x_t`` and the caller's default, else
  1); STABILISER ``none``.

Examples: ``robust``, ``vanilla:0.5``, ``strong=robust:2``, ``nonrobust@x0+adam:0.05``,
``cfg:1.5``, ``unguided/mode=unconditional``. Names cannot contain ``=`` or ``/``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .diffusion.process import GaussianDiffusion

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


# ------------------------------------------------------------------------------ column specs
METHOD_ALIASES = {"unguided": "unguided", "none": "unguided", "cfg": "cfg", "classifier-free": "cfg",
                  "classifier_free": "cfg", "classifier": "classifier", "guided": "classifier"}
SOURCE_ALIASES = {"x_t": "x_t", "xt": "x_t", "x0": "x0_through_denoiser", "x0_through_denoiser": "x0_through_denoiser",
                  "x0_detached": "x0_detached"}
SHORT_SOURCES = {"x_t": "x_t", "x0_through_denoiser": "x0", "x0_detached": "x0_detached"}
OPTION_ALIASES = {"mode": "denoiser_mode", "schedule": "scale_schedule", "normalize": "normalize_gradient"}
SPEC_GRAMMAR = "[NAME=]KIND[@SOURCE][+STABILISER][:SCALE][*FACTOR][/KEY=VALUE]..."
_HEAD = re.compile(r"(?P<kind>[^@+:*]+)(?:@(?P<source>[^+:*]*))?(?:\+(?P<stabiliser>[^:*]*))?"
                   r"(?::(?P<scale>[^*]*))?(?:\*(?P<factor>.*))?")
_FIELDS = {f.name: f for f in fields(GuidanceConfig)}
_HEAD_FIELDS = {"name", "method", "scale"}  # set by NAME=, KIND and :SCALE only
_BOOLS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def canonical_method(text: str) -> str:
    """``classifier``, ``unguided`` or ``cfg`` from a method word or one of its aliases."""
    key = str(text).strip().lower()
    if key not in METHOD_ALIASES:
        raise ValueError(f"method {text!r} is not one of classifier, unguided, cfg")
    return METHOD_ALIASES[key]


def canonical_source(text: str) -> str:
    """A :data:`SOURCES` value from a source word or alias (``x0``, ``xt``; spaces may stand for _)."""
    key = "_".join(str(text).strip().lower().split())
    if key not in SOURCE_ALIASES:
        raise ValueError(f"source {text!r} is not one of x_t, x0 (through the denoiser), x0_detached")
    return SOURCE_ALIASES[key]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {text!r}")
    return value


def _option_value(key: str, text: str) -> Any:
    if key == "classes":
        try:
            return tuple(int(c) for c in text.split("+"))
        except ValueError:
            raise ValueError(f"classes {text!r}: write class ids joined by '+', e.g. classes=1+7") from None
    kind = _FIELDS[key].type
    if kind == "bool":
        if text.lower() not in _BOOLS:
            raise ValueError(f"{key} must be true or false, got {text!r}")
        return _BOOLS[text.lower()]
    if kind == "float":
        return _number(text, key)
    return None if kind.endswith("| None") and text.lower() == "none" else text


def _fmt_number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class GuidanceSpec:
    """A parsed column spec (see the module docstring), before the bundle's defaults.

    ``kind`` is ``unguided``, ``cfg`` or a guide name; ``source``, ``stabiliser`` and
    ``scale`` are None when the spec leaves them out; ``options`` holds the ``/KEY=VALUE``
    settings as (field, value) pairs."""

    name: str
    kind: str
    scale: float | None = None
    source: str | None = None
    stabiliser: str | None = None
    factor: float = 1.0
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "GuidanceSpec":
        """Read ``[NAME=]KIND[@SOURCE][+STABILISER][:SCALE][*FACTOR][/KEY=VALUE]...``."""
        head, *option_texts = str(text).strip().split("/")
        name, eq, core = head.partition("=")
        if not eq:
            name, core = "", head
        match = _HEAD.fullmatch(core.strip())
        if not match or not match["kind"].strip() or (eq and not name.strip()):
            raise ValueError(f"cannot read column spec {text!r}; write {SPEC_GRAMMAR}, e.g. robust:1 or "
                             "nonrobust@x0+adam:0.05")
        kind = match["kind"].strip()
        method = METHOD_ALIASES.get(kind.lower())
        kind = {"unguided": "unguided", "cfg": "cfg"}.get(method or "", kind)
        source = canonical_source(match["source"]) if match["source"] is not None else None
        stabiliser = match["stabiliser"].strip().lower() if match["stabiliser"] is not None else None
        if stabiliser is not None and stabiliser not in STABILISERS:
            raise ValueError(f"column spec {text!r}: stabiliser {stabiliser!r} is not one of {', '.join(STABILISERS)}")
        if kind in ("unguided", "cfg") and (source or stabiliser):
            raise ValueError(f"column spec {text!r}: {kind} takes no @SOURCE or +STABILISER")
        scale = _number(match["scale"], f"column spec {text!r}: scale") if match["scale"] is not None else None
        factor = _number(match["factor"], f"column spec {text!r}: factor") if match["factor"] is not None else 1.0
        options = []
        for option in option_texts:
            key, eq, value = option.partition("=")
            key = OPTION_ALIASES.get(key.strip(), key.strip())
            if not eq or key not in _FIELDS or key in _HEAD_FIELDS:
                raise ValueError(f"column spec {text!r}: {option!r} is not KEY=VALUE with KEY a guidance setting "
                                 f"({', '.join(sorted(set(_FIELDS) - _HEAD_FIELDS))})")
            options.append((key, _option_value(key, value.strip())))
        default_name = core.split(":")[0].split("*")[0].strip()
        return cls(name.strip() or default_name, kind, scale, source, stabiliser, factor, tuple(options))

    def to_config(self, guides: Mapping[str, Any] | None = None, *, scale: float | None = None,
                  denoiser_mode: str | None = None, name: str | None = None) -> GuidanceConfig:
        """The :class:`GuidanceConfig` this spec names.

        ``guides`` (a bundle's ``guide_info``: name -> object with ``default_scale`` and
        ``default_source``) checks the guide and supplies its defaults; ``scale`` is the
        caller's default scale (e.g. the sweep's), used when the spec gives none;
        ``denoiser_mode`` the caller's default mode (classifier-free columns always use
        both); ``name`` replaces the spec's name. A FACTOR multiplies the scale."""
        values: dict[str, Any] = {"name": name or self.name}
        info = None
        if self.kind in ("unguided", "cfg"):
            values["method"] = self.kind
        else:
            if guides is not None and self.kind not in guides:
                raise ValueError(f"unknown guide {self.kind!r}; this bundle has {sorted(guides)}")
            info = guides[self.kind] if guides is not None else None
            values.update(method="classifier", classifier=self.kind,
                          gradient_source=self.source or (info.default_source if info else "x_t"))
            if self.stabiliser is not None:
                values["stabiliser"] = self.stabiliser
        if denoiser_mode is not None and self.kind != "cfg":
            values["denoiser_mode"] = denoiser_mode
        chosen = self.scale
        if chosen is None and self.kind != "unguided":
            chosen = scale if scale is not None else (info.default_scale if info else None)
        if chosen is not None:
            values["scale"] = chosen * self.factor if self.factor != 1.0 else chosen
        values.update(self.options)
        return GuidanceConfig(**values)

    def __str__(self) -> str:
        core = self.kind + (f"@{SHORT_SOURCES[self.source]}" if self.source else "") + \
            (f"+{self.stabiliser}" if self.stabiliser else "")
        text = ("" if self.name == core else f"{self.name}=") + core
        text += f":{_fmt_number(self.scale)}" if self.scale is not None else ""
        text += f"*{_fmt_number(self.factor)}" if self.factor != 1.0 else ""
        for key, value in self.options:
            shown = "+".join(str(c) for c in value) if key == "classes" and value is not None else value
            text += f"/{key}={str(shown).lower() if isinstance(value, bool) else shown}"
        return text

    @classmethod
    def from_config(cls, config: GuidanceConfig) -> "GuidanceSpec":
        """The spec that names ``config`` exactly, whatever the bundle's defaults."""
        if "=" in config.name or "/" in config.name or config.name != config.name.strip() or not config.name:
            raise ValueError(f"column name {config.name!r} cannot stand in a spec (no '=', '/', or outer spaces)")
        default = GuidanceConfig(name=config.name, method=config.method,
                                 classifier=config.classifier if config.uses_classifier else None)
        source = stabiliser = scale = None
        covered = {"name", "method", "scale"}
        if config.uses_classifier:
            kind, source = config.classifier, config.gradient_source
            stabiliser = config.stabiliser if config.stabiliser != "none" else None
            covered |= {"classifier", "gradient_source", "stabiliser"}
            scale = config.scale
        else:
            kind = config.method
            scale = config.scale if config.method == "cfg" or config.scale != default.scale else None
        options = tuple((f.name, getattr(config, f.name)) for f in fields(GuidanceConfig)
                        if f.name not in covered and getattr(config, f.name) != getattr(default, f.name))
        return cls(config.name, kind, scale, source, stabiliser, 1.0, options)


def parse_spec(text: str, guides: Mapping[str, Any] | None = None, **defaults: Any) -> GuidanceConfig:
    """The :class:`GuidanceConfig` of a column spec (grammar in the module docstring);
    ``defaults`` are :meth:`GuidanceSpec.to_config`'s ``scale``, ``denoiser_mode`` and ``name``.
    Raises ValueError naming what is wrong."""
    return GuidanceSpec.parse(text).to_config(guides, **defaults)


def format_spec(config: GuidanceConfig) -> str:
    """The spec text of ``config``: ``parse_spec(format_spec(c)) == c`` with or without a
    bundle (the source and scale of a guided column are always written)."""
    return str(GuidanceSpec.from_config(config))


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
