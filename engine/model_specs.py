"""Models named the way every command line names them: nothing (the bundled models),
a bundle folder, published checkpoints as ``PRESET:PATH`` and ``NAME=PRESET:PATH``, a
preset set with ``NAME=PATH`` files, or a local diffusers pipeline folder.

The front doors (``python -m app``, ``survey``, ``train.*``) turn their options into
:func:`open_models`'s arguments (``engine.model_options`` lists the shared options);
nothing here parses a command line itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .bundles import Bundle, bundle_from_preset_set, bundle_from_presets, load_bundle
from .checkpoints import BundleError
from .presets import get_preset


def parse_network_spec(spec: str) -> tuple[str, str]:
    """``preset:path`` -> (preset, path)."""
    if ":" not in spec:
        raise BundleError(f"expected PRESET:PATH (e.g. gd-128-classifier:/models/128x128_classifier.pt), got {spec!r}")
    preset, path = spec.split(":", 1)
    get_preset(preset)
    return preset, path


def open_models(bundle: str | Path | None = None, *, denoiser: str | None = None, guides: Sequence[str] = (),
                preset_set: str | None = None, device: str = "auto", precision: str = "fp32",
                respacing: str | None = None, diffusers_dir: str | Path | None = None) -> Bundle:
    """Open models the way every command line names them:

    - nothing: the bundled MNIST models (``models/``);
    - ``bundle``: a bundle folder;
    - ``denoiser='PRESET:PATH'`` and ``guides=['NAME=PRESET:PATH', ...]``: published checkpoints;
    - ``preset_set='imagenet128'`` with ``denoiser='PATH'`` and ``guides=['vanilla=PATH', 'robust=PATH']``;
    - ``diffusers_dir``: a local diffusers pipeline folder, guides ``NAME=PATH`` (train.classifier
      model files) or ``NAME=PRESET:PATH`` (see :mod:`engine.diffusers_adapter`).

    ``device='auto'`` picks CUDA when available."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if diffusers_dir:
        if bundle or denoiser or preset_set:
            raise BundleError("--diffusers-dir names the denoiser: give it without --bundle, --denoiser or "
                              "--preset-set")
        from .diffusers_adapter import load_diffusers_pipeline

        return load_diffusers_pipeline(diffusers_dir, guides, device=device, precision=precision, respacing=respacing)
    if preset_set:
        if not denoiser:
            raise BundleError(f"preset set {preset_set} needs the denoiser file: --denoiser PATH")
        paths: dict[str, str | Path] = {"denoiser": denoiser}
        for g in guides:
            name, _, path = g.partition("=")
            if not path:
                raise BundleError(f"expected NAME=PATH for a guide of preset set {preset_set}, got {g!r}")
            paths[name] = path
        return bundle_from_preset_set(preset_set, paths, device=device, precision=precision,
                                      **({"respacing": respacing} if respacing is not None else {}))
    if denoiser:
        d_preset, d_path = parse_network_spec(denoiser)
        guide_specs: dict[str, tuple[str, str | Path]] = {}
        for g in guides:
            name, _, spec = g.partition("=")
            if not spec:
                raise BundleError(f"expected NAME=PRESET:PATH for a guide, got {g!r}")
            guide_specs[name] = parse_network_spec(spec)
        return bundle_from_presets(d_preset, d_path, guide_specs, respacing=respacing, device=device,
                                   precision=precision)
    if guides:
        raise BundleError("--guide needs --denoiser (or a --preset-set); a bundle folder names its own guides")
    opened = load_bundle(bundle, device=device)
    if precision != "fp32":
        opened.to(device, precision)
    if respacing is not None:
        opened.default_respacing = respacing
    return opened
