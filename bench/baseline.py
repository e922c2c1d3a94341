"""A straightforward guided-diffusion-style sampling loop: the benchmark's baseline.

Written for the benchmark from the formulas (Ho et al. 2020; Nichol & Dhariwal 2021,
learned range variance; Dhariwal & Nichol 2021, Algorithm 1), the way the reference's
``classifier_sample.py`` runs it: one method at a time, noise from the global RNG
(``torch.randn_like``), and per step one denoiser forward plus one classifier forward
and backward::

    eps, v = model(x_t, tau_t, y)                      tau_t: original-schedule timestep
    x0_hat = clip(sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps, -1, 1)
    mu = c1_t x0_hat + c2_t x_t                       (posterior mean coefficients)
    log Sigma = f log beta_t + (1 - f) log beta~_t,   f = (v + 1) / 2
    g = s grad_x log softmax(f_phi(x_t, tau_t))[y]
    x_{t-1} = mu + Sigma g + [t > 0] exp(log Sigma / 2) z,   z ~ N(0, I)

Only the beta schedule and the respacing rule (``space_timesteps``) come from the
engine; every array and the loop are computed here, so the engine's sampler is measured
against an independent implementation of the same arithmetic.

The networks are the engine's (same weights, same modules), run the way guided-diffusion's
own ``unet.py`` runs them (:func:`with_guided_diffusion_ops`): its ``AttentionBlock`` always
goes through its gradient checkpoint (``checkpoint(self._forward, (x,), self.parameters(),
True)``: the forward runs without a graph and is recomputed in the backward, which then
also takes the gradients of the block's parameters), its ``Upsample`` calls
``F.interpolate`` and its ``Downsample`` torch's average-pooling kernel. None of these
changes a value; they are what guided-diffusion costs.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.diffusion import named_beta_schedule, space_timesteps
from engine.nets.layers import AttentionBlock, Downsample, Upsample


class _RecomputedInBackward(torch.autograd.Function):
    """guided-diffusion's gradient checkpoint, written from its description: ``run(x)``
    without a graph in the forward; in the backward, ``run`` again on a detached copy of
    x with the graph, then gradients w.r.t. x and every parameter passed (those of the
    parameters are computed and dropped, as the reference's ``CheckpointFunction`` does)."""

    @staticmethod
    def forward(ctx, run, x, *params):  # noqa: ANN001 - autograd protocol
        ctx.run, ctx.params = run, params
        ctx.save_for_backward(x)
        with torch.no_grad():
            return run(x)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001 - autograd protocol
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.run(x.view_as(x))
        grads = torch.autograd.grad(out, (x, *ctx.params), grad_out, allow_unused=True)
        return (None, *grads)


def with_guided_diffusion_ops(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (an engine UNet or classifier) whose attention blocks recompute in
    the backward, whose upsampling calls ``F.interpolate`` and whose average-pool
    downsampling calls torch's kernel, as guided-diffusion's own modules do; its parameters
    require gradients, as ``classifier_sample.py`` leaves them. Outputs are equal to ``net``'s."""
    net = copy.deepcopy(net)
    for module in net.modules():
        if isinstance(module, AttentionBlock):
            block = module
            params = tuple(block.parameters())
            block.forward = lambda x, block=block, params=params: _RecomputedInBackward.apply(block._forward, x, *params)
        elif isinstance(module, Upsample) and module.dims == 2:
            up = module

            def interpolate(x: torch.Tensor, up: Upsample = up) -> torch.Tensor:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                return up.conv(x) if up.use_conv else x

            up.forward = interpolate
        elif isinstance(module, Downsample):
            module.forward = lambda x, op=module.op: op(x)  # nn.AvgPool2d or the strided convolution
    for p in net.parameters():
        p.requires_grad_(True)
    return net


class BaselineDiffusion:
    """The respaced process with its float64 coefficient arrays (guided-diffusion style)."""

    def __init__(self, steps: int = 1000, schedule: str = "linear", respacing: str = ""):
        base = named_beta_schedule(schedule, steps)
        base_abar = np.cumprod(1.0 - base)
        kept = sorted(space_timesteps(steps, respacing)) if respacing else list(range(steps))
        betas, last = [], 1.0
        for i in kept:  # beta_i = 1 - abar_i / abar_prev over the kept steps
            betas.append(1.0 - base_abar[i] / last)
            last = base_abar[i]
        self.timestep_map = torch.tensor(kept, dtype=torch.long)
        self.betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(kept)
        abar = np.cumprod(1.0 - self.betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.sqrt_recip_abar = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_abar = np.sqrt(1.0 / abar - 1.0)
        posterior_var = self.betas * (1.0 - abar_prev) / (1.0 - abar)
        self.posterior_log_var = np.log(np.append(posterior_var[1], posterior_var[1:]))
        self.log_betas = np.log(self.betas)
        self.coef1 = self.betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - self.betas) / (1.0 - abar)

    @staticmethod
    def _at(array: np.ndarray, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(array)[t].float()[:, None, None, None]

    def p_mean_variance(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        out = model(x, self.timestep_map[t], y)
        eps, v = out.split(x.shape[1], dim=1)
        frac = (v + 1) / 2
        log_var = frac * self._at(self.log_betas, t) + (1 - frac) * self._at(self.posterior_log_var, t)
        x0 = (self._at(self.sqrt_recip_abar, t) * x - self._at(self.sqrt_recipm1_abar, t) * eps).clamp(-1, 1)
        mean = self._at(self.coef1, t) * x0 + self._at(self.coef2, t) * x
        return mean, log_var, x0


def classifier_grad_fn(classifier: nn.Module, scale: float) -> Callable:
    """cond_fn of classifier_sample.py: s * grad_x log p_phi(y | x_t, t)."""

    def cond_fn(x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, timesteps), dim=-1)
            selected = log_probs[torch.arange(len(y)), y]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


def guided_ddpm_loop(model: nn.Module, classifier: nn.Module, diffusion: BaselineDiffusion, x_T: torch.Tensor,
                     y: torch.Tensor, scale: float, noise_fn: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
                     ) -> torch.Tensor:
    """Classifier-guided ancestral sampling (Dhariwal & Nichol, Algorithm 1) from ``x_T``;
    ``noise_fn(x)`` draws each step's z (default: the global RNG)."""
    cond_fn = classifier_grad_fn(classifier, scale)
    x = x_T
    with torch.no_grad():
        for i in reversed(range(diffusion.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long)
            mean, log_var, _ = diffusion.p_mean_variance(model, x, t, y)
            z = noise_fn(x)
            mean = mean + torch.exp(log_var) * cond_fn(x, diffusion.timestep_map[t], y).float()
            x = mean + (i > 0) * torch.exp(0.5 * log_var) * z
    return x
