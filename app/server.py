"""The HTTP server: FastAPI with the survey mounted at ``/survey`` and the lab's Gradio
Blocks at ``/``, served by uvicorn.

The survey (``survey.web.create_survey_app``) handles its own rater pages and its
password-protected results; the lab links to it only where an admin made a study from
a run (``app.views.study_from_run``, which writes into the same database). When the
survey package is missing or fails to start, ``/survey`` answers 503 with the reason and
the lab runs on.
"""

from __future__ import annotations

import html
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.exc import ArgumentError

from .state import LabState, SurveyTarget

log = logging.getLogger("app")


@dataclass(frozen=True)
class SurveyOptions:
    """Where the survey keeps its data; ``enabled=False`` leaves it off."""

    db_url: str = "survey.db"
    media_dir: str | None = None  # default: <db stem>_media next to a SQLite file
    admin_password: str | None = None
    enabled: bool = True


def unavailable_app(reason: str) -> FastAPI:
    """A stand-in for the survey: every path answers 503 with ``reason``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    page = ("<!doctype html><meta charset='utf-8'><title>Survey unavailable</title>"
            f"<h1>The survey is unavailable on this server</h1><p>{html.escape(reason)}</p>")

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    def unavailable(path: str) -> HTMLResponse:
        return HTMLResponse(page, status_code=503)

    return app


def default_media_dir(db_url: str) -> Path:
    """``<db stem>_media`` beside a SQLite file (the survey CLI's default)."""
    from sqlalchemy.engine import make_url

    text = db_url if "://" in db_url else f"sqlite:///{db_url}"
    url = make_url(text)
    if not url.drivername.startswith("sqlite") or not url.database:
        raise ValueError("give --survey-media FOLDER for a non-SQLite survey database")
    path = Path(url.database)
    return path.with_name(path.stem + "_media")


def shown_url(db_url: str) -> str:
    """A database URL safe to print or serve: the password masked (``***``)."""
    if "://" not in db_url:
        return db_url
    from sqlalchemy.engine import make_url

    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except (ValueError, TypeError, ArgumentError):  # not a URL SQLAlchemy can parse: show only its scheme
        return db_url.split("://", 1)[0] + "://…"


def scrub(text: str, db_url: str) -> str:
    """``text`` with the database URL and its password masked."""
    text = text.replace(db_url, shown_url(db_url))
    from sqlalchemy.engine import make_url

    try:
        password = make_url(db_url).password if "://" in db_url else None
    except (ValueError, TypeError, ArgumentError):
        password = None
    return text.replace(str(password), "***") if password else text


def survey_status(note: str) -> str:
    """``on``, ``off`` or ``unavailable`` from :func:`survey_app`'s note (for /healthz,
    which anyone can read: no database URL in it)."""
    return "on" if note.startswith("at ") else note.split(" ", 1)[0].rstrip(":")


def survey_app(options: SurveyOptions) -> tuple[Any, str]:
    """The survey ASGI app and a one-line note, or the 503 stand-in and the reason."""
    if not options.enabled:
        return unavailable_app("it was switched off (--no-survey)."), "off (--no-survey)"
    try:
        from survey.web import create_survey_app
    except Exception as exc:  # the package is missing or broken: the lab still runs
        reason = f"the survey package cannot be imported ({exc.__class__.__name__}: {exc})"
        log.warning("survey unavailable: %s", reason)
        return unavailable_app(reason + "."), f"unavailable: {reason}"
    try:
        media = Path(options.media_dir) if options.media_dir else default_media_dir(options.db_url)
        app = create_survey_app(options.db_url, media, admin_password=options.admin_password)
    except Exception as exc:
        reason = (f"it could not open its database {shown_url(options.db_url)!r} "
                  f"({exc.__class__.__name__}: {scrub(str(exc), options.db_url)})")
        log.warning("survey unavailable: %s", reason)
        # raters see no database details; the operator has them in the log and the start line
        return unavailable_app("its database could not be opened (the server log says why)."), \
            f"unavailable: {reason}"
    results = "results need the admin password" if options.admin_password else \
        "results disabled (RCG_ADMIN_PASSWORD not set)"
    return app, f"at /survey ({shown_url(options.db_url)}; {results})"


def create_server(state: LabState, *, concurrency: int = 2, queue_size: int | None = 32,
                  survey: SurveyOptions | None = None, lab_password: str | None = None,
                  max_upload: str = "10mb") -> FastAPI:
    """The whole site: ``/survey`` (raters and results), ``/healthz``, and the lab at ``/``.

    ``lab_password`` (any user name) guards the lab only, so raters who have the
    survey link cannot open the lab."""
    import gradio as gr

    from .ui import build_blocks

    app = FastAPI(title="Robust classifier guidance lab", docs_url=None, redoc_url=None, openapi_url=None)
    survey_asgi, survey_note = survey_app(survey or SurveyOptions())
    app.state.survey_note = survey_note
    survey_db = getattr(survey_asgi.state, "db", None)  # None: the survey is off or unavailable
    if survey_db is not None:  # the lab's "study from this run" writes into the same database
        state.survey = SurveyTarget(survey_db, Path(survey_asgi.state.media_dir),
                                    (survey or SurveyOptions()).admin_password)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "models": state.bundle.name, "survey": survey_status(survey_note)}

    @app.get("/survey", include_in_schema=False)
    def survey_root() -> RedirectResponse:
        return RedirectResponse("/survey/", status_code=308)

    app.mount("/survey", survey_asgi)
    def password_matches(username: str, password: str) -> bool:
        return secrets.compare_digest(password.encode(), (lab_password or "").encode())

    auth = password_matches if lab_password else None
    demo = build_blocks(state, concurrency=concurrency, queue_size=queue_size)
    gr.mount_gradio_app(app, demo, path="/", run_history=False, footer_links=["api", "settings"], auth=auth,
                        auth_message="The lab needs its password." if auth else None, show_error=True,
                        allowed_paths=[str(state.run_dir)], max_file_size=max_upload, ssr_mode=False,
                        mcp_server=False)
    return app


def serve(app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3)
