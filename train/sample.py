"""Write guided samples the way guided-diffusion's sampling scripts do.

For every guidance config, ``OUT/<name>/samples_NxHxWxC.npz`` (``arr_0`` uint8 NHWC
images, ``arr_1`` labels; the ADM evaluator's format), ``grid.png`` and ``run.json`` (the
config, seeds, labels and settings that regenerate every image). Image i has seed
``--seed + i`` and class ``classes[i % len(classes)]``; every config uses the same seeds,
so the columns are comparable image by image. Under ``torchrun`` the images are sharded
over processes (image i on rank i % world) and rank 0 merges the shards.

Examples::

    # vanilla vs robust on the bundled MNIST models
    python -m train.sample --out samples/demo --num-samples 100 --guides vanilla,robust
    # column specs: robust at scale 2 and the non-robust guide through x0 with Adam
    python -m train.sample --out samples/specs --guides unguided,robust:2,nonrobust@x0+adam:0.05
    # a config file (a JSON list of engine.guidance.GuidanceConfig dicts or column specs)
    python -m train.sample --out samples/x0 --configs configs.json --respacing ddim50 --sampler ddim
    # the paper's ImageNet 128 setting on a GPU, 4 processes
    torchrun --nproc_per_node=4 -m train.sample --out samples/in128 --preset-set imagenet128 \\
        --denoiser 128x128_diffusion.pt --guide vanilla=128x128_classifier.pt --guide robust=robust.pt \\
        --guides vanilla,robust --num-samples 50000 --batch-size 50 --respacing 250 --precision fp16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .model_args import add_model_args, open_from_args
from engine.guidance import GuidanceConfig, parse_spec
from engine.viz import grid, images_to_uint8, save_png, upscale, to_rgb

from .distributed import DistInfo, gather_shards, run_main
from .loop import command_line, progress


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--num-samples", type=int, default=100, help="images per config (default: 100)")
    p.add_argument("--batch-size", type=int, default=50, help="images per sampler call (default: 50)")
    p.add_argument("--classes", default="all", help="comma-separated class ids or 'all' (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0 (image i: seed + i)")
    p.add_argument("--guides", default=None,
                   help="comma-separated column specs (README, 'Column specs'): guide names, each with its default "
                        "scale and source, e.g. vanilla,robust:2,nonrobust@x0+adam:0.05; 'unguided' adds the plain "
                        "denoiser (default: unguided + every guide)")
    p.add_argument("--scale", type=float, default=None,
                   help="the scale of every --guides config that does not give one")
    p.add_argument("--configs", type=Path, default=None,
                   help="JSON list of GuidanceConfig dicts or column specs")
    p.add_argument("--respacing", default=None,
                   help="e.g. 100, ddim50, 10,15,20, taken as written (default: the bundle's steps; for --sampler ddim "
                        "spaced with DDIM's stride, ddimN, since guided DDIM from t = T-1 saturates)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                   help="ddpm (default) or ddim (deterministic with --eta 0)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: 0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def configs_from_args(args: argparse.Namespace, bundle) -> list[GuidanceConfig]:
    """``--configs`` (a JSON list of GuidanceConfig dicts or column specs) or ``--guides``
    (comma-separated column specs; ``--scale`` replaces the guides' default scales)."""
    if args.configs:
        try:
            raw = json.loads(args.configs.read_text())
            return [parse_spec(c, bundle.guide_info) if isinstance(c, str) else GuidanceConfig.from_dict(c)
                    for c in raw]
        except (OSError, json.JSONDecodeError, ValueError, TypeError) as exc:
            raise SystemExit(f"--configs {args.configs}: {exc}") from None
    specs = args.guides.split(",") if args.guides else ["unguided", *bundle.guide_info]
    try:
        return [parse_spec(s, bundle.guide_info, scale=args.scale) for s in specs]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def parse_classes(text: str, num_classes: int) -> list[int]:
    if text == "all":
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise SystemExit(f"--classes expects 'all' or integers, got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise SystemExit(f"--classes {bad} outside 0..{num_classes - 1}")
    return classes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_samples <= 0 or args.batch_size <= 0:
        raise SystemExit("--num-samples and --batch-size must be positive")
    return run_main(args, run)


def run(args: argparse.Namespace, info: DistInfo) -> int:
    bundle = open_from_args(args, str(info.device))
    configs = configs_from_args(args, bundle)
    classes = parse_classes(args.classes, bundle.num_classes)
    write_samples(bundle, configs, classes, args, info)
    return 0


def sample_indices(bundle, configs: list[GuidanceConfig], batches: Iterable[list[int]], seed_of: Callable[[int], int],
                   label_of: Callable[[int], int], to_array: Callable[[torch.Tensor], np.ndarray], *,
                   on_batch: Callable[[list[int]], None] | None = None,
                   **sample_kwargs: Any) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any] | None]:
    """Sample image i (seed ``seed_of(i)``, class ``label_of(i)``) for every config, one
    sampler call per batch of indices; returns the indices, each config's images in that
    order (``to_array`` of the sampler's output) and the run settings."""
    done: list[int] = []
    images: dict[str, list[np.ndarray]] = {c.name: [] for c in configs}
    settings = None
    for idx in batches:
        if idx:
            try:
                result = bundle.sample(configs, [label_of(i) for i in idx], [seed_of(i) for i in idx], **sample_kwargs)
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
            settings = result.settings
            done.extend(idx)
            for c in configs:
                images[c.name].append(to_array(result.images[c.name]))
        if on_batch is not None:
            on_batch(idx)
    arrays = {name: np.concatenate(parts) if parts else np.zeros((0,)) for name, parts in images.items()}
    return np.array(done, dtype=np.int64), arrays, settings


def write_samples(bundle, configs, classes, args, info: DistInfo) -> dict[str, Path]:
    mine = list(range(info.rank, args.num_samples, info.world))
    bar = progress(len(mine), 0, info.is_main and not args.no_progress, "sampling images")
    indices, arrays, settings = sample_indices(
        bundle, configs, [mine[s:s + args.batch_size] for s in range(0, len(mine), args.batch_size)],
        lambda i: args.seed + i, lambda i: classes[i % len(classes)], images_to_uint8,
        on_batch=lambda idx: bar.update(len(idx)), respacing=args.respacing, sampler=args.sampler, eta=args.eta)
    bar.close()
    merged = gather_shards(args.out, "samples", {f"img_{k}": arrays[c.name] for k, c in enumerate(configs)},
                           indices, info)
    written = {}
    if merged is not None:
        all_labels = np.array([classes[i % len(classes)] for i in range(args.num_samples)], dtype=np.int64)
        for k, c in enumerate(configs):
            arr = merged[f"img_{k}"]
            folder = args.out / c.name
            folder.mkdir(parents=True, exist_ok=True)
            n, h, w, ch = arr.shape
            path = folder / f"samples_{n}x{h}x{w}x{ch}.npz"
            np.savez(path, arr_0=arr, arr_1=all_labels)
            factor = max(1, 64 // h)
            save_png(grid(upscale(to_rgb(arr[:100]), factor), ncols=10), folder / "grid.png")
            run = {"config": c.to_dict(), "seeds": [args.seed + i for i in range(args.num_samples)],
                   "labels": all_labels.tolist(), "settings": settings, "bundle": bundle.name,
                   "command": command_line(), "class_names": bundle.class_names}
            (folder / "run.json").write_text(json.dumps(run, indent=1))
            written[c.name] = path
            print(f"wrote {path}", file=sys.stderr)
    return written


if __name__ == "__main__":
    sys.exit(main())
