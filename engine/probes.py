"""Probes of one image (the paper's Figures 3 and 4): each guide's gradient at several
timesteps, and a targeted attack against each guide.

- :func:`inspect_gradients`: noise a clean image to x_t = q_sample(x_0, t) at several
  timesteps (one noise draw from ``seed``, shared by all guides) and compute each
  guide's grad_{x_t} log p(y | x_t, t) and prediction (Kawar et al., Figure 3).
- :func:`targeted_attack`: targeted PGD that maximises log p(target | x_t, t) for each
  guide, from the same start (Kawar et al., Figure 4: t = 0, L2 eps 100, 7 steps);
  :func:`scaled_attack_eps`: that radius for images of another size;
- :func:`transfer_batch`: the same attack on a batch of held-out images with random
  targets, graded by the bundle's judge (:mod:`engine.alignment`'s instrument).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .alignment import AlignmentResult, AlignmentSettings, ProgressFn, measure_alignment
from .attacks import pgd
from .bundles import Bundle
from .guidance import classifier_gradient


@dataclass
class GradientRecord:
    """One guide at one timestep."""

    guide: str
    t: int
    x_t: torch.Tensor  # (C, H, W)
    grad: torch.Tensor  # (C, H, W)
    log_prob: float  # log p(label | x_t, t)
    prediction: int
    confidence: float  # p(prediction | x_t, t)
    probabilities: torch.Tensor  # (num_classes,)


def _check_image(bundle: Bundle, image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 3:
        image = image[None]
    if tuple(image.shape[1:]) != bundle.image_shape:
        raise ValueError(f"the image is {tuple(image.shape[1:])} but the models expect {bundle.image_shape} "
                         "(channels, height, width)")
    if not torch.isfinite(image).all() or image.min() < -1.001 or image.max() > 1.001:
        raise ValueError("images must be finite values in [-1, 1]")
    return image.float()


def _guide_timestep(bundle: Bundle, name: str, t: int, batch: int) -> torch.Tensor:
    if not bundle.guides[name].time_dependent:
        return torch.zeros(batch, dtype=torch.long, device=bundle.device)
    return torch.full((batch,), t, dtype=torch.long, device=bundle.device)


def inspect_gradients(bundle: Bundle, image: torch.Tensor, label: int, timesteps: Sequence[int],
                      guides: Sequence[str] | None = None, seed: int = 0) -> list[GradientRecord]:
    """Gradients of log p(label | x_t, t) for every (guide, t); ``timesteps`` are in the
    original schedule (0 .. steps - 1)."""
    image = _check_image(bundle, image)
    label = bundle.class_index(label)
    guides = list(guides) if guides is not None else list(bundle.guides)
    unknown = [g for g in guides if g not in bundle.guides]
    if unknown:
        raise ValueError(f"unknown guide(s) {unknown}; this bundle has {sorted(bundle.guides)}")
    diffusion = bundle.diffusion("")
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    records = []
    for t in timesteps:
        if not 0 <= int(t) < diffusion.num_timesteps:
            raise ValueError(f"timestep {t} is outside 0..{diffusion.num_timesteps - 1}")
        t_idx = torch.full((1,), int(t), dtype=torch.long)
        x_t = (diffusion.q_sample(image.cpu(), t_idx, noise) if t > 0 else image.cpu()).to(bundle.device)
        target = torch.tensor([label], device=bundle.device)
        for name in guides:
            guide = bundle.guides[name]
            t_in = _guide_timestep(bundle, name, int(t), 1)
            grad, log_prob = classifier_gradient(guide, x_t, t_in, target)
            with torch.no_grad():
                probs = torch.softmax(guide.logits(x_t, t_in).float(), -1)[0].cpu()
            records.append(GradientRecord(name, int(t), x_t[0].cpu(), grad[0].cpu(), float(log_prob[0]),
                                          int(probs.argmax()), float(probs.max()), probs))
    return records


@dataclass
class AttackRecord:
    """Targeted PGD against one guide."""

    guide: str
    t: int
    x_start: torch.Tensor
    x_adv: torch.Tensor
    target_prob_before: float
    target_prob_after: float
    prediction_after: int
    steps_used: int


PAPER_ATTACK_EPS = 100.0  # Kawar et al., Figure 4: L2 radius on 3x128x128 ImageNet images in [-1, 1]
PAPER_IMAGE_SHAPE = (3, 128, 128)


def scaled_attack_eps(image_shape: Sequence[int]) -> float:
    """The paper's L2 radius for images of ``image_shape`` (C, H, W) in [-1, 1], at the
    same root-mean-square change per pixel: 100 * sqrt(C*H*W / (3*128*128)), rounded to
    0.1; e.g. 12.6 for 1x28x28 digits (where 100 exceeds the distance between any two
    images, and the attack returns saturated noise)."""
    numel = math.prod(int(v) for v in image_shape)
    if numel <= 0:
        raise ValueError(f"image shape {tuple(image_shape)} has no pixels")
    return round(PAPER_ATTACK_EPS * math.sqrt(numel / math.prod(PAPER_IMAGE_SHAPE)), 1)


def targeted_attack(bundle: Bundle, image: torch.Tensor, target: int, *, norm: str = "l2", eps: float = 100.0,
                    steps: int = 7, t: int = 0, guides: Sequence[str] | None = None, seed: int = 0,
                    step_size: float | None = None) -> list[AttackRecord]:
    """Targeted PGD toward ``target`` for each guide, from the same (noised) start; at
    t = 0 the result is kept in [-1, 1]."""
    image = _check_image(bundle, image)
    target = bundle.class_index(target)
    if steps <= 0 or eps <= 0:
        raise ValueError("steps and eps must be positive")
    guides = list(guides) if guides is not None else list(bundle.guides)
    diffusion = bundle.diffusion("")
    if not 0 <= t < diffusion.num_timesteps:
        raise ValueError(f"timestep {t} is outside 0..{diffusion.num_timesteps - 1}")
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    t_idx = torch.full((1,), int(t), dtype=torch.long)
    start = (diffusion.q_sample(image.cpu(), t_idx, noise) if t > 0 else image.cpu()).to(bundle.device)
    target_t = torch.tensor([target], device=bundle.device)
    records = []
    for name in guides:
        if name not in bundle.guides:
            raise ValueError(f"unknown guide {name!r}; this bundle has {sorted(bundle.guides)}")
        guide = bundle.guides[name]
        t_in = _guide_timestep(bundle, name, t, 1)

        def forward(x, idx, guide=guide, t_in=t_in):
            return guide.logits(x, t_in[idx])

        with torch.no_grad():
            before = float(torch.softmax(forward(start, torch.tensor([0])).float(), -1)[0, target])
        res = pgd(forward, start, target_t, norm=norm, eps=eps, steps=steps, step_size=step_size, targeted=True,
                  early_stop=False, clamp=(-1.0, 1.0) if t == 0 else None)
        with torch.no_grad():
            probs = torch.softmax(forward(res.x_adv, torch.tensor([0])).float(), -1)[0]
        records.append(AttackRecord(name, t, start[0].cpu(), res.x_adv[0].cpu(), before, float(probs[target]),
                                    int(probs.argmax()), int(res.steps_used[0])))
    return records


def transfer_batch(bundle: Bundle, images: torch.Tensor, labels: torch.Tensor, settings: AlignmentSettings,
                   guides: Sequence[str] | None = None, keep_examples: int = 8, batch_size: int = 100,
                   progress: ProgressFn | None = None) -> AlignmentResult:
    """Targeted-attack transfer of a bundle's guides on a batch of held-out images
    (Kawar et al. Figure 4 as a measurement): :func:`engine.alignment.measure_alignment`
    with the bundle's judge, diffusion process (unrespaced), denoiser and null label, so
    every number equals the instrument's (``python -m train.alignment``) on the same
    images and settings. Per image a random other target class (fixed by
    ``settings.seed``); at t > 0 x_t is attacked and the judge reads the denoiser's x0."""
    if bundle.judge is None:
        raise ValueError("these models have no judge: transfer needs an independent classifier that never guides "
                         "(a bundle with a judge, e.g. a shipped one)")
    names = list(guides) if guides is not None else list(bundle.guides)
    unknown = [g for g in names if g not in bundle.guides]
    if unknown:
        raise ValueError(f"unknown guide(s) {unknown}; this bundle has {sorted(bundle.guides)}")
    images = _check_image(bundle, images)
    return measure_alignment({n: bundle.guides[n] for n in names}, bundle.judge, images.cpu(), labels.long().cpu(),
                             settings, diffusion=bundle.diffusion(""), denoiser=bundle.denoiser,
                             null_label=bundle.null_label, num_classes=bundle.num_classes,
                             batch_size=batch_size, keep_examples=keep_examples, device=bundle.device,
                             progress=progress)
