"""Lab run -> survey study over real HTTP: `python -m app` on the tiny bundle in a
subprocess, a side-by-side run and the study made from it through the lab's API
(gradio_client), the study read back from the real SQLite file with SQLAlchemy, one pair
regenerated from its stored config alone, and the survey's results page of the study."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from survey import links
from survey.create import regenerate
from survey.db import open_db
from survey.media import read_png
from survey.models import Image, Pair, Study
from test_app_server import error_of, sample_args, serve_lab

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def lab_and_work(tiny_bundle_dir, tmp_path_factory):
    yield from serve_lab(tiny_bundle_dir, tmp_path_factory.mktemp("lab-study"))


@pytest.fixture(scope="module")
def client(lab_and_work):
    from gradio_client import Client

    return Client(lab_and_work[0] + "/", verbose=False)


def wait_for(client, job: str, seconds: float = 300) -> dict:
    deadline = time.time() + seconds
    while True:
        status = client.predict(job, api_name="/study_status")
        if status["state"] != "running" or time.time() > deadline:
            return status
        assert 0 <= status["done"] <= status["total"]
        time.sleep(0.5)


def studies(db_path: Path) -> int:
    db = open_db(db_path)
    with db.session() as s:
        count = s.scalar(select(func.count()).select_from(Study))
    db.dispose()
    return count


def test_a_kept_run_becomes_a_study_that_regenerates_its_images(lab_and_work, client, tiny_bundle):
    url, work = lab_and_work
    db_path = work / "survey.db"
    out = client.predict(*sample_args(sampler="DDIM", eta=0.5), api_name="/sample")
    files, status = out[6], out[7]
    run_id = status.split("**")[1]
    run_config = json.loads(next(Path(f).read_text() for f in files if f.endswith("run_config.json")))
    methods = ["robust", "nonrobust x0+adam"]
    create = [run_id, methods, 3, "from the lab", 2]

    # refused: a wrong password, unknown columns, a bad pair count; nothing is written
    assert "wrong admin password" in error_of(client, *create, "not it", api_name="/study_from_run")
    assert "wrong admin password" in error_of(client, *create, "", api_name="/study_from_run")
    assert "has no column(s) ['nosuch']" in error_of(client, run_id, ["robust", "nosuch"], 3, "x", 2, "secret",
                                                     api_name="/study_from_run")
    assert "at least two different columns" in error_of(client, run_id, ["robust"], 3, "x", 2, "secret",
                                                        api_name="/study_from_run")
    assert "pairs must lie between 1 and 2000" in error_of(client, run_id, methods, 0, "x", 2, "secret",
                                                           api_name="/study_from_run")
    assert "no longer kept" in error_of(client, "run-999", methods, 3, "x", 2, "secret", api_name="/study_from_run")
    assert studies(db_path) == 0

    made = client.predict(*create, "secret", api_name="/study_from_run")
    job = next(value for value in made if isinstance(value, str) and value.startswith("study-"))
    status = wait_for(client, job)
    assert status["state"] == "done", status
    assert status["methods"] == methods and status["counts"]["main_pairs"] == 3 and status["counts"]["images"] == 6
    assert status["results_url"] == "/survey/results?study=from%20the%20lab"
    assert "Study **from the lab**" in status["text"] and "3 pairs of robust, nonrobust x0+adam" in status["text"]
    assert "[/survey/results?study=from%20the%20lab](/survey/results?study=from%20the%20lab)" in status["text"]
    assert "survey open-link --study 'from the lab' --base-url https://HOST/survey" in status["text"]
    # a second study with the same name is refused in the background, before anything is sampled
    again = client.predict(*create, "secret", api_name="/study_from_run")
    failed = wait_for(client, next(v for v in again if isinstance(v, str) and v.startswith("study-")))
    assert failed["state"] == "failed" and "already exists" in failed["message"]

    db = open_db(db_path)
    with db.session() as s:
        study = s.scalar(select(Study))
        images = s.scalars(select(Image).where(Image.study_id == study.id)).all()
        mains = s.scalars(select(Pair).where(Pair.kind == "main")).all()
        assert s.scalar(select(func.count()).select_from(Study)) == 1
    db.dispose()
    assert study.name == "from the lab" and study.methods == methods and study.settings["per_rater"] == 2
    source = study.settings["source"]
    assert (source["kind"], source["columns"], source["sampler"], source["eta"]) == ("run", methods, "ddim", 0.5)
    by_name = {c["name"]: c for c in run_config["configs"]}
    assert len(mains) == 3 and len(images) == 6
    for image in images:  # the run's own column configs, sampler, eta and steps; fresh seeds
        assert image.config["guidance"] == by_name[image.method]
        assert (image.config["run"]["sampler"], image.config["run"]["eta"], image.config["run"]["num_steps"]) == \
            ("ddim", 0.5, run_config["num_steps"]) == ("ddim", 0.5, 3)
    assert not {im.seed for im in images} & set(run_config["seeds"])
    # one pair, regenerated from its stored configs alone, gives the stored images (with one
    # thread, as the server ran: another thread count adds in another order)
    pair = mains[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for image in (im for im in images if im.id in (pair.image_a_id, pair.image_b_id)):
            stored = read_png(work / "survey_media" / image.file_name)
            assert np.array_equal(regenerate(tiny_bundle, image.config), stored), image.method
    finally:
        torch.set_num_threads(threads)

    # the survey's results page of the new study (admin only)
    assert httpx.get(url + status["results_url"], timeout=30).status_code == 401
    page = httpx.get(url + status["results_url"], auth=("admin", "secret"), timeout=30)
    assert page.status_code == 200 and "from the lab" in page.text and "main pairs: 3" in page.text
    assert "No public study link yet" in page.text
    db = open_db(db_path)
    link = links.open_link(db, study.id, quota=10)
    db.dispose()
    page = httpx.get(url + status["results_url"], auth=("admin", "secret"), timeout=30)
    assert f"<code>{url}/survey/s/{link.secret}</code>" in page.text  # the address raters reach through the lab


def test_no_study_without_an_admin_password_or_survey(tmp_path, tiny_bundle):
    """The panel's checks without a server: survey off, no admin password set."""
    from app.state import LabState, SurveyTarget
    from app.inputs import LabInputError
    from app.views.study_from_run import admitted

    state = LabState(tiny_bundle, run_dir=tmp_path / "runs")
    with pytest.raises(LabInputError, match="the survey is off"):
        admitted(state, "secret")
    state.survey = SurveyTarget(None, tmp_path, None)
    with pytest.raises(LabInputError, match="start the lab with RCG_ADMIN_PASSWORD"):
        admitted(state, "secret")
    state.survey = SurveyTarget(None, tmp_path, "secret")
    assert admitted(state, "secret") is state.survey
    with pytest.raises(LabInputError, match="wrong admin password"):
        admitted(state, "Secret")
    state.close()


@pytest.mark.browser
def test_browser_makes_a_study_from_the_run_it_just_sampled(lab_and_work):
    from test_app_server import ARTIFACTS, CHROMIUM, chromium_or_skip, open_lab_page, sample_in_page

    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    from app.screenshots import CHROMIUM_ARGS

    url, work = lab_and_work
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, errors = open_lab_page(browser, url)
            sample_in_page(page, steps=2)
            run_id = page.inner_text("#sample-status").split(":")[0].strip()
            page.get_by_text("Survey study from a run (admin)").click()
            # the run just made is chosen, with its columns as the methods
            inputs = "() => [...document.querySelectorAll('input')].map(i => i.value)"
            try:
                page.wait_for_function(f"() => ({inputs})().some(v => v.startsWith('{run_id} · side-by-side'))",
                                       timeout=120000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "lab-study-from-run-failed.png"), full_page=True)
                raise AssertionError(page.evaluate(inputs)) from None
            page.locator("#study-password input").fill("secret")
            page.click("#study-create")
            page.wait_for_function("() => (document.querySelector('#study-status')?.innerText ?? '').includes('made from')",
                                   timeout=300000)
            text = page.inner_text("#study-status")
            assert f"made from {run_id}" in text and "pairs of vanilla, robust, nonrobust" in text, text
            link = page.locator("#study-status a")
            assert link.get_attribute("href").startswith("/survey/results?study=")
            page.screenshot(path=str(ARTIFACTS / "lab-study-from-run.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
