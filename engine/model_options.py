"""The command-line options that name models, as plain data shared by every front door.

Each entry is (flag, keyword arguments of ``argparse``'s ``add_argument``); the engine
imports no argparse: the front doors (``python -m app``, ``train.sample``,
``train.evaluate``) build their parsers from this table, so every command line names
models the same way. :func:`engine.model_specs.open_models` opens what they name.
"""

from __future__ import annotations

MODEL_OPTIONS_TITLE = "models (default: the default shipped bundle, models/index.json)"

MODEL_OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--bundle", {"default": None, "metavar": "NAME|PATH",
                  "help": "a shipped bundle's name (mnist, fashion-mnist, ...: python -m train.bundle list) or a "
                          "bundle folder (bundle.json + model files)"}),
    ("--denoiser", {"default": None, "help": "PRESET:PATH of a published denoiser (or PATH with --preset-set)"}),
    ("--guide", {"action": "append", "default": [],
                 "help": "NAME=PRESET:PATH of a published classifier (or NAME=PATH with --preset-set); repeatable"}),
    ("--preset-set", {"default": None, "help": "e.g. imagenet128 (see engine/presets.py)"}),
    ("--diffusers-dir", {"default": None, "metavar": "PATH",
                         "help": "a local diffusers pixel-space pipeline folder (model_index.json, unet/, scheduler/); "
                                 "guides then as --guide NAME=PATH (train.classifier model file) or NAME=PRESET:PATH"}),
    ("--precision", {"choices": ["fp32", "bf16", "fp16"], "default": "fp32",
                     "help": "sampling precision: fp32 (exact, default), bf16 (the CPU fast path; CUDA too) or fp16 "
                             "(CUDA); the torsos of denoiser and guides run in 16 bits, the guidance "
                             "gradient and the step stay fp32"}),
)
