"""Perceptual alignment of guides: targeted-attack transfer to an independent judge.

Held-out images, a random other target class per image (fixed by --seed), targeted PGD
against each guide at each timestep and radius; the bundle's judge (never a guide,
trained on the training split only) reads the attacked image at t = 0, or the
denoiser's predicted x0 of the attacked x_t at t > 0. Transfer (the judge reads the
target) is the guide's perceptual alignment; ``--paired A:B`` reports A minus B per
image with its standard error. Protocol and formulas: ``engine/alignment.py``.

Examples::

    python -m train.alignment                                   # bundled models, robust:vanilla
    python -m train.alignment --timesteps 0,300,600 --radii 2,4,8 --n 500 --json
    python -m train.alignment --guide robust4=runs/robust-l2-4/model.pt --paired robust4:vanilla
    python -m train.alignment --out runs/alignment --store       # also write the figures into bundle.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from engine.alignment import AlignmentSettings, markdown_tables, measure_alignment, stratified_subset
from engine.bundles import load_bundle
from engine.checkpoints import BundleError
from engine.data import DataError, load_split
from engine.guidance import Guide

from .robustness import load_classifier


def _numbers(kind: type, what: str):
    """An argparse type for a comma-separated list of ``kind`` values."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of the {what}")
        return values
    return parse


_floats, _ints = _numbers(float, "numbers"), _numbers(int, "integers")


def _pair(text: str) -> tuple[str, str]:
    if text.count(":") != 1 or not all(text.split(":")):
        raise argparse.ArgumentTypeError(f"--paired takes A:B (two guide names), got {text!r}")
    a, b = text.split(":")
    return a, b


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.alignment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, metavar="NAME|PATH",
                   help="a shipped bundle's name (mnist, ...) or a bundle folder (default: the default shipped bundle)")
    p.add_argument("--guides", default=None, help="comma-separated guides of the bundle (default: all)")
    p.add_argument("--guide", action="append", default=[], metavar="NAME=PATH",
                   help="add a classifier model file as a guide (e.g. a training run's model.pt); repeatable")
    p.add_argument("--data", default=None,
                   help="dataset whose held-out part is attacked (default: the judge's training data, else mnist)")
    p.add_argument("--n", type=int, default=200, help="held-out images, balanced over classes (default: 200)")
    p.add_argument("--timesteps", type=_ints, default=(0, 300), help="attack x_t at these timesteps (default: 0,300)")
    p.add_argument("--radii", type=_floats, default=(4.0, 8.0), help="attack radii, images in [-1, 1] (default: 4,8)")
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="threat model (default: l2)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    p.add_argument("--step-size", type=float, default=None, help="PGD step size (default: 2.5 * eps / steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets and the noise (default: 0)")
    p.add_argument("--denoiser-label", choices=["null", "original"], default="null",
                   help="label the denoiser gets when it predicts x0 at t > 0 (default: null = unconditional)")
    p.add_argument("--paired", type=_pair, action="append", default=None, metavar="A:B",
                   help="report A minus B per image (default: robust:vanilla when both exist); repeatable")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for results.md, results.json and examples.png (originals, attacked images, perturbations)")
    p.add_argument("--store", action="store_true",
                   help="write each bundle guide's figures into the bundle manifest (figures.alignment)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def _extra_guide(spec: str, device) -> tuple[str, Guide]:
    if "=" not in spec:
        raise SystemExit(f"--guide takes NAME=PATH, got {spec!r}")
    try:
        name, net, time_dependent, _ = load_classifier(Path(spec))
    except BundleError as exc:
        raise SystemExit(str(exc)) from None
    return name, Guide(net.eval().to(device), time_dependent=time_dependent)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n <= 0 or args.steps <= 0 or args.batch_size <= 0:
        raise SystemExit("--n, --steps and --batch-size must be positive")
    try:
        bundle = load_bundle(args.bundle, device=args.device)
    except BundleError as exc:
        raise SystemExit(str(exc)) from None
    if bundle.judge is None:
        raise SystemExit(f"the bundle at {bundle.source} has no judge: the instrument needs an independent classifier "
                         "that never guides (train one with python -m train.judge and add it with train.bundle)")
    names = [g.strip() for g in args.guides.split(",")] if args.guides else list(bundle.guides)
    unknown = [g for g in names if g not in bundle.guides]
    if unknown:
        raise SystemExit(f"unknown guide(s) {unknown}; this bundle has {sorted(bundle.guides)}")
    guides = {name: bundle.guides[name] for name in names}
    for spec in args.guide:
        name, guide = _extra_guide(spec, bundle.device)
        if name in guides:
            raise SystemExit(f"--guide {name}=... names a guide that is already there; pick another name")
        guides[name] = guide
    pairs = args.paired
    if pairs is None:
        pairs = [("robust", "vanilla")] if {"robust", "vanilla"} <= set(guides) else []
    for a, b in pairs:
        if a not in guides or b not in guides:
            raise SystemExit(f"--paired {a}:{b} names a guide that is not measured; guides: {sorted(guides)}")
    source = args.data or bundle.dataset or "mnist"
    try:
        data = load_split(source, "heldout", image_size=bundle.image_shape[-1], channels=bundle.image_shape[0])
    except DataError as exc:
        raise SystemExit(f"data: {exc}") from None
    images, labels = data.tensors()
    pick = stratified_subset(labels, args.n)
    images, labels = images[pick], labels[pick]
    settings = AlignmentSettings(timesteps=args.timesteps, radii=args.radii, norm=args.norm, steps=args.steps,
                                 step_size=args.step_size, seed=args.seed, denoiser_label=args.denoiser_label)
    from tqdm.auto import tqdm

    bar = tqdm(total=1, disable=args.no_progress, desc="alignment", unit="img", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = measure_alignment(guides, bundle.judge, images, labels, settings,
                                   diffusion=bundle.diffusion(""), denoiser=bundle.denoiser,
                                   null_label=bundle.null_label, num_classes=bundle.num_classes,
                                   batch_size=args.batch_size, device=bundle.device, progress=progress)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        bar.close()
    payload = result.to_dict(pairs)
    payload["data"] = source
    payload["command"] = "python -m train.alignment " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown_tables(result, pairs)
    print(json.dumps(payload, indent=1) if args.json else text)
    if args.out is not None:
        write_outputs(args.out, result, payload, text)
    if args.store:
        store_in_bundle(bundle, payload, names)
    return 0


def write_outputs(out: Path, result, payload: dict, text: str) -> None:
    """results.md, results.json and examples.png (per timestep and radius: the graded
    originals, each guide's attacked images and the perturbations, amplified)."""
    from engine.viz import grid, images_to_uint8, save_png, to_rgb, upscale

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    rows = []
    guides = list(dict.fromkeys(c.guide for c in result.cells))
    for t, originals in result.originals.items():
        for eps in result.settings.radii:
            rows.append(originals)
            for g in guides:
                attacked = result.examples[(g, t, eps)]
                rows.append(attacked)
            for g in guides:
                diff = result.examples[(g, t, eps)] - originals
                scale = diff.abs().flatten(1).amax(1).clamp_min(1e-6).reshape(-1, 1, 1, 1)
                rows.append(diff / scale)
    k = min(len(r) for r in rows)
    pictures = torch.cat([r[:k] for r in rows])
    save_png(upscale(grid(to_rgb(images_to_uint8(pictures)), ncols=k), 2), out / "examples.png")
    legend = ["rows, per timestep and radius: graded originals; attacked (" + ", ".join(guides) +
              "); perturbations (" + ", ".join(guides) + "), each scaled to its largest value",
              f"timesteps {list(result.originals)}, radii {list(result.settings.radii)}"]
    (out / "examples.txt").write_text("\n".join(legend) + "\n")
    print(f"wrote {out}/results.md, results.json, examples.png", file=sys.stderr)


def store_in_bundle(bundle, payload: dict, names: list[str]) -> None:
    """Write each guide's rows (and the paired rows naming it first) into bundle.json,
    atomically."""
    path = Path(bundle.source) / "bundle.json"
    manifest = json.loads(path.read_text())
    for name in names:
        entry = manifest["guides"].get(name)
        if entry is None:
            continue
        entry.setdefault("figures", {})["alignment"] = {
            "settings": payload["settings"], "n": payload["n"], "data": payload["data"],
            "command": payload["command"],
            "cells": [c for c in payload["cells"] if c["guide"] == name],
            "paired": [p for p in payload["paired"] if p["a"] == name],
        }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"stored alignment figures in {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
