"""FID / precision / recall / judge-accuracy sweeps over guidance methods and scales
(Kawar, Ganz & Elad 2023, Tables 1, 5 and 6; GradCheck's three-way setting).

For each method and scale, ``--per-class`` images of every class are sampled with the
shared-seed sampler (the same seeds for every method, so differences come from guidance
alone), for ``--replicates`` independent seed sets; each set is scored against the
held-out real images:

- FID: Fréchet distance of Gaussian fits in the feature space (``--features judge``: the
  bundle's judge penultimate layer; ``inception``: FID Inception-v3 from
  ``--inception-weights``);
- improved precision / recall (k = 3), with the real-vs-real baseline beside them;
- class accuracy: the judge's agreement with the requested class.

Tables report mean ± standard deviation over replicates; ``--paired A:B`` adds A minus B
replicate by replicate (the same seeds for both, so the pairing cancels the seed-set noise). Samples are cached per
configuration and replicate under ``OUT/cache``, so an interrupted sweep resumes where it
stopped; ``torchrun`` shards the seeds of each batch over processes.

Method specs are column specs (``engine/guidance.py``; README, "Column specs") without a
scale: ``unguided``, ``cfg`` (classifier-free; its scale is the CFG strength),
``GUIDE[@SOURCE][+STABILISER]`` with SOURCE one of x_t, x0 (through the denoiser),
x0_detached and STABILISER adam or ema, e.g. ``nonrobust@x0+adam``; a suffix ``*K`` multiplies
every scale for that method (Adam's normalised output needs smaller scales: ``nonrobust@x0+adam*0.05``);
``/KEY=VALUE`` sets any other guidance option (``robust/loss=logit``).
``--modes conditional,unconditional`` also runs every method with the denoiser's null
label (GradCheck's setting: an unconditional model steered only by the classifier).

Examples::

    python -m train.evaluate --out eval/table --methods unguided,vanilla,robust --scales 0.5,1,2,4
    python -m train.evaluate --out eval/threeway --methods unguided,nonrobust@x0,nonrobust@x0+adam,vanilla,robust \\
        --scales 1,2,4 --modes conditional,unconditional
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model_args import add_model_args, open_from_args
from engine.data import load_split
from engine.diffusion.schedules import respacing_for_steps
from engine.guidance import GuidanceConfig, GuidanceSpec
from engine.metrics import (InceptionV3Features, JudgeFeatures, class_accuracy, extract_features, frechet_distance,
                            precision_recall, real_baseline)

from .distributed import DistInfo, gather_shards, run_main
from .loop import progress
from .sample import sample_indices

METRICS = ("fid", "precision", "recall", "accuracy")


@dataclass(frozen=True)
class Point:
    """One (method, mode, scale) cell of the sweep."""

    method: str
    mode: str
    scale: float
    config: GuidanceConfig

    @property
    def key(self) -> str:
        text = json.dumps(self.config.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def method_config(spec: str, scale: float, mode: str, bundle, name: str) -> GuidanceConfig:
    """The guidance config of a method spec (``engine.guidance`` column-spec grammar) at one
    swept scale and denoiser mode."""
    try:
        parsed = GuidanceSpec.parse(spec)
        if parsed.scale is not None:
            raise ValueError("give the scales with --scales (use '*K' to multiply them for this method)")
        return parsed.to_config(bundle.guide_info, scale=scale, denoiser_mode=mode, name=name)
    except ValueError as exc:
        raise SystemExit(f"method {spec!r}: {exc}") from None


def build_points(methods: list[str], scales: list[float], modes: list[str], bundle) -> list[Point]:
    points = []
    for mode in modes:
        for m in methods:
            if m == "cfg" and mode == "unconditional":
                continue
            for s in ([0.0] if m == "unguided" else scales):
                name = f"{m}|{mode}|{s:g}"
                points.append(Point(m, mode, s, method_config(m, s, mode, bundle, name)))
    return points


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (tables, plots, cache)")
    p.add_argument("--methods", default="unguided,vanilla,robust", help="comma-separated method specs")
    p.add_argument("--scales", default="0.5,1,2,4", help="guidance scales (default: 0.5,1,2,4)")
    p.add_argument("--modes", default="conditional", help="conditional and/or unconditional (denoiser null label)")
    p.add_argument("--per-class", type=int, default=30, help="images per class per replicate (default: 30)")
    p.add_argument("--replicates", type=int, default=3, help="independent seed sets (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="base seed (replicate r, image i: seed + r*1e6 + i)")
    p.add_argument("--respacing", default=None,
                   help="sampling steps, e.g. 25 or ddim25 (default: 50 steps, spaced for the sampler: 50 for DDPM, "
                        "ddim50 for DDIM)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--batch-size", type=int, default=100, help="seeds per sampler call (default: 100)")
    p.add_argument("--group", type=int, default=6, help="configs sampled side by side per call (default: 6)")
    p.add_argument("--features", choices=["judge", "inception"], default="judge")
    p.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05-6726825d.pth for --features inception")
    p.add_argument("--data", default=None,
                   help="real images: the held-out part of this dataset (default: the bundle's own, else mnist)")
    p.add_argument("--k", type=int, default=3, help="k of the k-NN precision / recall (default: 3)")
    p.add_argument("--paired", action="append", default=[], metavar="A:B",
                   help="also report method A minus method B per replicate (same seeds, so the pairing removes the "
                        "seed-set noise both share), e.g. --paired robust:vanilla; repeatable")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def sample_points(points: list[Point], bundle, args, info: DistInfo) -> None:
    """Fill OUT/cache/<key>/rep<r>.npz for every point and replicate that lacks it; the seeds
    of each batch are sharded over the processes."""
    check_cache_settings(args, info)
    n_classes = bundle.num_classes
    total = args.per_class * n_classes
    labels_all = [i % n_classes for i in range(total)]
    todo = [(p, r) for r in range(args.replicates) for p in points
            if not (args.out / "cache" / p.key / f"rep{r}.npz").exists()]
    bar = progress(len(todo) * len(range(info.rank, total, info.world)), 0,
                   info.is_main and not args.no_progress, "sampling")
    batches = [list(range(s, min(total, s + args.batch_size)))[info.rank::info.world]
               for s in range(0, total, args.batch_size)]
    for r in range(args.replicates):
        pending = [p for p, rr in todo if rr == r]
        for g in range(0, len(pending), args.group):
            group = pending[g:g + args.group]
            indices, arrays, _ = sample_indices(
                bundle, [p.config for p in group], batches, lambda i, r=r: args.seed + r * 1_000_000 + i,
                labels_all.__getitem__, lambda images: images.numpy(),
                on_batch=lambda idx, n=len(group): bar.update(n * len(idx)),
                respacing=args.respacing, sampler=args.sampler)
            for p in group:
                folder = args.out / "cache" / p.key
                merged = gather_shards(folder, f"rep{r}", {"images": arrays[p.config.name]}, indices, info)
                if merged is not None:
                    tmp = folder / f"rep{r}.tmp.npz"
                    np.savez(tmp, images=merged["images"].astype(np.float32), labels=np.array(labels_all))
                    tmp.replace(folder / f"rep{r}.npz")
                    (folder / "config.json").write_text(json.dumps(p.config.to_dict(), indent=1))
    bar.close()


def check_cache_settings(args, info: DistInfo) -> None:
    """The cache is keyed by guidance config only: refuse to reuse it for other steps, sampler,
    precision, seeds or image counts (which would silently mix samples); a cache without the
    record (made before it existed) is taken as made with the present settings."""
    settings = {"respacing": str(args.respacing), "sampler": args.sampler, "precision": args.precision,
                "seed": args.seed, "per_class": args.per_class}
    path = args.out / "cache" / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = {k: (stored.get(k, v), v) for k, v in settings.items() if stored.get(k, v) != v}
        if changed:
            shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise SystemExit(f"{args.out} holds samples made with other settings ({shown}); give another --out")
    elif info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def _batches(images: torch.Tensor, size: int):
    return (images[i:i + size] for i in range(0, len(images), size))


def make_extractor(args, bundle):
    if args.features == "inception":
        return InceptionV3Features(args.inception_weights, device=str(bundle.device))
    if bundle.judge is None:
        raise SystemExit("--features judge needs a bundle with a judge network; use --features inception")
    return JudgeFeatures(bundle.judge)


def score_points(points: list[Point], bundle, args) -> list[dict]:
    """Metrics per point and replicate, then mean / std over replicates."""
    extractor = make_extractor(args, bundle)
    args.data = args.data or getattr(bundle, "dataset", None) or "mnist"
    real = load_split(args.data, "heldout", image_size=bundle.image_shape[-1], channels=bundle.image_shape[0])
    real_images, real_labels = real.tensors()
    real_feats = extract_features(extractor, _batches(real_images, 250))
    baseline = real_baseline(real_feats, k=args.k)
    train = load_split(args.data, "train", image_size=bundle.image_shape[-1], channels=bundle.image_shape[0])
    train_images, _ = train.tensors()
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train_images), generator=gen)[:len(real_images)]
    train_feats = extract_features(extractor, _batches(train_images[pick], 250))
    real_fid = frechet_distance(real_feats, train_feats)
    real_acc = class_accuracy(bundle.judge, real_images, real_labels) if bundle.judge is not None else float("nan")
    from engine.metrics import knn_radii

    radii = knn_radii(real_feats, k=args.k)
    rows = []
    for p in points:
        per_rep = []
        for r in range(args.replicates):
            data = np.load(args.out / "cache" / p.key / f"rep{r}.npz")
            images = torch.from_numpy(data["images"]).clamp(-1, 1)  # the last step may overshoot by float error
            labels = torch.from_numpy(data["labels"])
            feats = extract_features(extractor, _batches(images, 250))
            pr = precision_recall(real_feats, feats, k=args.k, real_radii=radii)
            acc = class_accuracy(bundle.judge, images, labels) if bundle.judge is not None else float("nan")
            per_rep.append({"fid": frechet_distance(real_feats, feats), "precision": pr["precision"],
                            "recall": pr["recall"], "accuracy": acc})
        row: dict[str, Any] = {"method": p.method, "mode": p.mode, "scale": p.scale,
                               "effective_scale": p.config.scale, "key": p.key,
                               "n_per_replicate": len(labels), "replicates": args.replicates}
        for metric in METRICS:
            values = np.array([q[metric] for q in per_rep], dtype=np.float64)
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{metric}_values"] = values.tolist()
        rows.append(row)
    reference = {"real_vs_real_precision": baseline["precision"], "real_vs_real_recall": baseline["recall"],
                 "train_vs_heldout_fid": real_fid, "judge_heldout_accuracy": real_acc, "n_real": len(real_labels),
                 "features": extractor.name}
    return [{"reference": reference}] + rows


def fmt(row: dict, metric: str) -> str:
    digits = 2 if metric == "fid" else 3
    return f"{row[metric]:.{digits}f} ± {row[metric + '_std']:.{digits}f}"


def markdown(rows: list[dict], args) -> str:
    reference = rows[0]["reference"]
    body = rows[1:]
    lines = [f"Sweep: {args.per_class} images per class x {args.replicates} replicates per cell, "
             f"{args.sampler} {args.respacing} steps, features: {reference['features']}; mean ± std over replicates.",
             f"Real-vs-real: precision {reference['real_vs_real_precision']:.3f}, recall "
             f"{reference['real_vs_real_recall']:.3f} (two halves of {reference['n_real']} held-out images); "
             f"FID train-vs-held-out {reference['train_vs_heldout_fid']:.2f}; judge accuracy on held-out "
             f"{reference['judge_heldout_accuracy']:.3f}.", ""]
    for mode in dict.fromkeys(r["mode"] for r in body):
        mode_rows = [r for r in body if r["mode"] == mode]
        lines += [f"### Best scale per method ({mode} denoiser; best = lowest FID)", "",
                  "| method | scale | FID | precision | recall | judge accuracy |", "|---|---|---|---|---|---|"]
        for method in dict.fromkeys(r["method"] for r in mode_rows):
            best = min((r for r in mode_rows if r["method"] == method), key=lambda r: r["fid"])
            lines.append(f"| {method} | {best['effective_scale']:g} | {fmt(best, 'fid')} | {fmt(best, 'precision')} | "
                         f"{fmt(best, 'recall')} | {fmt(best, 'accuracy')} |")
        scales = sorted({r["scale"] for r in mode_rows if r["method"] != "unguided"})
        for metric in METRICS:
            lines += ["", f"#### {metric} by scale ({mode})", "",
                      "| method | " + " | ".join(f"s={s:g}" for s in scales) + " |",
                      "|---|" + "---|" * len(scales)]
            for method in dict.fromkeys(r["method"] for r in mode_rows):
                cells = []
                for s in scales:
                    hit = [r for r in mode_rows if r["method"] == method and (r["scale"] == s or method == "unguided")]
                    cells.append(fmt(hit[0], metric) if hit else "")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += paired_markdown(rows[0].get("paired", []))
    return "\n".join(lines)


def parse_pairs(texts: list[str], methods: list[str]) -> list[tuple[str, str]]:
    """``A:B`` strings to method pairs, both of which must be in the sweep."""
    pairs = []
    for text in texts:
        a, sep, b = text.partition(":")
        if not sep or a not in methods or b not in methods or a == b:
            raise SystemExit(f"--paired {text!r}: expected A:B with two different methods of --methods ({', '.join(methods)})")
        pairs.append((a, b))
    return pairs


def paired_differences(rows: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per scale and mode, method A minus method B for each metric, replicate by replicate.

    Replicate r of every method uses the same seeds and labels, so the differences are paired:
    their mean equals the difference of the means, and their spread (sample std over
    replicates) excludes the variation of the seed sets that both methods share. ``wins`` counts
    the replicates where A is better (lower FID, higher precision / recall / accuracy). An
    ``unguided`` B is the same row at every scale.
    """
    out = []
    for a, b in pairs:
        for mode in dict.fromkeys(r["mode"] for r in rows):
            for ra in (r for r in rows if r["method"] == a and r["mode"] == mode):
                hits = [r for r in rows if r["method"] == b and r["mode"] == mode
                        and (r["scale"] == ra["scale"] or b == "unguided")]
                if not hits:
                    continue
                entry: dict[str, Any] = {"a": a, "b": b, "mode": mode, "scale": ra["scale"]}
                for metric in METRICS:
                    diff = np.array(ra[f"{metric}_values"]) - np.array(hits[0][f"{metric}_values"])
                    better = diff < 0 if metric == "fid" else diff > 0
                    entry[metric] = float(diff.mean())
                    entry[f"{metric}_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
                    entry[f"{metric}_wins"] = int(better.sum())
                    entry["replicates"] = len(diff)
                out.append(entry)
    return out


def paired_markdown(entries: list[dict]) -> list[str]:
    lines: list[str] = []
    for a, b, mode in dict.fromkeys((e["a"], e["b"], e["mode"]) for e in entries):
        sel = [e for e in entries if (e["a"], e["b"], e["mode"]) == (a, b, mode)]
        lines += [f"### {a} minus {b}, paired by seed set ({mode})", "",
                  "Mean ± std over replicates of the per-replicate difference; in brackets, replicates where "
                  f"{a} is better.", "",
                  "| metric | " + " | ".join(f"s={e['scale']:g}" for e in sel) + " |", "|---|" + "---|" * len(sel)]
        for metric in METRICS:
            digits = 2 if metric == "fid" else 3
            cells = [f"{e[metric]:+.{digits}f} ± {e[metric + '_std']:.{digits}f} ({e[metric + '_wins']}/{e['replicates']})"
                     for e in sel]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def write_outputs(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text(markdown(rows, args))
    fields = ["method", "mode", "scale", "effective_scale", "fid", "fid_std", "precision", "precision_std", "recall", "recall_std",
              "accuracy", "accuracy_std", "n_per_replicate", "replicates", "key"]
    with open(args.out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[1:])
    plot(rows[1:], args.out / "metrics_by_scale.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["fid", "precision", "recall", "accuracy"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, metric in zip(axes, metrics):
        for (method, mode) in dict.fromkeys((r["method"], r["mode"]) for r in rows):
            sel = sorted((r for r in rows if r["method"] == method and r["mode"] == mode), key=lambda r: r["scale"])
            label = method if mode == "conditional" else f"{method} (uncond.)"
            if method == "unguided":
                ax.axhline(sel[0][metric], ls="--", color="grey" if mode == "conditional" else "black", lw=1,
                           label=label)
                continue
            errorbar_series(ax, sel, "scale", metric, label=label, ls="-" if mode == "conditional" else ":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("guidance scale")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def errorbar_series(ax, rows: list[dict], x_key: str, metric: str, **style) -> None:  # noqa: ANN001 - an Axes
    """One curve of ``metric`` (mean, error bar = its ``_std`` over replicates) against ``x_key``."""
    ax.errorbar([r[x_key] for r in rows], [r[metric] for r in rows], yerr=[r[f"{metric}_std"] for r in rows],
                marker="o", capsize=3, **style)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.per_class <= 0 or args.replicates <= 0 or args.batch_size <= 0 or args.group <= 0:
        raise SystemExit("--per-class, --replicates, --batch-size and --group must be positive")
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--scales expects numbers, got {args.scales!r}") from None
    modes = [m.strip() for m in args.modes.split(",")]
    if any(m not in ("conditional", "unconditional") for m in modes):
        raise SystemExit("--modes takes conditional and/or unconditional")
    methods = [m.strip() for m in args.methods.split(",")]
    pairs = parse_pairs(args.paired, methods)
    return run_main(args, lambda args, info: run(args, info, methods, scales, modes, pairs))


def run(args: argparse.Namespace, info: DistInfo, methods: list[str], scales: list[float], modes: list[str],
        pairs: list[tuple[str, str]]) -> int:
    bundle = open_from_args(args, str(info.device))
    if args.respacing is None:  # 50 steps, spaced for the sampler (DDIM: its own stride, see respacing_for_steps)
        total = getattr(getattr(bundle, "diffusion_config", None), "steps", 1000)
        args.respacing = respacing_for_steps(total, 50, args.sampler)
    if "unconditional" in modes and bundle.null_label is None and bundle.denoiser.num_classes is not None:
        raise SystemExit("--modes unconditional needs a denoiser trained with a null label")
    points = build_points(methods, scales, modes, bundle)
    sample_points(points, bundle, args, info)
    if info.is_main:
        rows = score_points(points, bundle, args)
        rows[0]["paired"] = paired_differences(rows[1:], pairs)
        write_outputs(rows, args)
        print(json.dumps(rows, indent=1) if args.json else markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
