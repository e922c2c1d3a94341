"""An image chooser shared by the inspector and attack tabs: a gallery of held-out
images with a class filter, or an upload (checked, and converted to the models' size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from .. import render
from ..errors import user_errors
from ..inputs import LabInputError, load_upload, parse_class, parse_int
from ..state import LabState

MAX_THUMBNAILS = 60
ALL = "all classes"


@dataclass
class Picker:
    """The picker's components; ``chosen`` holds {"image": (1,C,H,W) tensor, "label", "source"}."""

    chosen: gr.State
    class_filter: gr.Dropdown
    gallery: gr.Gallery
    index: gr.Number
    upload: gr.File
    preview: gr.Image
    note: gr.Markdown


def filtered_indices(state: LabState, class_filter: Any) -> list[int]:
    """Positions in the held-out gallery of the images of the filtered class."""
    gallery = state.gallery()
    if gallery is None:
        return []
    if class_filter in (None, "", ALL):
        return list(range(len(gallery.labels)))[:MAX_THUMBNAILS]
    label = parse_class(state.bundle, class_filter)
    return [i for i, y in enumerate(gallery.labels) if y == label][:MAX_THUMBNAILS]


def thumbnails(state: LabState, class_filter: Any) -> list[render.Caption]:
    gallery = state.gallery()
    if gallery is None:
        return []
    idx = filtered_indices(state, class_filter)
    return render.thumbnails(gallery.images[idx], [gallery.labels[i] for i in idx], state.bundle.class_names)


def pick(state: LabState, class_filter: Any, position: Any) -> dict[str, Any]:
    """The held-out image at ``position`` of the filtered gallery."""
    from engine.data import to_model_range

    gallery = state.gallery()
    if gallery is None:
        raise LabInputError("these models have no held-out gallery (images of another size); upload an image")
    idx = filtered_indices(state, class_filter)
    if not idx:
        raise LabInputError("no gallery image of that class")
    i = idx[parse_int(position, "gallery image number", 0, len(idx) - 1)]
    return {"image": to_model_range(gallery.images[i:i + 1]), "label": gallery.labels[i],
            "source": f"{gallery.source}, image {i}"}


def chosen_or_default(state: LabState, chosen: Any) -> dict[str, Any]:
    """The chosen image, or the first gallery image when nothing was chosen yet; after a
    refused upload, a refusal (never a silent fall back to another image)."""
    if isinstance(chosen, dict) and chosen.get("refused"):
        raise LabInputError(f"your upload was refused ({chosen['refused']}), so there is no image to use; upload a "
                            "PNG or JPEG image, or pick a held-out image from the gallery")
    if isinstance(chosen, dict) and isinstance(chosen.get("image"), torch.Tensor):
        if tuple(chosen["image"].shape[1:]) == state.bundle.image_shape:
            return chosen
        raise LabInputError("the chosen image does not fit the loaded models (they changed); pick or upload again")
    if state.gallery() is None:
        raise LabInputError("pick an image: upload one (these models have no held-out gallery)")
    return pick(state, ALL, 0)


def preview_of(chosen: dict[str, Any]) -> Any:
    return render.show(chosen["image"])[0]


def build_picker(state: LabState, prefix: str) -> Picker:
    """Lay out the picker in the current column; wire gallery, filter and upload."""
    names = state.bundle.class_names
    with gr.Group():
        class_filter = gr.Dropdown([ALL, *names], value=ALL, label="Held-out images of class",
                                   allow_custom_value=True, info="pick a held-out image (never seen in training)")
        gallery = gr.Gallery(thumbnails(state, ALL), columns=3, height=240, allow_preview=False, format="png",
                             object_fit="contain", label="Held-out gallery", elem_id=f"{prefix}-gallery")
        index = gr.Number(0, precision=0, label="Gallery image #", info="position in the gallery above")
        upload = gr.File(label="…or upload an image (PNG / JPEG; resized to the models' size)",
                         file_types=["image"], type="filepath", height=130, elem_id=f"{prefix}-upload")
    with gr.Row():
        preview = gr.Image(label="Chosen image", format="png", interactive=False, height=140,
                           elem_id=f"{prefix}-preview")
        note = gr.Markdown("")
    chosen = gr.State(None)
    return Picker(chosen, class_filter, gallery, index, upload, preview, note)


def wire_picker(state: LabState, picker: Picker, class_dropdown: gr.Dropdown | None, prefix: str) -> None:
    """Events: filter -> thumbnails; click -> index -> chosen image (and its class into
    ``class_dropdown`` when given); upload -> chosen image (with a note of any conversion)."""
    keep = 4 if class_dropdown is not None else 3

    @user_errors
    def on_filter(class_filter_value):
        return thumbnails(state, class_filter_value), 0

    def on_select(evt: gr.SelectData):
        return evt.index if isinstance(evt.index, int) else evt.index[0]

    @user_errors
    def on_pick(class_filter_value, position):
        picked = pick(state, class_filter_value, position)
        label = state.bundle.class_names[picked["label"]]
        return (picked, preview_of(picked), f"{picked['source']} (class {label})", label)[:keep]

    @user_errors
    def on_upload(path):
        if path is None:
            return (gr.skip(), gr.skip(), "", gr.skip())[:keep]
        try:
            image, note_text = load_upload(path, state.bundle)
        except LabInputError as exc:
            # forget the previous image too: the next run must not use it (or gallery image 0) silently
            gr.Warning(f"Upload refused: {exc}")
            refused = {"refused": str(exc)}
            note_text = (f"⚠️ **Upload refused:** {exc}. No image is chosen: upload a PNG or JPEG image, or pick one "
                         "from the gallery.")
            return (refused, None, note_text, gr.skip())[:keep]
        picked = {"image": image, "label": None, "source": note_text}
        return (picked, preview_of(picked), note_text, gr.skip())[:keep]

    picker.class_filter.input(on_filter, picker.class_filter, [picker.gallery, picker.index],
                              api_name=f"{prefix}_gallery", concurrency_limit=None)
    picker.gallery.select(on_select, None, picker.index, api_visibility="private", queue=False)
    outputs = [picker.chosen, picker.preview, picker.note, class_dropdown][:keep]
    picker.index.change(on_pick, [picker.class_filter, picker.index], outputs, api_name=f"{prefix}_pick",
                        concurrency_limit=None)
    picker.upload.upload(on_upload, picker.upload, outputs, api_name=f"{prefix}_upload", concurrency_limit=None)


def refresh_values(state: LabState) -> list[Any]:
    """Fresh filter choices, thumbnails, index and default image for the loaded models."""
    names = state.bundle.class_names
    try:
        default = chosen_or_default(state, None)
        preview = preview_of(default)
        note = default["source"]
    except LabInputError as exc:
        default, preview, note = None, None, str(exc)
    return [gr.update(choices=[ALL, *names], value=ALL), thumbnails(state, ALL), 0, default, preview, note]


def refresh_outputs(picker: Picker) -> list[Any]:
    return [picker.class_filter, picker.gallery, picker.index, picker.chosen, picker.preview, picker.note]
