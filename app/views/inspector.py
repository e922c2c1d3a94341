"""Gradient inspector (Kawar et al. Figure 3): noise one image to several timesteps and
compare each guide's gradient of log p(class | x_t, t) and its prediction."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from engine.probes import inspect_gradients

from .. import render
from ..errors import user_errors
from ..inputs import LabInputError, parse_class, parse_int, parse_timesteps
from ..state import LabState
from . import View, class_choices
from .picker import build_picker, chosen_or_default, refresh_outputs, refresh_values, wire_picker

HELP = ("Pick an image and a class; the image is noised to each timestep with **one** noise draw (the seed) "
        "shared by all guides. Each guide's gradient of log p(class | x_t, t) is shown min-max normalised per "
        "image (Figure 3), or signed. The paper's point: the robust classifier's gradients look like strokes of the "
        "class, the vanilla one's like noise. Guides without a time input see x_t as if it were clean.")


def default_timesteps(steps: int) -> str:
    """Five timesteps from clean to very noisy (0, 10 %, 30 %, 50 %, 70 % of the process)."""
    return ", ".join(str(v) for v in dict.fromkeys([0, steps // 10, 3 * steps // 10, steps // 2, 7 * steps // 10]))


def inspect(state: LabState, chosen: Any, class_value: Any, timesteps_text: Any, guides: list[str] | None,
            seed: Any, signed: bool) -> tuple[Any, Any, str]:
    """The gradient picture, the prediction table and a status line."""
    bundle = state.bundle
    picked = chosen_or_default(state, chosen)
    label = parse_class(bundle, class_value)
    timesteps = parse_timesteps(timesteps_text, bundle.diffusion_config.steps, state.limits.max_timesteps)
    names = [g for g in (guides or []) if g in bundle.guides] or list(bundle.guides)
    if not names:
        raise LabInputError("these models have no guide to inspect")
    noise_seed = parse_int(seed if seed not in (None, "") else 0, "noise seed", 0, 2**63 - 1)
    started = time.perf_counter()
    records = inspect_gradients(bundle, picked["image"], label, timesteps, names, seed=noise_seed)
    seconds = time.perf_counter() - started
    picture, table = render.inspector_outputs(records, bundle.class_names, bool(signed))
    status = (f"{picked['source']}; class **{bundle.class_names[label]}**; {len(timesteps)} timestep(s) x "
              f"{len(names)} guide(s) in {seconds * 1000:.0f} ms")
    return picture, table, status


def build(state: LabState) -> View:
    bundle = state.bundle
    with gr.Tab("Gradient inspector", id="inspector"):
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                picker = build_picker(state, "inspector")
                class_dd = gr.Dropdown(class_choices(bundle.class_names), value=bundle.class_names[0],
                                       label="Class", allow_custom_value=True,
                                       info="the class whose log-probability is differentiated (a gallery pick "
                                            "sets its true class)")
                timesteps = gr.Textbox(default_timesteps(bundle.diffusion_config.steps), label="Timesteps",
                                       info=f"of the original 0..{bundle.diffusion_config.steps - 1} schedule; "
                                            "0 = the clean image")
                guides = gr.CheckboxGroup(list(bundle.guides), value=list(bundle.guides), label="Guides")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="Noise seed")
                    signed = gr.Checkbox(False, label="Signed colours",
                                         info="blue = negative, white = 0, red = positive")
                run_btn = gr.Button("Inspect", variant="primary", elem_id="inspect-run")
                status = gr.Markdown("", elem_id="inspect-status")
            with gr.Column(scale=2):
                gallery = gr.Image(label="Per timestep: x_t, then each guide's gradient and its prediction",
                                   format="png", interactive=False, elem_id="inspect-gallery")
                table = gr.Dataframe(label="Predictions", interactive=False, elem_id="inspect-table", wrap=True)
    wire_picker(state, picker, class_dd, "inspector")

    @user_errors
    def on_inspect(chosen, class_value, timesteps_text, guide_names, seed_value, signed_value):
        return inspect(state, chosen, class_value, timesteps_text, guide_names, seed_value, signed_value)

    inputs = [picker.chosen, class_dd, timesteps, guides, seed, signed]
    run_btn.click(on_inspect, inputs, [gallery, table, status], api_name="inspect", concurrency_id="light",
                  concurrency_limit=4)
    signed.input(on_inspect, inputs, [gallery, table, status], api_visibility="private", concurrency_id="light",
                 concurrency_limit=4)

    def refresh() -> list[Any]:
        b = state.bundle
        values = refresh_values(state)
        default = values[3]
        label = b.class_names[default["label"]] if default and default.get("label") is not None else b.class_names[0]
        return [*values, gr.update(choices=class_choices(b.class_names), value=label),
                default_timesteps(b.diffusion_config.steps), gr.update(choices=list(b.guides), value=list(b.guides))]

    return View([*refresh_outputs(picker), class_dd, timesteps, guides], refresh)
