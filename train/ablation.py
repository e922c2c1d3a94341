"""Compare robust-classifier training settings, in the spirit of Kawar et al.'s Table 4
(threat model x attack steps, judged by the quality of guided samples).

For each trained classifier: held-out accuracy under L2 PGD at a few timesteps, and
the quality of samples guided by it with the bundle's denoiser and judge: judge-feature
FID to the held-out digits and the judge's class accuracy, at each scale in
``--scales`` (same seeds for every classifier). Writes a JSON record and prints a
markdown table.

Example::

    python -m train.ablation runs/abl-l2-0.5/model.pt runs/abl-l2-1/model.pt runs/abl-l2-2/model.pt \\
        --out runs/ablation.json --scales 1,2 --per-class 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from engine.bundles import GuideInfo, load_bundle
from engine.checkpoints import BundleError, load_model_file
from engine.guidance import Guide
from engine.data import load_split
from engine.metrics import JudgeFeatures, class_accuracy, extract_features, frechet_distance
from engine.diffusion import DiffusionConfig

from .robustness import evaluate as robustness_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="classifier model files")
    p.add_argument("--bundle", default=None, metavar="NAME|PATH",
                   help="bundle with the denoiser and judge: a shipped bundle's name or a folder (default: the default "
                        "shipped bundle)")
    p.add_argument("--out", type=Path, required=True, help="JSON record to write")
    p.add_argument("--scales", default="1,2", help="guidance scales (default: 1,2)")
    p.add_argument("--per-class", type=int, default=20, help="guided samples per class (default: 20)")
    p.add_argument("--respacing", default="50", help="sampling steps (default: 50)")
    p.add_argument("--limit", type=int, default=500, help="held-out images for the PGD figures (default: 500)")
    args = p.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        raise SystemExit(str(exc)) from None
    if bundle.judge is None:
        raise SystemExit("the bundle needs a judge for the sample-quality figures")
    scales = [float(s) for s in args.scales.split(",")]
    heldout = load_split(bundle.dataset or "mnist", "heldout")
    real_images, real_labels = heldout.tensors()
    extractor = JudgeFeatures(bundle.judge)
    real_feats = extract_features(extractor, real_images.split(250))
    labels = [i % bundle.num_classes for i in range(args.per_class * bundle.num_classes)]
    seeds = list(range(len(labels)))
    records = []
    for path in args.models:
        net, header = load_model_file(path)
        meta = header["meta"]
        rows = robustness_rows([("m", net, True, header)], real_images[:args.limit], real_labels[:args.limit],
                               diffusion_config=DiffusionConfig.from_dict(meta["diffusion"]), timesteps=[0, 300],
                               norm="l2", eps_list=[0.0, 2.0, 4.0], steps=10, step_size=None, targeted=False, seed=0,
                               batch_size=250, device=torch.device("cpu"))
        record = {"file": str(path), "attack": meta.get("attack"), "steps": meta.get("steps"),
                  "command": meta.get("command"), "train_seconds": meta.get("train_seconds"),
                  "pgd_accuracy": {f"t={r['t']},eps={r['eps']:g}": round(r["accuracy"], 4) for r in rows},
                  "samples": {}}
        bundle.guides["candidate"] = Guide(net, True)
        bundle.guide_info["candidate"] = GuideInfo("candidate")
        for s in scales:
            images = torch.cat([bundle.sample([bundle.default_config("candidate", scale=s)], labels[i:i + 100],
                                              seeds[i:i + 100], respacing=args.respacing).images["candidate"]
                                for i in range(0, len(labels), 100)])
            feats = extract_features(extractor, images.split(250))
            record["samples"][f"s={s:g}"] = {
                "judge_fid": round(frechet_distance(real_feats, feats), 3),
                "judge_accuracy": round(class_accuracy(bundle.judge, images, torch.tensor(labels)), 4)}
        records.append(record)
        print(json.dumps(record), file=sys.stderr)
    summary = {"what": "robust classifier ablation (Kawar et al. Table 4 in spirit)", "per_class": args.per_class,
               "respacing": args.respacing, "scales": scales, "pgd": "untargeted L2 PGD-10, n=" + str(args.limit),
               "runs": records}
    args.out.write_text(json.dumps(summary, indent=1))
    print(markdown(summary))
    return 0


def markdown(summary: dict) -> str:
    scales = summary["scales"]
    lines = ["| attack | eps | steps | PGD acc t=0 eps 4 | PGD acc t=300 eps 2 | "
             + " | ".join(f"FID s={s:g} | acc s={s:g}" for s in scales) + " |",
             "|---|---|---|---|---|" + "---|---|" * len(scales)]
    for r in summary["runs"]:
        a = r["attack"] or {"norm": "none", "eps": 0, "steps": 0}
        cells = " | ".join(f"{r['samples'][f's={s:g}']['judge_fid']:.2f} | {r['samples'][f's={s:g}']['judge_accuracy']:.3f}"
                           for s in scales)
        lines.append(f"| {a['norm']} | {a['eps']:g} | {a['steps']} | {r['pgd_accuracy']['t=0,eps=4']:.3f} | "
                     f"{r['pgd_accuracy']['t=300,eps=2']:.3f} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
