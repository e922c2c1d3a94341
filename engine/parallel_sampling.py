"""Sampling the batches of one side-by-side run in several worker processes (CPU).

On a small CPU the convolutions of these networks are too small to keep several threads
of one process busy: on the 2-core development machine one process with two threads
sampled 64 MNIST units (vanilla + robust, 25 DDPM steps) in 19.8 s, two single-thread
processes with 32 units each in 10.8 s (``python -m bench.sampling --only survey``
measures both on any machine). So long generation jobs (a survey study's images) are
split into batches that ``workers`` processes sample side by side, one thread each.

Each worker loads the bundle from its folder once (``engine.bundles.load_bundle``), moves
it to the device and precision asked for and samples whole batches with
:meth:`engine.bundles.Bundle.sample`, so every image is exactly what the same batch gives
in one single-thread process (regeneration from the stored batch is bit for bit with one
thread). Results come back in batch order.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queue_module
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class BatchResult:
    """One sampled batch: uint8 images (N, H, W, C) per column name and the run settings
    (``SampleResult.run_config`` without seeds, labels and configs)."""

    images: dict[str, np.ndarray]
    run: dict[str, Any]


def batch_result(result: Any, configs: Sequence[Any]) -> BatchResult:
    """A :class:`engine.sampler.SampleResult` as stored per batch: every column's images as
    uint8 (N, H, W, C) and the run settings without seeds, labels and configs."""
    from .data import to_uint8

    run = {k: v for k, v in result.run_config().items() if k not in ("seeds", "labels", "configs")}
    images = {c.name: to_uint8(result.images[c.name]).permute(0, 2, 3, 1).numpy() for c in configs}
    return BatchResult(images, run)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def auto_workers(n_units: int, device: str, min_units_per_worker: int = 16) -> int:
    """Worker processes for ``n_units`` units: one per core on a CPU, but no more than one
    per ``min_units_per_worker`` units (each worker loads the models once); 1 on a GPU."""
    if str(device).startswith("cuda"):
        return 1
    return max(1, min(available_cores(), n_units // min_units_per_worker))


def split_batches(n_units: int, batch_size: int, workers: int) -> list[range]:
    """Consecutive index ranges of at most ``batch_size`` units, as equal as possible and
    a multiple of ``workers`` in number when there are enough units, so that the workers
    finish together (200 units, batch 64, 2 workers: 4 batches of 50, not 64 + 64 + 64 + 8)."""
    if n_units < 1 or batch_size < 1 or workers < 1:
        raise ValueError("n_units, batch_size and workers must be at least 1")
    count = min(n_units, workers * math.ceil(n_units / (workers * batch_size)))
    base, extra = divmod(n_units, count)
    ranges, start = [], 0
    for k in range(count):
        size = base + (k < extra)
        ranges.append(range(start, start + size))
        start += size
    return ranges


# ----------------------------------------------------------------------------- worker side
_worker: dict[str, Any] = {}


def _init_worker(bundle_source: str, device: str, precision: str, steps_queue: Any) -> None:
    import warnings

    import torch

    from .bundles import load_bundle
    from .sampler import GuidedDDIMWarning

    warnings.simplefilter("ignore", GuidedDDIMWarning)  # the parent warns once, before its progress bar
    torch.set_num_threads(1)
    _worker["bundle"] = load_bundle(bundle_source).to(device, precision)
    _worker["queue"] = steps_queue


def _sample_batch(index: int, configs: list[dict], labels: list[int], seeds: list[int], respacing: str | None,
                  sampler: str, eta: float) -> tuple[int, BatchResult]:
    from .guidance import GuidanceConfig

    bundle, steps_queue = _worker["bundle"], _worker["queue"]
    columns = [GuidanceConfig.from_dict(c) for c in configs]

    def on_step(k: int, steps: int) -> None:
        if steps_queue is not None:
            steps_queue.put((index, k, steps))

    result = bundle.sample(columns, labels, seeds, respacing=respacing, sampler=sampler, eta=eta, progress=on_step)
    return index, batch_result(result, columns)


# ----------------------------------------------------------------------------- parent side
def sample_batches_in_processes(bundle_source: str, configs: Sequence[Any], batches: Sequence[tuple[list, list]], *,
                                workers: int, device: str = "cpu", precision: str = "fp32",
                                respacing: str | None = None, sampler: str = "ddpm", eta: float = 0.0,
                                progress: Callable[[float], None] | None = None) -> list[BatchResult]:
    """Sample every ``(labels, seeds)`` batch with the bundle at ``bundle_source`` in
    ``workers`` single-thread processes; ``progress(done)`` gets the units finished so far
    (fractional within a batch: after every step of every batch). Results in batch order."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    context = multiprocessing.get_context("spawn")  # fork after torch has threads can hang
    manager = context.Manager() if progress is not None else None
    steps_queue = manager.Queue() if manager is not None else None
    fraction = [0.0] * len(batches)
    results: list[BatchResult | None] = [None] * len(batches)
    dicts = [c.to_dict() for c in configs]
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                 initargs=(str(bundle_source), str(device), precision, steps_queue)) as pool:
            pending = {pool.submit(_sample_batch, i, dicts, list(labels), list(seeds), respacing, sampler, eta)
                       for i, (labels, seeds) in enumerate(batches)}
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    index, result = future.result()
                    results[index] = result
                    fraction[index] = 1.0
                if progress is not None:
                    _drain(steps_queue, fraction)
                    progress(sum(f * len(b[0]) for f, b in zip(fraction, batches)))
    finally:
        if manager is not None:
            manager.shutdown()
    return [r for r in results if r is not None]


def _drain(steps_queue: Any, fraction: list[float]) -> None:
    while True:
        try:
            index, k, steps = steps_queue.get_nowait()
        except (queue_module.Empty, EOFError, OSError):
            return
        if fraction[index] < 1.0:
            fraction[index] = max(fraction[index], k / steps)
