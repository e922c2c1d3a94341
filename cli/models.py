"""Command-line options that name models, shared by every front door (lab, sampling,
evaluation). Plain argparse over ``engine.bundles.open_models``; the engine itself has no
argparse."""

from __future__ import annotations

import argparse

from engine.bundles import Bundle, BundleError, open_models


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--bundle / --denoiser / --guide / --preset-set / --precision."""
    g = parser.add_argument_group("models (default: the bundled MNIST models in models/)")
    g.add_argument("--bundle", default=None, help="a bundle folder (bundle.json + model files)")
    g.add_argument("--denoiser", default=None,
                   help="PRESET:PATH of a published denoiser (or PATH with --preset-set)")
    g.add_argument("--guide", action="append", default=[],
                   help="NAME=PRESET:PATH of a published classifier (or NAME=PATH with --preset-set); repeatable")
    g.add_argument("--preset-set", default=None, help="e.g. imagenet128 (see engine/presets.py)")
    g.add_argument("--diffusers-dir", default=None, metavar="PATH",
                   help="a local diffusers pixel-space pipeline folder (model_index.json, unet/, scheduler/); "
                        "guides then as --guide NAME=PATH (train.classifier model file) or NAME=PRESET:PATH")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="denoiser torso precision on GPU (classifier gradients stay fp32)")


def open_from_args(args: argparse.Namespace, device: str) -> Bundle:
    """The models named by :func:`add_model_args` options; a clean exit message on error."""
    try:
        return open_models(args.bundle, denoiser=args.denoiser, guides=args.guide, preset_set=args.preset_set,
                           device=device, precision=args.precision, diffusers_dir=args.diffusers_dir)
    except (BundleError, KeyError) as exc:
        raise SystemExit(str(exc).strip("'\"")) from None
