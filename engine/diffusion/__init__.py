"""The diffusion process (math only; no networks inside)."""

from .process import DiffusionConfig, GaussianDiffusion, create_diffusion
from .schedules import cosine_beta_schedule, linear_beta_schedule, named_beta_schedule, space_timesteps

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "create_diffusion",
    "named_beta_schedule",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "space_timesteps",
]
