"""The FID Inception-v3 network, written without torchvision.

This is the network of the standard FID (Heusel et al. 2017): TensorFlow's Inception-v3
graph of 2015-12-05, as ported to PyTorch by pytorch-fid (Seitzer). It differs from
torchvision's ImageNet Inception-v3 in three places, and has its own weights:

- the average-pool branch of every Mixed_5* / Mixed_6b-e / Mixed_7b block averages over
  the valid pixels only (TensorFlow padding; ``count_include_pad=False``);
- Mixed_7c pools its last branch with a 3x3 *max* pool instead of an average pool;
- the classifier has 1008 outputs (the graph's label map), and there is no aux head.

Parameter names follow torchvision's Inception3 (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ``fc.weight`` ...), so the published
``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True``. The FID features
are the 2048-d global average pool ("pool_3") in front of ``fc``. Input: 3 x 299 x 299
in [-1, 1]; resizing and channel handling live in
:class:`engine.metrics.features.InceptionV3Features`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries its hash prefix
WEIGHTS_ENV = "RCG_INCEPTION_WEIGHTS"
WEIGHTS_FLAG = "--inception-weights"
NUM_CLASSES = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights are missing or unusable; the message says what to do."""


def _needed_file_text() -> str:
    return (f"FID needs the standard FID Inception-v3 weights file {WEIGHTS_FILE} (TensorFlow's 2015-12-05 "
            f"Inception graph ported to PyTorch by pytorch-fid, about 92 MB), published at {WEIGHTS_URL} . "
            f"Nothing is downloaded automatically: download it once and pass {WEIGHTS_FLAG} PATH "
            f"or set the environment variable {WEIGHTS_ENV}=PATH.")


def resolve_weights_path(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The weights file to use: ``path``, else ``$RCG_INCEPTION_WEIGHTS``; an
    :class:`InceptionWeightsError` naming the needed file when neither points to a file."""
    given = path if path not in (None, "") else os.environ.get(WEIGHTS_ENV) or None
    if given is None:
        raise InceptionWeightsError(f"no Inception weights given. {_needed_file_text()}")
    resolved = Path(given).expanduser()
    if not resolved.is_file():
        what = "is a folder, not a file" if resolved.is_dir() else "does not exist"
        raise InceptionWeightsError(f"Inception weights {resolved} {what}. {_needed_file_text()}")
    return resolved


# --------------------------------------------------------------------------- layers
class FrozenBatchNorm2d(nn.Module):
    """Inference-only batch norm y = (x - mean) / sqrt(var + eps) * weight + bias with the
    four state_dict entries of ``nn.BatchNorm2d`` (no ``num_batches_tracked``)."""

    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; torchvision's BasicConv2d names."""

    def __init__(self, c_in: int, c_out: int, kernel: Union[int, tuple[int, int]], stride: int = 1,
                 padding: Union[int, tuple[int, int]] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over the valid (unpadded) pixels, as TensorFlow's SAME pool."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _row(c_in: int, c_out: int, width: int = 7) -> ConvBN:
    """1 x width convolution keeping the spatial size."""
    return ConvBN(c_in, c_out, (1, width), padding=(0, width // 2))


def _col(c_in: int, c_out: int, height: int = 7) -> ConvBN:
    """height x 1 convolution keeping the spatial size."""
    return ConvBN(c_in, c_out, (height, 1), padding=(height // 2, 0))


class MixedA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.
    Output channels 64 + 64 + 96 + pool_features."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], dim=1)


class ReductionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2.
    Output channels 384 + 96 + c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b/c/d/e):
    1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1. Output 4 x 192 = 768."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _row(c7, c7)
        self.branch7x7_3 = _col(c7, 192)
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _col(c7, c7)
        self.branch7x7dbl_3 = _row(c7, c7)
        self.branch7x7dbl_4 = _col(c7, c7)
        self.branch7x7dbl_5 = _row(c7, 192)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], dim=1)


class ReductionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2.
    Output channels 320 + 192 + c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _row(192, 192)
        self.branch7x7x3_3 = _col(192, 192)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b/c):
    1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1. Output 320 + 768 + 768 + 192 = 2048.

    ``pool="avg"`` (Mixed_7b) averages over valid pixels; ``pool="max"`` (Mixed_7c) is the
    max pool of the TensorFlow FID graph."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _row(384, 384, 3)
        self.branch3x3_2b = _col(384, 384, 3)
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _row(384, 384, 3)
        self.branch3x3dbl_3b = _col(384, 384, 3)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], dim=1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], dim=1)
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        d = self.branch_pool(pooled)
        return torch.cat([a, b, c, d], dim=1)


# --------------------------------------------------------------------------- network
class FIDInceptionV3(nn.Module):
    """The FID Inception-v3. ``forward(x)`` gives the 2048-d pool features of
    (N, 3, 299, 299) inputs in [-1, 1]; ``logits(x)`` the 1008-way classifier output."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, channels_7x7=128)
        self.Mixed_6c = MixedC(768, channels_7x7=160)
        self.Mixed_6d = MixedC(768, channels_7x7=160)
        self.Mixed_6e = MixedC(768, channels_7x7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, pool="avg")
        self.Mixed_7c = MixedE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 64 x 147 x 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # 192 x 71 x 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # 192 x 35 x 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)                                                    # ... 2048 x 8 x 8
        return x.mean(dim=(2, 3))                                           # pool_3: 2048

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The 1008-way logits (index 0 is the graph's 'background' class)."""
        return self.fc(self.forward(x))


# --------------------------------------------------------------------------- weights
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _clean_state_dict(data: object, source: Path) -> dict[str, torch.Tensor]:
    if not isinstance(data, Mapping):
        raise InceptionWeightsError(f"{source} holds a {type(data).__name__}, not a state_dict. {_needed_file_text()}")
    inner = data.get("state_dict")
    if isinstance(inner, Mapping):
        data = inner
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor) and not k.endswith("num_batches_tracked")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _mismatch_message(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> Optional[str]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    problems = {
        "missing": sorted(set(expected) - set(given)),
        "unexpected": sorted(set(given) - set(expected)),
        "mis-shaped": sorted(f"{k} {given[k]} (expected {expected[k]})"
                             for k in set(expected) & set(given) if expected[k] != given[k]),
    }
    if not any(problems.values()):
        return None
    lines = [f"{source} does not fit the FID Inception-v3:"]
    for what, items in problems.items():
        if items:
            shown = ", ".join(items[:6]) + (f" ... ({len(items)} in all)" if len(items) > 6 else "")
            lines.append(f"  {what} keys: {shown}")
    if given.get("fc.weight", (0,))[0] == 1000 or any(k.startswith("AuxLogits.") for k in given):
        lines.append("  this looks like torchvision's ImageNet Inception-v3 (1000 classes, aux head), which gives "
                     "FID values that are not comparable with published ones")
    lines.append("  " + _needed_file_text())
    return "\n".join(lines)


def load_fid_inception(path: Optional[Union[str, os.PathLike]] = None, verify_hash: bool = True) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the user's weights file (``path`` or
    ``$RCG_INCEPTION_WEIGHTS``) with ``torch.load(weights_only=True)``; never downloads.

    ``verify_hash`` warns (does not fail) when the file's SHA-256 does not start with
    the prefix in the published file name: FID values would then not be comparable."""
    source = resolve_weights_path(path)
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InceptionWeightsError(f"cannot read {source} as a PyTorch weights file "
                                    f"({exc.__class__.__name__}: {str(exc)[:200]}). {_needed_file_text()}") from exc
    state = _clean_state_dict(data, source)
    model = FIDInceptionV3()
    problem = _mismatch_message(model, state, source)
    if problem:
        raise InceptionWeightsError(problem)
    model.load_state_dict(state, strict=True)
    if verify_hash and not _file_sha256(source).startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(f"{source} has the FID Inception layout but its SHA-256 does not start with "
                      f"{WEIGHTS_SHA256_PREFIX} (the published {WEIGHTS_FILE}); FID values computed with it are "
                      "not comparable with published ones", stacklevel=2)
    return model.eval().requires_grad_(False)
