"""The model options of the training-side front doors (``train.sample``, ``train.evaluate``):
argparse over the engine's option table (:data:`engine.model_options.MODEL_OPTIONS`) and
:func:`engine.model_specs.open_models`."""

from __future__ import annotations

import argparse

from engine.bundles import Bundle
from engine.checkpoints import BundleError
from engine.model_specs import open_models
from engine.model_options import MODEL_OPTIONS, MODEL_OPTIONS_TITLE
from engine.precision import PrecisionError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--bundle / --denoiser / --guide / --preset-set / --diffusers-dir / --precision."""
    group = parser.add_argument_group(MODEL_OPTIONS_TITLE)
    for flag, kwargs in MODEL_OPTIONS:
        group.add_argument(flag, **kwargs)


def open_from_args(args: argparse.Namespace, device: str) -> Bundle:
    """The models named by :func:`add_model_args` options; a clean exit message on error."""
    try:
        return open_models(args.bundle, denoiser=args.denoiser, guides=args.guide, preset_set=args.preset_set,
                           device=device, precision=args.precision, diffusers_dir=args.diffusers_dir)
    except (BundleError, PrecisionError, KeyError) as exc:
        raise SystemExit(str(exc).strip("'\"")) from None
