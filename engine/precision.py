"""Numeric precision of sampling: ``fp32`` (exact, the default), ``bf16`` or ``fp16``.

A reduced precision runs the networks the way guided-diffusion's ``use_fp16`` does: the
torso's convolutions (attention projections included) hold 16-bit weights, cast once
(:func:`reduced_copy`, a cached copy: the float32 weights are never touched), and their
activations flow in 16 bits; group norms take their statistics in float32 and softmax
accumulates in float32 (``engine.nets.layers``); time embeddings, the output heads and
every formula of the step stay float32. Under bf16 the denoiser and the guides both run so
(the classifier's forward and backward are 40 % of a guided step); under fp16 the guides stay
float32 (fp16 has no room for an unscaled input gradient). The input gradient
grad_x log p_phi(y | x_t, t) is returned in float32. A diffusers UNet is cast whole (its own
norms handle 16 bits). A network without torso conversion
(one the engine did not build) runs under ``torch.autocast`` when it is the denoiser and in
float32 when it is a guide. What this changes in samples and their metrics is measured on
the bundle (README, Precision).

What each device runs: CUDA runs fp16 and bf16 (bf16 where the GPU supports it); the CPU
runs bf16 through oneDNN (fast on CPUs with AVX512-BF16 / AMX, correct but slower
elsewhere) and fp16 only where oneDNN reports fp16 support (AVX512-FP16 / AMX-FP16).
Anything else is one :class:`PrecisionError` naming the allowed values.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from typing import ContextManager

import torch
from torch import nn

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


_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, nn.Module]]]" = weakref.WeakKeyDictionary()
_BUILDING = threading.Lock()


def converts_torso(net: nn.Module) -> bool:
    """Whether ``net`` can cast its torso to 16 bits (``convert_to_bf16`` / ``convert_to_fp16``)."""
    return callable(getattr(net, "convert_to_bf16", None)) and callable(getattr(net, "convert_to_fp16", None))


def _weights_signature(net: nn.Module) -> tuple:
    # every weight's identity, storage and in-place version (a load_state_dict or an optimiser
    # step changes the version, a .to(device) the storage) and the train / eval mode; writes
    # through ``p.data`` bypass the version counter: call release_reduced_copies after those
    return (net.training, *((id(p), p.data_ptr(), p._version, p.device.type) for p in net.parameters()))


def release_reduced_copies(net: nn.Module) -> None:
    """Forget the cached 16-bit copies of ``net`` (their memory is freed with them)."""
    _COPIES.pop(net, None)


def reduced_copy(net: nn.Module, precision: str) -> nn.Module:
    """A copy of ``net`` whose torso holds ``precision`` (bf16 / fp16) weights, made once
    and reused while ``net``'s weights and mode stay the same (rebuilt when they change);
    ``net`` itself keeps its float32 weights. The copy shares every tensor it does not
    cast with ``net``, so it costs only the 16-bit torso. ``fp32`` returns ``net``. Needs
    :func:`converts_torso`."""
    if precision == "fp32":
        return net
    if not converts_torso(net):
        raise TypeError(f"{type(net).__name__} cannot cast its torso to {precision}")
    with _BUILDING:
        signature = _weights_signature(net)
        cached = _COPIES.setdefault(net, {}).get(precision)
        if cached is not None and cached[0] == signature:
            return cached[1]
        # share (not duplicate) every parameter and buffer; the conversion then replaces only
        # the torso's tensors of the copy by 16-bit ones
        memo: dict[int, object] = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in net.parameters()}
        memo.update({id(b): b for b in net.buffers()})
        twin = copy.deepcopy(net, memo)
        getattr(twin, f"convert_to_{precision}")()
        _COPIES[net][precision] = (signature, twin)
        return twin
