"""Build networks from guided-diffusion's command-line flags.

The published checkpoints are documented by the flag sets of ``scripts/*_sample.py``
(``--attention_resolutions 32,16,8 --class_cond True --image_size 128 ...``). These
helpers accept such a flag set as a string or a dict and return the networks the
reference scripts build, so a user only copies the flags from the README of the
checkpoint.

Extensions for the project's own small models (all optional, defaults reproduce the
reference): ``in_channels``, ``num_classes`` (denoiser label count; the null label of a
classifier-free model counts), ``classifier_in_channels``, ``classifier_num_classes``,
``classifier_channel_mult``, ``classifier_num_head_channels``.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

from .layers import parse_channel_mult
from .unet import EncoderUNetModel, UNetModel

DENOISER_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "in_channels": 3,
    "num_classes": 1000,
}

DIFFUSION_DEFAULTS: dict[str, Any] = {
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "sigma_small": False,
}

CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
    "classifier_in_channels": 3,
    "classifier_num_classes": 1000,
    "classifier_channel_mult": "",
    "classifier_num_head_channels": 64,
}

# Flags that the sampling scripts accept but that do not shape a network.
SAMPLING_FLAGS: dict[str, Any] = {
    "classifier_scale": 1.0,
    "classifier_path": "",
    "model_path": "",
    "batch_size": 16,
    "num_samples": 10000,
    "use_ddim": False,
    "clip_denoised": True,
}

_ALL_DEFAULTS = {**DENOISER_DEFAULTS, **DIFFUSION_DEFAULTS, **CLASSIFIER_DEFAULTS, **SAMPLING_FLAGS}

# The robust repo's create_classifier maps 32 px to this; openai's rejects 32.
_CLASSIFIER_CHANNEL_MULT_32 = (1, 2, 2, 4)


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "t", "y"):
            return True
        if text in ("false", "0", "no", "f", "n"):
            return False
        raise ValueError(f"flag --{name} expects True or False, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"flag --{name} expects an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"flag --{name} expects a number, got {value!r}") from None
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_flags(flags: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Parse ``"--image_size 128 --class_cond True ..."`` (or a dict of the same names,
    with or without leading dashes) into typed values. Unknown names are an error that
    lists the known ones; flags not given are absent (see the ``*_DEFAULTS`` dicts)."""
    if flags is None:
        return {}
    if isinstance(flags, str):
        tokens = shlex.split(flags)
        items: list[tuple[str, Any]] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if not token.startswith("--"):
                raise ValueError(f"expected a flag starting with '--' at {token!r} in {flags!r}")
            if "=" in token:
                key, value = token[2:].split("=", 1)
                i += 1
            else:
                if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                    raise ValueError(f"flag {token} has no value (write e.g. '{token} True')")
                key, value = token[2:], tokens[i + 1]
                i += 2
            items.append((key, value))
    else:
        items = [(str(k).lstrip("-"), v) for k, v in flags.items()]
    parsed: dict[str, Any] = {}
    for key, value in items:
        key = key.replace("-", "_")
        if key not in _ALL_DEFAULTS:
            known = ", ".join(sorted(_ALL_DEFAULTS))
            raise ValueError(f"unknown flag --{key}; known flags: {known}")
        parsed[key] = _coerce(key, value, _ALL_DEFAULTS[key])
    return parsed


def _with_defaults(flags: str | Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    parsed = parse_flags(flags)
    return {key: parsed.get(key, default) for key, default in defaults.items()}


def _attention_ds(resolutions: str, image_size: int) -> tuple[int, ...]:
    if not resolutions.strip():
        return ()
    ds = []
    for res in resolutions.split(","):
        res_px = int(res)
        if res_px <= 0 or image_size % res_px:
            raise ValueError(f"attention resolution {res_px} does not divide image_size {image_size}")
        ds.append(image_size // res_px)
    return tuple(ds)


def denoiser_kwargs(flags: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """UNetModel keyword arguments for a flag set (``create_model`` of the reference)."""
    f = _with_defaults(flags, DENOISER_DEFAULTS)
    in_ch = f["in_channels"]
    return {
        "image_size": f["image_size"],
        "in_channels": in_ch,
        "model_channels": f["num_channels"],
        "out_channels": 2 * in_ch if f["learn_sigma"] else in_ch,
        "num_res_blocks": f["num_res_blocks"],
        "attention_resolutions": _attention_ds(f["attention_resolutions"], f["image_size"]),
        "dropout": f["dropout"],
        "channel_mult": parse_channel_mult(f["channel_mult"], f["image_size"]),
        "num_classes": f["num_classes"] if f["class_cond"] else None,
        "use_checkpoint": f["use_checkpoint"],
        "use_fp16": f["use_fp16"],
        "num_heads": f["num_heads"],
        "num_head_channels": f["num_head_channels"],
        "num_heads_upsample": f["num_heads_upsample"],
        "use_scale_shift_norm": f["use_scale_shift_norm"],
        "resblock_updown": f["resblock_updown"],
        "use_new_attention_order": f["use_new_attention_order"],
    }


def classifier_kwargs(flags: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """EncoderUNetModel keyword arguments for a flag set (``create_classifier``)."""
    f = _with_defaults(flags, CLASSIFIER_DEFAULTS)
    size = f["image_size"]
    if f["classifier_channel_mult"].strip():
        channel_mult = parse_channel_mult(f["classifier_channel_mult"], size)
    elif size == 32:
        channel_mult = _CLASSIFIER_CHANNEL_MULT_32
    else:
        channel_mult = parse_channel_mult("", size)
    return {
        "image_size": size,
        "in_channels": f["classifier_in_channels"],
        "model_channels": f["classifier_width"],
        "out_channels": f["classifier_num_classes"],
        "num_res_blocks": f["classifier_depth"],
        "attention_resolutions": _attention_ds(f["classifier_attention_resolutions"], size),
        "channel_mult": channel_mult,
        "use_fp16": f["classifier_use_fp16"],
        "num_head_channels": f["classifier_num_head_channels"],
        "use_scale_shift_norm": f["classifier_use_scale_shift_norm"],
        "resblock_updown": f["classifier_resblock_updown"],
        "pool": f["classifier_pool"],
    }


def diffusion_kwargs(flags: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Diffusion-process settings of a flag set (``create_gaussian_diffusion``)."""
    return _with_defaults(flags, DIFFUSION_DEFAULTS)


def create_denoiser(flags: str | Mapping[str, Any] | None) -> UNetModel:
    """The denoiser the reference builds for these flags."""
    return UNetModel(**denoiser_kwargs(flags))


def create_classifier(flags: str | Mapping[str, Any] | None) -> EncoderUNetModel:
    """The noisy classifier the reference builds for these flags."""
    return EncoderUNetModel(**classifier_kwargs(flags))
