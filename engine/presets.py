"""Named presets for the published checkpoints: the flags that build each network, the
file name it is published under, and the guidance scale its authors recommend.

Sources: the README of openai/guided-diffusion (flags and ``--classifier_scale``) and
the README of bahjat-kawar/enhancing-diffusion-robust (robust classifiers: the
guided-diffusion classifier architecture, trained adversarially). Nothing is downloaded:
a user fetches the files and gives their paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_GD = ("--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True --resblock_updown True "
       "--use_scale_shift_norm True ")


@dataclass(frozen=True)
class Preset:
    """One published network."""

    name: str
    kind: str  # "denoiser" or "classifier"
    flags: str
    file: str
    description: str
    default_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("gd-64-denoiser", "denoiser",
           _GD + "--class_cond True --dropout 0.1 --image_size 64 --noise_schedule cosine --num_channels 192 "
           "--num_head_channels 64 --num_res_blocks 3 --use_new_attention_order True --use_fp16 True",
           "64x64_diffusion.pt", "guided-diffusion ImageNet 64x64 class-conditional denoiser"),
    Preset("gd-64-classifier", "classifier", "--image_size 64 --classifier_depth 4",
           "64x64_classifier.pt", "guided-diffusion ImageNet 64x64 noisy classifier", 1.0),
    Preset("gd-128-denoiser", "denoiser",
           _GD + "--class_cond True --image_size 128 --noise_schedule linear --num_channels 256 --num_heads 4 "
           "--num_res_blocks 2 --use_fp16 True",
           "128x128_diffusion.pt", "guided-diffusion ImageNet 128x128 class-conditional denoiser (Kawar et al.'s base model)"),
    Preset("gd-128-classifier", "classifier", "--image_size 128",
           "128x128_classifier.pt", "guided-diffusion ImageNet 128x128 noisy classifier (the vanilla guide)", 0.5),
    Preset("gd-256-denoiser", "denoiser",
           _GD + "--class_cond True --image_size 256 --noise_schedule linear --num_channels 256 "
           "--num_head_channels 64 --num_res_blocks 2 --use_fp16 True",
           "256x256_diffusion.pt", "guided-diffusion ImageNet 256x256 class-conditional denoiser"),
    Preset("gd-256-uncond-denoiser", "denoiser",
           _GD + "--class_cond False --image_size 256 --noise_schedule linear --num_channels 256 "
           "--num_head_channels 64 --num_res_blocks 2 --use_fp16 True",
           "256x256_diffusion_uncond.pt", "guided-diffusion ImageNet 256x256 unconditional denoiser"),
    Preset("gd-256-classifier", "classifier", "--image_size 256",
           "256x256_classifier.pt", "guided-diffusion ImageNet 256x256 noisy classifier", 1.0,
           {"scale_with_unconditional_denoiser": 10.0}),
    Preset("gd-512-denoiser", "denoiser",
           _GD + "--class_cond True --image_size 512 --noise_schedule linear --num_channels 256 "
           "--num_head_channels 64 --num_res_blocks 2 --use_fp16 False",
           "512x512_diffusion.pt", "guided-diffusion ImageNet 512x512 class-conditional denoiser"),
    Preset("gd-512-classifier", "classifier", "--image_size 512",
           "512x512_classifier.pt", "guided-diffusion ImageNet 512x512 noisy classifier", 4.0),
    Preset("robust-128-classifier", "classifier", "--image_size 128",
           "robust_classifier_128.pt (enhancing-diffusion-robust release)",
           "Kawar, Ganz & Elad robust time-dependent ImageNet 128x128 classifier (L2 eps 0.5, 7-step PGD)", 1.0),
    Preset("robust-cifar10-classifier", "classifier",
           "--image_size 32 --classifier_attention_resolutions 16,8 --classifier_depth 2 --classifier_width 32 "
           "--classifier_num_classes 10",
           "CIFAR-10 robust classifier (enhancing-diffusion-robust release)",
           "Kawar, Ganz & Elad robust time-dependent CIFAR-10 classifier", 0.25),
    Preset("robust-cifar10-denoiser", "denoiser",
           "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.1 --class_cond True "
           "--num_classes 10 --diffusion_steps 1000 --noise_schedule linear --attention_resolutions 16,8 "
           "--num_heads 4 --rescale_timesteps True",
           "cifar_diffusion_200k.pt", "improved-diffusion CIFAR-10 class-conditional denoiser used by Kawar et al."),
]}

# Ready-made combinations: one denoiser and named guides.
PRESET_SETS: dict[str, dict[str, Any]] = {
    "imagenet128": {
        "denoiser": "gd-128-denoiser",
        "guides": {"vanilla": "gd-128-classifier", "robust": "robust-128-classifier"},
        "respacing": "250",
        "description": "Kawar et al.'s ImageNet 128x128 setting: guided-diffusion denoiser, vanilla (s=0.5) "
                       "and robust (s=1.0) classifiers, 250 of 1000 steps",
    },
    "imagenet256": {"denoiser": "gd-256-denoiser", "guides": {"vanilla": "gd-256-classifier"}, "respacing": "250",
                    "description": "guided-diffusion ImageNet 256x256 with its classifier"},
    "imagenet64": {"denoiser": "gd-64-denoiser", "guides": {"vanilla": "gd-64-classifier"}, "respacing": "250",
                   "description": "guided-diffusion ImageNet 64x64 with its classifier"},
    "imagenet512": {"denoiser": "gd-512-denoiser", "guides": {"vanilla": "gd-512-classifier"}, "respacing": "250",
                    "description": "guided-diffusion ImageNet 512x512 with its classifier"},
    "cifar10": {"denoiser": "robust-cifar10-denoiser", "guides": {"robust": "robust-cifar10-classifier"},
                "respacing": "250", "description": "Kawar et al.'s CIFAR-10 ablation setting"},
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
