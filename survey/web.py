"""The survey web app (FastAPI): rater pages and a password-protected results view.

    app = create_survey_app("sqlite:///survey.db", Path("survey_media"), admin_password="...")
    lab_app.mount("/survey", app)          # inside the lab, or
    python -m survey serve --db survey.db  # alone

Routes (relative to the mount point; every link in the pages is relative too):

    GET  /                      a neutral landing page (no lab, no results)
    GET  /s/{secret}?PROLIFIC_PID=..   a study's public link (crowdsourcing): join or resume,
                                then 303 to /r/{invite}; 404 unknown link, 400 missing or
                                malformed id, 409 study full, 410 closed
    GET  /r/{invite}            consent, the current pair, or the finish page (with the
                                completion code and redirect for study-link participants)
    POST /r/{invite}/consent    agree and start
    POST /r/{invite}/vote       form fields impression=<token>, answer=L|R|S -> 303 back
                                (or JSON {"impression", "answer"} -> JSON reply)
    GET  /img/{impression}/left|right   the image of a showing (URL says nothing of the method)
    GET  /results, /results.json, /votes.csv, POST /invite    admin only (HTTP Basic,
                                password compared in constant time; any user name)
    GET  /healthz               liveness probe

Refusals are explicit: 400 malformed request (a repeated form field or JSON key
included), 401 admin password needed, 403 not your pair, 404 unknown token, 409 already
answered, 413 request too large, 422 bad answer, and 503 with ``Retry-After`` when the
database stayed locked past its busy timeout (nothing was written; JSON for JSON clients,
for a browser a page that tries again by itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from . import flow, pages
from .db import SurveyDB, database_busy, open_db
from .media import MediaError, media_path
from .models import Study

MAX_BODY_BYTES = 8 * 1024
RETRY_AFTER_SECONDS = 2
BUSY_MESSAGE = "the survey database is busy; nothing was saved; send the same request again in a moment"
# The pages load nothing from elsewhere (inline style and script, images from this app) and
# may not be framed by another site (clickjacking a rater's answer buttons).
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                    "Cache-Control": "no-store", "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                    "X-Frame-Options": "DENY"}
IMAGE_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                 "Cache-Control": "private, max-age=3600"}


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413, whether the
    size is declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _refuse(send, 413, "request too large")
                    return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _refuse(send, 413, "request too large")


class _TooLarge(Exception):
    pass


async def _refuse(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("content-type", "") or \
        "application/json" in request.headers.get("accept", "")


class MalformedRequest(flow.FlowError):
    status = 400


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise MalformedRequest(f"each JSON key must be sent once (repeated: {', '.join(repeated)})")
    return dict(pairs)


def _busy_response(request: Request, action: str | None = None, fields: dict[str, str] | None = None) -> Response:
    """503 + Retry-After: the write lock was held past the busy timeout; nothing was written."""
    headers = {**SECURITY_HEADERS, "Retry-After": str(RETRY_AFTER_SECONDS)}
    if _wants_json(request):
        return JSONResponse({"ok": False, "error": BUSY_MESSAGE, "retry_after": RETRY_AFTER_SECONDS}, 503,
                            headers=headers)
    return HTMLResponse(pages.busy_page(RETRY_AFTER_SECONDS, action, fields), 503, headers=headers)


async def _vote_fields(request: Request) -> dict[str, str]:
    """impression and answer from a urlencoded form or a JSON object; anything else,
    repeated or extra fields included, is malformed."""
    body = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the request is not UTF-8 text") from None
    if kind == "application/json":
        try:
            data = json.loads(text, object_pairs_hook=_object_without_repeated_keys)
        except json.JSONDecodeError:
            raise MalformedRequest("the request body is not valid JSON") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise MalformedRequest("send a JSON object with string fields impression and answer")
        fields = data
    elif kind == "application/x-www-form-urlencoded":
        try:
            parsed = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=10)
        except ValueError:
            raise MalformedRequest("the form data is malformed") from None
        if any(len(v) != 1 for v in parsed.values()):
            raise MalformedRequest("each form field must be sent once")
        fields = {k: v[0] for k, v in parsed.items()}
    else:
        raise MalformedRequest("send the vote as a form (application/x-www-form-urlencoded) or as JSON")
    if set(fields) != {"impression", "answer"}:
        raise MalformedRequest("a vote has exactly the fields impression and answer")
    return fields


def create_survey_app(db_url: str | Path, media_dir: str | Path, admin_password: str | None = None, *,
                      db: SurveyDB | None = None) -> FastAPI:
    """The survey as a FastAPI app, to run alone or mount (``parent.mount("/survey", app)``).

    ``db_url``: SQLAlchemy URL or SQLite path (migrated on start); ``media_dir``: the
    study images; ``admin_password``: enables the results view (None = disabled)."""
    db = db or open_db(db_url)
    media_dir = Path(media_dir)
    app = FastAPI(title="Survey", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db
    app.state.media_dir = media_dir
    app.add_middleware(BodyLimit)

    @app.exception_handler(OperationalError)
    async def database_error(request: Request, exc: OperationalError) -> Response:
        if not database_busy(exc):
            raise exc
        # a page view reloads itself; a form post (consent) posts again to the same address
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1] if request.method == "POST" else None
        return _busy_response(request, action)

    # ------------------------------------------------------------------ rater pages
    @app.get("/", response_class=HTMLResponse)
    def landing() -> HTMLResponse:
        return _html(pages.landing_page())

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/r/{token}/")
    def trailing_slash(token: str) -> Response:
        return RedirectResponse(f"../{token}", status_code=308)

    @app.get("/r/{token}", response_class=HTMLResponse)
    def rater_page(token: str) -> HTMLResponse:
        try:
            current = flow.state(db, token)
        except flow.FlowError as exc:
            return _html(pages.error_page(exc.message), exc.status)
        if current.status == "consent":
            return _html(pages.consent_page(token, current.total, _question(db, token)))
        if current.status == "finished":
            from .links import completion

            done = completion(db, token)  # a crowdsourcing participant: completion or screen-out code
            if done is not None:
                return _html(pages.completion_page(current.answered, done.code, done.url, done.screened_out))
            return _html(pages.finish_page(current.answered))
        s = current.showing
        return _html(pages.pair_page(token, s.token, s.class_name, s.question, s.position, s.total))

    @app.get("/s/{secret}")
    def study_link(secret: str, request: Request) -> Response:
        """The public link of a study on a crowdsourcing platform: the participant id comes
        from the URL; a known id resumes, a new one joins (within the quota)."""
        from . import links

        try:
            try:
                params = parse_qs(request.url.query, keep_blank_values=True, max_num_fields=50)
            except ValueError:
                raise links.LinkError("this link has too many parameters; open the study from the platform's "
                                      "page again") from None
            rater = links.join(db, secret, params)
        except links.StudyFull as exc:
            return _html(pages.study_full_page(exc.message), exc.status)
        except flow.FlowError as exc:
            return _html(pages.error_page(exc.message), exc.status)
        return RedirectResponse(f"../r/{rater.invite_token}", status_code=303, headers=SECURITY_HEADERS)

    @app.post("/r/{token}/consent")
    def give_consent(token: str) -> Response:
        try:
            flow.consent(db, token)
        except flow.FlowError as exc:
            return _html(pages.error_page(exc.message), exc.status)
        return RedirectResponse(f"../{token}", status_code=303, headers=SECURITY_HEADERS)

    @app.post("/r/{token}/vote")
    async def vote(token: str, request: Request) -> Response:
        as_json = _wants_json(request)
        try:
            fields = await _vote_fields(request)
            recorded = await _run_sync(flow.record_vote, db, token, fields["impression"], fields["answer"])
        except OperationalError as exc:
            if not database_busy(exc):
                raise
            return _busy_response(request, "vote", fields)
        except flow.FlowError as exc:
            if as_json:
                return JSONResponse({"ok": False, "error": exc.message}, exc.status, headers=SECURITY_HEADERS)
            back = f"../{token}" if flow.valid_token(token) else None
            return _html(pages.error_page(exc.message, back), exc.status)
        if as_json:
            return JSONResponse({"ok": True, "vote_id": recorded.vote_id}, headers=SECURITY_HEADERS)
        return RedirectResponse(f"../{token}", status_code=303, headers=SECURITY_HEADERS)

    @app.get("/img/{impression}/{side}")
    def image(impression: str, side: str) -> Response:
        """The bytes of the image, and nothing that could tell the methods apart: no file
        name, no Last-Modified or ETag (file times follow the order the images were
        written in), the same headers for both sides. The file must still match the
        sha256 stored with it, so a rater sees exactly the stored image."""
        try:
            row = flow.image_for(db, impression, side)
            path = media_path(media_dir, row.file_name)
            data = path.read_bytes()
        except (flow.FlowError, MediaError):
            return PlainTextResponse("no such image", 404)
        except OSError:
            return PlainTextResponse("image file missing on the server", 500)
        if hashlib.sha256(data).hexdigest() != row.sha256:
            return PlainTextResponse("image file changed on the server (sha256 differs from the study's record)", 500)
        return Response(data, media_type="image/png", headers=IMAGE_HEADERS)

    # ------------------------------------------------------------------ results (admin)
    def authorised(request: Request) -> bool:
        if admin_password is None:
            return False
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _user, _, password = decoded.partition(":")
        return secrets.compare_digest(password.encode(), admin_password.encode())

    def denied() -> Response:
        if admin_password is None:
            return PlainTextResponse("the results view is disabled: start the server with the environment variable "
                                     "RCG_ADMIN_PASSWORD set", 403)
        return PlainTextResponse("admin password required", 401,
                                 headers={"WWW-Authenticate": 'Basic realm="survey results", charset="UTF-8"'})

    @app.get("/results", response_class=HTMLResponse)
    def results(request: Request, study: str | None = None) -> Response:
        if not authorised(request):
            return denied()
        try:
            current, text, counts = _report_html(db, study)
        except (ValueError, LookupError) as exc:
            return _html(pages.error_page(str(exc)), 400)
        return _html(pages.results_page(text, _study_names(db), current.name, counts, [],
                                        _study_link(db, current, _base_url(request))))

    @app.get("/results.json")
    def results_json(request: Request, study: str | None = None) -> Response:
        if not authorised(request):
            return denied()
        from .analysis import AnalysisError

        try:
            current = _find(db, study)
        except (ValueError, LookupError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        try:
            _current, report, counts = _report(db, current.name)
        except AnalysisError as exc:  # progress stays readable when the figures cannot be computed
            from .create import study_counts

            return JSONResponse({"counts": study_counts(db, current.id), "report": None, "error": str(exc)},
                                headers=SECURITY_HEADERS)
        return JSONResponse({"counts": counts, "report": report}, headers=SECURITY_HEADERS)

    @app.get("/votes.csv")
    def votes_csv(request: Request, study: str | None = None) -> Response:
        if not authorised(request):
            return denied()
        from .create import find_study
        from .votes import votes_from_db, write_votes_csv

        try:
            current = find_study(db, study)
            with db.session() as session:
                table = votes_from_db(session, current.id)
        except (ValueError, LookupError) as exc:
            return PlainTextResponse(str(exc), 400)
        buffer = io.StringIO()
        write_votes_csv(table, buffer)
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={**SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="votes.csv"'})

    @app.post("/invite", response_class=HTMLResponse)
    async def make_invites(request: Request) -> Response:
        if not authorised(request):
            return denied()
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            # a cross-site form post riding on the browser's cached Basic credentials
            return PlainTextResponse("cross-site request refused", 403)
        from .create import find_study

        body = (await request.body()).decode("utf-8", "replace")
        fields = {k: v[-1] for k, v in parse_qs(body).items()}
        try:
            count = int(fields.get("count", "1"))
            if not 1 <= count <= 500:
                raise ValueError("create between 1 and 500 links at a time")
            current = find_study(db, fields.get("study") or None)
            raters = flow.invite(db, current.id, count)
        except (ValueError, flow.FlowError) as exc:
            return _html(pages.error_page(str(exc)), 400)
        base = _base_url(request)
        links = flow.invite_links(raters, base)
        _c, text, counts = _report_html(db, current.name)
        return _html(pages.results_page(text, _study_names(db), current.name, counts, links,
                                        _study_link(db, current, base)))

    return app


async def _run_sync(fn, *args):  # noqa: ANN001, ANN202 - thin wrapper
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _base_url(request: Request) -> str:
    """The survey's own address as the browser reached it (behind the lab: .../survey)."""
    return str(request.base_url).rstrip("/") + request.scope.get("root_path", "")


def _study_link(db: SurveyDB, study: Study, base: str) -> str:
    from .links import link_info

    info = link_info(db, study.id)
    if info is None:
        return pages.study_link_html(study.name, None)
    return pages.study_link_html(study.name, {
        "url": info.url(base), "prolific_url": info.prolific_url(base), "is_open": info.is_open,
        "participants": info.participants, "quota": info.quota, "completion_code": info.completion_code,
        "completion_url": info.completion_url, "screenout_code": info.screenout_code})


def _question(db: SurveyDB, token: str) -> str:
    from .models import Rater

    with db.session() as session:
        study = session.scalar(select(Study).join(Rater, Rater.study_id == Study.id).where(Rater.invite_token == token))
        return study.settings.get("question", "") if study else ""


def _study_names(db: SurveyDB) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(Study.name).order_by(Study.id)))


def _report(db: SurveyDB, study: str | None) -> tuple[Study, dict | None, dict]:
    """The report of a study with the rules declared at its creation, plus its counts."""
    from .create import find_study, study_counts
    from .report import study_report

    current = find_study(db, study)
    return current, study_report(db, current.name, bootstrap=1000), study_counts(db, current.id)


def _find(db: SurveyDB, study: str | None) -> Study:
    from .create import find_study

    return find_study(db, study)


def _report_html(db: SurveyDB, study: str | None) -> tuple[Study, str, dict]:
    """The study, its report as HTML and its counts. A report that cannot be computed
    (e.g. no main-pair answers yet) becomes a note in the page: progress, the invite
    form and the links stay usable."""
    from .analysis import AnalysisError
    from .create import study_counts
    from .report import report_markdown

    current = _find(db, study)
    try:
        _c, report, counts = _report(db, current.name)
    except AnalysisError as exc:
        note = f'<p class="error" id="report-error">The report cannot be computed yet: {pages.esc(exc)}</p>'
        return current, note, study_counts(db, current.id)
    text = pages.markdown_to_html(report_markdown(report)) if report else "<p>No votes yet.</p>"
    return current, text, counts


def serve(db_url: str | Path, media_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          admin_password: str | None = None, log_level: str = "warning") -> None:
    """Run the survey alone with uvicorn (one process; SQLite handles the concurrency)."""
    import uvicorn

    app = create_survey_app(db_url, media_dir, admin_password)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["BodyLimit", "MAX_BODY_BYTES", "create_survey_app", "serve"]
