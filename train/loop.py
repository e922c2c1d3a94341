"""The training loop every trainer shares (:func:`fit`) and what it rests on: deterministic
data order and per-step randomness (so ``--resume`` continues bit for bit), linear
learning-rate annealing, EMA weights, atomic checkpoints, JSON-lines logs and one way of
averaging metrics.

Determinism: the batch of step s on rank r is a slice of the permutation of epoch
s // steps_per_epoch (a generator seeded from (seed, epoch)), and every other random
draw of step s (timesteps, noise, label dropout, attack starts, dropout masks) comes
from generators seeded from (seed, step, rank). Nothing depends on how many steps ran
before in this process, so a resumed run replays exactly what the uninterrupted run did.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.allocator import keep_freed_memory
from engine.data import DataError, load_split, split_description

from .distributed import DistInfo, reduce_means


# ---------------------------------------------------------------------------- randomness
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style mixing, stable across runs)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x ^= (int(p) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """The generator for the random draws of one training step on one rank."""
    return torch.Generator().manual_seed(derive_seed(seed, step, rank, stream))


def batch_indices(n: int, batch_per_rank: int, step: int, seed: int, info: DistInfo) -> torch.Tensor:
    """Indices of the batch of ``step`` on this rank: epochs are fresh permutations; every
    rank takes a disjoint slice (a distributed sampler without state)."""
    global_batch = batch_per_rank * info.world
    if global_batch > n:
        raise ValueError(f"batch size {global_batch} is larger than the dataset ({n} images)")
    steps_per_epoch = n // global_batch
    epoch, position = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 7919)))
    start = position * global_batch + info.rank * batch_per_rank
    return perm[start:start + batch_per_rank]


# ---------------------------------------------------------------------------- schedule, EMA
def linear_lr(step: int, total: int, lr: float, final_lr: float, warmup: int = 0) -> float:
    """Linear warm-up (optional), then linear annealing from lr to final_lr over the run."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, step / max(1, total - 1))
    return lr + (final_lr - lr) * frac


class EMA:
    """Exponential moving average of a model's parameters: theta_ema <- r theta_ema + (1 - r) theta."""

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(self.rate).add_(p.detach(), alpha=1 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename), so an interrupted save never
    leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint safely (tensors and plain types only)."""
    if not path.is_file():
        raise SystemExit(f"cannot resume: {path} does not exist (train without --resume first)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SystemExit(f"cannot resume: {path} is not a readable checkpoint ({exc})") from exc


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- logging
class JsonlLog:
    """Append-only JSON lines (one record per logged step), on the main rank only."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def progress(total: int, start: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True,
                file=sys.stderr)


# ---------------------------------------------------------------------------- CLI
def add_common_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and run")
    g.add_argument("--data", default="mnist",
                   help="mnist (bundled), fashion-mnist (Debian package), a folder, or a .npz (default: mnist)")
    g.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail",
                   help="what to do with an unreadable image in a folder dataset (default: fail)")
    g.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, log.jsonl, exported model")
    g.add_argument("--steps", type=int, default=1000, help="training iterations (default: 1000)")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size over all ranks (default: 128)")
    g.add_argument("--lr", type=float, default=3e-4, help="initial learning rate (default: 3e-4)")
    g.add_argument("--final-lr", type=float, default=None,
                   help="learning rate at the last step, linearly annealed (default: same as --lr)")
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (default: 0)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw of the run (default: 0)")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (default: 500)")
    g.add_argument("--log-every", type=int, default=25, help="write a log line every N steps (default: 25)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt, bit for bit")
    g.add_argument("--stop-after", type=int, default=None,
                   help="save a checkpoint and stop after this many steps (split a run over sessions; "
                        "finish it later with --resume)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="mixed precision for forward/backward (bf16 roughly halves a CPU step)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_unet_args(group: argparse._ArgumentGroup) -> None:
    """--image-size / --channel-mult / --attention-resolutions: the layout options the
    denoiser and the classifier (both guided-diffusion UNets) share."""
    group.add_argument("--image-size", type=int, default=None, help="model resolution (default: the data's)")
    group.add_argument("--channel-mult", default="1,2,2", help="width multiplier per level (default: 1,2,2)")
    group.add_argument("--attention-resolutions", default="7",
                       help="pixel resolutions with self-attention (default: 7)")


def check_common_args(args: argparse.Namespace) -> None:
    if args.steps <= 0:
        raise SystemExit("--steps must be positive")
    if args.batch_size <= 0:
        raise SystemExit("--batch-size must be positive")
    if args.save_every <= 0 or args.log_every <= 0:
        raise SystemExit("--save-every and --log-every must be positive")
    if args.final_lr is None:
        args.final_lr = args.lr
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()


def should_stop_early(args: argparse.Namespace, done: int) -> bool:
    """True when ``--stop-after`` is reached before the end of the run."""
    return args.stop_after is not None and done >= args.stop_after and done < args.steps


def per_rank_batch(args: argparse.Namespace, info: DistInfo) -> int:
    if args.batch_size % info.world:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {info.world} processes")
    return args.batch_size // info.world


def autocast(args: argparse.Namespace, device: torch.device):
    if args.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def command_line() -> str:
    """The command that started this process, for manifests."""
    launcher = "torchrun --nproc_per_node=" + os.environ["WORLD_SIZE"] + " " if "WORLD_SIZE" in os.environ else ""
    module = sys.argv[0]
    if module.endswith(".py"):
        module = "-m " + os.path.relpath(module).removesuffix(".py").replace(os.sep, ".")
    return f"{launcher}python {module} " + " ".join(_quote(a) for a in sys.argv[1:])


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def nan_guard(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(float(loss.detach())):
        raise SystemExit(f"the loss became {float(loss)} at step {step}; lower --lr or use --amp none")


def optimisation_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int,
                      args: argparse.Namespace) -> float:
    """One update shared by the trainers: stop on a non-finite loss, set the linearly
    annealed learning rate (:func:`linear_lr`), backpropagate and step. Returns the rate."""
    nan_guard(loss, step)
    lr = linear_lr(step, args.steps, args.lr, args.final_lr, args.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return lr


class TrainingRun:
    """Checkpointing shared by the trainers: ``--resume`` restores model, EMA, optimiser,
    step, RNG state and elapsed time; :meth:`after_step` saves every ``--save-every``
    steps, at the end and at ``--stop-after`` (atomically, main rank only) and says
    whether to stop."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, model: nn.Module,
                 optimizer: torch.optim.Optimizer, ema: EMA | None = None):
        self.args, self.info, self.model, self.optimizer, self.ema = args, info, model, optimizer, ema
        self.path = args.out / "checkpoint.pt"
        self.start, self.elapsed_before = 0, 0.0
        if args.resume:
            state = load_checkpoint(self.path)
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            self.start, self.elapsed_before = int(state["step"]), float(state.get("train_seconds", 0.0))
            if self.start >= args.steps:
                print(f"{self.path} is already at step {self.start} >= --steps {args.steps}", file=sys.stderr)
        self.done = self.start
        self.timer = Timer()

    @property
    def seconds(self) -> float:
        """Training time so far, over all sessions of this run."""
        return self.elapsed_before + self.timer.elapsed()

    def after_step(self, done: int) -> bool:
        """Save when due; True when ``--stop-after`` says to stop now."""
        self.done = done
        stopping = should_stop_early(self.args, done)
        if self.info.is_main and (done % self.args.save_every == 0 or done == self.args.steps or stopping):
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": done,
                     "rng": rng_state(), "args": vars(self.args) | {"out": str(self.args.out)},
                     "train_seconds": self.seconds}
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            save_checkpoint(self.path, state)
        return stopping

    def stopped_early(self) -> bool:
        """True (after telling the user) when the run stopped at ``--stop-after``."""
        if should_stop_early(self.args, self.done):
            if self.info.is_main:
                print(f"stopped after step {self.done}; continue with --resume", file=sys.stderr)
            return True
        return False


# ---------------------------------------------------------------------------- the loop
class Meter:
    """Metrics as (sum, count) per key between two log lines; :meth:`means` reduces them
    over ranks as sum(sums) / sum(counts) (NaN where nothing was counted). Every rank
    must add the same keys."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, stats: dict[str, tuple[float, float]]) -> None:
        for key, (total, count) in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(total)
            self.counts[key] = self.counts.get(key, 0.0) + float(count)

    def means(self, info: DistInfo) -> dict[str, float]:
        values = reduce_means(self.sums, self.counts, info)
        self.sums, self.counts = {}, {}
        return values


@dataclass
class StepResult:
    """What a trainer's step function returns: the loss to minimise, metrics as
    (sum, count) pairs, and what the progress bar shows."""

    loss: torch.Tensor
    stats: dict[str, tuple[float, float]]
    postfix: dict[str, str] = field(default_factory=dict)


# step(net, idx, generator) -> StepResult: net is the model (DDP-wrapped under torchrun),
# idx this rank's batch indices, generator the step's random draws.
StepFn = Callable[[nn.Module, torch.Tensor, torch.Generator], StepResult]


def load_training_data(args: argparse.Namespace, part: str = "train", image_size: int | None = None):
    """``--data``'s ``part`` of the shared split; a clean exit message when it cannot be read."""
    try:
        return load_split(args.data, part, image_size=image_size, on_error=args.on_bad_image)
    except DataError as exc:
        raise SystemExit(f"data: {exc}") from None


def fit(args: argparse.Namespace, info: DistInfo, model: nn.Module, optimizer: torch.optim.Optimizer,
        n_items: int, step: StepFn, *, desc: str, ema: EMA | None = None,
        start_record: dict[str, Any] | None = None) -> TrainingRun | None:
    """The loop of every trainer, from ``--resume``'s step to ``--steps``: per step the
    batch indices and generator (:func:`batch_indices`, :func:`step_generator`), the
    dropout seed, ``step(net, idx, generator)``, :func:`optimisation_step`, the EMA update,
    metrics (:class:`Meter`) logged every ``--log-every`` steps, checkpoints
    (:class:`TrainingRun`). Returns the run, or None when ``--stop-after`` stopped it."""
    run = TrainingRun(args, info, model, optimizer, ema)
    net = DistributedDataParallel(model) if info.distributed else model
    batch = per_rank_batch(args, info)
    log = JsonlLog(args.out / "log.jsonl", info.is_main)
    if info.is_main and run.start == 0:
        log.write({"event": "start", "command": command_line(), **(start_record or {}), "world": info.world,
                   "images": n_items, "parameters": sum(p.numel() for p in model.parameters())})
    bar = progress(args.steps, run.start, info.is_main and not args.no_progress, desc)
    meter = Meter()
    for s in range(run.start, args.steps):
        idx = batch_indices(n_items, batch, s, args.seed, info)
        g = step_generator(args.seed, s, info.rank)
        torch.manual_seed(derive_seed(args.seed, s, info.rank, 1))  # dropout masks
        model.train()
        result = step(net, idx, g)
        lr = optimisation_step(optimizer, result.loss, s, args)
        if ema is not None:
            ema.update(model)
        meter.add(result.stats)
        bar.update(1)
        if result.postfix:
            bar.set_postfix(**result.postfix)
        done = s + 1
        if done % args.log_every == 0 or done == args.steps:
            log.write({"step": done, "lr": lr, **meter.means(info), "seconds": run.seconds})
        if run.after_step(done):
            break
    bar.close()
    return None if run.stopped_early() else run


def model_meta(args: argparse.Namespace, info: DistInfo, run: TrainingRun, **extra: Any) -> dict[str, Any]:
    """The provenance every exported model file carries, plus ``extra``."""
    return {"command": command_line(), "seed": args.seed, "split": split_description(args.data), "part": "train",
            "steps": args.steps, "batch_size": args.batch_size, "world": info.world, "amp": args.amp,
            "train_seconds": round(run.seconds, 1), **extra}
