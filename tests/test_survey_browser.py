"""Real-browser test of the rater page: Chromium (Debian's /usr/bin/chromium) driven by
Playwright opens a rater link of the survey mounted at /survey inside a parent app (as
the lab mounts it), served by a real uvicorn in a thread, votes through every pair with
mouse and keyboard, and sees the finish page. Screenshots go to test-artifacts/.

Without /usr/bin/chromium the test skips with the reason; under CI=true it fails.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from survey import flow
from survey.create import SourceImage, StudyPlan, create_study
from survey.db import open_db
from survey.models import Vote

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update"]


def require_browser() -> None:
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright Python package is missing (pip install playwright)"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run under CI: {problem}")
        pytest.skip(problem)


@pytest.fixture()
def served(tmp_path):
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from survey.web import create_survey_app

    rng = np.random.default_rng(2)
    units = []
    for i in range(6):
        base = rng.integers(0, 255, (28, 28), dtype=np.uint8)
        units.append({m: SourceImage(base if m == "vanilla" else 255 - base, m, f"digit {i}", i, i)
                      for m in ("vanilla", "robust")})
    db = open_db(tmp_path / "s.db")
    study_id = create_study(db, tmp_path / "media", "browser", units,
                            plan=StudyPlan(per_rater=4, gold_rate=0.25, repeat_rate=0.25))
    token = flow.invite(db, study_id, names=["Browser O'Test"])[0].invite_token
    lab = FastAPI()

    @lab.get("/")
    def lab_home() -> PlainTextResponse:
        return PlainTextResponse("the lab")

    lab.mount("/survey", create_survey_app(tmp_path / "s.db", tmp_path / "media", "pw", db=db))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(lab, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", token, db
    server.should_exit = True
    thread.join(10)
    db.dispose()


@pytest.mark.browser
def test_rater_votes_through_the_survey_in_a_real_browser(served):
    require_browser()
    from playwright.sync_api import sync_playwright

    base, token, db = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            # console errors (e.g. an inline script blocked by the Content-Security-Policy), page errors, and
            # failed responses (the browser's own /favicon.ico probe at the site root aside)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" and
                    "Failed to load resource" not in m.text else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 and
                    not r.url.endswith("/favicon.ico") else None)
            page.goto(f"{base}/survey/r/{token}")
            assert "Which image is more realistic, and more aligned to the description?" in page.content()
            page.get_by_role("button", name="I agree, start").click()
            total = 6  # 4 main + 1 gold + 1 repeat
            for i in range(total):
                page.wait_for_selector("#progress")
                assert page.inner_text("#progress") == f"{i + 1} of {total}"
                assert re.fullmatch(r"digit \d", page.inner_text("#class-name"))
                for side in ("left", "right"):  # the images really loaded
                    assert page.eval_on_selector(f"#{side}-image", "img => img.complete && img.naturalWidth") == 28
                if i == 0:
                    page.screenshot(path=str(ARTIFACTS / "survey-pair.png"))
                with page.expect_navigation():  # POST, 303, the next page
                    if i % 3 == 2:
                        page.keyboard.press("ArrowRight")  # keyboard shortcut
                    else:
                        page.get_by_role("button", name=["Left", "Same", "Right"][i % 3]).click()
            page.wait_for_selector("#finished")
            assert "You answered 6 pairs" in page.inner_text("#finished")
            page.screenshot(path=str(ARTIFACTS / "survey-finished.png"))
            # resuming the link later shows the finish page again, nothing more to answer
            page.goto(f"{base}/survey/r/{token}")
            assert page.query_selector("#finished") is not None
            assert problems == []
        finally:
            browser.close()
    with db.session() as s:
        answers = sorted(s.scalars(select(Vote.answer)))
        assert s.scalar(select(func.count()).select_from(Vote)) == 6
    assert answers == sorted(["L", "S", "R", "L", "S", "R"])
    assert (ARTIFACTS / "survey-finished.png").stat().st_size > 1000


@pytest.fixture()
def short_busy_timeout(monkeypatch):
    """SQLite writers give up after 0.2 s instead of 10 s (set before the server's database opens)."""
    monkeypatch.setenv("RCG_SURVEY_BUSY_TIMEOUT_MS", "200")


@pytest.mark.browser
def test_the_rater_page_tries_again_by_itself_while_the_database_is_busy(short_busy_timeout, served, tmp_path):
    require_browser()
    import sqlite3

    from playwright.sync_api import sync_playwright

    base, token, db = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            problems: list[str] = []  # a script blocked by the Content-Security-Policy shows up here
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" and
                    "Failed to load resource" not in m.text else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{base}/survey/r/{token}")
            page.get_by_role("button", name="I agree, start").click()
            page.wait_for_selector("#progress")
            assert page.inner_text("#progress") == "1 of 6"
            lock = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=30)
            lock.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
            try:
                with page.expect_navigation():
                    page.get_by_role("button", name="Left").click()
                page.wait_for_selector("#busy")
                assert "Your answer (Left) was not saved yet" in page.inner_text("#busy")
                page.screenshot(path=str(ARTIFACTS / "survey-busy.png"))
                with db.session() as s:
                    assert s.scalar(select(func.count()).select_from(Vote)) == 0
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            # nobody clicks: the page posts the answer again by itself and moves on to the next pair
            page.wait_for_selector("#progress", timeout=60_000)
            assert page.inner_text("#progress") == "2 of 6"
            assert problems == []
        finally:
            browser.close()
    with db.session() as s:
        assert list(s.scalars(select(Vote.answer))) == ["L"]
