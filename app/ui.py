"""The lab's Gradio Blocks: the five tabs, their refresh on page load and after new
models are loaded, and the queue."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .state import LabState
from .views import attack, inspector, models, sampling, stability

INTRO = ("# Robust classifier guidance lab\n"
         "Compare how a vanilla (noise-trained), a robust (adversarially trained) and a non-robust (clean-trained) "
         "classifier steer a diffusion model (Kawar, Ganz & Elad, TMLR 2023; GradCheck, Vaeth et al. 2024). "
         "Help text sits beside each control; long runs show progress and can be stopped.")


def build_blocks(state: LabState, concurrency: int = 2, queue_size: int | None = 32) -> gr.Blocks:
    """All tabs over ``state``; ``concurrency`` heavy jobs (sampling, attacks) run at once,
    ``queue_size`` jobs may wait."""
    with gr.Blocks(title="Robust classifier guidance lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            views = [sampling.build(state, concurrency), inspector.build(state), attack.build(state, concurrency),
                     stability.build(state, concurrency), models.build(state)]
        outputs = [c for v in views for c in v.refresh_outputs]

        def describe_models() -> str:
            """What is loaded (Bundle.describe()) as JSON."""
            return models.describe_json(state)

        gr.api(describe_models, api_name="describe_models", concurrency_limit=None)

        def refresh_all() -> list[Any]:
            return [value for v in views for value in v.refresh()]

        demo.load(refresh_all, None, outputs, api_visibility="private", concurrency_limit=None)
        for view in views:
            for event in view.model_events:
                event.then(refresh_all, None, outputs, api_visibility="private", concurrency_limit=None)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo
