"""Turning exceptions into messages a user can act on, never a stack trace.

:func:`user_errors` wraps an event handler: known input and model errors become a
``gr.Error`` with their message; anything unexpected is logged with its traceback on
the server and shown as one line.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

import gradio as gr

from engine.checkpoints import BundleError
from engine.guidance import GuidanceError
from engine.sampler import SamplingCancelled

from .inputs import LabInputError

log = logging.getLogger("app")
F = TypeVar("F", bound=Callable[..., Any])
EXPECTED = (LabInputError, BundleError, GuidanceError, ValueError, KeyError, FileNotFoundError)


def message_of(exc: BaseException) -> str:
    """The exception's text without KeyError's quotes."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.strip() or exc.__class__.__name__


def user_errors(fn: F) -> F:
    """Decorator: expected errors -> gr.Error(message); others -> logged + one-line gr.Error."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except SamplingCancelled as exc:
            raise gr.Error(f"Stopped: {exc}.", title="Stopped", print_exception=False) from None
        except EXPECTED as exc:
            if not isinstance(exc, LabInputError):  # from the engine: keep a note for whoever runs the server
                log.warning("%s refused: %s: %s", getattr(fn, "__name__", "handler"), exc.__class__.__name__,
                            message_of(exc))
            raise gr.Error(message_of(exc), title="Cannot do that", print_exception=False) from None
        except MemoryError:
            raise gr.Error("Out of memory: use fewer images, steps or columns.", print_exception=False) from None
        except Exception as exc:  # a bug or a broken model: log it, tell the user briefly
            log.exception("unexpected error in %s", getattr(fn, "__name__", "handler"))
            raise gr.Error(f"Unexpected error ({exc.__class__.__name__}: {message_of(exc)[:300]}). "
                           "The server log has the details.", print_exception=False) from None
    return wrapper  # type: ignore[return-value]
