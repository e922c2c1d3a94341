"""Processes: single process or ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl
on GPU), metric reduction over ranks, and the shard-and-gather of sampled images (image i
on rank i % world, merged in index order on rank 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def reduce_means(sums: dict[str, float], counts: dict[str, float], info: DistInfo) -> dict[str, float]:
    """sum over ranks of sums / sum over ranks of counts, per key; NaN where no rank
    counted anything. Every rank must pass the same keys (collectives must match)."""
    keys = sorted(sums)
    totals = torch.tensor([[float(sums[k]), float(counts.get(k, 0.0))] for k in keys], dtype=torch.float64)
    if info.distributed:
        if info.device.type == "cuda":
            totals = totals.to(info.device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    return {k: (float(s) / float(c) if c > 0 else float("nan")) for k, (s, c) in zip(keys, totals.tolist())}


def gather_shards(folder: Path, tag: str, arrays: Mapping[str, np.ndarray], indices: np.ndarray,
                  info: DistInfo) -> dict[str, np.ndarray] | None:
    """Merge what every rank sampled: each rank writes its rows (``arrays``, all with one
    row per entry of ``indices``) to ``folder/.{tag}.rank{r}.npz``; rank 0 returns every
    array with its rows sorted by index and removes the shards; the other ranks return
    None. Every rank must call this (it waits for all of them)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f".{tag}.rank{info.rank}.npz", indices=np.asarray(indices, dtype=np.int64), **arrays)
    if info.distributed:
        dist.barrier()
    merged = None
    if info.is_main:
        shards = [np.load(folder / f".{tag}.rank{r}.npz") for r in range(info.world)]
        order = np.argsort(np.concatenate([s["indices"] for s in shards]))
        merged = {key: np.concatenate([s[key] for s in shards if len(s["indices"])])[order] for key in arrays}
        for r in range(info.world):
            (folder / f".{tag}.rank{r}.npz").unlink(missing_ok=True)
    if info.distributed:
        dist.barrier()
    return merged


def run_main(args, train_fn: Callable[..., int]) -> int:
    """Join the process group (under torchrun), train, and always leave it."""
    info = setup_distributed(args.device)
    try:
        return train_fn(args, info)
    finally:
        cleanup_distributed()
