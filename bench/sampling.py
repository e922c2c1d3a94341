"""Sampling benchmark: every ratio is against a baseline measured in the same run.

Sections (``--only`` picks some):

``tiny``    the shared tiny guided-diffusion pair (../shared/reference: tiny UNet +
            tiny classifier, batch 16, respacing 25, DDPM, classifier scale 1) against
            a straightforward guided-diffusion-style loop written in bench/baseline.py
            (one method at a time, global RNG, classifier forward + backward per step,
            the networks run as guided-diffusion's modules run them: attention recomputed
            in the backward, F.interpolate upsampling, torch's pooling kernel); the same loop on the engine's
            networks, with and without the engine's allocator setting (what each part of
            the difference is worth); the engine for one method (also with freed memory
            returned to the OS), for two methods in two calls and side by side (against
            twice the baseline's time in the same round), fp32 and bf16 (and bf16 with
            the guide kept in fp32); every path in its own worker process, run one at a
            time round-robin; FLOPs
            per step counted with torch.utils.flop_counter, achieved GFLOPS (the engine's
            FLOPs, for every row) and their fraction of a matmul measured in the same run
            (the roofline); minor page faults per step; the largest difference between
            the engine's and the baseline's samples from the same x_T and noise (it is 0).
``lab``     the lab's default side by side on the bundle (4 seeds x the bundle's
            default columns, the lab's default steps, traced as the lab traces it),
            fp32 and bf16; the gradient inspector and the Stability run with their
            defaults, through the lab's own view functions (fp32).
``survey``  ``python -m survey create --from-bundle --pairs N`` end to end (sampling,
            PNGs, database), fp32 and bf16, wall time: one process with one thread (the
            baseline), one process with a thread per core, one single-thread worker
            process per core (``--workers``).
``gd128``   (only when named) seconds per guided step of the published 128x128
            architecture with random weights (gd-128-denoiser + gd-128-classifier; nothing
            is downloaded), 1 image.

Run it with one thread for numbers comparable with the reference's
(``reference_speed.json``); on a shared machine trust the ratios, not the seconds.

Examples::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python -m bench.sampling
    python -m bench.sampling --only tiny --repeats 5
    python -m bench.sampling --only tiny --profile          # torch.profiler per-op table of one engine run
    python -m bench.sampling --only survey --survey-pairs 200 --survey-batch 64
    python -m bench.sampling --json runs/bench.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.baseline import BaselineDiffusion, guided_ddpm_loop, with_guided_diffusion_ops  # noqa: E402
from bench.tiny_paths import (BASELINE_1, BF16_PATHS, FP32_PATHS, TinyPath, load_tiny_pair,  # noqa: E402
                              tiny_inputs)
from bench.tiny_paths import worker as tiny_worker  # noqa: E402
from bench.roofline import count_flops, matmul_gflops  # noqa: E402
from engine.diffusion import DiffusionConfig, create_diffusion  # noqa: E402
from engine.guidance import GuidanceConfig, classifier_guided  # noqa: E402
from engine.sampler import RecordedNoise, sample  # noqa: E402

DEFAULT_REFERENCE = Path(os.environ.get("RCG_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
SECTIONS = ("tiny", "lab", "survey")
OPTIONAL_SECTIONS = ("gd128",)


# --------------------------------------------------------------------------- helpers
def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of each callable, run round-robin ``repeats`` times
    after one warm-up round, so that machine noise hits every path alike. On a shared
    machine the CPU seconds are the steadier measure (time this process computed, not
    time it waited for a core); ratios use them."""
    for fn in fns.values():
        fn()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def _receive(name: str, proc: Any, conn: Any, timeout: float = 3600.0) -> tuple[str, Any]:
    """The next message of worker ``name``; a worker that died or fell silent stops the
    benchmark with its exit code instead of hanging it."""
    ready = mp_connection.wait([conn, proc.sentinel], timeout)
    if conn in ready:
        try:
            return conn.recv()
        except EOFError:
            pass
    proc.join(timeout=1)
    raise SystemExit(f"tiny path {name!r}: its worker process "
                     + ("exited with code %s" % proc.exitcode if not proc.is_alive() else "sent nothing for an hour"))


def time_in_workers(paths: list[TinyPath], args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]],
                                                                              dict[str, bool]]:
    """CPU and wall seconds (and minor page faults) of every path, each path in its own
    worker process (``bench.tiny_paths``), run one at a time round-robin in a fixed order:
    one warm-up round, then ``args.repeats`` timed rounds, so that
    machine noise hits every path alike. Also returns, per path, whether its process keeps
    freed memory (``engine.allocator``)."""
    ctx = mp.get_context("spawn")
    workers = {}
    try:
        for path in paths:
            here, there = ctx.Pipe()
            proc = ctx.Process(target=tiny_worker, daemon=True,
                               args=(there, path.key, str(args.reference), args.batch, args.steps, args.threads))
            proc.start()
            there.close()  # the worker holds the only other end: its death reads as end of file
            workers[path.name] = (proc, here)
        kept = {}
        for name, (proc, conn) in workers.items():
            kind, detail = _receive(name, proc, conn)
            if kind != "ready":
                raise SystemExit(f"tiny path {name!r} failed to start: {detail}")
            kept[name] = bool(detail)
        times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "faults": []} for name in workers}
        for round_ in range(args.repeats + 1):
            for name, (proc, conn) in workers.items():
                conn.send("run")
                kind, detail = _receive(name, proc, conn)
                if kind != "time":
                    raise SystemExit(f"tiny path {name!r} failed: {detail}")
                if round_:
                    for field, value in zip(("cpu", "wall", "faults"), detail):
                        times[name][field].append(value)
        return times, kept
    finally:
        for proc, conn in workers.values():
            try:
                conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


# --------------------------------------------------------------------------- tiny pair
def bench_tiny(args: argparse.Namespace, matmul: dict[str, float]) -> dict[str, Any]:
    unet, clf = load_tiny_pair(args.reference)
    batch, respacing, scale = args.batch, str(args.steps), 1.0
    x_T, y = tiny_inputs(batch, unet.image_size, unet.in_channels)
    base = BaselineDiffusion(respacing=respacing)
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing=respacing))
    one = [classifier_guided("tiny", scale, name="one")]
    guides = {"tiny": clf}
    gd_unet, gd_clf = with_guided_diffusion_ops(unet), with_guided_diffusion_ops(clf)

    def engine(steps: str = respacing) -> Any:
        d = diffusion if steps == respacing else create_diffusion(DiffusionConfig(timestep_respacing=steps))
        return sample(unet, d, one, y, seeds=list(range(batch)), guides=guides)

    # equal samples: the engine replays the baseline's x_T and noise
    drawn: list[torch.Tensor] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        drawn.append(torch.randn_like(x))
        return drawn[-1]

    torch.manual_seed(1234)
    ref = guided_ddpm_loop(gd_unet, gd_clf, base, x_T, y, scale, noise_fn=recording)
    got = sample(unet, diffusion, one, y, noise=RecordedNoise(x_T, drawn), guides=guides).images["one"]
    got_bf16 = sample(unet, diffusion, one, y, noise=RecordedNoise(x_T, drawn), guides=guides,
                      precision="bf16").images["one"]
    equality = {"max_abs_diff_engine_vs_baseline": float((got - ref).abs().max()),
                "max_abs_diff_bf16_vs_fp32": float((got_bf16 - got).abs().max()),
                "mean_abs_diff_bf16_vs_fp32": float((got_bf16 - got).abs().mean())}

    paths = list(FP32_PATHS) + (list(BF16_PATHS) if "bf16" in args.precisions else [])
    times, kept = time_in_workers(paths, args)

    # FLOPs per guided step (the same at every t): count a 2-step run of each loop
    flops_engine, per_op = count_flops(lambda: engine(steps="2"))
    flops_step = flops_engine / 2
    flops_base, base_per_op = count_flops(
        lambda: guided_ddpm_loop(gd_unet, gd_clf, BaselineDiffusion(respacing="2"), x_T, y, scale))
    # the baseline run m times for an m-method path: m x its time in the same round, so that
    # each ratio pairs runs made moments apart (the spread over rounds is the error bar)
    base_runs = times[BASELINE_1]["cpu"]
    rows = []
    for path in paths:
        runs = times[path.name]
        cpu, wall = statistics.median(runs["cpu"]), statistics.median(runs["wall"])
        per_round = [path.methods * b / c for b, c in zip(base_runs, runs["cpu"])]
        gflops = flops_step * int(args.steps) * path.methods / cpu / 1e9
        rows.append({"path": path.name, "methods": path.methods, "precision": path.precision, "cpu_s": cpu,
                     "wall_s": wall, "runs": runs, "cpu_s_per_step": cpu / int(args.steps),
                     "speedup_vs_baseline": statistics.median(per_round),
                     "speedup_range": [min(per_round), max(per_round)], "gflops": gflops,
                     "page_faults_per_step": statistics.median(runs["faults"]) / int(args.steps),
                     "freed_memory_kept": kept[path.name],
                     "roofline_fp32": gflops / matmul["fp32"],
                     "roofline_same_precision": gflops / matmul.get(path.precision, matmul["fp32"])})
    return {"batch": batch, "steps": int(args.steps), "scale": scale,
            "gflop_per_guided_step": flops_step / 1e9, "baseline_gflop_per_step": flops_base / 2 / 1e9,
            "gflop_by_op": {k: v / 2 / 1e9 for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "baseline_gflop_by_op": {k: v / 2 / 1e9 for k, v in sorted(base_per_op.items(), key=lambda kv: -kv[1])},
            "equality": equality, "rows": rows}


def profile_tiny(args: argparse.Namespace) -> str:
    """torch.profiler per-op table of one engine run (one method, fp32 unless --precision-profile)."""
    from torch.profiler import ProfilerActivity, profile

    unet, clf = load_tiny_pair(args.reference)
    for p in (*unet.parameters(), *clf.parameters()):
        p.requires_grad_(False)
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing=str(args.steps)))
    y = torch.arange(args.batch) % 10
    configs = [classifier_guided("tiny", 1.0, name="one")]

    def run() -> None:
        sample(unet, diffusion, configs, y, seeds=list(range(args.batch)), guides={"tiny": clf},
               precision=args.profile_precision)

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)


# --------------------------------------------------------------------------- bundle
def lab_default_configs(bundle: Any) -> list[GuidanceConfig]:
    """The columns the lab's side by side runs by default (the bundle's ``lab.columns``
    marked to run, else one column per guide at its default scale)."""
    try:
        from app.columns import default_rows
        from app.inputs import COLUMN_HEADERS, configs_from_rows, read_columns

        rows = read_columns({"headers": COLUMN_HEADERS, "data": default_rows(bundle)})
        return configs_from_rows(bundle, rows, False)
    except ImportError:  # pragma: no cover - the lab's optional dependencies are missing
        return [bundle.default_config(name) for name in bundle.guide_info]


def lab_default_steps(bundle: Any) -> int:
    """The lab's default steps (``lab.steps`` of bundle.json, else the default respacing capped at 50)."""
    lab = bundle.manifest.get("lab", {}) if isinstance(bundle.manifest, dict) else {}
    if isinstance(lab.get("steps"), int):
        return int(lab["steps"])
    text = str(bundle.default_respacing or "").strip()
    return min(int(text), 50) if text.isdigit() else 50


def bench_lab(args: argparse.Namespace) -> dict[str, Any]:
    from engine.bundles import load_bundle
    from engine.summaries import record_every_for
    from engine.trace import TraceOptions

    bundle = load_bundle(args.bundle)
    configs = lab_default_configs(bundle)
    steps = lab_default_steps(bundle)
    seeds = [0, 1, 2, 3]
    trace = TraceOptions(record_every=record_every_for(steps, 8))
    runs = {}
    for precision in args.precisions:
        bundle.to("cpu", precision)
        runs[precision] = lambda: bundle.sample(configs, [0] * len(seeds), seeds, respacing=str(steps), trace=trace)
    times = interleaved(runs, max(1, args.repeats - 1))
    bundle.to("cpu", "fp32")
    return {"columns": [c.name for c in configs], "seeds": len(seeds), "steps": steps,
            "seconds": {p: statistics.median(ts["wall"]) for p, ts in times.items()},
            "cpu_seconds": {p: statistics.median(ts["cpu"]) for p, ts in times.items()}, "runs": times,
            "views": bench_lab_views(args)}


def bench_lab_views(args: argparse.Namespace) -> dict[str, Any]:
    """The gradient inspector and the Stability run with the lab's defaults, timed through
    the lab's own view functions (fp32; empty when the lab's dependencies are missing)."""
    try:
        from app.columns import stability_choices
        from app.state import LabState
        from app.views.inspector import default_timesteps, inspect
        from app.views.stability import DEFAULT_BATCH, DEFAULT_STEPS, analyse, stability_run
    except ImportError:  # pragma: no cover - the lab's optional dependencies are missing
        return {}
    from engine.bundles import load_bundle

    bundle = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        state = LabState(bundle, run_dir=tmp)
        timesteps = default_timesteps(bundle.diffusion_config.steps)
        _, ticked = stability_choices(bundle)
        steps = args.stability_steps or DEFAULT_STEPS

        def inspector() -> Any:
            return inspect(state, None, bundle.class_names[0], timesteps, None, 0, False)

        def stability() -> Any:
            record = stability_run(state, "bench", ticked, None, DEFAULT_BATCH, steps, 0, "DDPM", False)
            return analyse(record, "applied")

        times = interleaved({"inspector": inspector, "stability": stability}, max(1, args.repeats - 1))
    return {"inspector_timesteps": timesteps, "stability_columns": ticked, "stability_images": DEFAULT_BATCH,
            "stability_steps": steps,
            "seconds": {k: statistics.median(v["wall"]) for k, v in times.items()},
            "cpu_seconds": {k: statistics.median(v["cpu"]) for k, v in times.items()}}


def bench_survey(args: argparse.Namespace) -> dict[str, Any]:
    """``survey create --from-bundle`` end to end, wall seconds, three ways of using the
    machine's cores: one process with one thread (the baseline), one process with a thread
    per core, and one single-thread worker process per core (``--workers``)."""
    from engine.parallel_sampling import available_cores
    from survey.cli import main as survey_main

    cores = args.survey_cores or available_cores()
    ways = {"1 process x 1 thread": (1, 1), f"1 process x {cores} threads": (1, cores),
            f"{cores} processes x 1 thread": (cores, 1)}
    results: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    try:
        for precision in args.precisions:
            for way, (workers, n_threads) in ways.items():
                torch.set_num_threads(n_threads)
                with tempfile.TemporaryDirectory() as tmp:
                    argv = ["create", "--db", str(Path(tmp) / "bench.db"), "--name", "bench", "--from-bundle",
                            *([str(args.bundle)] if args.bundle else []), "--pairs", str(args.survey_pairs),
                            "--batch-size", str(args.survey_batch), "--precision", precision, "--device", "cpu",
                            "--workers", str(workers)]
                    wall = time.perf_counter()
                    survey_main(argv)
                    results.setdefault(precision, {})[way] = time.perf_counter() - wall
    finally:
        torch.set_num_threads(threads)
    return {"pairs": args.survey_pairs, "batch": args.survey_batch, "cores": cores, "wall_seconds": results}


def bench_gd128(args: argparse.Namespace) -> dict[str, Any]:
    """One guided DDPM step (the 128x128 published architecture, random weights, 1 image)."""
    from engine.bundles import Bundle, GuideInfo
    from engine.guidance import Guide
    from engine.nets.flags import create_classifier, create_denoiser
    from engine.presets import PRESETS

    torch.manual_seed(0)
    denoiser = create_denoiser(PRESETS["gd-128-denoiser"].flags.replace("--use_fp16 True", "--use_fp16 False")).eval()
    classifier = create_classifier(PRESETS["gd-128-classifier"].flags).eval()
    bundle = Bundle(denoiser, DiffusionConfig(), {"vanilla": Guide(classifier)},
                    {"vanilla": GuideInfo("vanilla", default_scale=0.5)}, [str(i) for i in range(1000)],
                    default_respacing="250", name="random-gd-128")
    out = {}
    for precision in args.precisions:
        bundle.to("cpu", precision)
        times = interleaved({precision: lambda: bundle.sample([bundle.default_config("vanilla")], [1], [0],
                                                              respacing="1")}, 1)[precision]
        out[precision] = {"wall_s_per_step": times["wall"][0], "cpu_s_per_step": times["cpu"][0]}
    return out


# --------------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    lines.append(f"machine: {m['cpu']}, torch {m['torch']}, {m['threads']} thread(s); measured matmul "
                 f"(1024^3): fp32 {m['matmul_gflops']['fp32']:.1f} GFLOPS, bf16 "
                 f"{m['matmul_gflops'].get('bf16', float('nan')):.1f} GFLOPS")
    if "tiny" in results:
        t = results["tiny"]
        lines += ["",
                  f"tiny guided-diffusion pair, batch {t['batch']}, {t['steps']} DDPM steps, "
                  f"{t['gflop_per_guided_step']:.2f} GFLOP per guided step (baseline counts "
                  f"{t['baseline_gflop_per_step']:.2f}: it recomputes attention in the backward); a two-method "
                  "path is compared with twice the baseline's time in the same round; ratio = median over rounds",
                  "",
                  "| path | CPU s | wall s | CPU s / step | vs baseline (range over rounds) | GFLOPS | "
                  "of fp32 matmul | of matmul, same precision | page faults / step |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            lines.append(f"| {r['path']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['cpu_s_per_step']:.3f} | "
                         f"{r['speedup_vs_baseline']:.2f}x ({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}) | "
                         f"{r['gflops']:.1f} | {100 * r['roofline_fp32']:.0f} % | "
                         f"{100 * r['roofline_same_precision']:.0f} % | {r['page_faults_per_step']:,.0f} |")
        e = t["equality"]
        lines += ["", f"engine vs baseline, same x_T and noise: max |diff| {e['max_abs_diff_engine_vs_baseline']:.2e}; "
                      f"bf16 vs fp32 engine: max |diff| {e['max_abs_diff_bf16_vs_fp32']:.3f}, mean "
                      f"{e['mean_abs_diff_bf16_vs_fp32']:.4f} (random-weight nets amplify perturbations)"]
    if "lab" in results:
        lab = results["lab"]
        cells = ", ".join(f"{p} {s:.1f} s wall ({lab['cpu_seconds'][p]:.1f} s CPU)" for p, s in lab["seconds"].items())
        lines += ["", f"lab default side by side ({lab['seeds']} seeds x {len(lab['columns'])} columns "
                      f"{lab['columns']}, {lab['steps']} DDPM steps, traced): {cells}"]
        if "fp32" in lab["seconds"] and "bf16" in lab["seconds"]:
            lines[-1] += f"; bf16 {lab['cpu_seconds']['fp32'] / lab['cpu_seconds']['bf16']:.2f}x fp32 (CPU time)"
        views = lab.get("views") or {}
        if views:
            sec, cpu = views["seconds"], views["cpu_seconds"]
            lines += ["", f"lab gradient inspector (timesteps {views['inspector_timesteps']}, every guide): "
                          f"{sec['inspector'] * 1000:.0f} ms wall ({cpu['inspector'] * 1000:.0f} ms CPU); Stability run "
                          f"({views['stability_images']} images x {len(views['stability_columns'])} columns "
                          f"{views['stability_columns']}, {views['stability_steps']} DDPM steps, with its figure): "
                          f"{sec['stability']:.1f} s wall ({cpu['stability']:.1f} s CPU), fp32"]
    if "survey" in results:
        s = results["survey"]
        lines += ["", f"survey create --from-bundle --pairs {s['pairs']} (2 methods, batch {s['batch']}, bundle default "
                      f"steps), wall seconds on {s['cores']} cores; ratio against 1 process x 1 thread:", "",
                  "| precision | way | wall s | images / s | ratio |", "|---|---|---|---|---|"]
        for precision, ways in s["wall_seconds"].items():
            base = next(iter(ways.values()))
            for way, sec in ways.items():
                lines.append(f"| {precision} | {way} | {sec:.1f} | {2 * s['pairs'] / sec:.1f} | {base / sec:.2f}x |")
    if "gd128" in results:
        cells = ", ".join(f"{p} {v['wall_s_per_step']:.1f} s wall ({v['cpu_s_per_step']:.1f} s CPU)"
                          for p, v in results["gd128"].items())
        lines += ["", f"128x128 published architecture (random weights), one guided DDPM step for 1 image: {cells}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=SECTIONS + OPTIONAL_SECTIONS, default=list(SECTIONS),
                   help="sections to run (default: tiny lab survey; gd128 only when named)")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                   help="folder of the shared tiny pair (default: ../shared/reference or $RCG_REFERENCE_DIR)")
    p.add_argument("--bundle", default=None, help="bundle folder for lab / survey (default: the bundled models)")
    p.add_argument("--batch", type=int, default=16, help="tiny section: images per method (default: 16)")
    p.add_argument("--steps", type=int, default=25, help="tiny section: respaced DDPM steps (default: 25)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (default: 3)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="precisions of the engine runs (default: fp32 bf16)")
    p.add_argument("--stability-steps", type=int, default=None,
                   help="lab section: steps of the Stability run (default: the lab's default)")
    p.add_argument("--survey-pairs", type=int, default=16, help="survey section: pairs to create (default: 16)")
    p.add_argument("--survey-batch", type=int, default=64, help="survey section: --batch-size (default: 64)")
    p.add_argument("--survey-cores", type=int, default=None,
                   help="survey section: threads / worker processes to compare (default: the cores available)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as reference_speed.json)")
    p.add_argument("--profile", action="store_true",
                   help="print a torch.profiler per-op table of one engine run on the tiny pair, then stop")
    p.add_argument("--profile-precision", default="fp32", choices=["fp32", "bf16"],
                   help="precision of the profiled engine run (default: fp32)")
    p.add_argument("--profile-rows", type=int, default=25, help="rows of the per-op table (default: 25)")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if "fp32" not in args.precisions:
        args.precisions = ["fp32", *args.precisions]
    if args.profile:
        print(profile_tiny(args))
        return 0
    matmul = {"fp32": matmul_gflops(torch.float32)}
    if "bf16" in args.precisions:
        matmul["bf16"] = matmul_gflops(torch.bfloat16)
    results: dict[str, Any] = {"machine": {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "load_average": list(os.getloadavg()),
        "matmul_gflops": matmul}}
    if "tiny" in args.only:
        print("[bench] tiny ...", file=sys.stderr, flush=True)
        results["tiny"] = bench_tiny(args, matmul)
    if "lab" in args.only:
        print("[bench] lab ...", file=sys.stderr, flush=True)
        results["lab"] = bench_lab(args)
    if "survey" in args.only:
        print("[bench] survey ...", file=sys.stderr, flush=True)
        results["survey"] = bench_survey(args)
    if "gd128" in args.only:
        print("[bench] gd128 ...", file=sys.stderr, flush=True)
        results["gd128"] = bench_gd128(args)
    results["machine"]["load_average_after"] = list(os.getloadavg())
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
