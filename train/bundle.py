"""Assemble a shipped model bundle (``models/NAME/``) one model at a time, measuring the
figures its manifest reports.

Each ``add`` copies a trained model file into the bundle (weights stored as float16 to
keep the bundle a few MB; they are computed in float32), measures its figures on the
held-out split with the stored weights, and records them with the exact training
command, seed, data split and training time in ``bundle.json``:

- classifiers (``--role guide``): accuracy under L2 PGD at several timesteps and radii
  (clean = eps 0), via :mod:`train.robustness`;
- the judge: accuracy on held-out digits (and, once a denoiser is present, on its
  conditional samples);
- the denoiser: the judge's accuracy on ``--samples`` conditional samples (unguided,
  the default respacing) and their FID to the held-out digits in the judge's features.

Examples::

    python -m train.bundle add --role denoiser --file runs/denoiser/model.pt
    python -m train.bundle add --role guide --name vanilla --file runs/vanilla/model.pt --default-scale 1
    python -m train.bundle add --role guide --name robust --file runs/robust/model.pt --default-scale 2
    python -m train.bundle add --role judge --file runs/judge/model.pt
    python -m train.bundle set --name robust --default-scale 2
    python -m train.bundle set --lab lab_defaults.json
    python -m train.bundle show --markdown
    python -m train.bundle add --bundle fashion-mnist --role judge --file runs/fm-judge/model.pt
                                              # a new name builds models/fashion-mnist/
    python -m train.bundle list                                  # the shipped bundles and the default

``--bundle`` takes a shipped bundle's name (``mnist``) or a folder; the default is the
default shipped bundle (``models/index.json``, see :mod:`engine.bundle_index`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.bundle_index import (UnknownBundle, default_bundle_name, models_root, read_index, resolve_bundle,
                                 shipped_bundles, writable_bundle_dir)
from engine.bundles import BUNDLE_FORMAT, DEFAULT_BUNDLE_DIR, load_bundle
from engine.checkpoints import load_model_file, save_model_file
from engine.columns import GuidanceSpec
from engine.data import load_split
from engine.guidance import unguided
from engine.metrics import JudgeFeatures, class_accuracy, extract_features, frechet_distance

from .robustness import evaluate as robustness_rows

ROBUSTNESS_TIMESTEPS = [0, 200, 400, 600]
ROBUSTNESS_EPS = [0.0, 1.0, 2.0, 4.0]


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "bundle.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"format": BUNDLE_FORMAT, "name": folder.resolve().name, "guides": {}}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / "bundle.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(folder / "bundle.json")


def copy_model(src: Path, dst: Path) -> dict[str, Any]:
    """Re-save a model file with float16 weights; returns its header."""
    net, header = load_model_file(src)
    save_model_file(dst, net, kind=header["kind"], config=header["config"], meta=header["meta"], dtype=torch.float16)
    return header


def training_record(header: dict[str, Any]) -> dict[str, Any]:
    meta = header["meta"]
    keys = ["command", "seed", "split", "part", "steps", "batch_size", "world", "amp", "train_seconds", "attack",
            "weights", "ema_rate", "flags"]
    return {k: meta[k] for k in keys if k in meta}


def measure_classifier(path: Path, time_dependent: bool, limit: int | None, steps: int,
                       dataset: str = "mnist") -> dict[str, Any]:
    net, header = load_model_file(path)
    from engine.nets.plain import CleanClassifier
    from engine.diffusion import DiffusionConfig

    if not time_dependent:
        net = CleanClassifier(net).eval()
    data = load_split(dataset, "heldout")
    images, labels = data.tensors()
    if limit:
        images, labels = images[:limit], labels[:limit]
    rows = robustness_rows([("model", net, time_dependent, header)], images, labels,
                           diffusion_config=DiffusionConfig.from_dict(header["meta"]["diffusion"]),
                           timesteps=ROBUSTNESS_TIMESTEPS, norm="l2", eps_list=ROBUSTNESS_EPS, steps=steps,
                           step_size=None, targeted=False, seed=0, batch_size=250, device=torch.device("cpu"))
    table = {f"t={r['t']}": {} for r in rows}
    for r in rows:
        table[f"t={r['t']}"][f"eps={r['eps']:g}"] = round(r["accuracy"], 4)
    return {"held_out_accuracy_l2_pgd": table, "attack": f"untargeted L2 PGD-{steps}, step 2.5*eps/steps, no early "
            "stopping; eps on images in [-1, 1]; x_t from one fixed noise draw (seed 0)", "n": len(labels),
            "command": "python -m train.robustness <file> --timesteps " + ",".join(map(str, ROBUSTNESS_TIMESTEPS))
            + " --eps " + ",".join(f"{e:g}" for e in ROBUSTNESS_EPS) + f" --steps {steps}"}


def measure_samples(folder: Path, n_per_class: int, respacing: str | None) -> dict[str, Any]:
    """Judge accuracy and judge-feature FID of unguided conditional samples."""
    bundle = load_bundle(folder)
    if bundle.judge is None:
        return {}
    n_classes = bundle.num_classes
    labels = [i % n_classes for i in range(n_per_class * n_classes)]
    seeds = list(range(len(labels)))
    images = []
    start = time.perf_counter()
    for s in range(0, len(labels), 100):
        res = bundle.sample([unguided()], labels[s:s + 100], seeds[s:s + 100], respacing=respacing)
        images.append(res.images["unguided"])
    samples = torch.cat(images)
    real = load_split(bundle.dataset or "mnist", "heldout")
    real_images, real_labels = real.tensors()
    extractor = JudgeFeatures(bundle.judge)
    fid = frechet_distance(extract_features(extractor, real_images.split(250)), extract_features(extractor, samples.split(250)))
    used = respacing if respacing is not None else bundle.default_respacing
    return {"judge_accuracy_on_conditional_samples": round(class_accuracy(bundle.judge, samples, torch.tensor(labels)), 4),
            "judge_fid_to_heldout": round(fid, 3), "samples": len(labels), "respacing": used,
            "sampler": "ddpm", "seeds": f"0..{len(labels) - 1}", "sampling_seconds": round(time.perf_counter() - start, 1),
            "judge_accuracy_on_heldout": round(class_accuracy(bundle.judge, real_images, real_labels), 4)}


def add(args: argparse.Namespace) -> None:
    folder: Path = args.bundle
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    if args.role == "guide" and not args.name:
        raise SystemExit("--role guide needs --name (e.g. vanilla, robust, nonrobust)")
    filename = f"{args.name}.pt" if args.role == "guide" else f"{args.role}.pt"
    header = copy_model(args.file, folder / filename)
    entry: dict[str, Any] = {"file": filename, "training": training_record(header)}
    if args.description:
        entry["description"] = args.description
    if args.role == "denoiser":
        if header["kind"] != "denoiser":
            raise SystemExit(f"{args.file} is a {header['kind']}, not a denoiser")
        meta = header["meta"]
        manifest.update({"data": (meta.get("split") or {}).get("source") or manifest.get("data") or "mnist",
                         "class_names": meta["class_names"], "null_label": meta.get("null_label"),
                         "diffusion": meta["diffusion"],
                         "default_respacing": meta.get("default_respacing", "100")})
        manifest["denoiser"] = entry
    elif args.role == "guide":
        if header["kind"] != "classifier":
            raise SystemExit(f"{args.file} is a {header['kind']}, not a classifier")
        time_dep = bool(header["meta"].get("time_dependent", True))
        entry.update({"time_dependent": time_dep, "default_scale": args.default_scale,
                      "default_source": args.default_source or ("x_t" if time_dep else "x0_through_denoiser")})
        if not args.skip_measure:
            entry["figures"] = measure_classifier(folder / filename, time_dep, args.limit, args.attack_steps,
                                                  manifest.get("data") or "mnist")
        if args.ablation:
            entry["ablation"] = json.loads(Path(args.ablation).read_text())
        manifest["guides"][args.name] = {**manifest["guides"].get(args.name, {}), **entry}
    else:
        if header["kind"] != "judge":
            raise SystemExit(f"{args.file} is a {header['kind']}, not a judge")
        entry["figures"] = {"heldout_accuracy": header["meta"].get("heldout_accuracy")}
        manifest["judge"] = entry
    write_manifest(folder, manifest)
    if args.role in ("denoiser", "judge") and "denoiser" in manifest and "judge" in manifest and not args.skip_measure:
        figures = measure_samples(folder, args.samples_per_class, None)
        manifest["denoiser"]["figures"] = figures
        manifest["judge"].setdefault("figures", {})["accuracy_on_denoiser_samples"] = \
            figures.get("judge_accuracy_on_conditional_samples")
        write_manifest(folder, manifest)
    print(json.dumps(manifest.get("guides", {}).get(args.name) if args.role == "guide" else manifest[args.role],
                     indent=1))


def markdown(manifest: dict[str, Any], folder: Path = DEFAULT_BUNDLE_DIR) -> str:
    """The manifest's figures as README tables (model files read from ``folder``)."""
    lines = ["| model | file | parameters | training | time |", "|---|---|---|---|---|"]
    entries = [("denoiser", manifest.get("denoiser"))] + list(manifest.get("guides", {}).items()) + \
        [("judge", manifest.get("judge"))]
    for name, entry in entries:
        if not entry:
            continue
        net, _ = load_model_file(folder / entry["file"])
        params = sum(p.numel() for p in net.parameters())
        t = entry["training"]
        lines.append(f"| {name} | `{entry['file']}` | {params / 1e6:.2f}M | `{t['command']}` | "
                     f"{t['train_seconds'] / 60:.0f} min |")
    guides = {n: e for n, e in manifest.get("guides", {}).items() if "figures" in e}
    if guides:
        first = next(iter(guides.values()))["figures"]
        ts = list(first["held_out_accuracy_l2_pgd"])
        eps = list(first["held_out_accuracy_l2_pgd"][ts[0]])
        lines += ["", f"Held-out accuracy (%) under {first['attack']}, n = {first['n']}:", "",
                  "| guide | t | " + " | ".join(e.replace("=", " ") for e in eps) + " |",
                  "|---|---|" + "---|" * len(eps)]
        for n, e in guides.items():
            table = e["figures"]["held_out_accuracy_l2_pgd"]
            for t in ts:
                lines.append(f"| {n} | {t[2:]} | " + " | ".join(f"{100 * table[t][k]:.1f}" for k in eps) + " |")
    den = (manifest.get("denoiser") or {}).get("figures")
    judge = (manifest.get("judge") or {}).get("figures")
    if judge:
        lines += ["", f"Judge: {100 * judge['heldout_accuracy']:.1f} % on the 1,000 held-out digits."]
    if den:
        lines.append(f"Denoiser: the judge recognises the requested digit in {100 * den['judge_accuracy_on_conditional_samples']:.1f} % "
                     f"of {den['samples']} conditional samples (unguided, DDPM, {den['respacing']} steps, seeds "
                     f"{den['seeds']}); their judge-feature FID to the held-out digits is {den['judge_fid_to_heldout']:.3f}.")
    return "\n".join(lines)


LAB_COLUMN_KEYS = ("run", "column", "method", "guide", "scale", "source", "stabiliser")


def read_lab_section(path: Path) -> dict[str, Any]:
    """The lab's defaults from a JSON file: ``{"columns": ["robust:2", {run, column, method,
    guide, scale, source, stabiliser}, ...], "steps": N, ...}`` (a column is a spec string or
    an object); checked for shape here (the lab checks the
    values when it loads them and falls back to its generic columns if they do not parse)."""
    try:
        lab = json.loads(path.read_text())
    except OSError as exc:
        raise SystemExit(f"--lab: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--lab: {path} is not valid JSON ({exc})") from None
    columns = lab.get("columns") if isinstance(lab, dict) else None
    if columns is not None and not (isinstance(columns, list) and all(
            (isinstance(c, dict) and set(LAB_COLUMN_KEYS) <= set(c)) or isinstance(c, str) for c in columns)):
        raise SystemExit(f"--lab: 'columns' must be a list of column specs (e.g. \"strong=robust@x0+adam:2\") or "
                         f"objects with the keys {', '.join(LAB_COLUMN_KEYS)}")
    for column in columns or []:
        if isinstance(column, str):
            try:
                GuidanceSpec.parse(column)
            except ValueError as exc:
                raise SystemExit(f"--lab: {exc}") from None
    if not isinstance(lab, dict) or ("steps" in lab and not isinstance(lab["steps"], int)):
        raise SystemExit("--lab: expected a JSON object (keys: columns, steps, gallery)")
    return lab


def list_text() -> str:
    """One line per shipped bundle (name, title, folder), the default marked, and why."""
    root = models_root()
    bundles = shipped_bundles(root)
    if not bundles:
        return f"no bundles in {root}"
    default = default_bundle_name(root)
    lines = [f"{'*' if b.name == default else ' '} {b.name:<16} {b.title:<20} {b.folder}" for b in bundles]
    why = read_index(root).get("why")
    return "\n".join(lines + [f"(* default{': ' + why if why else ''})"])


def _bundle_to_read(text: str) -> Path:
    """--bundle of set / show: a shipped bundle's name or a folder (engine.bundle_index)."""
    try:
        path = Path(resolve_bundle(text))
    except UnknownBundle as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path.parent if path.name == "bundle.json" else path


def _bundle_to_write(text: str) -> Path:
    """--bundle of add: as for set / show, and a new bare name makes models/NAME/."""
    path = Path(writable_bundle_dir(text))
    return path.parent if path.name == "bundle.json" else path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="copy a trained model into the bundle and measure its figures")
    a.add_argument("--bundle", type=_bundle_to_write, default=DEFAULT_BUNDLE_DIR,
                   help="a shipped bundle's name (a new name makes models/NAME/) or a bundle folder (default: the "
                        "default shipped bundle)")
    a.add_argument("--role", choices=["denoiser", "guide", "judge"], required=True)
    a.add_argument("--name", default=None, help="guide name (vanilla, robust, nonrobust, ...)")
    a.add_argument("--file", type=Path, required=True, help="model.pt written by a train.* command")
    a.add_argument("--default-scale", type=float, default=1.0, help="guide's default guidance scale")
    a.add_argument("--default-source", default=None, help="guide's default gradient source")
    a.add_argument("--description", default="", help="one line shown in the lab")
    a.add_argument("--ablation", default=None, help="JSON file with the ablation that chose this model")
    a.add_argument("--samples-per-class", type=int, default=100, help="denoiser samples per class (default: 100)")
    a.add_argument("--attack-steps", type=int, default=10, help="PGD steps of the robustness figures (default: 10)")
    a.add_argument("--limit", type=int, default=None, help="held-out images for the robustness figures (default: all)")
    a.add_argument("--skip-measure", action="store_true", help="copy only (figures measured later)")
    d = sub.add_parser("set", help="change a guide's defaults (scale, source, description) without re-measuring")
    d.add_argument("--bundle", type=_bundle_to_read, default=DEFAULT_BUNDLE_DIR,
                   help="a shipped bundle's name or a bundle folder (default: the default shipped bundle)")
    d.add_argument("--name", default=None, help="guide name (needed for --default-scale / --default-source / --description)")
    d.add_argument("--default-scale", type=float, default=None)
    d.add_argument("--default-source", default=None)
    d.add_argument("--description", default=None)
    d.add_argument("--lab", type=Path, default=None, help="JSON file with the lab's default columns and steps")
    sub.add_parser("list", help="the shipped bundles (models/*/bundle.json) and the default (models/index.json)")
    s = sub.add_parser("show", help="print bundle.json (or its figures as markdown tables)")
    s.add_argument("--bundle", type=_bundle_to_read, default=DEFAULT_BUNDLE_DIR,
                   help="a shipped bundle's name or a bundle folder (default: the default shipped bundle)")
    s.add_argument("--markdown", action="store_true", help="print the README tables")
    args = p.parse_args(argv)
    if args.command == "list":
        print(list_text())
        return 0
    if args.command == "show":
        manifest = read_manifest(args.bundle)
        print(markdown(manifest, args.bundle) if args.markdown else json.dumps(manifest, indent=1))
        return 0
    if args.command == "set":
        manifest = read_manifest(args.bundle)
        changes = {key: getattr(args, key) for key in ("default_scale", "default_source", "description")
                   if getattr(args, key) is not None}
        if not changes and args.lab is None:
            raise SystemExit("nothing to set: give --default-scale, --default-source, --description or --lab")
        if changes:
            if args.name not in manifest.get("guides", {}):
                raise SystemExit(f"--name: no guide {args.name!r} in {args.bundle}; guides: "
                                 f"{sorted(manifest.get('guides', {}))}")
            manifest["guides"][args.name].update(changes)
        if args.lab is not None:
            manifest["lab"] = read_lab_section(args.lab)
        write_manifest(args.bundle, manifest)
        print(json.dumps({k: v for k, v in manifest.items() if k in ("guides", "lab")}
                         if not changes else {k: v for k, v in manifest["guides"][args.name].items() if k != "figures"},
                         indent=1))
        return 0
    add(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
