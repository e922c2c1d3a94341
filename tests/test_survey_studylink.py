"""Crowdsourcing study links (Prolific-style) over real HTTP against a real uvicorn server
on a real SQLite file: join and resume by participant id, the database's one
participation per id, quota, completion / screen-out codes, clear refusals that write
nothing, platform ids in the export; and the results page when the exclusion rules
remove every rater."""

from __future__ import annotations

import csv
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from survey import flow, links
from survey.cli import main
from survey.create import SourceImage, StudyPlan, create_study
from survey.db import open_db, utcnow
from survey.models import Impression, Pair, Rater
from survey.quality import ExclusionRules
from test_survey_server import IMPRESSION, Server

PASSWORD = "admin-" + "Zq9" * 8
TOKEN_IN_LOCATION = re.compile(r"^\.\./r/([A-Za-z0-9_-]{16,64})$")


def units(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [{m: SourceImage(rng.integers(0, 255, (8, 8), dtype=np.uint8), m, f"c{i % 3}", i % 3, i)
             for m in ("vanilla", "robust")} for i in range(n)]


def snapshot(db) -> dict[str, list]:
    """Every row of the tables a refused request must leave alone."""
    with db.engine.connect() as c:
        return {t: [tuple(r) for r in c.execute(text(f"SELECT * FROM {t} ORDER BY id"))]
                for t in ("study_links", "raters", "impressions", "votes")}


def answer_pair(client: httpx.Client, token: str, db, correct_gold: bool) -> bool:
    """Answer the pair on the rater's page (gold pairs right or wrong); False when done."""
    page = client.get(f"/r/{token}")
    match = IMPRESSION.search(page.text)
    if not match:
        return False
    with db.session() as s:
        impression, pair = s.execute(select(Impression, Pair).join(Pair, Pair.id == Impression.pair_id)
                                     .where(Impression.token == match.group(1))).one()
    if pair.kind == "gold" and correct_gold:
        answer = "L" if impression.left_image_id == pair.gold_image_id else "R"
    elif pair.kind == "gold":
        answer = "S"
    else:
        answer = "L"
    assert client.post(f"/r/{token}/vote", data={"impression": match.group(1), "answer": answer}).status_code == 303
    return True


def test_open_link_settings_are_checked_before_anything_is_written(tmp_path, capsys):
    db = open_db(tmp_path / "s.db")
    study = create_study(db, tmp_path / "media", "links", units(4), plan=StudyPlan(per_rater=2))
    before = snapshot(db)
    bad = [dict(completion_url="javascript:alert(1)"), dict(completion_url="ftp://x/y"), dict(completion_url="/done"),
           dict(screenout_url="https://ok.example/a b"), dict(completion_code="has space"),
           dict(id_param="PROLIFIC PID"), dict(keep_params=["A", "A"]), dict(quota=0),
           dict(keep_params=["PROLIFIC_PID"])]
    for settings in bad:
        with pytest.raises(links.LinkError):
            links.open_link(db, study, **settings)
        assert snapshot(db) == before, settings
    assert main(["open-link", "--db", str(tmp_path / "s.db"), "--completion-url", "javascript:alert(1)"]) == 2
    assert "must be an http:// or https:// address" in capsys.readouterr().err
    assert snapshot(db) == before
    # a good one; running again changes only what is given
    assert main(["open-link", "--db", str(tmp_path / "s.db"), "--base-url", "https://host/survey", "--quota", "5",
                 "--completion-code", "DONE1234"]) == 0
    out = capsys.readouterr().out
    info = links.link_info(db, study)
    assert f"https://host/survey/s/{info.secret}?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&STUDY_ID=" in out
    assert (info.quota, info.completion_code, info.id_param, info.keep_params) == \
        (5, "DONE1234", "PROLIFIC_PID", ("STUDY_ID", "SESSION_ID"))
    assert main(["open-link", "--db", str(tmp_path / "s.db"), "--id-param", "workerId", "--keep-params"]) == 0
    again = links.link_info(db, study)
    assert (again.secret, again.quota, again.completion_code, again.id_param, again.keep_params) == \
        (info.secret, 5, "DONE1234", "workerId", ())
    assert main(["open-link", "--db", str(tmp_path / "s.db"), "--new-secret", "--no-quota"]) == 0
    rotated = links.link_info(db, study)
    assert rotated.secret != info.secret and rotated.quota is None
    db.dispose()


def test_the_database_allows_one_participation_per_participant_id(tmp_path):
    db = open_db(tmp_path / "s.db")
    first = create_study(db, tmp_path / "media", "one", units(2), plan=StudyPlan(per_rater=1))
    second = create_study(db, tmp_path / "media", "two", units(2, seed=2), plan=StudyPlan(per_rater=1))
    link = links.open_link(db, first)
    with db.session() as s:
        link_id = s.scalar(text("SELECT id FROM study_links"))

    def add(**values) -> None:
        with db.session() as s:
            s.add(Rater(invite_token=flow.new_token(), planned_total=1, created_at=utcnow(), **values))

    add(study_id=first, link_id=link_id, participant_id="P1")
    with pytest.raises(IntegrityError, match="UNIQUE"):  # the same id in the same study, past the application
        add(study_id=first, link_id=link_id, participant_id="P1")
    with pytest.raises(IntegrityError, match="participant_via_link"):  # an id without the link
        add(study_id=first, participant_id="P2")
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):  # the link of another study
        add(study_id=second, link_id=link_id, participant_id="P3")
    add(study_id=first)  # personal invitations (no participant id) are not limited
    add(study_id=first)
    assert link.secret and len(link.secret) >= 32
    db.dispose()


def test_study_link_over_http(tmp_path):
    db = open_db(tmp_path / "s.db")
    rules = ExclusionRules(min_gold_accuracy=0.75)
    study = create_study(db, tmp_path / "media", "crowd", units(12),
                         plan=StudyPlan(per_rater=4, gold_rate=0.25, rules=rules))
    link = links.open_link(db, study, quota=3, completion_code="GOODC0DE",
                           completion_url="https://app.prolific.com/submissions/complete?cc=GOODC0DE",
                           screenout_code="SCREEN01")
    # a second study whose only rater the rules remove: the results page must still work
    lonely = create_study(db, tmp_path / "media", "lonely", units(4, seed=3),
                          plan=StudyPlan(per_rater=2, gold_rate=0.5, rules=rules))
    server = Server(tmp_path / "s.db", tmp_path / "media", env={"RCG_ADMIN_PASSWORD": PASSWORD})
    client = httpx.Client(base_url=server.url, timeout=30)
    base = f"/s/{link.secret}"

    def visit(query: str) -> httpx.Response:
        return client.get(f"{base}?{query}")

    def token_of(response: httpx.Response) -> str:
        assert response.status_code == 303, response.text
        match = TOKEN_IN_LOCATION.match(response.headers["location"])
        assert match, response.headers["location"]
        return match.group(1)

    try:
        # first visit: joins, the platform ids are stored with the rater
        a = token_of(visit("PROLIFIC_PID=5f1a2b3c4d5e6f7a8b9c0d1e&STUDY_ID=S1&SESSION_ID=X1"))
        page = client.get(f"/r/{a}")
        assert page.status_code == 200 and "I agree" in page.text
        assert client.post(f"/r/{a}/consent").status_code == 303
        assert answer_pair(client, a, db, correct_gold=True)
        # second visit with the same id (another session): the same rater, where they stopped
        assert token_of(visit("PROLIFIC_PID=5f1a2b3c4d5e6f7a8b9c0d1e&STUDY_ID=S1&SESSION_ID=X2")) == a
        assert 'id="progress">2 of 5' in client.get(f"/r/{a}").text
        # one new id sent four times at once: one rater
        with ThreadPoolExecutor(4) as pool:
            tokens = set(pool.map(lambda _: token_of(visit("PROLIFIC_PID=BBBBBB")), range(4)))
        assert len(tokens) == 1
        b = tokens.pop()
        c = token_of(visit("PROLIFIC_PID=CCCCCC"))
        with db.session() as s:
            stored = {r.participant_id: (r.invite_token, r.platform_ids) for r in s.scalars(select(Rater))}
        assert stored == {"5f1a2b3c4d5e6f7a8b9c0d1e": (a, {"STUDY_ID": "S1", "SESSION_ID": "X1"}),
                          "BBBBBB": (b, None), "CCCCCC": (c, None)}
        before = snapshot(db)
        # the quota (3) is reached: a fourth id gets a clear "study full" page; known ids still resume
        full = visit("PROLIFIC_PID=DDDDDD")
        assert full.status_code == 409 and "This study is full" in full.text and "all 3 places are taken" in full.text
        assert token_of(visit("PROLIFIC_PID=CCCCCC")) == c
        # refusals, each with a clear message, none writing anything
        refused = {
            "STUDY_ID=S1": (400, "lacks your participant id (the URL parameter PROLIFIC_PID)"),
            "PROLIFIC_PID=": (400, "lacks your participant id"),
            "PROLIFIC_PID=a%20b": (400, "is not a valid id"),
            "PROLIFIC_PID=%3Cscript%3E": (400, "is not a valid id"),
            "PROLIFIC_PID=%C3%BC": (400, "is not a valid id"),
            "PROLIFIC_PID=" + "x" * 65: (400, "is not a valid id (65 characters"),
            "PROLIFIC_PID=" + "y" * 5000: (400, "is not a valid id (5000 characters"),
            "PROLIFIC_PID=A1&PROLIFIC_PID=A2": (400, "names PROLIFIC_PID more than once"),
            "PROLIFIC_PID=EEEEEE&SESSION_ID=%27%3B--": (400, "the SESSION_ID in this link is not a valid id"),
        }
        for query, (status, message) in refused.items():
            r = visit(query)
            assert r.status_code == status and message in r.text, (query, r.status_code, r.text[-400:])
            assert "y" * 100 not in r.text  # a long value is not echoed back whole
        wrong = client.get(f"/s/{'Q' * 32}?PROLIFIC_PID=FFFFFF")
        assert wrong.status_code == 404 and "study link is not valid" in wrong.text
        assert client.get("/s/short?PROLIFIC_PID=FFFFFF").status_code == 404
        assert snapshot(db) == before
        # finishing: A answered the gold pair right -> completion code and redirect to the platform
        while answer_pair(client, a, db, correct_gold=True):
            pass
        done = client.get(f"/r/{a}")
        assert 'id="completion-code">GOODC0DE<' in done.text
        assert ('http-equiv="refresh" content="3;url=https://app.prolific.com/submissions/complete?cc=GOODC0DE"'
                in done.text)
        # B misses the gold pair: the study's gold rule screens them out, to the screen-out code
        assert client.post(f"/r/{b}/consent").status_code == 303
        while answer_pair(client, b, db, correct_gold=False):
            pass
        screened = client.get(f"/r/{b}")
        assert 'id="completion-code">SCREEN01<' in screened.text and "refresh" not in screened.text
        # a closed link takes no one new, but known participants still get in
        links.open_link(db, study, is_open=False)
        links.open_link(db, study, quota=None, is_open=False)
        closed = visit("PROLIFIC_PID=GGGGGG")
        assert closed.status_code == 410 and "closed" in closed.text
        assert token_of(visit("PROLIFIC_PID=BBBBBB")) == b
        # the export carries the platform ids
        exported = client.get("/votes.csv?study=crowd", auth=("admin", PASSWORD))
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        by_participant = {r["participant_id"]: r for r in rows}
        assert set(by_participant) == {"5f1a2b3c4d5e6f7a8b9c0d1e", "BBBBBB"}
        assert json.loads(by_participant["5f1a2b3c4d5e6f7a8b9c0d1e"]["platform_ids"]) == {"SESSION_ID": "X1",
                                                                                            "STUDY_ID": "S1"}
        # results: B is listed with the rule and the value that removed them
        results = client.get("/results?study=crowd", auth=("admin", PASSWORD))
        assert results.status_code == 200
        assert "gold accuracy 0 % (0 of 1 gold answers correct) is below 75 %" in results.text
        # every rater of "lonely" removed: unfiltered figures, marked; progress and the invite form stay
        lone = flow.invite(db, lonely)[0].invite_token
        assert client.post(f"/r/{lone}/consent").status_code == 303
        while answer_pair(client, lone, db, correct_gold=False):
            pass
        page = client.get("/results?study=lonely", auth=("admin", PASSWORD))
        assert page.status_code == 200, page.text
        assert "UNFILTERED FIGURES" in page.text and 'class="warning"' in page.text
        assert 'action="invite"' in page.text and "votes: 3" in page.text
        assert "## robust vs vanilla" not in page.text and "<h2>robust vs vanilla</h2>" in page.text
        as_json = client.get("/results.json?study=lonely", auth=("admin", PASSWORD)).json()
        assert as_json["report"]["unfiltered"] and as_json["counts"]["votes"] == 3
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Rater).where(Rater.study_id == study)) == 3
    finally:
        server.kill()
        db.dispose()



def test_results_page_keeps_the_study_link_progress_and_invites_with_no_report_or_every_rater_excluded(tmp_path):
    """The results page of a study with no answers yet, then with one rater who answered
    only a gold pair, wrongly, so that the declared rule removes every rater and no main
    pair has an answer: the page marks the figures as unfiltered and keeps progress, the
    invite form and the study link (or how to open one)."""
    db = open_db(tmp_path / "s.db")
    study = create_study(db, tmp_path / "media", "fresh", units(4),
                         plan=StudyPlan(per_rater=1, gold_rate=1.0, rules=ExclusionRules(min_gold_accuracy=0.75)))
    server = Server(tmp_path / "s.db", tmp_path / "media", env={"RCG_ADMIN_PASSWORD": PASSWORD})
    client = httpx.Client(base_url=server.url, timeout=30)

    def results() -> str:
        page = client.get("/results?study=fresh", auth=("admin", PASSWORD))
        assert page.status_code == 200, page.text
        assert 'action="invite"' in page.text and "main pairs: 4" in page.text and 'id="study-link"' in page.text
        return page.text

    try:
        page = results()
        assert "No votes yet." in page and "votes: 0" in page
        assert "No public study link yet" in page and "survey open-link --study fresh" in page
        for rater in flow.invite(db, study, 30):  # the first rater whose first pair is the gold one answers it wrongly
            token = rater.invite_token
            assert client.post(f"/r/{token}/consent").status_code == 303
            shown = IMPRESSION.search(client.get(f"/r/{token}").text).group(1)
            with db.session() as s:
                kind = s.scalar(select(Pair.kind).join(Impression, Impression.pair_id == Pair.id)
                                .where(Impression.token == shown))
            if kind == "gold":
                assert answer_pair(client, token, db, correct_gold=False)
                break
        else:
            pytest.fail("no rater was shown the gold pair first")
        page = results()
        assert '<p class="warning"><strong>UNFILTERED FIGURES:</strong> the exclusion rules removed every rater ' \
               '(1 of 1)' in page
        assert "1 answers (0 on 0 main pairs, 1 gold, 0 repeat) from 1 raters" in page and "votes: 1" in page
        assert "gold accuracy 0 % (0 of 1 gold answers correct) is below 75 %" in page
        link = links.open_link(db, study, quota=5, completion_code="DONE1234", screenout_code="SCRN0001")
        page = results()
        assert f"<code>{server.url}/s/{link.secret}</code>" in page and "participants 0 of 5" in page
        assert f"{server.url}/s/{link.secret}?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}" in page
        assert "completion code <code>DONE1234</code>" in page and "screen-out code <code>SCRN0001</code>" in page
        invited = client.post("/invite", data={"study": "fresh", "count": "1"}, auth=("admin", PASSWORD)).text
        assert f"{server.url}/s/{link.secret}" in invited and f"{server.url}/r/" in invited
        links.open_link(db, study, is_open=False)
        assert "closed: no new participants" in results()
    finally:
        server.kill()
        db.dispose()
