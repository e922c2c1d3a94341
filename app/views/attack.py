"""Targeted PGD (Kawar et al. Figure 4): push one image towards a target class against
each guide, from the same start. In the paper the robust classifier's attacked image
takes on features of the target class; the vanilla one's changes look like noise.

Batch mode measures that: N held-out images, a random other target per image (fixed by
a seed), each guide attacked at one timestep and radius, and the bundle's judge reading
the result (:func:`engine.probes.transfer_batch`, the instrument of ``python -m
train.alignment``): transfer per guide with its standard error, and a grid of
originals, attacked images and changes."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from engine.alignment import AlignmentSettings, stratified_subset
from engine.data import to_model_range
from engine.probes import scaled_attack_eps, targeted_attack, transfer_batch

from .. import render
from ..errors import user_errors
from ..inputs import LabInputError, parse_class, parse_float, parse_int
from ..state import LabState
from . import View, class_choices
from .picker import build_picker, chosen_or_default, refresh_outputs, refresh_values, wire_picker

HELP = ("Targeted PGD maximises log p(target | x_t, t) of each guide, from the same image. The paper uses an "
        "L2 ball of radius 100 with 7 steps at t = 0 on 3x128x128 ImageNet images. **eps** starts at that radius "
        "scaled to the loaded models' image size at the same change per pixel, 100·√(C·H·W / 49152): 12.6 for "
        "28x28 digits, where 100 would exceed the distance between any two images and turn every guide's result "
        "into saturated noise. Smaller radii show what a small budget does.")


def attack(state: LabState, chosen: Any, target_value: Any, norm: str, eps: Any, steps: Any, t: Any,
           guides: list[str] | None) -> tuple[Any, Any, str]:
    """The picture (per guide: start, attacked, change), the before/after table and a status line."""
    bundle = state.bundle
    picked = chosen_or_default(state, chosen)
    target = parse_class(bundle, target_value)
    norm_name = {"l2": "l2", "linf": "linf", "l∞": "linf"}.get(str(norm or "").strip().lower())
    if norm_name is None:
        raise LabInputError(f"threat model must be L2 or Linf, got {norm!r}")
    eps_value = parse_float(eps, "eps", 0.0, 1e6)
    if eps_value <= 0:
        raise LabInputError("eps must be positive")
    steps_value = parse_int(steps, "attack steps", 1, state.limits.max_attack_steps)
    t_value = parse_int(t if t not in (None, "") else 0, "timestep", 0, bundle.diffusion_config.steps - 1)
    names = [g for g in (guides or []) if g in bundle.guides] or list(bundle.guides)
    if not names:
        raise LabInputError("these models have no guide to attack; load a bundle with classifiers (Models tab)")
    started = time.perf_counter()
    records = targeted_attack(bundle, picked["image"], target, norm=norm_name, eps=eps_value, steps=steps_value,
                              t=t_value, guides=names)
    seconds = time.perf_counter() - started
    picture, table = render.attack_outputs(records, bundle.class_names, target)
    status = (f"{picked['source']} → target **{bundle.class_names[target]}**, {norm_name.upper()} eps {eps_value:g}, "
              f"{steps_value} steps at t={t_value}, {len(names)} guide(s) in {seconds:.2f} s")
    return picture, table, status


BATCH_HELP = ("**Batch: does the attack draw the target?** N held-out images (balanced over the classes), a random "
              "other target class per image (fixed by the seed), every guide attacked with the same targets and noise. "
              "**Transfer** = the bundle's judge (a classifier that never guides) reads the target in the attacked "
              "image (at t > 0: in the denoiser's x0 of the attacked x_t). A perceptually aligned (robust) guide "
              "transfers more often than a vanilla one; the paired row gives robust − vanilla per image. Same "
              "numbers as `python -m train.alignment` on the same images and settings.")
MAX_BATCH_IMAGES = 200
BATCH_DEFAULTS = {"n": 20, "seed": 0, "steps": 10}


def measured_contrast(manifest: Any) -> dict[str, Any]:
    """The (t, eps, steps) at which the bundle's stored alignment figures (``python -m
    train.alignment --store``: the robust guide's paired rows against vanilla) show the
    largest robust - vanilla transfer difference; {} when none are stored."""
    guides = manifest.get("guides", {}) if isinstance(manifest, dict) else {}
    stored = ((guides.get("robust") or {}).get("figures") or {}).get("alignment") or {}
    rows = [r for r in stored.get("paired", []) if r.get("b") == "vanilla" and isinstance(r.get("mean_diff"), float)]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["mean_diff"])
    steps = (stored.get("settings") or {}).get("steps")
    return {"t": int(best["t"]), "eps": float(best["eps"]), **({"steps": int(steps)} if steps else {})}


def batch_defaults(state: LabState) -> dict[str, Any]:
    """n, seed, steps, timestep t and radius eps of the batch mode: ``lab.alignment`` of
    bundle.json when it names them, else where the bundle's stored alignment figures show
    the largest robust - vanilla contrast (:func:`measured_contrast`), else 20 images,
    seed 0, PGD-10, t = 300 (where guidance acts; capped to the schedule) and the paper's
    radius scaled to the image size."""
    bundle = state.bundle
    lab = bundle.manifest.get("lab", {}) if isinstance(bundle.manifest, dict) else {}
    given = lab.get("alignment") if isinstance(lab.get("alignment"), dict) else {}
    values = {**BATCH_DEFAULTS, "t": min(300, bundle.diffusion_config.steps - 1),
              "eps": scaled_attack_eps(bundle.image_shape), **measured_contrast(bundle.manifest)}
    values.update({k: given[k] for k in ("n", "seed", "steps", "t", "eps") if isinstance(given.get(k), (int, float))})
    return values


def batch_attack(state: LabState, n: Any, seed: Any, t: Any, eps: Any, steps: Any, norm: str,
                 guides: list[str] | None, progress: Any = None) -> tuple[Any, Any, Any, str]:
    """The transfer figure, the table, the grid and a status line of a batch attack."""
    bundle = state.bundle
    n_value = parse_int(n, "images", 2, MAX_BATCH_IMAGES)
    seed_value = parse_int(seed, "seed", 0, 2**31 - 1)
    t_value = parse_int(t if t not in (None, "") else 0, "timestep", 0, bundle.diffusion_config.steps - 1)
    eps_value = parse_float(eps, "eps", 0.0, 1e6)
    if eps_value <= 0:
        raise LabInputError("eps must be positive")
    steps_value = parse_int(steps, "attack steps", 1, state.limits.max_attack_steps)
    norm_name = {"l2": "l2", "linf": "linf", "l∞": "linf"}.get(str(norm or "").strip().lower())
    if norm_name is None:
        raise LabInputError(f"threat model must be L2 or Linf, got {norm!r}")
    names = [g for g in (guides or []) if g in bundle.guides] or list(bundle.guides)
    if not names:
        raise LabInputError("these models have no guide to attack; load a bundle with classifiers (Models tab)")
    if bundle.judge is None:
        raise LabInputError("these models have no judge, so transfer cannot be read; load a bundle with a judge")
    gallery = state.gallery()
    if gallery is None:
        raise LabInputError("these models have no held-out images to attack (no gallery)")
    import torch

    labels = torch.as_tensor(gallery.labels)
    pick = stratified_subset(labels, n_value)
    settings = AlignmentSettings(timesteps=(t_value,), radii=(eps_value,), norm=norm_name, steps=steps_value,
                                 seed=seed_value)
    started = time.perf_counter()
    result = transfer_batch(bundle, to_model_range(gallery.images[pick]), labels[pick], settings, names,
                            keep_examples=min(len(pick), 8), progress=progress)
    seconds = time.perf_counter() - started
    pairs = [("robust", "vanilla")] if {"robust", "vanilla"} <= set(names) else []
    status = (f"{len(pick)} {gallery.source} images, random targets (seed {seed_value}), {norm_name.upper()} eps "
              f"{eps_value:g}, PGD-{steps_value} at t={t_value}, {len(names)} guide(s) in {seconds:.1f} s; judge "
              f"accuracy on the unattacked {'images' if t_value == 0 else 'x0 predictions'}: "
              f"{100 * result.clean_judge_accuracy:.0f} %")
    return (render.transfer_figure(result), render.transfer_table(result, pairs),
            render.transfer_grid(result, bundle.class_names), status)


def build(state: LabState, concurrency: int) -> View:
    bundle = state.bundle
    with gr.Tab("Targeted PGD", id="attack"):
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                picker = build_picker(state, "attack")
                target = gr.Dropdown(class_choices(bundle.class_names), value=bundle.class_names[-1],
                                     label="Target class", allow_custom_value=True,
                                     info="the class the attack pushes every guide towards")
                with gr.Row():
                    norm = gr.Radio(["L2", "Linf"], value="L2", label="Threat model")
                    eps = gr.Number(scaled_attack_eps(bundle.image_shape), label="eps",
                                    info="radius of the perturbation ball (default: the paper's, scaled to the "
                                         "image size)", elem_id="attack-eps")
                with gr.Row():
                    steps = gr.Number(7, precision=0, label="Steps", info="PGD steps (paper: 7)")
                    t = gr.Number(0, precision=0, label="Timestep",
                                  info="0 = attack the clean image (paper)")
                guides = gr.CheckboxGroup(list(bundle.guides), value=list(bundle.guides), label="Guides")
                run_btn = gr.Button("Attack", variant="primary", elem_id="attack-run")
                status = gr.Markdown("", elem_id="attack-status")
            with gr.Column(scale=2):
                gallery = gr.Image(label="Per guide: the start, the attacked image and the change (signed)",
                                   format="png", interactive=False, elem_id="attack-gallery")
                table = gr.Dataframe(label="Probability of the target before and after", interactive=False,
                                     elem_id="attack-table", wrap=True)
        defaults = batch_defaults(state)
        with gr.Accordion("Batch: transfer to the judge over held-out images", open=True):
            gr.Markdown(BATCH_HELP)
            with gr.Row():
                with gr.Column(scale=1, min_width=340):
                    with gr.Row():
                        batch_n = gr.Number(defaults["n"], precision=0, label="Images", elem_id="batch-n",
                                            info=f"held-out images, balanced over classes (at most {MAX_BATCH_IMAGES})")
                        batch_seed = gr.Number(defaults["seed"], precision=0, label="Seed",
                                               info="fixes the targets and the noise of x_t")
                    with gr.Row():
                        batch_t = gr.Number(defaults["t"], precision=0, label="Timestep", elem_id="batch-t",
                                            info="0: attack the image; t > 0: attack x_t, judge reads its x0")
                        batch_eps = gr.Number(defaults["eps"], label="eps", elem_id="batch-eps",
                                              info="radius (threat model and guides: as above)")
                        batch_steps = gr.Number(defaults["steps"], precision=0, label="PGD steps")
                    batch_btn = gr.Button("Run batch", variant="primary", elem_id="batch-run")
                    batch_status = gr.Markdown("", elem_id="batch-status")
                with gr.Column(scale=2):
                    batch_plot = gr.Image(label="Success and transfer per guide (± s.e.)", format="png",
                                          interactive=False, elem_id="batch-plot")
                    batch_table = gr.Dataframe(label="Per guide (%, ± standard error); paired: robust − vanilla per "
                                                     "image (images where only robust / only vanilla transfers)",
                                               interactive=False, elem_id="batch-table", wrap=True)
                    batch_grid = gr.Image(label="Originals, attacked images and changes (first images)", format="png",
                                          interactive=False, elem_id="batch-grid")
    wire_picker(state, picker, None, "attack")

    @user_errors
    def on_attack(chosen, target_value, norm_value, eps_value, steps_value, t_value, guide_names):
        return attack(state, chosen, target_value, norm_value, eps_value, steps_value, t_value, guide_names)

    run_btn.click(on_attack, [picker.chosen, target, norm, eps, steps, t, guides], [gallery, table, status],
                  api_name="attack", concurrency_id="heavy", concurrency_limit=concurrency)

    @user_errors
    def on_batch(n_value, seed_value, t_value, eps_value, steps_value, norm_value, guide_names,
                 progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="attacking", unit="images")

        return batch_attack(state, n_value, seed_value, t_value, eps_value, steps_value, norm_value, guide_names,
                            report)

    batch_btn.click(on_batch, [batch_n, batch_seed, batch_t, batch_eps, batch_steps, norm, guides],
                    [batch_plot, batch_table, batch_grid, batch_status], api_name="attack_batch",
                    concurrency_id="heavy", concurrency_limit=concurrency)

    def refresh() -> list[Any]:
        b = state.bundle
        batch = batch_defaults(state)
        return [*refresh_values(state), gr.update(choices=class_choices(b.class_names), value=b.class_names[-1]),
                gr.update(choices=list(b.guides), value=list(b.guides)), scaled_attack_eps(b.image_shape),
                batch["n"], batch["seed"], batch["t"], batch["eps"], batch["steps"]]

    return View([*refresh_outputs(picker), target, guides, eps, batch_n, batch_seed, batch_t, batch_eps, batch_steps],
                refresh)
