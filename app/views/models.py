"""Models: what is loaded, and loading other models (a bundle folder, published
guided-diffusion checkpoints by preset name and file path, or a local diffusers pipeline
folder) with the engine's errors."""

from __future__ import annotations

import json
import time
from typing import Any

import gradio as gr
import pandas as pd

from engine.bundle_index import UnknownBundle, choices_text, default_bundle_name, read_index, shipped_bundles
from engine.bundles import Bundle
from engine.checkpoints import BundleError
from engine.model_specs import open_models
from engine.presets import PRESET_SETS, PRESETS

from .. import render
from ..errors import message_of
from ..state import LabState
from . import View

HELP = """Load models in one of four ways (the same as the command line):

1. **Bundle folder**: a folder with `bundle.json` (e.g. `models/mnist`), or a shipped bundle's name (`mnist`).
2. **Preset set** + files: e.g. set `imagenet128`, denoiser `/ckpt/128x128_diffusion.pt`, guides
   `vanilla=/ckpt/128x128_classifier.pt` and `robust=/ckpt/robust_classifier_128.pt` (one per line).
3. **Presets** + files: denoiser `gd-128-denoiser:/ckpt/128x128_diffusion.pt`, guides
   `NAME=PRESET:PATH`, one per line.
4. **Diffusers pipeline folder**: a local pixel-space pipeline (`model_index.json`, `unet/`, `scheduler/`, e.g. a saved
   `google/ddpm-cifar10-32`), guides `NAME=PATH` (a `train.classifier` model file of the same image size) or
   `NAME=PRESET:PATH`, one per line. Latent pipelines are not supported.

Nothing is downloaded: the files must be on the server. Checkpoints load with `weights_only=True`; a file that
does not fit its preset is refused with the missing, unexpected and mis-shaped keys. Loading replaces the models
for everyone using this server."""


def preset_table() -> pd.DataFrame:
    return pd.DataFrame([{"preset": p.name, "kind": p.kind, "file": p.file, "default scale": p.default_scale,
                          "description": p.description} for p in PRESETS.values()])


def preset_set_text() -> str:
    return "\n".join(f"- `{name}`: {spec['description']} (guides: {', '.join(spec['guides'])})"
                     for name, spec in PRESET_SETS.items())


SHIPPED_HELP = ("The bundles that come with the lab (`models/NAME/`). **Switch** loads one for the whole lab: every "
                "tab's classes, guides, columns and defaults follow it. `python -m app --bundle NAME` starts with it.")


def current_name(state: LabState) -> str | None:
    """The shipped bundle that is loaded, by folder; None for other models."""
    source = str(state.bundle.source)
    for b in shipped_bundles():
        if str(b.folder) == source:
            return b.name
    return None


def shipped_table(state: LabState) -> pd.DataFrame:
    """One row per shipped bundle: name, its own title, classes, guides, default and loaded marks."""
    default, loaded = default_bundle_name(), current_name(state)
    out = []
    for b in shipped_bundles():
        try:
            manifest = json.loads((b.folder / "bundle.json").read_text())
        except (OSError, json.JSONDecodeError):
            manifest = {}
        classes = manifest.get("class_names") or []
        out.append({"bundle": b.name, "title": b.title, "classes": ", ".join(map(str, classes[:10]))
                    + (" …" if len(classes) > 10 else ""), "guides": ", ".join(manifest.get("guides", {})),
                    "default": "yes" if b.name == default else "", "loaded": "yes" if b.name == loaded else ""})
    return pd.DataFrame(out, columns=["bundle", "title", "classes", "guides", "default", "loaded"])


def shipped_note() -> str:
    why = read_index().get("why") if shipped_bundles() else None
    return f"Default: **{default_bundle_name()}**" + (f" ({why})" if why else "") if shipped_bundles() else \
        "No bundles are shipped in `models/`."


def switch(state: LabState, name: str, device: str = "") -> tuple[bool, str]:
    """Load the shipped bundle ``name`` for everyone; (ok, message)."""
    if not state.allow_model_loading:
        return False, "Switching models is disabled on this server (started with --lock-models)."
    name = (name or "").strip()
    if not name:
        return False, f"Pick a bundle: {choices_text()}."
    if name not in [b.name for b in shipped_bundles()]:
        return False, f"No shipped bundle named {name!r}; the shipped bundles are {choices_text()}."
    started = time.perf_counter()
    try:
        bundle = open_models(name, device=device or state.device or "auto")
    except (BundleError, UnknownBundle, KeyError, ValueError, OSError, RuntimeError) as exc:
        return False, f"**Could not load {name}:**\n\n```\n{message_of(exc)}\n```"
    state.swap(bundle)
    return True, (f"Switched to **{name}** ({bundle.name}, {len(bundle.class_names)} classes) in "
                  f"{time.perf_counter() - started:.1f} s. Every tab now uses it.")


def loaded_markdown(state: LabState) -> str:
    return render.describe_markdown(state.bundle.describe())


def manifest_json(bundle: Bundle) -> dict[str, Any]:
    """bundle.json as loaded (figures, training records), or a note for preset bundles."""
    return bundle.manifest if bundle.manifest else {"note": "published checkpoints: no bundle.json",
                                                    "source": bundle.source}


def load(state: LabState, folder: str, preset_set: str, denoiser: str, guides_text: str, device: str,
         precision: str, respacing: str, diffusers_dir: str = "") -> tuple[bool, str]:
    """Open the named models and make them current; (ok, message)."""
    if not state.allow_model_loading:
        return False, "Loading models is disabled on this server (started with --lock-models)."
    folder, denoiser = (folder or "").strip(), (denoiser or "").strip()
    preset_set, diffusers_dir = (preset_set or "").strip(), (diffusers_dir or "").strip()
    guides = [line.strip() for line in (guides_text or "").splitlines() if line.strip()]
    if diffusers_dir and (folder or denoiser or preset_set):
        return False, ("A diffusers pipeline folder is the denoiser: give it without a bundle folder, denoiser or "
                       "preset set.")
    if not folder and not denoiser and not diffusers_dir:
        return False, ("Give a bundle folder, a denoiser (PRESET:PATH, or PATH with a preset set) or a diffusers "
                       "pipeline folder.")
    if folder and (denoiser or guides or preset_set):
        return False, "Give either a bundle folder or checkpoints (denoiser / guides / preset set), not both."
    started = time.perf_counter()
    try:
        bundle = open_models(folder or None, denoiser=denoiser or None, guides=guides, preset_set=preset_set or None,
                             device=device or "auto", precision=precision or "fp32",
                             respacing=(respacing or "").strip() or None, diffusers_dir=diffusers_dir or None)
    except (BundleError, KeyError, ValueError, OSError, RuntimeError) as exc:
        return False, f"**Could not load the models:**\n\n```\n{message_of(exc)}\n```"
    state.swap(bundle)
    return True, f"Loaded **{bundle.name}** in {time.perf_counter() - started:.1f} s. The other tabs now use it."


def build(state: LabState) -> View:
    with gr.Tab("Models", id="models"):
        with gr.Group():
            gr.Markdown(SHIPPED_HELP)
            with gr.Row():
                shipped = gr.Dropdown([b.name for b in shipped_bundles()], value=current_name(state),
                                      label="Shipped bundle", elem_id="models-shipped", scale=2,
                                      allow_custom_value=True, info="a name from the list below")
                switch_btn = gr.Button("Switch", variant="primary", elem_id="models-switch", scale=1,
                                       interactive=state.allow_model_loading)
            shipped_list = gr.Dataframe(shipped_table(state), interactive=False, elem_id="models-shipped-table",
                                        wrap=True)
            shipped_help = gr.Markdown(shipped_note())
            switch_status = gr.Markdown("", elem_id="models-switch-status")
        loaded = gr.Markdown(loaded_markdown(state), elem_id="models-loaded")
        with gr.Accordion("bundle.json (figures and training records)", open=False):
            manifest = gr.JSON(manifest_json(state.bundle))
        with gr.Accordion("Load other models", open=not state.bundle.guides):
            gr.Markdown(HELP)
            folder = gr.Textbox("", label="Bundle folder", placeholder="mnist, models/mnist or /path/to/bundle")
            with gr.Row():
                preset_set = gr.Dropdown(["", *PRESET_SETS], value="", label="Preset set",
                                         info="optional: names the presets, so paths need no PRESET: prefix")
                device = gr.Dropdown(["auto", "cpu", "cuda"], value=state.device if state.device in
                                     ("auto", "cpu", "cuda") else "auto", label="Device", allow_custom_value=True)
                precision = gr.Dropdown(["fp32", "bf16", "fp16"], value="fp32", label="Precision",
                                        info="bf16: the CPU fast path (guides in bf16 too); fp16: GPU; the guidance gradient stays fp32")
            denoiser = gr.Textbox("", label="Denoiser", placeholder="gd-128-denoiser:/ckpt/128x128_diffusion.pt")
            guides = gr.Textbox("", lines=3, label="Guides (one per line)",
                                placeholder="vanilla=gd-128-classifier:/ckpt/128x128_classifier.pt")
            diffusers_dir = gr.Textbox("", label="Diffusers pipeline folder",
                                       placeholder="/models/ddpm-cifar10-32 (model_index.json, unet/, scheduler/)")
            respacing = gr.Textbox("", label="Default respacing", placeholder="e.g. 250 (optional)")
            load_btn = gr.Button("Load", variant="primary", interactive=state.allow_model_loading)
            status = gr.Markdown("" if state.allow_model_loading else
                                 "Loading models is disabled on this server (--lock-models).", elem_id="models-status")
            with gr.Accordion("Preset sets and presets", open=False):
                gr.Markdown(preset_set_text())
                gr.Dataframe(preset_table(), interactive=False)

    def on_load(folder_value, set_value, denoiser_value, guides_value, device_value, precision_value,
                respacing_value, diffusers_value):
        ok, message = load(state, folder_value, set_value, denoiser_value, guides_value, device_value,
                           precision_value, respacing_value, diffusers_value)
        if not ok:
            gr.Warning("Could not load the models; see the message below the Load button.")
        return message

    load_event = load_btn.click(on_load, [folder, preset_set, denoiser, guides, device, precision, respacing,
                                          diffusers_dir], status,
                                api_name="load_models", concurrency_id="models", concurrency_limit=1)

    def on_switch(name_value):
        ok, message = switch(state, name_value)
        if not ok:
            gr.Warning("Could not switch; see the message below the list.")
        return message

    switch_event = switch_btn.click(on_switch, [shipped], switch_status, api_name="switch_bundle",
                                    concurrency_id="models", concurrency_limit=1)

    def refresh() -> list[Any]:
        return [loaded_markdown(state), manifest_json(state.bundle),
                gr.update(choices=[b.name for b in shipped_bundles()], value=current_name(state)),
                shipped_table(state), shipped_note()]

    return View([loaded, manifest, shipped, shipped_list, shipped_help], refresh, [load_event, switch_event])


def describe_json(state: LabState) -> str:
    """What is loaded, as JSON (an API endpoint)."""
    return json.dumps(state.bundle.describe(), indent=1)
