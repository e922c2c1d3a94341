"""One module per tab of the lab (and ``compare``: the side-by-side tab's verdict and
difference panel, kept apart so the tab's module stays about sampling). Each
``build(state)`` lays out its tab inside the current ``gr.Blocks`` and returns a
:class:`View`: the components that depend on the loaded models and a function giving
their fresh values (called on page load and after the Models view loads or switches
models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr


@dataclass
class View:
    """What the lab needs to know of a built tab."""

    refresh_outputs: list[gr.components.Component] = field(default_factory=list)
    refresh: Callable[[], list[Any]] = lambda: []
    model_events: list[Any] = field(default_factory=list)  # events after which every view refreshes


def session_of(request: gr.Request | None) -> str:
    """The browser tab's (or API client's) session id."""
    return getattr(request, "session_hash", None) or "anonymous"


def class_choices(class_names: list[str]) -> list[str]:
    """Dropdown choices for the classes, by name."""
    return list(class_names)
