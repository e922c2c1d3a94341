"""The one sampling loop behind every front door: guided DDPM / DDIM with a trace.

Algorithm (Dhariwal & Nichol 2021, Alg. 1 and 2), for every guidance column at once::

    x_T ~ N(0, I)                                  (from each image's own seed)
    for t = T-1 .. 0:
        eps, v = denoiser(x_t, t, y)               (one batched call for all columns)
        mu, Sigma, x0_hat = p_mean_variance(eps, v)
        g = s * stabilise(grad log p_phi(y | source, t))
        DDPM: x_{t-1} = mu + Sigma g + sigma_t z   (guidance on the mean)
        DDIM: eps' = eps - sqrt(1 - abar_t) g      (guidance on the score)
              x_{t-1} = DDIM(eps', eta, z)

Randomness: image i draws x_T and every step's z from its own generator seeded with
``seeds[i]``, on the CPU, in a fixed order. An image therefore depends only on (seed,
class, config, steps): not on the batch, its neighbours, the other columns or the
device. All columns of one call share x_T and every z, which is the paper's "same
class label and same random seed" protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from .diffusion.process import GaussianDiffusion
from .guidance import (
    Guide,
    GuidanceConfig,
    Stabiliser,
    as_guide,
    check_finite,
    classifier_gradient,
    guidance_objective,
    per_sample_normalise,
    scale_at,
    targets_for,
)
from .trace import Trace, TraceOptions

SAMPLERS = ("ddpm", "ddim")


class SamplingCancelled(RuntimeError):
    """Raised between steps when the caller asked to stop."""


class NoiseSource(Protocol):
    """Supplies x_T and the per-step Gaussian noise of a batch."""

    def initial(self) -> torch.Tensor: ...

    def step(self, k: int) -> torch.Tensor: ...


class SeededNoise:
    """One CPU generator per image: x_T first, then one draw per step, in step order."""

    def __init__(self, seeds: Sequence[int], shape: Sequence[int]):
        if len(seeds) == 0:
            raise ValueError("give at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.shape = tuple(shape)
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def _draw(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def initial(self) -> torch.Tensor:
        return self._draw()

    def step(self, k: int) -> torch.Tensor:
        return self._draw()


class RecordedNoise:
    """Replays a recorded x_T and per-step noises (e.g. the reference trajectories)."""

    def __init__(self, x_T: torch.Tensor, noises: Sequence[torch.Tensor] | torch.Tensor):
        self.x_T = x_T
        self.noises = noises

    def initial(self) -> torch.Tensor:
        return self.x_T.clone()

    def step(self, k: int) -> torch.Tensor:
        return self.noises[k].clone()


@dataclass
class StepOutput:
    """What one guided step produced for one column."""

    sample: torch.Tensor
    pred_x0: torch.Tensor
    grad_raw: torch.Tensor | None = None
    grad_applied: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    top1: torch.Tensor | None = None


@dataclass
class SampleResult:
    """Final images per column (CPU float32 in [-1, 1]), traces, and the settings that
    regenerate them."""

    images: dict[str, torch.Tensor]
    traces: dict[str, Trace]
    seeds: list[int]
    labels: list[int]
    configs: list[GuidanceConfig]
    settings: dict[str, Any] = field(default_factory=dict)

    def run_config(self) -> dict[str, Any]:
        """Everything needed to regenerate these images, as plain values."""
        return {"seeds": self.seeds, "labels": self.labels,
                "configs": [c.to_dict() for c in self.configs], **self.settings}


class GuidedStepper:
    """One reverse step for several guidance columns, batching the denoiser across them."""

    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: GaussianDiffusion,
        configs: Sequence[GuidanceConfig],
        guides: Mapping[str, Guide | nn.Module] | None = None,
        *,
        sampler: str = "ddpm",
        eta: float = 0.0,
        clip_denoised: bool = True,
        null_label: int | None = None,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be unique, got {names}")
        if not configs:
            raise ValueError("give at least one guidance config")
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.configs = list(configs)
        self.guides = {name: as_guide(g) for name, g in (guides or {}).items()}
        self.sampler = sampler
        self.eta = float(eta)
        self.clip_denoised = clip_denoised
        self.null_label = null_label
        self.class_conditional = getattr(denoiser, "num_classes", None) is not None
        for c in self.configs:
            if c.uses_classifier and c.classifier not in self.guides:
                raise ValueError(
                    f"column {c.name!r} asks for classifier {c.classifier!r}; available: {sorted(self.guides) or 'none'}")
            needs_null = c.method == "cfg" or c.denoiser_mode == "unconditional"
            if needs_null and self.class_conditional and null_label is None:
                raise ValueError(
                    f"column {c.name!r} needs the denoiser's null label (classifier-free or unconditional mode), "
                    "but this denoiser was not trained with one")
            if c.method == "cfg" and not self.class_conditional:
                raise ValueError(f"column {c.name!r}: classifier-free guidance needs a class-conditional denoiser")
        self.stabilisers = {c.name: Stabiliser(c) for c in self.configs}

    def reset(self) -> None:
        """Start new trajectories: empty every stabiliser's state."""
        for s in self.stabilisers.values():
            s.reset()

    # ---------------------------------------------------------------- denoiser
    def _denoiser_labels(self, config: GuidanceConfig, labels: torch.Tensor, conditional: bool) -> torch.Tensor | None:
        if not self.class_conditional:
            return None
        if conditional and config.denoiser_mode == "conditional":
            return labels
        return torch.full_like(labels, self.null_label)

    def _run_denoiser(self, xs: list[torch.Tensor], ys: list[torch.Tensor | None], timesteps: torch.Tensor) -> list[torch.Tensor]:
        batch = torch.cat(xs)
        y = torch.cat(ys) if ys[0] is not None else None
        t = timesteps.repeat(len(xs))
        out = self.denoiser(batch, t, y) if y is not None else self.denoiser(batch, t)
        return list(out.float().split([x.shape[0] for x in xs]))

    def model_outputs(self, x: Mapping[str, torch.Tensor], t: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Denoiser outputs of every column that does not back-propagate through it, in
        one batched call (classifier-free columns add an unconditional copy)."""
        xs, ys, owners = [], [], []
        for c in self.configs:
            if c.gradient_source == "x0_through_denoiser" and c.uses_classifier:
                continue
            xs.append(x[c.name]); ys.append(self._denoiser_labels(c, labels, True)); owners.append((c, "main"))
            if c.method == "cfg":
                xs.append(x[c.name]); ys.append(self._denoiser_labels(c, labels, False)); owners.append((c, "null"))
        if not xs:
            return {}
        with torch.no_grad():
            outs = self._run_denoiser(xs, ys, self.diffusion.network_timesteps(t))
        results: dict[str, torch.Tensor] = {}
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for (c, role), out in zip(owners, outs):
            parts.setdefault(c.name, {})[role] = out
        channels = next(iter(x.values())).shape[1]
        for c in self.configs:
            if c.name not in parts:
                continue
            if c.method == "cfg":
                cond, null = parts[c.name]["main"], parts[c.name]["null"]
                eps = null[:, :channels] + (1 + c.scale) * (cond[:, :channels] - null[:, :channels])
                results[c.name] = torch.cat([eps, cond[:, channels:]], dim=1)
            else:
                results[c.name] = parts[c.name]["main"]
        return results

    # ---------------------------------------------------------------- one step
    def step(self, x: Mapping[str, torch.Tensor], t_index: int, labels: torch.Tensor,
             noise: torch.Tensor) -> dict[str, StepOutput]:
        """Advance every column from x_t to x_{t-1}; ``noise`` is the shared z."""
        d = self.diffusion
        any_x = next(iter(x.values()))
        batch = any_x.shape[0]
        t = torch.full((batch,), t_index, dtype=torch.long, device=any_x.device)
        net_t = d.network_timesteps(t)
        model_out = self.model_outputs(x, t, labels)
        outputs: dict[str, StepOutput] = {}
        for c in self.configs:
            x_t = x[c.name]
            grad_raw = log_prob = top1 = None
            if c.uses_classifier and c.gradient_source == "x0_through_denoiser":
                out, grad_raw, log_prob, top1 = self._through_denoiser(c, x_t, t, labels)
            else:
                out = d.p_mean_variance(model_out[c.name], x_t, t, clip_denoised=self.clip_denoised)
                if c.uses_classifier:
                    grad_raw, log_prob, top1 = self._classifier_grad(c, x_t, out["pred_xstart"], net_t, labels)
            grad_applied = None
            if grad_raw is not None:
                check_finite(grad_raw, c, t_index)
                g = per_sample_normalise(grad_raw) if c.normalize_gradient else grad_raw
                g = self.stabilisers[c.name](g)
                grad_applied = scale_at(c, t_index, d.num_timesteps) * g
            if self.sampler == "ddpm":
                if grad_applied is not None:
                    out = {**out, "mean": d.condition_mean(out, grad_applied)}
                sample = d.ddpm_step(out, t, noise)
            else:
                if grad_applied is not None:
                    out = d.condition_score(out, x_t, t, grad_applied)
                sample = d.ddim_step(out, x_t, t, noise, eta=self.eta)
            outputs[c.name] = StepOutput(sample.detach(), out["pred_xstart"].detach(), grad_raw, grad_applied,
                                         log_prob, top1)
        return outputs

    def _classifier_grad(self, c: GuidanceConfig, x_t: torch.Tensor, pred_x0: torch.Tensor, net_t: torch.Tensor,
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        guide = self.guides[c.classifier]
        targets = targets_for(c, labels, _num_classes(guide))
        if c.gradient_source == "x_t":
            source, t_in = x_t, net_t
        else:  # x0_detached: the clean prediction, seen at timestep 0
            source, t_in = pred_x0.detach(), torch.zeros_like(net_t)
        grad, log_prob = classifier_gradient(guide, source, t_in, targets, c.loss)
        top1 = self._top1(guide, source, t_in)
        return grad, log_prob, top1

    def _through_denoiser(self, c: GuidanceConfig, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor):
        """x0_hat(x_t) through the denoiser with autograd; gradient w.r.t. x_t."""
        d = self.diffusion
        guide = self.guides[c.classifier]
        targets = targets_for(c, labels, _num_classes(guide))
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            (model_out,) = self._run_denoiser([x_in], [self._denoiser_labels(c, labels, True)], d.network_timesteps(t))
            out = d.p_mean_variance(model_out, x_in, t, clip_denoised=self.clip_denoised)
            t_zero = torch.zeros_like(d.network_timesteps(t))
            grad, log_prob = classifier_gradient_through(guide, x_in, out["pred_xstart"], t_zero, targets, c.loss)
        out = {k: v.detach() for k, v in out.items()}
        return out, grad, log_prob, self._top1(guide, out["pred_xstart"], t_zero)

    @staticmethod
    def _top1(guide: Guide, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return guide.logits(x.float(), t).argmax(-1)

    def monitor(self, names: Sequence[str], x_t: torch.Tensor, net_t: torch.Tensor,
                labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """log p(y | x_t, t) and top-1 of each named guide (no gradient)."""
        results = {}
        with torch.no_grad():
            for name in names:
                if name not in self.guides:
                    raise ValueError(f"monitor {name!r} is not a guide of this run; available: {sorted(self.guides)}")
                logits = self.guides[name].logits(x_t.float(), net_t).float()
                results[name] = (torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0], logits.argmax(-1))
        return results


def classifier_gradient_through(guide: Guide, x_in: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
                                targets: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_{x_t} J(classifier(x0_hat(x_t))): one backward through classifier and denoiser."""
    logits = guide.logits(x0_hat.float(), t)
    objective = guidance_objective(logits, targets, loss)
    grad = torch.autograd.grad(objective.sum(), x_in)[0]
    first = targets if targets.dim() == 1 else targets[:, 0]
    log_prob = torch.log_softmax(logits.detach().float(), -1).gather(1, first[:, None])[:, 0]
    return grad.float(), log_prob


def _num_classes(guide: Guide) -> int | None:
    try:
        return guide.num_classes
    except AttributeError:
        return None


def sample(
    denoiser: nn.Module,
    diffusion: GaussianDiffusion,
    configs: Sequence[GuidanceConfig],
    labels: Sequence[int] | torch.Tensor,
    *,
    seeds: Sequence[int] | None = None,
    noise: NoiseSource | None = None,
    guides: Mapping[str, Guide | nn.Module] | None = None,
    sampler: str = "ddpm",
    eta: float = 0.0,
    clip_denoised: bool = True,
    null_label: int | None = None,
    image_shape: Sequence[int] | None = None,
    trace: TraceOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_bar: bool = False,
    device: torch.device | str | None = None,
) -> SampleResult:
    """Sample one image per (seed, label) for every guidance config, side by side.

    ``seeds`` (one per image) or ``noise`` (a :class:`NoiseSource`, e.g. recorded
    noise) supplies the randomness. ``progress(done, total)`` is called after every
    step; ``should_stop()`` is polled between steps and raises
    :class:`SamplingCancelled`. Returns final images (CPU, [-1, 1]) and, when ``trace``
    is given, a :class:`Trace` per config."""
    device = torch.device(device) if device is not None else next(denoiser.parameters()).device
    labels_t = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if image_shape is None:
        image_shape = (denoiser.in_channels, denoiser.image_size, denoiser.image_size)
    if noise is None:
        if seeds is None:
            raise ValueError("give seeds (one per image) or a noise source")
        if len(seeds) != len(labels_t):
            raise ValueError(f"got {len(seeds)} seeds for {len(labels_t)} labels; give one seed per image")
        noise = SeededNoise(seeds, image_shape)
    n_classes = getattr(denoiser, "num_classes", None)
    if n_classes is not None:
        real_classes = n_classes - (1 if null_label is not None else 0)
        if int(labels_t.min()) < 0 or int(labels_t.max()) >= real_classes:
            raise ValueError(f"class labels must lie in 0..{real_classes - 1}, got {labels_t.tolist()}")
    if diffusion.num_timesteps <= 0:
        raise ValueError("the process has no steps")
    stepper = GuidedStepper(denoiser, diffusion, configs, guides, sampler=sampler, eta=eta,
                            clip_denoised=clip_denoised, null_label=null_label)
    labels_t = labels_t.to(device)
    x_T = noise.initial().to(device)
    if x_T.shape[0] != len(labels_t):
        raise ValueError(f"the noise source gave {x_T.shape[0]} images for {len(labels_t)} labels")
    x = {c.name: x_T for c in configs}
    traces = {c.name: Trace(c.to_dict(), list(seeds or []), labels_t.tolist()) for c in configs} if trace else {}
    total = diffusion.num_timesteps
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sampling", unit="step")
    try:
        for k, t_index in enumerate(range(total - 1, -1, -1)):
            if should_stop is not None and should_stop():
                raise SamplingCancelled(f"stopped after {k} of {total} steps")
            z = noise.step(k).to(device)
            outputs = stepper.step(x, t_index, labels_t, z)
            if trace:
                _record(trace, traces, stepper, x, outputs, k, t_index, total, labels_t)
            x = {name: o.sample for name, o in outputs.items()}
            if bar is not None:
                bar.update(1)
            if progress is not None:
                progress(k + 1, total)
    finally:
        if bar is not None:
            bar.close()
    settings = {"sampler": sampler, "eta": eta, "clip_denoised": clip_denoised, "num_steps": total,
                "diffusion": diffusion.config.to_dict() if diffusion.config else None}
    return SampleResult({name: v.detach().float().cpu() for name, v in x.items()}, traces,
                        list(seeds or []), labels_t.cpu().tolist(), list(configs), settings)


def _record(options: TraceOptions, traces: dict[str, Trace], stepper: GuidedStepper, x: Mapping[str, torch.Tensor],
            outputs: Mapping[str, StepOutput], k: int, t_index: int, total: int, labels: torch.Tensor) -> None:
    t = torch.full((labels.shape[0],), t_index, dtype=torch.long, device=labels.device)
    net_t = stepper.diffusion.network_timesteps(t)
    keep = options.keep_tensors and (k % options.record_every == 0 or t_index == 0)
    for c in stepper.configs:
        o = outputs[c.name]
        monitors = stepper.monitor(options.monitors, x[c.name], net_t, labels) if options.monitors else {}
        traces[c.name].add_step(
            step=k, t=t_index, timestep=float(net_t[0]), x_t=x[c.name], pred_x0=o.pred_x0, grad_raw=o.grad_raw,
            grad_applied=o.grad_applied, log_prob=o.log_prob, top1=o.top1, monitors=monitors,
            keep_tensors=keep, float16=options.float16)
