"""Building blocks of the guided-diffusion networks (Dhariwal & Nichol 2021, "Diffusion
Models Beat GANs on Image Synthesis"), written so that parameter names and shapes equal
those of the published checkpoints (openai/guided-diffusion).

Every module here keeps the sub-module indices of the reference (``in_layers.2`` is the
first convolution of a residual block, ``out_layers.3`` its second one, ...) because the
state_dict keys of the published checkpoints are built from those indices.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D convolution."""
    if dims == 1:
        return nn.Conv1d(*args, **kwargs)
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return nn.Conv3d(*args, **kwargs)
    raise ValueError(f"dims must be 1, 2 or 3, got {dims}")


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D average pooling."""
    pools = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in pools:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return pools[dims](*args, **kwargs)


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (output layers start as the identity
    of the residual path) and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def cpu_half(x: torch.Tensor) -> bool:
    """A bf16 / fp16 tensor of a 16-bit torso (``engine.precision``) on the CPU, where
    torch's norm and softmax kernels take their statistics in float32 themselves, so casting
    the whole tensor up and back (what the reference does, two passes over memory) buys
    nothing but time. Under autocast (training with ``--amp``) the reference's way stays, so
    recorded training commands keep giving the same numbers."""
    return (x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu"))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 and returns the input's dtype, so a
    half-precision torso keeps full-precision statistics (on the CPU the kernel does that
    itself from the 16-bit input and the float32 affine weights: :func:`cpu_half`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_half(x):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The normalisation used everywhere in the networks: 32 groups."""
    return GroupNorm32(32, channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    emb[:, i] = cos(t * f_i) for i < dim/2 and sin(t * f_{i - dim/2}) after, with
    f_i = max_period ** (-i / (dim/2)); an odd ``dim`` gets one zero column.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    frequencies = torch.exp(exponent)
    angles = timesteps[:, None].float() * frequencies[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequence that hands the embedding to the children that want it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 convolution (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        elif self.dims == 2:
            x = upsample_nearest_2x(x)
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling of (B, C, H, W): out[..., i, j] = x[..., i // 2, j // 2].

    The same values as ``F.interpolate(x, scale_factor=2, mode="nearest")``, which on the
    CPU is several times slower at these sizes (it makes an extra contiguous copy of its
    output). On the CPU without a graph (sampling) the output is filled by two strided copies of x
    into the even rows and one copy of the even rows into the odd ones (~4x faster than one
    broadcast copy, whose innermost run is 2 elements); with a graph (training) it is the
    broadcast copy, whose backward sums each 2 x 2 block (interpolate's in another order,
    equal to float32 rounding)."""
    b, c, h, w = x.shape
    if (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu" \
            or torch._C._functorch.is_functorch_wrapped_tensor(x):  # graph, CUDA (not measured), torch.func
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)
    out = x.new_empty((b, c, h, 2, w, 2))
    even_rows = out[:, :, :, 0]
    even_rows[..., 0] = x
    even_rows[..., 1] = x
    out[:, :, :, 1] = even_rows
    return out.reshape(b, c, 2 * h, 2 * w)


class Downsample(nn.Module):
    """x2 downsampling: stride-2 3x3 convolution (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (isinstance(self.op, nn.AvgPool2d) and x.device.type == "cpu" and x.dim() == 4
                and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 and (x.dtype == torch.float32 or cpu_half(x))):
            return _Mean2x2.apply(x)
        # odd sizes (the kernel drops the last row / column), 16 bits under autocast, CUDA
        return self.op(x)


class _Mean2x2(torch.autograd.Function):
    """2x2 average pooling with stride 2 of (B, C, H, W), H and W even, from four strided
    views: out = (x[2i, 2j] + x[2i, 2j+1] + x[2i+1, 2j] + x[2i+1, 2j+1]) / 4; the gradient
    is g / 4 copied to the four inputs of each window. Faster on the CPU than torch's pooling
    kernels (which loop over each window; ~3x forward, ~2x forward + backward on the tiny
    pair's 32x32 and 16x16 maps), for the same values: in float32 the four terms are added
    in the kernel's order, left to right starting from row 2i, so the result is equal bit
    for bit (up to the sign of a zero sum; pinned by tests/test_reference_networks.py); in
    16 bits they are added in pairs (three 16-bit roundings where the kernel, which
    accumulates in float32, has one). Forward-mode AD and ``torch.func`` transforms work."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd protocol
        return _mean_2x2(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd protocol
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd protocol
        return upsample_nearest_2x(grad * 0.25)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd protocol
        return _mean_2x2(tangent)


def _mean_2x2(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]
    if cpu_half(x):
        return ((a + c) + (b + d)) * 0.25
    return (((a + b) + c) + d) * 0.25


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding.

    h = conv(SiLU(norm(x)))            (optionally resampled between the SiLU and the conv)
    h = norm(h) * (1 + scale) + shift  with (scale, shift) = Linear(SiLU(emb))   [scale-shift norm]
      or h = h + Linear(SiLU(emb)) before the norm                              [additive]
    out = skip(x) + conv(dropout(SiLU(h)))
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_width = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_width))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_init(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
            h = conv(self.h_upd(norm_act(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) applied to v, for tensors shaped (batch*heads, d, length).

    Half-precision inputs take the softmax in float32 as the reference does (on the CPU
    the kernel accumulates in float32 from the 16-bit scores: :func:`cpu_half`)."""
    d = q.shape[1]
    scale = 1.0 / math.sqrt(math.sqrt(d))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    if cpu_half(weight):
        weight = torch.softmax(weight, dim=-1)
    else:
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class QKVAttentionLegacy(nn.Module):
    """Multi-head attention over a packed qkv tensor (B, 3*H*d, T) laid out head-major:
    split into heads first, then into q, k, v (the layout of every published model but
    the 64x64 denoiser)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 * {self.n_heads} heads")
        d = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, 3 * d, length).split(d, dim=1)
        return _attention(q, k, v).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """Multi-head attention over a packed qkv tensor laid out q, k, v first, then heads
    (``use_new_attention_order=True`` and the classifier's attention pooling)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 * {self.n_heads} heads")
        d = width // (3 * self.n_heads)
        q, k, v = qkv.chunk(3, dim=1)
        shape = (bs * self.n_heads, d, length)
        return _attention(q.reshape(shape), k.reshape(shape), v.reshape(shape)).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions with a residual connection:
    x + proj_out(attention(qkv(norm(x))))."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_init(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(flat))))
        return (flat + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the spatial mean is prepended as a query token, a
    learned positional embedding is added, and the output at the mean token is projected
    to ``output_dim`` logits."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        if embed_dim % num_heads_channels:
            raise ValueError(f"{embed_dim} channels are not divisible by {num_heads_channels} channels per head")
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        if x.shape[-1] + 1 != self.positional_embedding.shape[-1]:
            side = int(round((self.positional_embedding.shape[-1] - 1) ** 0.5))
            raise ValueError(
                f"attention pooling was built for {side}x{side} feature maps but got {x.shape[-1]} positions; "
                "feed images of the size the classifier was built for (image_size)"
            )
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


def parse_channel_mult(channel_mult: Sequence[float] | str, image_size: int) -> tuple[float, ...]:
    """Channel multipliers per resolution level; the empty string picks guided-diffusion's
    defaults by image size."""
    if isinstance(channel_mult, str):
        if channel_mult.strip():
            return tuple(float(c) if "." in c else int(c) for c in channel_mult.split(","))
        defaults = {
            512: (0.5, 1, 1, 2, 2, 4, 4),
            256: (1, 1, 2, 2, 4, 4),
            128: (1, 1, 2, 3, 4),
            64: (1, 2, 3, 4),
            32: (1, 2, 2, 2),
        }
        if image_size not in defaults:
            raise ValueError(f"no default channel_mult for image_size {image_size}; pass channel_mult explicitly")
        return defaults[image_size]
    return tuple(channel_mult)
