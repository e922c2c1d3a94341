"""Classifiers that take no timestep.

- :class:`JudgeNet`: a small convolutional network, architecturally unrelated to the
  guidance classifiers and never used for guidance; it reports the class accuracy of
  generated images and supplies the feature space of the demo FID / precision / recall.
- :class:`CleanClassifier`: a guided-diffusion encoder trained on clean images only
  (GradCheck's non-robust guide); it always sees timestep 0, so it behaves as a
  classifier p(y | x) and is normally used through the predicted x0.
"""

from __future__ import annotations

import torch
from torch import nn

from .unet import EncoderUNetModel


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class JudgeNet(nn.Module):
    """conv-conv-pool, conv-conv-pool, conv, global average pool, dropout, linear.

    ``features(x)`` is the pooled penultimate vector (``width * 4`` values)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.3,
                 image_size: int = 28):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = num_classes
        self.width = width
        self.image_size = image_size
        self.body = nn.Sequential(
            _conv_block(in_channels, width), _conv_block(width, width), nn.MaxPool2d(2),
            _conv_block(width, 2 * width), _conv_block(2 * width, 2 * width), nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width, num_classes)

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (batch, 4 * width) of images in [-1, 1]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "dropout": self.dropout.p, "image_size": self.image_size}


class CleanClassifier(nn.Module):
    """An :class:`EncoderUNetModel` used without a time input: forward(x) = net(x, 0)."""

    def __init__(self, net: EncoderUNetModel):
        super().__init__()
        self.net = net
        self.in_channels = net.in_channels
        self.out_channels = net.out_channels
        self.image_size = net.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))

    def convert_to_fp16(self) -> None:
        self.net.convert_to_fp16()

    def convert_to_bf16(self) -> None:
        self.net.convert_to_bf16()

    def convert_to_fp32(self) -> None:
        self.net.convert_to_fp32()
