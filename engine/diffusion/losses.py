"""Training objective of the denoiser: the simple epsilon loss of Ho et al. (2020) plus,
for a learned variance, the variational bound term of Nichol & Dhariwal (2021, the
"hybrid" objective L_simple + L_vlb with a stop-gradient on the mean).

L_simple = || eps - eps_theta(x_t, t) ||^2 (mean over pixels)
L_vlb    = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits per dimension for t > 0,
           -log p(x_0 | x_1) under a discretised Gaussian decoder for t = 0.
"""

from __future__ import annotations

import math

import torch

from .process import GaussianDiffusion


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """A fast tanh approximation of the standard normal CDF (as used in image likelihoods)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log-probability of 8-bit images x in [-1, 1] (bins of width 2/255) under a
    Gaussian; the end bins absorb the tails. Elementwise, in nats."""
    centred = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def vlb_terms(diffusion: GaussianDiffusion, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Per-sample variational-bound term in bits per dimension (no clipping of x0_hat)."""
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=False)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def training_losses(diffusion: GaussianDiffusion, model_output: torch.Tensor, x_start: torch.Tensor,
                    x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample losses for a network output at (x_t = q_sample(x_start, t, noise), t).

    Returns ``mse`` (L_simple), ``vb`` (L_vlb with the mean detached, zero for fixed
    variance) and ``loss`` = mse + vb."""
    channels = x_start.shape[1]
    mean_part, var_values = diffusion.split_output(model_output, channels)
    target = noise if diffusion.mean_type == "epsilon" else x_start
    mse = _mean_flat((target - mean_part.float()) ** 2)
    if var_values is not None:
        frozen = torch.cat([mean_part.detach(), var_values], dim=1).float()
        vb = vlb_terms(diffusion, frozen, x_start, x_t, t)
    else:
        vb = torch.zeros_like(mse)
    return {"loss": mse + vb, "mse": mse, "vb": vb}
