"""The timed paths of the benchmark's tiny section, each run in its own worker process.

A path is the shared tiny guided-diffusion pair sampled one way (the baseline loop, the
engine in fp32 or bf16, one method or two). Every path lives in a process of its own, so
what one path sets for its whole process (the engine keeps freed memory:
``engine.allocator``) cannot speed up or slow down another; the parent sends "run" to one
worker at a time, round-robin, and collects the CPU and wall seconds the worker measured.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench.baseline import BaselineDiffusion, guided_ddpm_loop, with_guided_diffusion_ops
from engine.diffusion import DiffusionConfig, create_diffusion
from engine.guidance import classifier_guided
from engine.nets import EncoderUNetModel, UNetModel
from engine.sampler import sample


@dataclass(frozen=True)
class TinyPath:
    """One timed path: ``methods`` guided methods per run (compared with the baseline loop
    run that many times), the engine's ``precision`` (fp32 for the loop)."""

    name: str
    key: str
    methods: int
    precision: str = "fp32"


BASELINE_1 = "guided-diffusion-style loop (the baseline), 1 method"

FP32_PATHS = (
    TinyPath(BASELINE_1, "loop-gd", 1),
    TinyPath("the same loop on the engine's networks", "loop-engine-nets", 1),
    TinyPath("the same loop on the engine's networks, freed memory kept", "loop-engine-nets-kept", 1),
    TinyPath("engine fp32, freed memory returned (RCG_KEEP_FREED_MEMORY=0)", "engine-returned", 1),
    TinyPath("engine fp32, 1 method", "engine-1", 1),
    TinyPath("engine fp32, 2 methods in 2 calls", "engine-2-calls", 2),
    TinyPath("engine fp32, 2 methods side by side", "engine-2", 2),
)
BF16_PATHS = (
    TinyPath("engine bf16 denoiser, fp32 guide, 1 method", "engine-bf16-fp32-guide", 1, "bf16"),
    TinyPath("engine bf16, 1 method", "engine-bf16-1", 1, "bf16"),
    TinyPath("engine bf16, 2 methods side by side", "engine-bf16-2", 2, "bf16"),
)


def load_tiny_pair(reference: Path) -> tuple[UNetModel, EncoderUNetModel]:
    """The shared tiny UNet and classifier (random weights recorded by the reference),
    in eval mode with parameters that do not require gradients (the engine's setting)."""
    nets = []
    for name, cls in (("tiny_unet.pt", UNetModel), ("tiny_classifier.pt", EncoderUNetModel)):
        path = reference / name
        if not path.is_file():
            raise SystemExit(f"{path} is missing: the tiny section needs ../shared/reference (or --reference DIR, "
                             "or RCG_REFERENCE_DIR); skip it with --only lab survey")
        fx = torch.load(path, weights_only=True)
        net = cls(**json.loads(fx["config_json"])).eval()
        net.load_state_dict(fx["state_dict"])
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(net)
    return nets[0], nets[1]


def tiny_inputs(batch: int, image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T (seed 400) and the labels 0..9 repeated, shared by every path."""
    x_T = torch.randn((batch, channels, image_size, image_size), generator=torch.Generator().manual_seed(400))
    return x_T, torch.arange(batch) % 10


def build_run(key: str, reference: Path, batch: int, steps: int) -> Callable[[], Any]:
    """The callable one worker times for path ``key``."""
    unet, clf = load_tiny_pair(reference)
    x_T, y = tiny_inputs(batch, unet.image_size, unet.in_channels)
    respacing, scale = str(steps), 1.0
    if key.startswith("loop"):
        if key.startswith("loop-gd"):
            unet, clf = with_guided_diffusion_ops(unet), with_guided_diffusion_ops(clf)
        base = BaselineDiffusion(respacing=respacing)

        def loop() -> None:
            torch.manual_seed(1234)
            guided_ddpm_loop(unet, clf, base, x_T, y, scale)

        return loop
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing=respacing))
    one = [classifier_guided("tiny", scale, name="one")]
    two = [classifier_guided("tiny", scale, name="vanilla"), classifier_guided("tiny", 2 * scale, name="robust")]
    guides = {"tiny": clf}
    seeds = list(range(batch))

    def engine(configs: list, precision: str = "fp32", **kw: Any) -> None:
        sample(unet, diffusion, configs, y, seeds=seeds, guides=guides, precision=precision, **kw)

    runs: dict[str, Callable[[], Any]] = {
        "engine-returned": lambda: engine(one),
        "engine-1": lambda: engine(one),
        "engine-2-calls": lambda: (engine(two[:1]), engine(two[1:])),
        "engine-2": lambda: engine(two),
        "engine-bf16-fp32-guide": lambda: engine(one, "bf16", guide_precision="fp32"),
        "engine-bf16-1": lambda: engine(one, "bf16"),
        "engine-bf16-2": lambda: engine(two, "bf16"),
    }
    if key not in runs:
        raise ValueError(f"unknown tiny path {key!r}")
    return runs[key]


def worker(conn: Any, key: str, reference: str, batch: int, steps: int, threads: int) -> None:
    """Worker process: build path ``key``, send ("ready", whether freed memory is kept in
    this process), then time one run per "run" message and send back (CPU seconds, wall
    seconds, minor page faults); "stop" ends it. A failure is sent as ("error", message)."""
    from engine.allocator import ENV_SWITCH, freed_memory_kept, keep_freed_memory

    if key == "engine-returned":
        os.environ[ENV_SWITCH] = "0"
    if key.startswith("engine") or key == "loop-engine-nets-kept":
        keep_freed_memory()  # what the engine's first sample() does (off for "engine-returned")
    torch.set_num_threads(threads)
    try:
        run = build_run(key, Path(reference), batch, steps)
        conn.send(("ready", freed_memory_kept()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while conn.recv() == "run":
        try:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            conn.send(("time", (cpu, wall, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
