"""Accuracy of classifiers under PGD on held-out data, at chosen timesteps.

For each classifier, timestep t, threat model and eps: x_t = q_sample(x_0, t) with a
fixed noise draw (the same for every classifier), then PGD (no early stopping, so every
sample gets the full attack) and the accuracy on the attacked inputs. Untargeted
attacks count a sample as robust if it stays correctly classified; targeted ones use a
random wrong target per sample and count it robust if the target is not reached and
the prediction stays correct.

Examples::

    python -m train.robustness models/mnist/vanilla.pt models/mnist/robust.pt --timesteps 0,100,300,500
    python -m train.robustness runs/robust/model.pt --norm l2 --eps 0.5,1,2 --steps 10 --json
    python -m train.robustness models/mnist/vanilla.pt --norm linf --eps 0.03,0.06 --targeted
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from engine.attacks import pgd, time_dependent, time_free
from engine.checkpoints import BundleError, load_model_file
from engine.data import DataError, load_split
from engine.diffusion import DiffusionConfig, create_diffusion
from engine.nets.plain import CleanClassifier


def parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="classifier model files (name=path to label them)")
    p.add_argument("--data", default="mnist", help="dataset whose held-out part is used (default: mnist)")
    p.add_argument("--timesteps", type=parse_ints, default=[0, 100, 300, 500],
                   help="diffusion timesteps (original schedule) to test at (default: 0,100,300,500)")
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="threat model (default: l2)")
    p.add_argument("--eps", type=parse_floats, default=[0.0, 0.5, 1.0, 2.0],
                   help="radii, images in [-1, 1]; 0 = clean accuracy (default: 0,0.5,1,2)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    p.add_argument("--step-size", type=float, default=None, help="(default: 2.5 * eps / steps)")
    p.add_argument("--targeted", action="store_true", help="targeted attack to a random wrong class")
    p.add_argument("--limit", type=int, default=None, help="use only the first N held-out images (stratified order)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draw and targets (default: 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    p.add_argument("--device", default="cpu")
    return p


def load_classifier(spec: Path) -> tuple[str, torch.nn.Module, bool, dict]:
    text = str(spec)
    name, path = (text.split("=", 1) if "=" in text else (Path(text).stem, text))
    net, header = load_model_file(path)
    if header["kind"] != "classifier":
        raise BundleError(f"{path} is a {header['kind']} model, not a classifier")
    time_dep = bool(header["meta"].get("time_dependent", True))
    if not time_dep:
        net = CleanClassifier(net).eval()
    return name, net, time_dep, header


def evaluate(models: list[tuple[str, torch.nn.Module, bool, dict]], images: torch.Tensor, labels: torch.Tensor, *,
             diffusion_config: DiffusionConfig, timesteps: list[int], norm: str, eps_list: list[float], steps: int,
             step_size: float | None, targeted: bool, seed: int, batch_size: int,
             device: torch.device) -> list[dict]:
    """One row per (classifier, t, eps): accuracy on attacked inputs."""
    diffusion = create_diffusion(diffusion_config)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    offsets = torch.randint(1, 10**6, (len(labels),), generator=gen)
    for t_value in timesteps:
        if not 0 <= t_value < diffusion.num_timesteps:
            raise SystemExit(f"timestep {t_value} is outside 0..{diffusion.num_timesteps - 1}")
        t = torch.full((len(labels),), t_value, dtype=torch.long)
        x_t = diffusion.q_sample(images, t, noise) if t_value > 0 else images.clone()
        for name, net, time_dep, _ in models:
            net.to(device)
            for eps in eps_list:
                correct = 0
                for start in range(0, len(labels), batch_size):
                    sl = slice(start, start + batch_size)
                    xb, yb, tb = x_t[sl].to(device), labels[sl].to(device), t[sl].to(device)
                    forward = time_dependent(net, tb) if time_dep else time_free(net)
                    n_classes = None
                    if targeted:
                        with torch.no_grad():
                            n_classes = forward(xb[:1], torch.zeros(1, dtype=torch.long)).shape[-1]
                        target = (yb + offsets[sl].to(device) % (n_classes - 1) + 1) % n_classes
                    if eps > 0 and steps > 0:
                        res = pgd(forward, xb, target if targeted else yb, norm=norm, eps=eps, steps=steps,
                                  step_size=step_size, targeted=targeted, early_stop=False,
                                  clamp=(-1.0, 1.0) if t_value == 0 else None)
                        pred = res.final_pred
                    else:
                        with torch.no_grad():
                            pred = forward(xb, torch.arange(len(yb), device=device)).argmax(-1)
                    correct += int((pred == yb).sum())
                rows.append({"classifier": name, "t": t_value, "norm": norm, "eps": eps,
                             "targeted": targeted, "steps": steps if eps > 0 else 0,
                             "accuracy": correct / len(labels), "n": len(labels)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows: classifier x t; columns: eps."""
    eps_values = sorted({r["eps"] for r in rows})
    kind = f"{rows[0]['norm'].upper()} {'targeted' if rows[0]['targeted'] else 'untargeted'} PGD-{max(r['steps'] for r in rows)}"
    lines = [f"Accuracy (%) under {kind}, n = {rows[0]['n']} held-out images", "",
             "| classifier | t | " + " | ".join(f"eps {e:g}" for e in eps_values) + " |",
             "|---|---|" + "---|" * len(eps_values)]
    keys = []
    for r in rows:
        if (r["classifier"], r["t"]) not in keys:
            keys.append((r["classifier"], r["t"]))
    for name, t in keys:
        vals = {r["eps"]: r["accuracy"] for r in rows if r["classifier"] == name and r["t"] == t}
        lines.append(f"| {name} | {t} | " + " | ".join(f"{100 * vals[e]:.1f}" for e in eps_values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 0:
        raise SystemExit("--steps must be >= 0")
    try:
        models = [load_classifier(m) for m in args.models]
    except BundleError as exc:
        raise SystemExit(str(exc)) from None
    try:
        data = load_split(args.data, "heldout", image_size=models[0][1].image_size)
    except DataError as exc:
        raise SystemExit(f"data: {exc}") from None
    images, labels = data.tensors()
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    meta = models[0][3]["meta"]
    diffusion_config = DiffusionConfig.from_dict(meta["diffusion"]) if meta.get("diffusion") else DiffusionConfig()
    torch.manual_seed(args.seed)
    rows = evaluate(models, images, labels, diffusion_config=diffusion_config, timesteps=args.timesteps,
                    norm=args.norm, eps_list=args.eps, steps=args.steps, step_size=args.step_size,
                    targeted=args.targeted, seed=args.seed, batch_size=args.batch_size,
                    device=torch.device(args.device))
    print(json.dumps(rows, indent=1) if args.json else markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
