"""Targeted PGD (Kawar et al. Figure 4): push one image towards a target class against
each guide, from the same start. In the paper the robust classifier's attacked image
takes on features of the target class; the vanilla one's changes look like noise."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from engine.probes import scaled_attack_eps, targeted_attack

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
    wire_picker(state, picker, None, "attack")

    @user_errors
    def on_attack(chosen, target_value, norm_value, eps_value, steps_value, t_value, guide_names):
        return attack(state, chosen, target_value, norm_value, eps_value, steps_value, t_value, guide_names)

    run_btn.click(on_attack, [picker.chosen, target, norm, eps, steps, t, guides], [gallery, table, status],
                  api_name="attack", concurrency_id="heavy", concurrency_limit=concurrency)

    def refresh() -> list[Any]:
        b = state.bundle
        return [*refresh_values(state), gr.update(choices=class_choices(b.class_names), value=b.class_names[-1]),
                gr.update(choices=list(b.guides), value=list(b.guides)), scaled_attack_eps(b.image_shape)]

    return View([*refresh_outputs(picker), target, guides, eps], refresh)
