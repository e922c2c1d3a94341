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

from engine.checkpoints import save_model_file
from engine.data import to_model_range
from engine.nets.plain import JudgeNet

from . import loop
from .distributed import DistInfo, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.judge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    loop.add_common_args(parser)
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
    loop.check_common_args(args)
    return run_main(args, train)


def train(args: argparse.Namespace, info: DistInfo) -> int:
    data = loop.load_training_data(args)
    heldout = loop.load_training_data(args, "heldout", image_size=data.images.shape[-1])
    torch.manual_seed(args.seed)
    model = JudgeNet(data.images.shape[1], data.num_classes, args.width, args.dropout,
                     data.images.shape[-1]).to(info.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def step(net: torch.nn.Module, idx: torch.Tensor, g: torch.Generator) -> loop.StepResult:
        x = random_shift(to_model_range(data.images[idx]), args.shift, g).to(info.device)
        y = data.labels[idx].to(info.device)
        with loop.autocast(args, info.device):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        correct = float((logits.argmax(-1) == y).float().sum())
        return loop.StepResult(loss, {"loss": (float(loss.detach()), 1.0), "acc": (correct, float(len(y)))})

    run = loop.fit(args, info, model, optimizer, len(data), step, desc="judge")
    if run is None or not info.is_main:
        return 0
    images, labels = heldout.tensors()
    held_acc = accuracy(model.cpu(), images, labels)
    meta = loop.model_meta(args, info, run, class_names=data.class_names, heldout_accuracy=held_acc)
    save_model_file(args.out / "model.pt", model, kind="judge", config=model.config(), meta=meta)
    loop.JsonlLog(args.out / "log.jsonl").write({"event": "done", "heldout_accuracy": held_acc})
    print(f"wrote {args.out / 'model.pt'} (held-out accuracy {held_acc:.4f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
