"""The denoiser (``UNetModel``) and the time-dependent classifier (``EncoderUNetModel``)
of guided-diffusion (Dhariwal & Nichol 2021), state_dict-compatible with the published
checkpoints and with the robust classifier of Kawar, Ganz & Elad (TMLR 2023), which uses
the same encoder architecture.

The constructors take guided-diffusion's keyword names, so code written against
``guided_diffusion.unet`` ports by changing the import. ``attention_resolutions`` holds
downsampling rates (``image_size // resolution``), as in the reference constructor; use
:mod:`engine.nets.flags` to build from command-line flags (pixel resolutions).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .layers import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    conv_nd,
    normalization,
    timestep_embedding,
    zero_init,
)

_TORSO_PREFIXES = ("input_blocks.", "middle_block.", "output_blocks.")


class _Torso(nn.Module):
    """Shared parts: time embedding and the downsampling path with its middle block."""

    image_size: int
    model_channels: int
    dtype: torch.dtype

    def _build_encoder(
        self,
        in_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float,
        channel_mult: Sequence[float],
        dims: int,
        use_checkpoint: bool,
        num_heads: int,
        num_head_channels: int,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        use_new_attention_order: bool,
        conv_resample: bool,
    ) -> tuple[int, int, list[int]]:
        attention_resolutions = set(attention_resolutions)
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out_ch = int(mult * model_channels)
                layers: list[nn.Module] = [
                    ResBlock(ch, time_embed_dim, dropout, out_channels=out_ch, dims=dims,
                             use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm)
                ]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels,
                                                 use_checkpoint=use_checkpoint,
                                                 use_new_attention_order=use_new_attention_order))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = (
                    ResBlock(ch, time_embed_dim, dropout, out_channels=ch, dims=dims, use_checkpoint=use_checkpoint,
                             use_scale_shift_norm=use_scale_shift_norm, down=True)
                    if resblock_updown
                    else Downsample(ch, conv_resample, dims=dims, out_channels=ch)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, dropout, dims=dims, use_checkpoint=use_checkpoint,
                     use_scale_shift_norm=use_scale_shift_norm),
            AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels,
                           use_checkpoint=use_checkpoint, use_new_attention_order=use_new_attention_order),
            ResBlock(ch, time_embed_dim, dropout, dims=dims, use_checkpoint=use_checkpoint,
                     use_scale_shift_norm=use_scale_shift_norm),
        )
        return ch, ds, skip_channels

    def convert_to_fp16(self) -> None:
        """Cast the convolutions of the torso to float16 (what ``use_fp16`` means at
        sampling time in the reference); norms, embeddings and the head stay float32."""
        self._convert_torso(torch.float16)

    def convert_to_bf16(self) -> None:
        """As :meth:`convert_to_fp16` with bfloat16."""
        self._convert_torso(torch.bfloat16)

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        self._convert_torso(torch.float32)

    def _convert_torso(self, dtype: torch.dtype) -> None:
        for name, module in self.named_modules():
            if name.startswith(_TORSO_PREFIXES) and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                module.to(dtype)
        self.dtype = dtype

    def _embed_time(self, timesteps: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(f"timesteps must have shape ({batch},), got {tuple(timesteps.shape)}")
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images shaped (batch, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )


class UNetModel(_Torso):
    """The guided-diffusion denoiser: predicts epsilon (and, with ``learn_sigma``, the
    variance interpolation values) from x_t, t and optionally a class label.

    Output channels: ``out_channels`` = C (fixed variance) or 2C (learned range)."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.use_fp16 = use_fp16
        self.dtype = torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        time_embed_dim = model_channels * 4
        ch, ds, skip_channels = self._build_encoder(
            in_channels, model_channels, num_res_blocks, self.attention_resolutions, dropout, self.channel_mult,
            dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown,
            use_new_attention_order, conv_resample,
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        # label_emb is created after the encoder here but the reference registers it right
        # after time_embed; reorder so state_dict() lists keys in the reference order.
        self._modules = _reorder(self._modules, ["time_embed", "label_emb"])

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip = skip_channels.pop()
                out_ch = int(model_channels * mult)
                layers: list[nn.Module] = [
                    ResBlock(ch + skip, time_embed_dim, dropout, out_channels=out_ch, dims=dims,
                             use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm)
                ]
                ch = out_ch
                if ds in self.attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads_upsample, num_head_channels=num_head_channels,
                                                 use_checkpoint=use_checkpoint,
                                                 use_new_attention_order=use_new_attention_order))
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, time_embed_dim, dropout, out_channels=ch, dims=dims,
                                 use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm, up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        first_ch = int(self.channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_init(conv_nd(dims, first_ch, out_channels, 3, padding=1)),
        )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t[, y]) (plus variance values when out_channels == 2C)."""
        self._check_input(x)
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "this denoiser is class-conditional: pass y" if self.num_classes is not None
                else "this denoiser is unconditional: do not pass y"
            )
        emb = self._embed_time(timesteps, x.shape[0], x.device)
        if y is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"class labels must lie in [0, {self.num_classes - 1}], got {y.tolist()}")
            emb = emb + self.label_emb(y)
        h = x.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class EncoderUNetModel(_Torso):
    """The guided-diffusion noisy classifier: the UNet's downsampling half plus a pooling
    head, giving logits of p(y | x_t, t). ``pool`` is one of ``adaptive``, ``attention``,
    ``spatial`` or ``spatial_v2``."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.use_checkpoint = use_checkpoint
        self.use_fp16 = use_fp16
        self.dtype = torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.pool = pool

        ch, ds, skip_channels = self._build_encoder(
            in_channels, model_channels, num_res_blocks, self.attention_resolutions, dropout, self.channel_mult,
            dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown,
            use_new_attention_order, conv_resample,
        )
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_init(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels (guided-diffusion classifiers use 64)")
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool in ("spatial", "spatial_v2"):
            feature_size = sum(skip_channels) + ch  # every input block's output, then the middle block's
            if pool == "spatial":
                self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
            else:
                self.out = nn.Sequential(
                    nn.Linear(feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, out_channels)
                )
        else:
            raise ValueError(f"unknown pool {pool!r}: use adaptive, attention, spatial or spatial_v2")
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Logits of p(y | x_t, t), shape (batch, out_channels)."""
        self._check_input(x)
        emb = self._embed_time(timesteps, x.shape[0], x.device)
        pooled = []
        h = x.type(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if self.pool.startswith("spatial"):
                pooled.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if self.pool.startswith("spatial"):
            pooled.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(pooled, dim=-1))
        return self.out(h.type(x.dtype))


def _reorder(modules: dict, first: list[str]) -> dict:
    """Return ``modules`` (an ordered dict of sub-modules) with the named ones first."""
    ordered = type(modules)()
    for name in first:
        if name in modules:
            ordered[name] = modules[name]
    for name, module in modules.items():
        if name not in ordered:
            ordered[name] = module
    return ordered
