"""Networks compatible with guided-diffusion checkpoints, plus the small judge network."""

from .layers import timestep_embedding
from .unet import EncoderUNetModel, UNetModel

__all__ = ["UNetModel", "EncoderUNetModel", "timestep_embedding"]
