"""The Gaussian diffusion process: forward noising, the posterior, the reverse-step
mean and variance from a network output, classifier-guided DDPM and DDIM steps.

Only math lives here: every function takes the network's output as a tensor, so the
process is testable without a model (the sampler in :mod:`engine.sampler` calls the
networks). Formulas follow Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (learned
variance), Song et al. 2021 (DDIM) and Dhariwal & Nichol 2021 (classifier guidance).

Index convention: ``t`` is an integer index into this (possibly respaced) process,
0 .. num_timesteps - 1; :meth:`GaussianDiffusion.network_timesteps` maps it to the
timestep value the networks were trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .schedules import named_beta_schedule, respaced_betas, space_timesteps

VARIANCE_TYPES = ("learned_range", "learned", "fixed_small", "fixed_large")
MEAN_TYPES = ("epsilon", "start_x")


@dataclass(frozen=True)
class DiffusionConfig:
    """Plain, serialisable description of a diffusion process (guided-diffusion's
    ``create_gaussian_diffusion`` arguments)."""

    steps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = True
    sigma_small: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    timestep_respacing: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DiffusionConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown diffusion settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def respaced(self, respacing: str) -> "DiffusionConfig":
        values = self.to_dict()
        values["timestep_respacing"] = respacing
        return DiffusionConfig(**values)


def _extract(array: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """array[t] cast to float32 AFTER indexing the float64 array (as the reference does),
    shaped to broadcast over a tensor with ``ndim`` dimensions."""
    values = array.to(t.device)[t].float()
    return values.reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """A discrete Gaussian diffusion q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),
    possibly a respaced subsequence of a longer process."""

    def __init__(
        self,
        betas: np.ndarray,
        *,
        mean_type: str = "epsilon",
        variance_type: str = "learned_range",
        timestep_map: list[int] | None = None,
        original_num_steps: int | None = None,
        rescale_timesteps: bool = False,
        config: DiffusionConfig | None = None,
    ):
        if mean_type not in MEAN_TYPES:
            raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.mean_type = mean_type
        self.variance_type = variance_type
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(len(betas)), dtype=torch.long)
        self.original_num_steps = original_num_steps or len(betas)
        self.rescale_timesteps = rescale_timesteps
        self.config = config

        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        arrays = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "alphas_cumprod_next": np.append(ac[1:], 0.0),
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
            "posterior_variance": posterior_variance,
            # the posterior variance is 0 at t = 0; clip the log by reusing step 1's value
            "posterior_log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:]))
            if len(betas) > 1 else np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            "log_betas": np.log(betas),
            "fixed_large_variance": np.append(posterior_variance[1], betas[1:]) if len(betas) > 1 else betas,
        }
        self.arrays = {name: value for name, value in arrays.items()}
        self._tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}

    # ------------------------------------------------------------------ helpers
    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _extract(self._tensors[name], t, like.dim()).to(like.device)

    def _check_t(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"t must be integer step indices of this process, got dtype {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_timesteps:
            raise ValueError(f"step indices must lie in [0, {self.num_timesteps - 1}], got {t.tolist()}")
        return t

    def network_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the networks receive for step index ``t``: the original
        schedule's timestep (``timestep_map[t]``), scaled to [0, 1000) as a float if the
        process rescales timesteps (improved-diffusion models)."""
        original = self.timestep_map.to(t.device)[t]
        if self.rescale_timesteps:
            return original.float() * (1000.0 / self.original_num_steps)
        return original

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I): mean, variance, log variance."""
        t = self._check_t(t, x_start.shape[0])
        mean = self._at("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = self._at("alphas_cumprod", t, x_start)
        return mean, 1.0 - variance, self._at("log_one_minus_alphas_cumprod", t, x_start)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I)."""
        t = self._check_t(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        return (self._at("sqrt_alphas_cumprod", t, x_start) * x_start
                + self._at("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, beta~_t I) with
        c1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t), c2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t),
        beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t). Returns mean, variance, clipped log variance."""
        t = self._check_t(t, x_t.shape[0])
        mean = self._at("posterior_mean_coef1", t, x_t) * x_start + self._at("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._at("posterior_variance", t, x_t), self._at("posterior_log_variance_clipped", t, x_t)

    # ------------------------------------------------------------------ reverse process
    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._at("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1)."""
        return (self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x_start) / self._at(
            "sqrt_recipm1_alphas_cumprod", t, x_t)

    def split_output(self, model_output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a network output into the mean part and, for learned variance, the
        variance values."""
        if self.variance_type in ("learned", "learned_range"):
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"a learned-variance process needs 2 x {channels} output channels, got {model_output.shape[1]}; "
                    "set learn_sigma to match the checkpoint"
                )
            return model_output[:, :channels], model_output[:, channels:]
        if model_output.shape[1] != channels:
            raise ValueError(
                f"a fixed-variance process needs {channels} output channels, got {model_output.shape[1]}; "
                "set learn_sigma to match the checkpoint"
            )
        return model_output, None

    def step_variance(self, var_values: torch.Tensor | None, t: torch.Tensor,
                      x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Variance and log-variance of p(x_{t-1} | x_t) for this process's variance type.

        learned range (Nichol & Dhariwal): log s2 = v' log beta_t + (1 - v') log beta~_t with
        v' = (v + 1) / 2; learned: log s2 = v; fixed small: beta~_t; fixed large: beta_t
        (beta~_1 at t = 0). ``var_values`` are the network's variance channels (None for a
        fixed variance)."""
        if self.variance_type == "learned":
            return torch.exp(var_values), var_values
        if self.variance_type == "learned_range":
            min_log = self._at("posterior_log_variance_clipped", t, x_t)
            max_log = self._at("log_betas", t, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_variance), log_variance
        if self.variance_type == "fixed_large":
            return (self._at("fixed_large_variance", t, x_t).expand_as(x_t),
                    torch.log(self._at("fixed_large_variance", t, x_t)).expand_as(x_t))
        return (self._at("posterior_variance", t, x_t).expand_as(x_t),
                self._at("posterior_log_variance_clipped", t, x_t).expand_as(x_t))

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Mean and variance of p(x_{t-1} | x_t) from the network output at (x_t, t).

        Variance: :meth:`step_variance`. Mean: the posterior mean at x0_hat, where x0_hat comes from
        the predicted epsilon (optionally clipped to [-1, 1]).
        Returns mean, variance, log_variance, pred_xstart and eps (the network's epsilon)."""
        t = self._check_t(t, x_t.shape[0])
        mean_part, var_values = self.split_output(model_output, x_t.shape[1])
        variance, log_variance = self.step_variance(var_values, t, x_t)
        if self.mean_type == "epsilon":
            pred_xstart = self.predict_xstart_from_eps(x_t, t, mean_part)
        else:
            pred_xstart = mean_part
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        eps = mean_part if self.mean_type == "epsilon" else self.predict_eps_from_xstart(x_t, t, pred_xstart)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "eps": eps}

    # ------------------------------------------------------------------ guidance
    @staticmethod
    def condition_mean(out: dict[str, torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
        """Guidance on the mean (Sohl-Dickstein et al. 2015; Dhariwal & Nichol Alg. 1):
        mu' = mu + Sigma * grad, where grad = s * grad_x log p(y | x_t) already holds the scale."""
        return out["mean"].float() + out["variance"] * grad.float()

    def condition_score(self, out: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                        grad: torch.Tensor) -> dict[str, torch.Tensor]:
        """Guidance on the score (Song et al. 2021; Dhariwal & Nichol Alg. 2):
        eps' = eps - sqrt(1 - abar_t) * grad; returns the guided pred_xstart (not re-clipped),
        eps and posterior mean."""
        t = self._check_t(t, x_t.shape[0])
        alpha_bar = self._at("alphas_cumprod", t, x_t)
        eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * grad
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {**out, "pred_xstart": pred_xstart, "mean": mean, "eps": eps}

    # ------------------------------------------------------------------ steps
    def ddpm_step(self, out: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Ancestral step x_{t-1} = mu + [t > 0] * exp(log_variance / 2) * z."""
        nonzero = (t != 0).float().reshape(-1, *([1] * (noise.dim() - 1))).to(noise.device)
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_step(self, out: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  eta: float = 0.0) -> torch.Tensor:
        """DDIM step (Song et al. 2021, Eq. 12):
        x_{t-1} = x0_hat sqrt(abar_{t-1}) + sqrt(1 - abar_{t-1} - sigma^2) eps + [t > 0] sigma z,
        sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}),
        with eps recomputed from x0_hat (which may be guided)."""
        t = self._check_t(t, x_t.shape[0])
        eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
        alpha_bar = self._at("alphas_cumprod", t, x_t)
        alpha_bar_prev = self._at("alphas_cumprod_prev", t, x_t)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero = (t != 0).float().reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.device)
        return mean + nonzero * sigma * noise


def create_diffusion(config: DiffusionConfig | None = None, **overrides: Any) -> GaussianDiffusion:
    """Build the (respaced) process described by ``config`` (guided-diffusion's
    ``create_gaussian_diffusion``): ``timestep_respacing`` is a string such as ``"250"``,
    ``"ddim50"`` or ``"10,15,20"``; empty keeps every step."""
    config = config or DiffusionConfig()
    if overrides:
        config = DiffusionConfig(**{**config.to_dict(), **overrides})
    base_betas = named_beta_schedule(config.noise_schedule, config.steps)
    kept = space_timesteps(config.steps, config.timestep_respacing or str(config.steps))
    betas = respaced_betas(np.cumprod(1.0 - base_betas), kept)
    if config.learn_sigma:
        variance_type = "learned_range"
    else:
        variance_type = "fixed_small" if config.sigma_small else "fixed_large"
    return GaussianDiffusion(
        betas,
        mean_type="start_x" if config.predict_xstart else "epsilon",
        variance_type=variance_type,
        timestep_map=kept,
        original_num_steps=config.steps,
        rescale_timesteps=config.rescale_timesteps,
        config=config,
    )
