"""Shared fixtures.

- ``reference``: loads a file of ``../shared/reference`` (the guided-diffusion contract).
  On a user's clone without ``../shared`` those tests skip with the reason; under CI
  (``CI=true``) a missing fixture fails instead.
- ``tiny_bundle_dir``: a random-weight bundle shaped like the MNIST demo (1x28x28, ten
  classes plus a null label; vanilla, robust and non-robust guides; a judge), written
  through the same file format as the shipped bundle, for fast tests of everything
  that consumes a bundle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(os.environ.get("RCG_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))

TINY_DENOISER_FLAGS = {
    "image_size": 28, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
    "attention_resolutions": "14", "num_heads": 2, "class_cond": True, "num_classes": 11, "learn_sigma": True,
    "resblock_updown": True, "use_scale_shift_norm": True,
}
TINY_CLASSIFIER_FLAGS = {
    "image_size": 28, "classifier_in_channels": 1, "classifier_width": 32, "classifier_depth": 1,
    "classifier_channel_mult": "1,2", "classifier_attention_resolutions": "14", "classifier_num_classes": 10,
    "classifier_num_head_channels": 32, "classifier_pool": "attention",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def reference_path(name: str) -> Path:
    """Path of a reference fixture, or skip (fail under CI) when it is absent."""
    path = REFERENCE_DIR / name
    if not path.is_file():
        message = (f"reference fixture {path} is missing: these tests need ../shared/reference from the "
                   "project workspace (set RCG_REFERENCE_DIR to point elsewhere)")
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def reference():
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            cache[name] = torch.load(reference_path(name), weights_only=True)
        return cache[name]

    return load


def write_tiny_bundle(folder: Path, seed: int = 0) -> Path:
    """Write a random-weight MNIST-shaped bundle into ``folder`` and return it."""
    from engine.bundles import BUNDLE_FORMAT
    from engine.checkpoints import save_model_file
    from engine.diffusion import DiffusionConfig
    from engine.nets.flags import classifier_kwargs, denoiser_kwargs
    from engine.nets import EncoderUNetModel, UNetModel
    from engine.nets.plain import JudgeNet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    diffusion = DiffusionConfig(steps=1000, noise_schedule="cosine", learn_sigma=True).to_dict()
    dk = denoiser_kwargs(TINY_DENOISER_FLAGS)
    unet = UNetModel(**dk)
    # random (non-zero) output layers so samples depend on the network
    for p in unet.parameters():
        if p.dim() > 1 and float(p.detach().abs().sum()) == 0.0:
            torch.nn.init.normal_(p, std=0.02)
    save_model_file(folder / "denoiser.pt", unet, kind="denoiser", config=dk,
                    meta={"diffusion": diffusion, "null_label": 10})
    ck = classifier_kwargs(TINY_CLASSIFIER_FLAGS)
    for name in ("vanilla", "robust", "nonrobust"):
        net = EncoderUNetModel(**ck)
        for p in net.parameters():
            if p.dim() > 1 and float(p.detach().abs().sum()) == 0.0:
                torch.nn.init.normal_(p, std=0.05)
        save_model_file(folder / f"{name}.pt", net, kind="classifier", config=ck, meta={})
    judge = JudgeNet(in_channels=1, num_classes=10, width=8)
    save_model_file(folder / "judge.pt", judge, kind="judge", config=judge.config(), meta={})
    manifest = {
        "format": BUNDLE_FORMAT, "name": "tiny-random", "class_names": [str(i) for i in range(10)],
        "null_label": 10, "default_respacing": "10", "diffusion": diffusion,
        "denoiser": {"file": "denoiser.pt"},
        "guides": {
            "vanilla": {"file": "vanilla.pt", "time_dependent": True, "default_scale": 1.0},
            "robust": {"file": "robust.pt", "time_dependent": True, "default_scale": 2.0},
            "nonrobust": {"file": "nonrobust.pt", "time_dependent": False, "default_scale": 1.0,
                          "default_source": "x0_through_denoiser"},
        },
        "judge": {"file": "judge.pt"},
    }
    (folder / "bundle.json").write_text(json.dumps(manifest, indent=1))
    return folder


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_dir):
    from engine.bundles import load_bundle

    return load_bundle(tiny_bundle_dir)
