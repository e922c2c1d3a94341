"""Perceptually aligned gradients, measured: targeted attacks graded by an independent judge.

A classifier has perceptually aligned gradients (Santurkar et al. 2019; Kawar, Ganz &
Elad 2023, Section 3 and Figure 4) when a targeted attack against it turns an image into
something an independent observer reads as the target class, not into adversarial noise
that fools only the attacked model. This module measures that:

1. held-out images x_0 with true classes y; per image a target class y' != y, drawn
   uniformly from the other classes by a generator seeded with ``seed`` (the same
   targets for every guide);
2. at each timestep t: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with one noise draw
   per image (also fixed by ``seed`` and shared by all guides); x_0 itself at t = 0;
3. targeted PGD (:func:`engine.attacks.pgd`, L2 by default, no early stopping) maximises
   log p_phi(y' | x~_t, t) inside ||x~_t - x_t|| <= eps; at t = 0 the attacked image
   stays in [-1, 1];
4. the graded image is x~_t at t = 0, and the denoiser's prediction
   x0_hat(x~_t) = clip((x~_t - sqrt(1 - abar_t) eps_theta(x~_t, t)) / sqrt(abar_t))
   at t > 0 (by default with the denoiser's null label, so the denoiser adds no class of
   its own);
5. the judge (a classifier that never guides, trained on the training split) reads the
   graded image.

Per guide, timestep and radius: **success** (the attacked guide predicts y' on x~_t),
**transfer** (the judge reads y'), transfer among successes, and **kept** (the judge
still reads y). Transfer is the perceptual-alignment score: a robust guide should have
a higher transfer than a vanilla one at the radii and timesteps where guidance acts.
Guides are compared per image (:func:`paired_difference`): the mean of
transfer_A(i) - transfer_B(i) with its standard error, since every guide attacks the
same images towards the same targets from the same noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from .attacks import pgd
from .guidance import Guide

ProgressFn = Callable[[int, int], None]


@dataclass
class AlignmentSettings:
    """What is attacked and how (serialisable; stored beside every figure)."""

    timesteps: tuple[int, ...] = (0, 300)
    radii: tuple[float, ...] = (4.0, 8.0)
    norm: str = "l2"
    steps: int = 10
    step_size: float | None = None  # default 2.5 * eps / steps
    seed: int = 0
    denoiser_label: str = "null"  # "null" (unconditional x0 prediction) or "original" (the true class)

    def to_dict(self) -> dict:
        return {**asdict(self), "timesteps": list(self.timesteps), "radii": list(self.radii)}

    @classmethod
    def from_dict(cls, data: dict) -> "AlignmentSettings":
        values = dict(data)
        values["timesteps"] = tuple(int(t) for t in values.get("timesteps", cls.timesteps))
        values["radii"] = tuple(float(r) for r in values.get("radii", cls.radii))
        return cls(**values)


@dataclass
class AlignmentCell:
    """Per-image outcomes of one guide at one (t, eps); boolean tensors of shape (N,)."""

    guide: str
    t: int
    eps: float
    success: torch.Tensor
    transfer: torch.Tensor
    kept: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.success.numel())

    def summary(self) -> dict:
        """Rates with binomial standard errors sqrt(p (1 - p) / n)."""
        out: dict = {"guide": self.guide, "t": self.t, "eps": self.eps, "n": self.n}
        for name, values in (("success", self.success), ("transfer", self.transfer), ("kept", self.kept)):
            p = float(values.float().mean()) if self.n else float("nan")
            out[name] = p
            out[f"{name}_se"] = math.sqrt(p * (1 - p) / self.n) if self.n else float("nan")
        hits = int(self.success.sum())
        among = float((self.transfer & self.success).sum()) / hits if hits else float("nan")
        out["transfer_among_successes"] = among
        out["successes"] = hits
        out["transfer_among_successes_se"] = math.sqrt(among * (1 - among) / hits) if hits else float("nan")
        return out


@dataclass
class AlignmentResult:
    """Every cell of a run, the attacked pictures of the first images, and the settings."""

    settings: AlignmentSettings
    cells: list[AlignmentCell]
    labels: torch.Tensor
    targets: torch.Tensor
    clean_judge_accuracy: float  # judge on the unattacked graded images at t = min(timesteps)
    examples: dict[tuple[str, int, float], torch.Tensor] = field(default_factory=dict)  # graded images
    originals: dict[int, torch.Tensor] = field(default_factory=dict)  # t -> graded unattacked images

    def cell(self, guide: str, t: int, eps: float) -> AlignmentCell:
        for c in self.cells:
            if c.guide == guide and c.t == t and c.eps == eps:
                return c
        raise KeyError(f"no cell for guide {guide!r} at t={t}, eps={eps}")

    def summaries(self) -> list[dict]:
        return [c.summary() for c in self.cells]

    def paired(self, a: str, b: str) -> list[dict]:
        """``a`` minus ``b`` for every (t, eps) both were attacked at."""
        rows = []
        for c in self.cells:
            if c.guide != a:
                continue
            other = self.cell(b, c.t, c.eps)
            rows.append({"a": a, "b": b, "t": c.t, "eps": c.eps,
                         **{f"{k}_diff": v for k, v in paired_difference(c.transfer, other.transfer).items()}})
        return rows

    def to_dict(self, pairs: Sequence[tuple[str, str]] = ()) -> dict:
        return {"settings": self.settings.to_dict(), "n": int(self.labels.numel()),
                "clean_judge_accuracy": self.clean_judge_accuracy, "cells": self.summaries(),
                "paired": [row for a, b in pairs for row in self.paired(a, b)]}


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of d_i = a_i - b_i over images and its standard error std(d) / sqrt(n)
    (sample std, n - 1); ``wins`` / ``losses`` count images where only a / only b holds."""
    if a.shape != b.shape:
        raise ValueError("paired outcomes must cover the same images")
    d = a.float() - b.float()
    n = d.numel()
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(d.mean()) if n else float("nan"), "se": se,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def random_targets(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A target y' != y per image, uniform over the other classes: y' = (y + k) mod K with
    k ~ U{1..K-1} from a generator seeded with ``seed`` (image i's target depends only on
    the seed, its position and its label)."""
    if num_classes < 2:
        raise ValueError("targeted attacks need at least two classes")
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randint(1, num_classes, (len(labels),), generator=gen)
    return (labels.cpu() + offsets) % num_classes


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    # a different stream from the targets', shared by every guide and timestep
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1_000_003))


def _judge_reads(judge: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    preds = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            preds.append(judge(images[start:start + batch_size].float()).argmax(-1).cpu())
    return torch.cat(preds)


def measure_alignment(
    guides: dict[str, Guide],
    judge: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: AlignmentSettings = AlignmentSettings(),
    *,
    diffusion=None,
    denoiser: torch.nn.Module | None = None,
    null_label: int | None = None,
    num_classes: int | None = None,
    batch_size: int = 100,
    keep_examples: int = 8,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> AlignmentResult:
    """Targeted-attack transfer of every guide (module docstring has the protocol).

    ``images`` are clean images in [-1, 1] (N, C, H, W), ``labels`` their classes.
    ``diffusion`` (an unrespaced :class:`engine.diffusion.GaussianDiffusion`) is needed for
    t > 0, and ``denoiser`` to grade x0_hat there."""
    device = torch.device(device)
    if settings.norm not in ("l2", "linf"):
        raise ValueError(f"norm must be l2 or linf, got {settings.norm!r}")
    if settings.steps <= 0:
        raise ValueError("the attack needs at least one step")
    if any(r <= 0 for r in settings.radii):
        raise ValueError("attack radii must be positive")
    if settings.denoiser_label not in ("null", "original"):
        raise ValueError("denoiser_label must be 'null' or 'original'")
    if not guides:
        raise ValueError("no guides to measure")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError("need one label per image and at least one image")
    if any(t > 0 for t in settings.timesteps):
        if diffusion is None or denoiser is None:
            raise ValueError("timesteps above 0 need the diffusion process and the denoiser (x0 is graded)")
        bad = [t for t in settings.timesteps if not 0 <= t < diffusion.num_timesteps]
        if bad:
            raise ValueError(f"timesteps {bad} are outside 0..{diffusion.num_timesteps - 1}")
        if settings.denoiser_label == "null" and null_label is None and getattr(denoiser, "num_classes", None):
            raise ValueError("this denoiser has no null label: use denoiser_label='original'")
    if num_classes is None:
        num_classes = next(iter(guides.values())).num_classes
    images = images.float().cpu()
    labels = labels.long().cpu()
    targets = random_targets(labels, num_classes, settings.seed)
    noise = _noise(tuple(images.shape), settings.seed)
    judge = judge.to(device).eval()
    total = len(settings.timesteps) * len(guides) * len(settings.radii) * len(images)
    done = 0
    cells: list[AlignmentCell] = []
    examples: dict[tuple[str, int, float], torch.Tensor] = {}
    originals: dict[int, torch.Tensor] = {}
    clean_acc = float("nan")

    def grade(x: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        """The image the judge reads: x itself at t = 0, else the denoiser's x0_hat."""
        if t == 0:
            return x
        t_idx = torch.full((len(x),), t, dtype=torch.long, device=device)
        cond = None
        if getattr(denoiser, "num_classes", None):
            cond = (torch.full_like(y, null_label) if settings.denoiser_label == "null" else y).to(device)
        with torch.no_grad():
            out = denoiser(x, diffusion.network_timesteps(t_idx), cond) if cond is not None else \
                denoiser(x, diffusion.network_timesteps(t_idx))
            return diffusion.p_mean_variance(out.float(), x, t_idx, clip_denoised=True)["pred_xstart"]

    for t in settings.timesteps:
        starts = []
        for lo in range(0, len(images), batch_size):
            x0 = images[lo:lo + batch_size]
            if t == 0:
                starts.append(x0)
            else:
                t_idx = torch.full((len(x0),), t, dtype=torch.long)
                starts.append(diffusion.q_sample(x0, t_idx, noise[lo:lo + batch_size]))
        x_start = torch.cat(starts)
        graded_clean = torch.cat([grade(x_start[lo:lo + batch_size].to(device), t, labels[lo:lo + batch_size]).cpu()
                                  for lo in range(0, len(images), batch_size)])
        originals[t] = graded_clean[:keep_examples]
        if t == min(settings.timesteps):
            clean_acc = float((_judge_reads(judge, graded_clean.to(device), batch_size) == labels).float().mean())
        for name, guide in guides.items():
            for eps in settings.radii:
                success, transfer, kept, pictures = [], [], [], []
                for lo in range(0, len(images), batch_size):
                    xb = x_start[lo:lo + batch_size].to(device)
                    yb, tb = labels[lo:lo + batch_size].to(device), targets[lo:lo + batch_size].to(device)
                    t_in = torch.full((len(xb),), t if guide.time_dependent else 0, dtype=torch.long, device=device)
                    net_t = diffusion.network_timesteps(t_in) if (diffusion is not None and guide.time_dependent) else t_in

                    def forward(x, idx, guide=guide, net_t=net_t):
                        return guide.logits(x, net_t[idx])

                    res = pgd(forward, xb, tb, norm=settings.norm, eps=eps, steps=settings.steps,
                              step_size=settings.step_size, targeted=True, early_stop=False,
                              clamp=(-1.0, 1.0) if t == 0 else None)
                    graded = grade(res.x_adv, t, yb)
                    read = _judge_reads(judge, graded, batch_size)
                    success.append(res.success.cpu())
                    transfer.append(read == tb.cpu())
                    kept.append(read == yb.cpu())
                    if sum(len(p) for p in pictures) < keep_examples:
                        pictures.append(graded.cpu())
                    done += len(xb)
                    if progress is not None:
                        progress(done, total)
                cells.append(AlignmentCell(name, int(t), float(eps), torch.cat(success), torch.cat(transfer),
                                           torch.cat(kept)))
                examples[(name, int(t), float(eps))] = torch.cat(pictures)[:keep_examples]
    return AlignmentResult(settings, cells, labels, targets, clean_acc, examples, originals)


def stratified_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of ``n`` images taken round-robin over the classes (class order, then
    position), so a small subset stays balanced; deterministic."""
    by_class = [torch.nonzero(labels == c)[:, 0].tolist() for c in sorted(set(labels.tolist()))]
    out: list[int] = []
    i = 0
    while len(out) < n and any(i < len(ix) for ix in by_class):
        for ix in by_class:
            if i < len(ix) and len(out) < n:
                out.append(ix[i])
        i += 1
    return torch.tensor(out, dtype=torch.long)


def markdown_tables(result: AlignmentResult, pairs: Sequence[tuple[str, str]] = ()) -> str:
    """Per-guide rates (%) with standard errors, then the paired differences."""
    s = result.settings
    lines = [f"Targeted {s.norm.upper()} PGD-{s.steps} towards a random other class, n = {len(result.labels)} held-out "
             f"images (seed {s.seed}); graded by the judge on the attacked image (t = 0) or the denoiser's x0 "
             f"prediction ({s.denoiser_label} label, t > 0). Judge accuracy on the unattacked graded images: "
             f"{100 * result.clean_judge_accuracy:.1f} %.", "",
             "| guide | t | eps | success | transfer | transfer among successes | judge still reads the original |",
             "|---|---|---|---|---|---|---|"]
    for row in result.summaries():
        lines.append(f"| {row['guide']} | {row['t']} | {row['eps']:g} | {_pct(row['success'], row['success_se'])} | "
                     f"**{_pct(row['transfer'], row['transfer_se'])}** | "
                     f"{_pct(row['transfer_among_successes'], row['transfer_among_successes_se'])} | "
                     f"{_pct(row['kept'], row['kept_se'])} |")
    for a, b in pairs:
        lines += ["", f"Transfer, {a} minus {b}, paired by image (points ± standard error; images where only {a} / "
                  f"only {b} transfers):", "", "| t | eps | difference | images |", "|---|---|---|---|"]
        for row in result.paired(a, b):
            lines.append(f"| {row['t']} | {row['eps']:g} | {100 * row['mean_diff']:+.1f} ± {100 * row['se_diff']:.1f} | "
                         f"{row['wins_diff']} / {row['losses_diff']} |")
    return "\n".join(lines)


def _pct(p: float, se: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{100 * p:.1f} ± {100 * se:.1f}"
