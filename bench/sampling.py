"""Sampling benchmarks; every ratio is against a baseline measured in the same run.

1. Side by side: vanilla + robust guided sampling from the same seeds in ONE call (the
   denoiser batched over both columns, shared noise) against running the two methods
   one after the other (two calls, one column each). Prints images/s and the ratio.
2. Seconds per sampling step (denoiser forward + classifier forward/backward) on the
   bundled-size models and on the published 128x128 architecture with random weights
   (gd-128-denoiser + gd-128-classifier; nothing is downloaded).

Examples::

    OMP_WAIT_POLICY=PASSIVE python -m bench.sampling
    python -m bench.sampling --images 16 --steps 20 --repeats 3 --skip-128
    python -m bench.sampling --device cuda --images 64 --big-images 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.bundles import Bundle, GuideInfo, load_bundle  # noqa: E402
from engine.diffusion import DiffusionConfig  # noqa: E402
from engine.guidance import Guide  # noqa: E402
from engine.nets.flags import create_classifier, create_denoiser  # noqa: E402
from engine.presets import PRESETS  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def side_by_side(bundle: Bundle, images: int, steps: int, repeats: int) -> dict:
    labels = [i % bundle.num_classes for i in range(images)]
    seeds = list(range(images))
    vanilla, robust = bundle.default_config("vanilla"), bundle.default_config("robust")
    respacing = str(steps)

    def together():
        bundle.sample([vanilla, robust], labels, seeds, respacing=respacing)

    def one_after_the_other():
        bundle.sample([vanilla], labels, seeds, respacing=respacing)
        bundle.sample([robust], labels, seeds, respacing=respacing)

    # interleave the two so that machine noise hits both alike
    t_together, t_sequential = [], []
    together()  # warm-up
    one_after_the_other()
    for _ in range(repeats):
        start = time.perf_counter(); together(); t_together.append(time.perf_counter() - start)
        start = time.perf_counter(); one_after_the_other(); t_sequential.append(time.perf_counter() - start)
    med_t, med_s = statistics.median(t_together), statistics.median(t_sequential)
    return {"images_per_method": images, "steps": steps,
            "side_by_side_images_per_s": 2 * images / med_t, "sequential_images_per_s": 2 * images / med_s,
            "speedup": med_s / med_t, "side_by_side_s": t_together, "sequential_s": t_sequential}


def seconds_per_step(bundle: Bundle, images: int, steps: int, repeats: int) -> dict:
    labels = [i % bundle.num_classes for i in range(images)]
    cfg = bundle.default_config(next(iter(bundle.guides)))
    times = timed(lambda: bundle.sample([cfg], labels, list(range(images)), respacing=str(steps)), repeats)
    return {"images": images, "steps": steps, "seconds_per_step": statistics.median(times) / steps,
            "runs_s": times}


def random_128_bundle(device: str) -> Bundle:
    torch.manual_seed(0)
    denoiser = create_denoiser(PRESETS["gd-128-denoiser"].flags.replace("--use_fp16 True", "--use_fp16 False")).eval()
    classifier = create_classifier(PRESETS["gd-128-classifier"].flags).eval()
    bundle = Bundle(denoiser, DiffusionConfig(), {"vanilla": Guide(classifier)},
                    {"vanilla": GuideInfo("vanilla", default_scale=0.5)}, [str(i) for i in range(1000)],
                    default_respacing="250", name="random-gd-128")
    return bundle.to(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle folder (default: models/)")
    p.add_argument("--images", type=int, default=16, help="images per method (default: 16)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--big-images", type=int, default=1, help="images for the 128x128 model (default: 1)")
    p.add_argument("--big-steps", type=int, default=2, help="steps for the 128x128 model (default: 2)")
    p.add_argument("--skip-128", action="store_true", help="skip the 128x128 random-weight model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle, device=args.device)
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "device": args.device,
                           "cpu": platform.processor() or platform.machine()}}
    results["side_by_side"] = side_by_side(bundle, args.images, args.steps, args.repeats)
    sbs = results["side_by_side"]
    print(f"side by side (vanilla + robust, {args.images} images each, {args.steps} steps): "
          f"{sbs['side_by_side_images_per_s']:.2f} images/s vs one after the other "
          f"{sbs['sequential_images_per_s']:.2f} images/s -> {sbs['speedup']:.2f}x")
    results["bundled_step"] = seconds_per_step(bundle, args.images, args.steps, args.repeats)
    print(f"bundled models: {results['bundled_step']['seconds_per_step']:.4f} s per guided step "
          f"({args.images} images)")
    if not args.skip_128:
        big = random_128_bundle(args.device)
        results["gd128_step"] = seconds_per_step(big, args.big_images, args.big_steps, 1)
        ratio = results["gd128_step"]["seconds_per_step"] / results["bundled_step"]["seconds_per_step"]
        print(f"128x128 preset (random weights): {results['gd128_step']['seconds_per_step']:.2f} s per guided step "
              f"({args.big_images} image) = {ratio:.0f}x the bundled step")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
