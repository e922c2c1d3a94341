"""Train a time-dependent classifier p(y | x_t, t) on noised images, vanilla or robust.

For each batch: t ~ U{0..T-1}, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; the robust
classifier (Kawar, Ganz & Elad 2023, Eq. 5) is trained on x~_t, the result of an
untargeted PGD attack on x_t against the current model at timestep t, with per-sample
early stopping (a sample leaves the attack once it is misclassified); the vanilla one
(Dhariwal & Nichol 2021) on x_t itself. ``--clean`` trains GradCheck's non-robust
guide instead: clean images only, no time input (it always sees t = 0).

Paper defaults (ImageNet 128): --attack l2 --eps 0.5 --attack-steps 7 --step-size 0.083
--batch-size 128 --lr 3e-4 --final-lr 6e-5 --weight-decay 0.05 (AdamW).

Examples::

    python -m train.classifier --out runs/vanilla --attack none --steps 2000 --batch-size 64
    python -m train.classifier --out runs/robust --attack l2 --eps 1.0 --attack-steps 5 --steps 2000
    python -m train.classifier --out runs/nonrobust --clean --steps 1000
    torchrun --nproc_per_node=2 -m train.classifier --out runs/robust-ddp --attack l2 --eps 1.0
"""

from __future__ import annotations

import argparse
import sys

import torch

from engine.checkpoints import save_model_file
from engine.classifier_objective import AttackSettings, ClassifierLoss, classifier_loss
from engine.data import to_model_range
from engine.diffusion import DiffusionConfig, create_diffusion
from engine.nets import EncoderUNetModel
from engine.nets.flags import classifier_kwargs

from . import loop
from .distributed import DistInfo, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.classifier", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loop.add_common_args(parser)
    a = parser.add_argument_group("adversarial training")
    a.add_argument("--attack", choices=["none", "l2", "linf"], default="none",
                   help="none = vanilla classifier; l2 / linf = robust (default: none)")
    a.add_argument("--eps", type=float, default=0.5, help="attack radius, images in [-1, 1] (default: 0.5)")
    a.add_argument("--attack-steps", type=int, default=7, help="maximum PGD steps (default: 7)")
    a.add_argument("--step-size", type=float, default=None,
                   help="PGD step size (default: engine.attacks.default_step_size, 2.5 * eps / steps)")
    a.add_argument("--no-early-stop", action="store_true",
                   help="attack every sample for all steps (ablation of the paper's early stopping)")
    a.add_argument("--random-start", action="store_true", help="start PGD at a random point of the eps-ball")
    a.add_argument("--clean", action="store_true",
                   help="non-robust guide: clean images, no time input (GradCheck's setting)")
    m = parser.add_argument_group("classifier (guided-diffusion EncoderUNetModel)")
    loop.add_unet_args(m)
    m.add_argument("--width", type=int, default=32, help="classifier_width (default: 32)")
    m.add_argument("--depth", type=int, default=1, help="classifier_depth: res blocks per level (default: 1)")
    m.add_argument("--head-channels", type=int, default=32, help="channels per attention head (default: 32)")
    m.add_argument("--pool", default="attention", choices=["attention", "adaptive", "spatial", "spatial_v2"])
    d = parser.add_argument_group("diffusion process (must match the denoiser)")
    d.add_argument("--noise-schedule", choices=["linear", "cosine"], default="cosine", help="(default: cosine)")
    d.add_argument("--diffusion-steps", type=int, default=1000, help="(default: 1000)")
    parser.add_argument("--buckets", type=int, default=4, help="timestep buckets in the report (default: 4)")
    return parser


def classifier_flags(args: argparse.Namespace, channels: int, image_size: int, num_classes: int) -> dict:
    return {
        "image_size": image_size, "classifier_in_channels": channels, "classifier_width": args.width,
        "classifier_depth": args.depth, "classifier_channel_mult": args.channel_mult,
        "classifier_attention_resolutions": args.attention_resolutions,
        "classifier_num_head_channels": args.head_channels, "classifier_pool": args.pool,
        "classifier_num_classes": num_classes, "classifier_use_scale_shift_norm": True,
        "classifier_resblock_updown": True,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loop.check_common_args(args)
    if args.attack != "none" and (args.eps <= 0 or args.attack_steps <= 0):
        raise SystemExit("--eps and --attack-steps must be positive for adversarial training")
    if args.clean and args.attack != "none":
        print("note: --clean with an attack trains a robust classifier on clean images (t = 0)", file=sys.stderr)
    return run_main(args, train)


def bucket_of(t: torch.Tensor, num_steps: int, buckets: int) -> torch.Tensor:
    return (t * buckets // num_steps).clamp(max=buckets - 1)


def train(args: argparse.Namespace, info: DistInfo) -> int:
    data = loop.load_training_data(args, image_size=args.image_size)
    channels, image_size = data.images.shape[1], data.images.shape[-1]
    flags = classifier_flags(args, channels, image_size, data.num_classes)
    kwargs = classifier_kwargs(flags)
    diffusion_config = DiffusionConfig(steps=args.diffusion_steps, noise_schedule=args.noise_schedule)
    diffusion = create_diffusion(diffusion_config)
    attack = AttackSettings(args.attack, args.eps, args.attack_steps, args.step_size, not args.no_early_stop,
                            args.random_start) if args.attack != "none" else None
    step_size = attack.resolved_step_size if attack is not None else args.step_size

    torch.manual_seed(args.seed)
    model = EncoderUNetModel(**kwargs).to(info.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    buckets = args.buckets if not args.clean else 0

    def step(net: torch.nn.Module, idx: torch.Tensor, g: torch.Generator) -> loop.StepResult:
        x0 = to_model_range(data.images[idx]).to(info.device)
        y = data.labels[idx].to(info.device)
        batch = len(idx)
        if args.clean:
            t, x_t = torch.zeros(batch, dtype=torch.long), x0
        else:
            t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g)
            x_t = diffusion.q_sample(x0, t.to(info.device), torch.randn(x0.shape, generator=g).to(info.device))
        t = t.to(info.device)
        out = classifier_loss(model, x_t, diffusion.network_timesteps(t), y, attack, train_forward=net, generator=g,
                              precision=lambda: loop.autocast(args, info.device))
        return loop.StepResult(out.loss, attack_stats(out, y, t, diffusion.num_timesteps, buckets),
                               {"loss": f"{float(out.loss.detach()):.3f}"})

    run = loop.fit(args, info, model, optimizer, len(data), step, ema=None,
                   desc="classifier" if attack is None else f"robust {args.attack}",
                   start_record={"flags": flags, "diffusion": diffusion_config.to_dict(), "step_size": step_size})
    if run is None or not info.is_main:
        return 0
    meta = loop.model_meta(args, info, run, diffusion=diffusion_config.to_dict(), time_dependent=not args.clean,
                           class_names=data.class_names, flags=flags,
                           attack={"norm": args.attack, "eps": args.eps, "steps": args.attack_steps,
                                   "step_size": step_size, "early_stop": not args.no_early_stop,
                                   "random_start": args.random_start} if attack is not None else None)
    save_model_file(args.out / "model.pt", model, kind="classifier", config=kwargs, meta=meta)
    print(f"wrote {args.out / 'model.pt'}", file=sys.stderr)
    return 0


def attack_stats(out: ClassifierLoss, y: torch.Tensor, t: torch.Tensor, num_steps: int,
                 buckets: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of the loss, clean accuracy, and for robust training the accuracy on the
    attacked batch, the attack's success rate among correctly classified samples and its
    steps; per timestep bucket too. Every key is present on every rank."""
    batch = float(len(y))
    with torch.no_grad():
        correct_in = (out.logits.argmax(-1) == y).float()
        clean_correct = (out.attack.initial_pred == y).float() if out.attack is not None else correct_in
        bucket = bucket_of(t, num_steps, max(buckets, 1))
        stats = {"loss": (float(out.loss.detach()), 1.0), "clean_acc": (float(clean_correct.sum()), batch)}
        if out.attack is not None:
            attacked = clean_correct.bool()
            flipped = attacked & (out.logits.argmax(-1) != y)
            stats["adv_acc"] = (float(correct_in.sum()), batch)
            stats["attack_success"] = (float(flipped.sum()), float(attacked.sum()))
            stats["attack_steps"] = (float(out.attack.steps_used.sum()), batch)
        for b in range(buckets):
            mask = bucket == b
            stats[f"clean_acc_t{b}"] = (float(clean_correct[mask].sum()), float(mask.sum()))
            if out.attack is not None:
                stats[f"adv_acc_t{b}"] = (float(correct_in[mask].sum()), float(mask.sum()))
    return stats


if __name__ == "__main__":
    sys.exit(main())
