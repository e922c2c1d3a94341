"""Steps against quality: judge-feature FID and judge accuracy of guided samples as the
number of sampling steps shrinks, for DDPM and DDIM (the cheapest setting within noise
of the best is what the lab and survey defaults should use).

For every sampler and step count this runs the ``train.evaluate`` sweep (same methods,
scale, seeds and replicates everywhere; respacing ``N`` for DDPM, ``ddimN`` for DDIM:
Nichol & Dhariwal 2021's evenly strided respacing) into ``OUT/<sampler>-<N>/`` (each one
cached and resumable), then writes ``OUT/steps.json``, ``OUT/steps.md`` (a table with
mean ± std over replicates and, per method and sampler, the fewest steps whose FID is
within one combined standard deviation of the best: |FID_N - FID_best| <=
sqrt(std_N^2 + std_best^2)) and ``OUT/steps_vs_quality.png``.

Examples::

    python -m train.steps --out runs/steps --methods unguided,vanilla,robust --scale 1 \\
        --steps 10,25,50,100,250 --samplers ddpm,ddim --per-class 30 --replicates 3
    python -m train.steps --out runs/steps-bf16 --precision bf16 --steps 25,50,100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import evaluate
from .model_args import add_model_args

SAMPLERS = ("ddpm", "ddim")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.steps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (one train.evaluate folder per setting)")
    p.add_argument("--methods", default="unguided,vanilla,robust", help="comma-separated method specs")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale of every guided method (default: 1)")
    p.add_argument("--steps", default="10,25,50,100,250", help="step counts (default: 10,25,50,100,250)")
    p.add_argument("--samplers", default="ddpm,ddim", help="ddpm and / or ddim (default: both)")
    p.add_argument("--per-class", type=int, default=30, help="images per class per replicate (default: 30)")
    p.add_argument("--replicates", type=int, default=3, help="independent seed sets (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data", default="mnist", help="real images: the held-out part of this dataset")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def respacing_for(sampler: str, steps: int) -> str:
    """``N`` (DDPM, evenly spaced) or ``ddimN`` (DDIM's integer stride)."""
    return f"ddim{steps}" if sampler == "ddim" else str(steps)


def parse_settings(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    samplers = [s.strip().lower() for s in args.samplers.split(",") if s.strip()]
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad or not samplers:
        raise SystemExit(f"--samplers takes {' and / or '.join(SAMPLERS)}, got {args.samplers!r}")
    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--steps expects whole numbers, e.g. 10,25,50, got {args.steps!r}") from None
    if not steps or steps[0] < 1:
        raise SystemExit("--steps must be positive whole numbers")
    return samplers, steps


def evaluate_args(args: argparse.Namespace, sampler: str, steps: int, out: Path) -> list[str]:
    argv = ["--out", str(out), "--methods", args.methods, "--scales", f"{args.scale:g}", "--per-class",
            str(args.per_class), "--replicates", str(args.replicates), "--seed", str(args.seed), "--respacing",
            respacing_for(sampler, steps), "--sampler", sampler, "--batch-size", str(args.batch_size), "--data",
            args.data, "--device", args.device, "--precision", args.precision]
    for flag, value in (("--bundle", args.bundle), ("--denoiser", args.denoiser), ("--preset-set", args.preset_set),
                        ("--diffusers-dir", args.diffusers_dir)):
        if value:
            argv += [flag, value]
    for guide in args.guide:
        argv += ["--guide", guide]
    return argv + (["--no-progress"] if args.no_progress else [])


def cheapest_within_noise(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (method, sampler): the best FID and the fewest steps within one combined std of it."""
    out = {}
    for key in dict.fromkeys((r["method"], r["sampler"]) for r in rows):
        sel = sorted((r for r in rows if (r["method"], r["sampler"]) == key), key=lambda r: r["steps"])
        best = min(sel, key=lambda r: r["fid"])
        ok = [r for r in sel if abs(r["fid"] - best["fid"]) <= math.hypot(r["fid_std"], best["fid_std"])]
        out[key] = {"best_steps": best["steps"], "best_fid": best["fid"], "cheapest_steps": ok[0]["steps"],
                    "cheapest_fid": ok[0]["fid"]}
    return out


def markdown(rows: list[dict], choice: dict, args: argparse.Namespace, reference: dict) -> str:
    steps = sorted({r["steps"] for r in rows})
    lines = [f"Steps sweep: {args.per_class} images per class x {args.replicates} replicates per cell, guidance "
             f"scale {args.scale:g}, precision {args.precision}, features: {reference.get('features', 'judge')}; "
             "mean ± std over replicates.", ""]
    for metric, digits in (("fid", 2), ("accuracy", 3)):
        lines += [f"| {metric} | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
        for key in dict.fromkeys((r["method"], r["sampler"]) for r in rows):
            cells = []
            for n in steps:
                hit = [r for r in rows if (r["method"], r["sampler"], r["steps"]) == (*key, n)]
                cells.append(f"{hit[0][metric]:.{digits}f} ± {hit[0][metric + '_std']:.{digits}f}" if hit else "")
            lines.append(f"| {key[0]} ({key[1]}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| method (sampler) | best FID at | cheapest within noise of it |", "|---|---|---|"]
    for (method, sampler), c in choice.items():
        lines.append(f"| {method} ({sampler}) | {c['best_steps']} steps ({c['best_fid']:.2f}) | "
                     f"{c['cheapest_steps']} steps ({c['cheapest_fid']:.2f}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "fid", "judge-feature FID (lower is better)"),
                              (axes[1], "accuracy", "judge accuracy (higher is better)")):
        for method, sampler in dict.fromkeys((r["method"], r["sampler"]) for r in rows):
            sel = sorted((r for r in rows if (r["method"], r["sampler"]) == (method, sampler)), key=lambda r: r["steps"])
            evaluate.errorbar_series(ax, sel, "steps", metric, ls="-" if sampler == "ddpm" else ":",
                                     label=f"{method} ({sampler})")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    samplers, steps = parse_settings(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}
    for sampler in samplers:
        for n in steps:
            out = args.out / f"{sampler}-{n}"
            print(f"{sampler}, {n} steps -> {out}", file=sys.stderr, flush=True)
            with open(args.out / "evaluate.log", "a") as log, contextlib.redirect_stdout(log):
                evaluate.main(evaluate_args(args, sampler, n, out))
            results = json.loads((out / "results.json").read_text())
            reference = results[0]["reference"]
            for r in results[1:]:
                rows.append({"method": r["method"], "sampler": sampler, "steps": n, "respacing": respacing_for(sampler, n),
                             **{k: r[k] for k in ("fid", "fid_std", "fid_values", "accuracy", "accuracy_std",
                                                  "accuracy_values", "precision", "recall")}})
    choice = cheapest_within_noise(rows)
    (args.out / "steps.json").write_text(json.dumps(
        {"reference": reference, "rows": rows,
         "cheapest_within_noise": [{"method": m, "sampler": s, **c} for (m, s), c in choice.items()]}, indent=1))
    text = markdown(rows, choice, args, reference)
    (args.out / "steps.md").write_text(text)
    plot(rows, args.out / "steps_vs_quality.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
