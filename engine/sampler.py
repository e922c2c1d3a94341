"""The one sampling loop behind every front door: guided DDPM / DDIM with a trace.

Algorithm (Dhariwal & Nichol 2021, Alg. 1 and 2), for every guidance column at once::

    x_T ~ N(0, I)                                  (from each image's own seed)
    for t = T-1 .. 0:
        eps, v = denoiser(x_t, t, y)               (batched across columns; 16-row chunks on a CPU)
        g = s_t * stabilise(grad log p_phi(y | source, t))   (engine.guidance.ColumnGuidance)
        mu, Sigma, x0_hat = p_mean_variance(eps, v)
        DDPM: x_{t-1} = mu + Sigma g + sigma_t z   (guidance on the mean)
        DDIM: eps' = eps - sqrt(1 - abar_t) g      (guidance on the score)
              x_{t-1} = DDIM(eps', eta, z)

What a column adds (its denoiser output, classifier-free mixing included, and g) lives in
``engine.guidance``; this module only batches the denoiser and applies g. ``precision``
bf16 / fp16 runs the torsos of the denoiser and the guides in 16 bits (``engine.precision``);
g and every formula of the step stay float32.

Randomness: image i draws x_T and every step's z from its own generator seeded with
``seeds[i]``, on the CPU, in a fixed order. An image therefore depends only on (seed,
class, config, steps): not on the batch, its neighbours, the other columns or the
device. All columns of one call share x_T and every z, which is the paper's "same
class label and same random seed" protocol.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from .allocator import keep_freed_memory
from .diffusion.process import GaussianDiffusion
from .diffusion.schedules import respacing_for_steps
from .guidance import ColumnGuidance, Guide, GuidanceConfig, as_guide, log_prob_of
from .precision import autocast, check_precision, converts_torso, reduced_copy
from .trace import Trace, TraceOptions

SAMPLERS = ("ddpm", "ddim")
# Rows per gradient-free denoiser call on a CPU. Batching every column's rows into one call
# is what a GPU wants; on the CPU a large batch falls out of the caches: measured on the
# 2-core AVX-512 machine (1 thread), the shared tiny pair's two-column side by side (2 x 16
# rows) ran 1.25x slower as one call of 32 than as two of 16, and the MNIST bundle's denoiser
# costs 3.9 ms per image at 16-32 rows against 6.2 ms at 128 (bench/sampling.py).
CPU_DENOISER_ROWS = 16


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


def guided_ddim_from_last_step(diffusion: GaussianDiffusion, configs: Sequence[GuidanceConfig],
                               sampler: str) -> str | None:
    """The warning text when classifier-guided DDIM starts at the process's last timestep
    T - 1, where DDIM's x0 prediction magnifies the guidance term (by ~20,000 for the cosine
    schedule) and guided samples saturate; None otherwise
    (``engine.diffusion.schedules.respacing_for_steps`` explains it and gives the spacing
    that avoids it)."""
    if sampler != "ddim" or not any(c.uses_classifier for c in configs):
        return None
    total, last = diffusion.original_num_steps, int(diffusion.timestep_map[-1])
    if last < total - 1:
        return None
    better = respacing_for_steps(total, min(diffusion.num_timesteps, total // 2), "ddim")
    return (f"classifier-guided DDIM whose first step is t = {last} (the last of the process): guided samples "
            f"usually saturate there. Use a respacing with DDIM's stride, which starts below t = {last}: "
            f"'{better}' for {better[4:]} steps")


def warn_guided_ddim_from_last_step(diffusion: GaussianDiffusion, configs: Sequence[GuidanceConfig],
                                    sampler: str) -> None:
    """Warn (:class:`GuidedDDIMWarning`) with :func:`guided_ddim_from_last_step`'s text. The
    run goes on: it is what guided-diffusion computes too."""
    text = guided_ddim_from_last_step(diffusion, configs, sampler)
    if text is not None:
        warnings.warn(text, GuidedDDIMWarning, stacklevel=3)


class GuidedDDIMWarning(UserWarning):
    """Classifier-guided DDIM from the last timestep (see :func:`warn_guided_ddim_from_last_step`)."""


class GuidedStepper:
    """One reverse step for several guidance columns, batching the denoiser across them
    (``denoiser_rows`` rows per call at most; default :data:`CPU_DENOISER_ROWS` on a CPU,
    everything in one call elsewhere)."""

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
        precision: str = "fp32",
        denoiser_rows: int | None = None,
        guide_precision: str | None = None,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be unique, got {names}")
        if not configs:
            raise ValueError("give at least one guidance config")
        device = next(denoiser.parameters()).device
        self.precision = check_precision(precision, device)
        # guides follow bf16 (its range is float32's); under fp16 they stay float32: their
        # input gradient has no loss scaling and could underflow in fp16
        default_guide = self.precision if self.precision == "bf16" else "fp32"
        self.guide_precision = check_precision(guide_precision if guide_precision is not None else default_guide,
                                               device)
        # 16-bit torsos are cached copies (engine.precision.reduced_copy); a denoiser that
        # cannot cast its torso runs under autocast, a guide that cannot in float32
        self.autocast_denoiser = self.precision != "fp32" and not converts_torso(denoiser)
        self.denoiser = denoiser if self.autocast_denoiser else reduced_copy(denoiser, self.precision)
        self.diffusion = diffusion
        self.configs = list(configs)
        self.guides = {name: self._reduced_guide(as_guide(g)) for name, g in (guides or {}).items()}
        self.sampler = sampler
        self.eta = float(eta)
        self.clip_denoised = clip_denoised
        self.denoiser_rows = denoiser_rows if denoiser_rows is not None else \
            (CPU_DENOISER_ROWS if device.type == "cpu" else None)
        class_conditional = getattr(denoiser, "num_classes", None) is not None
        for c in self.configs:
            if c.uses_classifier and c.classifier not in self.guides:
                raise ValueError(
                    f"column {c.name!r} asks for classifier {c.classifier!r}; available: {sorted(self.guides) or 'none'}")
        self.columns = {c.name: ColumnGuidance(c, self.guides.get(c.classifier or ""), diffusion, self.denoise,
                                               class_conditional=class_conditional, null_label=null_label,
                                               clip_denoised=clip_denoised)
                        for c in self.configs}
        warn_guided_ddim_from_last_step(diffusion, self.configs, sampler)

    def _reduced_guide(self, guide: Guide) -> Guide:
        if self.guide_precision == "fp32" or not converts_torso(guide.net):
            return guide
        return replace(guide, net=reduced_copy(guide.net, self.guide_precision))

    def reset(self) -> None:
        """Start new trajectories: empty every column's stabiliser state."""
        for column in self.columns.values():
            column.reset()

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The denoiser's float32 output at step indices ``t`` (the network sees the
        original-schedule timesteps), in the stepper's precision (``engine.precision``)."""
        net_t = self.diffusion.network_timesteps(t)
        with autocast(self.precision if self.autocast_denoiser else "fp32", x.device):
            out = self.denoiser(x, net_t, y) if y is not None else self.denoiser(x, net_t)
        return out.float()

    def denoise_columns(self, x: Mapping[str, torch.Tensor], t: torch.Tensor,
                        labels: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Every gradient-free denoiser evaluation the columns ask for, batched across columns
        in calls of at most :attr:`denoiser_rows` rows (every row is computed independently,
        so the split changes nothing but the speed)."""
        asks = [(name, y) for name, column in self.columns.items() for y in column.denoiser_labels(labels)]
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.columns}
        if asks:
            ys = [y for _, y in asks]
            x_all = torch.cat([x[name] for name, _ in asks])
            t_all = t.repeat(len(asks))
            y_all = torch.cat(ys) if ys[0] is not None else None
            rows = self.denoiser_rows or x_all.shape[0]
            with torch.no_grad():
                out = torch.cat([self.denoise(x_all[i:i + rows], t_all[i:i + rows],
                                              y_all[i:i + rows] if y_all is not None else None)
                                 for i in range(0, x_all.shape[0], rows)])
            for (name, _), part in zip(asks, out.split(t.shape[0])):
                outputs[name].append(part)
        return outputs

    def step(self, x: Mapping[str, torch.Tensor], t_index: int, labels: torch.Tensor,
             noise: torch.Tensor) -> dict[str, StepOutput]:
        """Algorithm 1 (DDPM) / 2 (DDIM) of Dhariwal & Nichol for every column: x_t -> x_{t-1};
        ``noise`` is the shared z."""
        d = self.diffusion
        x_any = next(iter(x.values()))
        t = torch.full((x_any.shape[0],), t_index, dtype=torch.long, device=x_any.device)
        evaluations = self.denoise_columns(x, t, labels)
        outputs: dict[str, StepOutput] = {}
        for name, column in self.columns.items():
            x_t = x[name]
            guided = column(x_t, t, labels, evaluations[name])  # eps_theta (or CFG's eps~) and g
            out = d.p_mean_variance(guided.model_output, x_t, t, clip_denoised=self.clip_denoised)
            if self.sampler == "ddpm":
                if guided.grad is not None:
                    out["mean"] = d.condition_mean(out, guided.grad)  # mu + Sigma g
                x_prev = d.ddpm_step(out, t, noise)
            else:
                if guided.grad is not None:
                    out = d.condition_score(out, x_t, t, guided.grad)  # eps - sqrt(1 - abar_t) g
                x_prev = d.ddim_step(out, x_t, t, noise, eta=self.eta)
            outputs[name] = StepOutput(x_prev.detach(), out["pred_xstart"].detach(), guided.grad_raw, guided.grad,
                                       guided.log_prob, guided.top1)
        return outputs

    def monitor(self, names: Sequence[str], x_t: torch.Tensor, net_t: torch.Tensor,
                labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """log p(y | x_t, t) and top-1 of each named guide (no gradient)."""
        results = {}
        with torch.no_grad():
            for name in names:
                if name not in self.guides:
                    raise ValueError(f"monitor {name!r} is not a guide of this run; available: {sorted(self.guides)}")
                logits = self.guides[name].logits(x_t.float(), net_t).float()
                results[name] = (log_prob_of(logits, labels), logits.argmax(-1))
        return results


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
    precision: str = "fp32",
    denoiser_rows: int | None = None,
    guide_precision: str | None = None,
) -> SampleResult:
    """Sample one image per (seed, label) for every guidance config, side by side.

    ``seeds`` (one per image) or ``noise`` (a :class:`NoiseSource`, e.g. recorded
    noise) supplies the randomness. ``progress(done, total)`` is called after every
    step; ``should_stop()`` is polled between steps and raises
    :class:`SamplingCancelled`. ``precision`` (fp32, bf16, fp16; see ``engine.precision``)
    is the networks' (the guides' too for bf16, float32 guides for fp16; ``guide_precision``
    overrides); the guidance gradient is float32 either way. ``denoiser_rows`` caps the rows of
    one denoiser call (see :class:`GuidedStepper`). Returns final images (CPU,
    [-1, 1]) and, when ``trace`` is given, a :class:`Trace` per config."""
    keep_freed_memory()
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
                            clip_denoised=clip_denoised, null_label=null_label, precision=precision,
                            denoiser_rows=denoiser_rows, guide_precision=guide_precision)
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
                "precision": stepper.precision,
                **({"guide_precision": stepper.guide_precision} if stepper.precision != "fp32" else {}),
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
