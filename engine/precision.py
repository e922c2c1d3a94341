"""Numeric precision of the denoiser: ``fp32`` (exact, the default), ``bf16`` or ``fp16``.

A reduced precision runs the denoiser under ``torch.autocast`` (convolutions, linear
layers and attention products in 16 bits; norms and softmax in float32, as autocast
decides); its output is returned in float32 and every later formula of the step, the
classifier's forward and its input gradient grad_x log p_phi(y | x_t, t) stay float32
(Dhariwal & Nichol 2021 sample with an fp16 torso and fp32 guidance the same way).

What each device runs: CUDA runs fp16 and bf16 (bf16 where the GPU supports it); the CPU
runs bf16 through oneDNN (fast on CPUs with AVX512-BF16 / AMX, correct but slower
elsewhere) and fp16 only where oneDNN reports fp16 support (AVX512-FP16 / AMX-FP16).
Anything else is one :class:`PrecisionError` naming the allowed values.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision that is unknown or that the device cannot run."""


def _cpu_supports(precision: str) -> bool:
    if precision == "bf16":
        return True  # oneDNN (or a plain fallback) runs bf16 on every CPU torch supports
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", None)
    try:
        return bool(checker()) if checker is not None else False
    except Exception:  # pragma: no cover - depends on the torch build
        return False


def supported_precisions(device: str | torch.device) -> tuple[str, ...]:
    """The precisions ``device`` can run, fp32 first."""
    kind = torch.device(device).type
    if kind == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("fp32", "bf16", "fp16") if bf16 else ("fp32", "fp16")
    if kind == "cpu":
        return tuple(p for p in PRECISIONS if p == "fp32" or _cpu_supports(p))
    return ("fp32",)


def check_precision(precision: str | None, device: str | torch.device = "cpu") -> str:
    """``precision`` normalised (None -> fp32), or a :class:`PrecisionError` naming the
    allowed values when it is unknown or ``device`` cannot run it."""
    name = "fp32" if precision is None else str(precision).strip().lower()
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    allowed = supported_precisions(device)
    if name not in allowed:
        hint = " (fp16 on a CPU needs AVX512-FP16 or AMX-FP16; use bf16)" if name == "fp16" else ""
        raise PrecisionError(f"precision {name} cannot run on {torch.device(device)}{hint}; "
                             f"this device allows {', '.join(allowed)}")
    return name


def autocast(precision: str, device: str | torch.device) -> ContextManager:
    """The context the denoiser runs under: ``torch.autocast`` for bf16 / fp16, nothing
    for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])
