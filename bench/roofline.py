"""What the machine can do and what a run asks of it: measured matmul GFLOPS (the
roofline a dense network can at best reach on this CPU / GPU, in the same precision) and
FLOPs counted with ``torch.utils.flop_counter`` (convolutions, matmuls and attention
products as 2 x multiply-adds; element-wise work is not counted, so the fraction of the
roofline is an upper-bound view of how much of the time goes to useful arithmetic)."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0,
                  device: str = "cpu") -> float:
    """Best-of GFLOPS of an n x n x n matmul (2 n^3 FLOPs) in ``dtype`` on ``device``,
    repeated for about ``seconds`` of compute. On the CPU the time is this process's CPU
    time (as the benchmark's own paths are measured), so a shared machine's waiting for a
    core does not count; on CUDA it is wall time after synchronising."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a @ b
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = clock()
        a @ b
        sync()
        elapsed = clock() - start
        if elapsed > 0:
            best = min(best, elapsed)
        spent += max(elapsed, 1e-4)
    return 2 * n**3 / best / 1e9


class _Counter(TorchDispatchMode):
    """Counts FLOPs of every dispatched op that torch's flop formulas know (the same
    table FlopCounterMode uses; no module hooks, so ``autograd.grad`` works inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - dispatch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = flop_registry[packet](*args, **kwargs, out_val=out)
            name = str(packet).split(".")[-1]
            self.counts[name] = self.counts.get(name, 0) + int(flops)
        return out


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` and the count per operator."""
    counter = _Counter()
    with counter:
        fn()
    return sum(counter.counts.values()), dict(counter.counts)
