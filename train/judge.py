"""Train the judge: an independent classifier of clean images (a small CNN unrelated to
the guidance classifiers, never used for guidance). It reports whether generated images
show the class they were asked for, and its penultimate features are the feature space
of the demo FID / precision / recall.

Augmentation: random translations of up to ``--shift`` pixels (zero padding), so the
judge does not reject slightly off-centre samples.

Examples::

    python -m train.judge --out runs/judge --steps 1500 --batch-size 128
    python -m train.judge --out runs/judge --steps 1500 --resume
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from engine.bundles import save_model_file
from engine.data import DataError, load_split, split_description, to_model_range
from engine.nets.plain import JudgeNet

from . import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.judge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--width", type=int, default=32, help="base width (default: 32)")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout before the head (default: 0.3)")
    parser.add_argument("--shift", type=int, default=2, help="maximum random translation in pixels (default: 2)")
    return parser


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, padding with -1 (black)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    net.eval()
    correct = 0
    for s in range(0, len(labels), batch):
        correct += int((net(images[s:s + batch]).argmax(-1) == labels[s:s + batch]).sum())
    return correct / len(labels)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.check_common_args(args)
    return common.run_main(args, train)


def train(args: argparse.Namespace, info: common.DistInfo) -> int:
    try:
        data = load_split(args.data, "train", on_error=args.on_bad_image)
        heldout = load_split(args.data, "heldout", image_size=data.images.shape[-1], on_error=args.on_bad_image)
    except DataError as exc:
        raise SystemExit(f"data: {exc}") from None
    torch.manual_seed(args.seed)
    model = JudgeNet(data.images.shape[1], data.num_classes, args.width, args.dropout,
                     data.images.shape[-1]).to(info.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    run = common.TrainingRun(args, info, model, optimizer, None)
    start = run.start
    net = DistributedDataParallel(model) if info.distributed else model
    batch = common.per_rank_batch(args, info)
    log = common.JsonlLog(args.out / "log.jsonl", info.is_main)
    if info.is_main and start == 0:
        log.write({"event": "start", "command": common.command_line(), "images": len(data),
                   "parameters": sum(p.numel() for p in model.parameters())})
    bar = common.progress(args.steps, start, info.is_main and not args.no_progress, "judge")
    sums = {"loss": 0.0, "acc": 0.0, "n": 0}
    for step in range(start, args.steps):
        idx = common.batch_indices(len(data), batch, step, args.seed, info)
        g = common.step_generator(args.seed, step, info.rank)
        x = random_shift(to_model_range(data.images[idx]), args.shift, g).to(info.device)
        y = data.labels[idx].to(info.device)
        torch.manual_seed(common.derive_seed(args.seed, step, info.rank, 1))
        model.train()
        with common.autocast(args, info.device):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        lr = common.optimisation_step(optimizer, loss, step, args)
        sums["loss"] += float(loss)
        sums["acc"] += float((logits.argmax(-1) == y).float().mean())
        sums["n"] += 1
        bar.update(1)
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            n = sums.pop("n")
            log.write({"step": done, "lr": lr, **common.all_reduce_mean({k: v / n for k, v in sums.items()}, info),
                       "seconds": run.seconds})
            sums = {"loss": 0.0, "acc": 0.0, "n": 0}
        if run.after_step(done):
            break
    bar.close()
    if run.stopped_early():
        return 0
    if info.is_main:
        images, labels = heldout.tensors()
        held_acc = accuracy(model.cpu(), images, labels)
        meta = {"class_names": data.class_names, "command": common.command_line(), "seed": args.seed,
                "split": split_description(args.data), "part": "train", "steps": args.steps,
                "batch_size": args.batch_size, "heldout_accuracy": held_acc,
                "train_seconds": round(run.seconds, 1)}
        save_model_file(args.out / "model.pt", model, kind="judge", config=model.config(), meta=meta)
        log.write({"event": "done", "heldout_accuracy": held_acc})
        print(f"wrote {args.out / 'model.pt'} (held-out accuracy {held_acc:.4f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
