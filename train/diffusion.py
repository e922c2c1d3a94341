"""Train the demo denoiser: a class-conditional guided-diffusion UNet whose labels are
dropped to a null class with probability ``--label-dropout``, so one model also samples
unconditionally and supports classifier-free guidance (Ho & Salimans 2021).

Objective: L_simple (epsilon MSE, Ho et al. 2020) plus, with ``--learn-sigma``, the
variational-bound term for the variance (Nichol & Dhariwal 2021). EMA weights are
exported.

Examples::

    # the bundled MNIST denoiser (see models/mnist/bundle.json for the exact command)
    python -m train.diffusion --out runs/denoiser --steps 6000 --batch-size 64 --amp bf16

    # resume an interrupted run bit for bit
    python -m train.diffusion --out runs/denoiser --steps 6000 --batch-size 64 --amp bf16 --resume

    # two processes (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node=2 -m train.diffusion --out runs/denoiser-ddp --steps 6000 --batch-size 64
"""

from __future__ import annotations

import argparse
import sys

import torch

from engine.checkpoints import save_model_file
from engine.data import to_model_range
from engine.diffusion import DiffusionConfig, create_diffusion
from engine.diffusion.losses import training_losses
from engine.nets import UNetModel
from engine.nets.flags import denoiser_kwargs

from . import loop
from .distributed import DistInfo, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.diffusion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loop.add_common_args(parser)
    m = parser.add_argument_group("denoiser")
    loop.add_unet_args(m)
    m.add_argument("--num-channels", type=int, default=32, help="base width (default: 32)")
    m.add_argument("--num-res-blocks", type=int, default=2, help="residual blocks per level (default: 2)")
    m.add_argument("--num-heads", type=int, default=4, help="attention heads (default: 4)")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout in residual blocks (default: 0.1)")
    m.add_argument("--learn-sigma", type=int, choices=[0, 1], default=1,
                   help="learn the variance range (default: 1)")
    m.add_argument("--noise-schedule", choices=["linear", "cosine"], default="cosine", help="(default: cosine)")
    m.add_argument("--diffusion-steps", type=int, default=1000, help="(default: 1000)")
    m.add_argument("--label-dropout", type=float, default=0.1,
                   help="probability of replacing a label by the null class (default: 0.1; 0 disables)")
    m.add_argument("--ema-rate", type=float, default=0.999, help="EMA rate of the exported weights (default: 0.999)")
    m.add_argument("--default-respacing", default="100", help="respacing recorded as the model's default (default: 100)")
    return parser


def model_flags(args: argparse.Namespace, channels: int, image_size: int, num_labels: int) -> dict:
    """guided-diffusion flags of the denoiser (extended with in_channels / num_classes)."""
    return {
        "image_size": image_size, "in_channels": channels, "num_channels": args.num_channels,
        "num_res_blocks": args.num_res_blocks, "channel_mult": args.channel_mult,
        "attention_resolutions": args.attention_resolutions, "num_heads": args.num_heads,
        "dropout": args.dropout, "class_cond": True, "num_classes": num_labels,
        "learn_sigma": bool(args.learn_sigma), "use_scale_shift_norm": True, "resblock_updown": True,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loop.check_common_args(args)
    if not 0.0 <= args.label_dropout < 1.0:
        raise SystemExit("--label-dropout must lie in [0, 1)")
    return run_main(args, train)


def train(args: argparse.Namespace, info: DistInfo) -> int:
    data = loop.load_training_data(args, image_size=args.image_size)
    channels, image_size = data.images.shape[1], data.images.shape[-1]
    num_classes = data.num_classes
    null_label = num_classes if args.label_dropout > 0 else None
    flags = model_flags(args, channels, image_size, num_classes + (1 if null_label is not None else 0))
    kwargs = denoiser_kwargs(flags)
    diffusion_config = DiffusionConfig(steps=args.diffusion_steps, noise_schedule=args.noise_schedule,
                                       learn_sigma=bool(args.learn_sigma))
    diffusion = create_diffusion(diffusion_config)

    torch.manual_seed(args.seed)
    model = UNetModel(**kwargs).to(info.device)
    ema = loop.EMA(model, args.ema_rate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def step(net: torch.nn.Module, idx: torch.Tensor, g: torch.Generator) -> loop.StepResult:
        x0 = to_model_range(data.images[idx]).to(info.device)
        y = data.labels[idx].clone()
        batch = len(idx)
        t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        if null_label is not None:
            y[torch.rand(batch, generator=g) < args.label_dropout] = null_label
        t, noise, y = t.to(info.device), noise.to(info.device), y.to(info.device)
        x_t = diffusion.q_sample(x0, t, noise)
        with loop.autocast(args, info.device):
            out = net(x_t, diffusion.network_timesteps(t), y)
        losses = training_losses(diffusion, out.float(), x0, x_t, t, noise)
        loss = losses["loss"].mean()
        return loop.StepResult(loss, {k: (float(losses[k].detach().mean()), 1.0) for k in ("loss", "mse", "vb")},
                               {"loss": f"{float(loss.detach()):.4f}"})

    run = loop.fit(args, info, model, optimizer, len(data), step, desc="denoiser", ema=ema,
                   start_record={"flags": flags, "diffusion": diffusion_config.to_dict()})
    if run is None or not info.is_main:
        return 0
    meta = loop.model_meta(args, info, run, diffusion=diffusion_config.to_dict(), null_label=null_label,
                           class_names=data.class_names, flags=flags, weights="ema", ema_rate=args.ema_rate,
                           default_respacing=args.default_respacing)
    save_model_file(args.out / "model.pt", ema.model, kind="denoiser", config=kwargs, meta=meta)
    print(f"wrote {args.out / 'model.pt'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
