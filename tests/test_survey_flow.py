"""The rater flow through the app mounted at /survey (as the lab will mount it), on a real
SQLite file: assignment, sides, repeats, resume, refusals that leave the database
unchanged, and the password-protected results."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from survey import flow
from survey.create import SourceImage, StudyPlan, create_study
from survey.db import open_db
from survey.models import Image, Impression, Pair, Rater, Vote
from survey.web import create_survey_app

PASSWORD = "correct horse"


def make_units(n: int):
    rng = np.random.default_rng(0)
    return [{m: SourceImage(rng.integers(0, 255, (8, 8), dtype=np.uint8), m, f"digit {i % 10}", i % 10, 1000 + i,
                            {"i": i}) for m in ("vanilla", "robust")} for i in range(n)]


@pytest.fixture()
def study(tmp_path):
    db = open_db(tmp_path / "s.db")
    study_id = create_study(db, tmp_path / "media", "flow", make_units(10),
                            plan=StudyPlan(per_rater=6, gold_rate=1 / 3, repeat_rate=1 / 3, seed=0))
    parent = FastAPI()
    parent.mount("/survey", create_survey_app(tmp_path / "s.db", tmp_path / "media", PASSWORD, db=db))
    client = TestClient(parent)
    yield db, study_id, client
    client.close()
    db.dispose()


def snapshot(db) -> dict:
    """Every row of every table (not only counts: a refused request must not change a row either)."""
    with db.engine.connect() as c:
        tables = [t for (t,) in c.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(map(tuple, c.exec_driver_sql(f'SELECT * FROM "{t}"')), key=repr) for t in tables}


def current_pair(client, token):
    page = client.get(f"/survey/r/{token}")
    assert page.status_code == 200
    match = re.search(r'name="impression" value="([^"]+)"', page.text)
    return page, (match.group(1) if match else None)


def answer_all(client, token, choose=lambda i, page: "L", limit=100):
    answered = 0
    for i in range(limit):
        page, impression = current_pair(client, token)
        if impression is None:
            return page, answered
        r = client.post(f"/survey/r/{token}/vote", data={"impression": impression, "answer": choose(i, page)},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        answered += 1
    raise AssertionError("the survey never finished")


def test_full_rater_flow_mounted_under_prefix(study):
    db, study_id, client = study
    rater = flow.invite(db, study_id, names=["Ann"])[0]
    token = rater.invite_token
    page = client.get(f"/survey/r/{token}")
    assert "Which image is more realistic, and more aligned to the description?" in page.text
    assert 'action="' + token + '/consent"' in page.text  # relative, works under any mount point
    r = client.post(f"/survey/r/{token}/consent", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"../{token}"
    page, impression = current_pair(client, token)
    assert re.search(r'id="progress">1 of 10<', page.text)  # 6 main + 2 gold + 2 repeat
    assert re.search(r'id="class-name">digit \d<', page.text)
    srcs = re.findall(r'<img src="([^"]+)"', page.text)
    assert srcs == [f"../img/{impression}/left", f"../img/{impression}/right"]
    assert "vanilla" not in page.text and "robust" not in page.text
    img = client.get(f"/survey/img/{impression}/left")
    assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
    # reloading shows the same pair (resume), it does not skip
    assert current_pair(client, token)[1] == impression
    page, answered = answer_all(client, token, lambda i, p: "LRS"[i % 3])
    assert answered == 10 and "Thank you" in page.text and "answered 10 pairs" in page.text
    with db.session() as s:
        kinds = Counter(s.scalars(select(Pair.kind).join(Vote, Vote.pair_id == Pair.id)
                                  .where(Vote.rater_id == rater.id)))
        repeats = s.execute(select(Impression, Pair).join(Pair, Pair.id == Impression.pair_id)
                            .where(Impression.rater_id == rater.id, Pair.kind == "repeat")).all()
        for impression_row, pair in repeats:
            earlier = s.scalar(select(Impression).where(Impression.rater_id == rater.id,
                                                        Impression.pair_id == pair.source_pair_id))
            assert (impression_row.left_image_id, impression_row.right_image_id) == \
                (earlier.right_image_id, earlier.left_image_id)
    assert kinds == {"main": 6, "gold": 2, "repeat": 2}


def test_assignment_spreads_answers_and_balances_sides(study):
    db, study_id, client = study
    raters = flow.invite(db, study_id, count=5)
    for rater in raters:
        flow.consent(db, rater.invite_token)
        answer_all(client, rater.invite_token)
    with db.session() as s:
        per_pair = dict(s.execute(select(Pair.id, func.count(Vote.id)).outerjoin(Vote, Vote.pair_id == Pair.id)
                                  .where(Pair.kind == "main").group_by(Pair.id)).all())
        a_left = dict(s.execute(select(Pair.id, func.count(Impression.id)).join(Impression, Impression.pair_id == Pair.id)
                                .where(Pair.kind == "main", Impression.left_image_id == Pair.image_a_id)
                                .group_by(Pair.id)).all())
    # 5 raters x 6 main answers over 10 pairs: least-answered first -> every pair 3 times
    assert sorted(per_pair.values()) == [3] * 10
    for pair_id, n in per_pair.items():
        assert abs(a_left.get(pair_id, 0) - (n - a_left.get(pair_id, 0))) <= 1


def test_resume_in_a_fresh_browser(study):
    db, study_id, client = study
    token = flow.invite(db, study_id)[0].invite_token
    client.post(f"/survey/r/{token}/consent")
    for _ in range(3):
        _, impression = current_pair(client, token)
        client.post(f"/survey/r/{token}/vote", data={"impression": impression, "answer": "R"})
    fresh = TestClient(client.app)  # no cookies, nothing shared but the link
    page, _ = current_pair(fresh, token)
    assert re.search(r'id="progress">4 of 10<', page.text)


def test_bad_votes_are_refused_and_change_nothing(study):
    db, study_id, client = study
    ann, bob = flow.invite(db, study_id, count=2)
    for r in (ann, bob):
        client.post(f"/survey/r/{r.invite_token}/consent")
    _, imp_ann = current_pair(client, ann.invite_token)
    _, imp_bob = current_pair(client, bob.invite_token)
    before = snapshot(db)
    url = f"/survey/r/{ann.invite_token}/vote"
    cases = [
        ({"impression": imp_ann, "answer": "X"}, 422, "must be L, R or S"),
        ({"impression": imp_ann, "answer": "l"}, 422, "must be L, R or S"),
        ({"impression": imp_ann, "answer": "L'); DROP TABLE votes; --"}, 422, "must be L, R or S"),
        ({"impression": "A" * 32, "answer": "L"}, 404, "unknown impression"),
        ({"impression": "bad token!", "answer": "L"}, 404, "malformed"),
        ({"impression": imp_bob, "answer": "L"}, 403, "another rater"),
        ({"impression": imp_ann}, 400, "exactly the fields"),
        ({"impression": imp_ann, "answer": "L", "pair_id": "1"}, 400, "exactly the fields"),
        ({"impression": imp_ann, "answer": "L", "side": "left"}, 400, "exactly the fields"),
    ]
    for data, status, message in cases:
        r = client.post(url, data=data)
        assert (r.status_code, message in r.text) == (status, True), (data, r.status_code, r.text[:300])
    raw = [
        (b"impression=" + imp_ann.encode() + b"&answer=L&answer=R", "application/x-www-form-urlencoded", 400),
        (b"\xff\xfe\x00", "application/x-www-form-urlencoded", 400),
        (b'{"impression": "' + imp_ann.encode() + b'", "answer": 1}', "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"impression=x&answer=L", "text/plain", 400),
        (b"impression=" + imp_ann.encode() + b"&answer=L&pad=" + b"x" * 20000, "application/x-www-form-urlencoded",
         413),
    ]
    for body, kind, status in raw:
        r = client.post(url, content=body, headers={"content-type": kind})
        assert r.status_code == status, (body[:40], r.status_code, r.text[:200])
    r = client.post(f"/survey/r/{'Z' * 32}/vote", data={"impression": imp_ann, "answer": "L"})
    assert r.status_code == 404 and "link is not valid" in r.text
    r = client.post(f"/survey/r/{bob.invite_token}/vote", data={"impression": imp_ann, "answer": "L"})
    assert r.status_code == 403 and "another rater" in r.text  # Bob cannot answer Ann's showing
    r = client.post(f"/survey/r/{'Z' * 32}/consent")
    assert r.status_code == 404 and "link is not valid" in r.text
    assert snapshot(db) == before
    # the real vote works once; its replay is refused and nothing changes
    assert client.post(url, data={"impression": imp_ann, "answer": "L"}, follow_redirects=False).status_code == 303
    after = snapshot(db)
    r = client.post(url, data={"impression": imp_ann, "answer": "R"})
    assert r.status_code == 409 and "already answered" in r.text
    assert snapshot(db) == after
    r = client.post(url, json={"impression": imp_ann, "answer": "L"})
    assert r.status_code == 409 and r.json()["ok"] is False


def test_unknown_links_and_images(study):
    db, study_id, client = study
    assert client.get(f"/survey/r/{'q' * 32}").status_code == 404
    assert client.get("/survey/r/short").status_code == 404
    assert client.get(f"/survey/img/{'q' * 32}/left").status_code == 404
    token = flow.invite(db, study_id)[0].invite_token
    client.post(f"/survey/r/{token}/consent")
    _, impression = current_pair(client, token)
    assert client.get(f"/survey/img/{impression}/middle").status_code == 404
    assert client.get(f"/survey/img/{impression}/../../s.db").status_code == 404
    page = client.get("/survey/")
    assert page.status_code == 200 and "personal link" in page.text


def test_rater_names_are_data_not_sql(study):
    db, study_id, client = study
    names = ["O'Brien \"Bob\"", "x'); DROP TABLE votes; --", "<script>alert(1)</script>", "Zoë"]
    raters = flow.invite(db, study_id, names=names)
    with db.session() as s:
        stored = [s.get(Rater, r.id).name for r in raters]
    assert stored == names
    before = snapshot(db)
    for bad in ["a\x00b", "tab\tname", "x" * 201, "right\u202eleft"]:
        with pytest.raises(flow.FlowError):
            flow.invite(db, study_id, names=["fine", bad])  # nothing of the batch is written
    assert snapshot(db) == before
    token = raters[2].invite_token
    client.post(f"/survey/r/{token}/consent")
    page = client.get(f"/survey/r/{token}")
    assert "<script>alert" not in page.text


def test_results_need_the_admin_password(study, tmp_path):
    db, study_id, client = study
    token = flow.invite(db, study_id)[0].invite_token
    client.post(f"/survey/r/{token}/consent")
    answer_all(client, token, lambda i, p: "LR"[i % 2])
    assert client.get("/survey/results").status_code == 401
    assert client.get("/survey/results", auth=("admin", "wrong")).status_code == 401
    assert client.get("/survey/votes.csv", auth=("admin", "wrong")).status_code == 401
    page = client.get("/survey/results", auth=("admin", PASSWORD))
    assert page.status_code == 200 and "Table 2" in page.text and "users who selected a side" in page.text
    data = client.get("/survey/results.json", auth=("any", PASSWORD)).json()
    assert data["counts"]["votes"] == 10 and data["report"]["data"]["main_answers"] == 6
    csv = client.get("/survey/votes.csv", auth=("any", PASSWORD))
    assert csv.status_code == 200 and csv.text.count("\n") == 11
    made = client.post("/survey/invite", data={"count": "2"}, auth=("a", PASSWORD))
    assert made.status_code == 200 and len(re.findall(r"/survey/r/[A-Za-z0-9_-]{32}", made.text)) == 2
    forged = client.post("/survey/invite", data={"count": "2"}, auth=("a", PASSWORD),
                         headers={"origin": "https://evil.example"})
    assert forged.status_code == 403
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Rater)) == 3
    closed = FastAPI()
    closed.mount("/survey", create_survey_app(tmp_path / "s.db", tmp_path / "media", None, db=db))
    assert TestClient(closed).get("/survey/results", auth=("a", "")).status_code == 403


def test_small_quota_still_gets_its_repeat(tmp_path):
    db = open_db(tmp_path / "q.db")
    study_id = create_study(db, tmp_path / "media", "small", make_units(4),
                            plan=StudyPlan(per_rater=2, repeat_rate=0.5))
    token = flow.invite(db, study_id)[0].invite_token
    flow.consent(db, token)
    kinds = []
    while (state := flow.state(db, token)).status == "pair":
        with db.session() as s:
            kinds.append(s.scalar(select(Pair.kind).join(Impression, Impression.pair_id == Pair.id)
                                  .where(Impression.token == state.showing.token)))
        flow.record_vote(db, token, state.showing.token, "L")
    assert sorted(kinds) == ["main", "main", "repeat"] and kinds[-1] == "repeat"
    db.dispose()


def links_of(html: str) -> list[str]:
    return re.findall(r'(?:href|src|action)\s*=\s*"([^"]*)"', html, flags=re.I)


def test_rater_pages_show_only_the_survey(study):
    """Every page a rater can reach links only to their own survey steps: no lab, no
    results, no method names, no file names, nothing loaded from elsewhere."""
    db, study_id, client = study
    token = flow.invite(db, study_id)[0].invite_token
    with db.session() as s:
        file_names = list(s.scalars(select(Image.file_name)))
        methods = set(s.scalars(select(Image.method)))
    pages = [client.get("/survey/"), client.get(f"/survey/r/{token}")]
    client.post(f"/survey/r/{token}/consent")
    seen = set()
    while True:
        page, impression = current_pair(client, token)
        pages.append(page)
        if impression is None:
            break
        seen.add(impression)
        assert links_of(page.text) == [f"{token}/vote", f"../img/{impression}/left", f"../img/{impression}/right"]
        client.post(f"/survey/r/{token}/vote", data={"impression": impression, "answer": "S"})
    assert len(seen) == 10 and "Thank you" in pages[-1].text
    pages.append(client.post(f"/survey/r/{token}/vote", data={"impression": impression or "x" * 32, "answer": "L"}))
    assert links_of(pages[1].text) == [f"{token}/consent"]
    for page in pages:
        text = page.text.lower()
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert all(link in (f"{token}/consent", f"{token}/vote", f"../{token}") or link.startswith("../img/")
                   for link in links_of(page.text)), links_of(page.text)
        for word in ("results", "/lab", "gradio", "http://", "https://", "votes.csv", *methods, *file_names):
            assert word.lower() not in text, (word, page.url)
        assert "fetch(" not in text and "xmlhttprequest" not in text


def test_image_responses_do_not_reveal_the_method(study, tmp_path):
    """The image of a side is the stored file byte for byte, and its response carries
    nothing that differs by method: no file name, no file time (Last-Modified / ETag
    would give away which image was written first), the same headers on both sides."""
    import hashlib
    import os

    db, study_id, client = study
    media = tmp_path / "media"
    with db.session() as s:
        images = {im.id: im for im in s.scalars(select(Image))}
    for im in images.values():  # make the file times differ by method, as a slow generator would
        stamp = 1_600_000_000 if im.method == "vanilla" else 1_700_000_000
        os.utime(media / im.file_name, (stamp, stamp))
    token = flow.invite(db, study_id)[0].invite_token
    client.post(f"/survey/r/{token}/consent")
    _, impression = current_pair(client, token)
    with db.session() as s:
        shown = s.scalar(select(Impression).where(Impression.token == impression))
    headers = {}
    for side, image_id in (("left", shown.left_image_id), ("right", shown.right_image_id)):
        r = client.get(f"/survey/img/{impression}/{side}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert hashlib.sha256(r.content).hexdigest() == images[image_id].sha256
        assert not {"etag", "last-modified", "content-disposition"} & set(r.headers)
        blob = " ".join(f"{k}: {v}" for k, v in r.headers.items()).lower()
        assert images[image_id].file_name not in blob and images[image_id].method not in blob
        headers[side] = {k: v for k, v in r.headers.items() if k != "content-length"}
    assert headers["left"] == headers["right"]
    # conditional requests do not confirm anything either
    r = client.get(f"/survey/img/{impression}/left", headers={"if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert r.status_code == 200 and "last-modified" not in r.headers
    # a file changed on disk after the study was created is not served as if it were the stored image
    left = images[shown.left_image_id]
    (media / left.file_name).write_bytes(b"\x89PNG tampered")
    r = client.get(f"/survey/img/{impression}/left")
    assert r.status_code == 500 and "sha256" in r.text


def test_admin_password_compared_in_constant_time_and_never_in_urls(study, monkeypatch):
    import base64
    import hmac

    from survey import web

    db, study_id, client = study
    calls = []

    def recording_compare(a, b):
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(web.secrets, "compare_digest", recording_compare)
    assert client.get("/survey/results", auth=("admin", "correct horsf")).status_code == 401
    assert calls == [(b"correct horsf", PASSWORD.encode())]
    page = client.get("/survey/results", auth=("admin", PASSWORD))
    assert page.status_code == 200 and len(calls) == 2
    # the password is never accepted from the URL, and no page puts it in one
    for url in (f"/survey/results?password={PASSWORD}", f"/survey/results?admin_password={PASSWORD}",
                f"/survey/results.json?pw={PASSWORD}"):
        assert client.get(url).status_code == 401
    assert PASSWORD not in page.text and base64.b64encode(PASSWORD.encode()).decode() not in page.text
    for bad in ("Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Bearer " + PASSWORD,
                "Basic " + base64.b64encode(PASSWORD.encode()).decode()):  # no ':' -> empty password
        assert client.get("/survey/results", headers={"authorization": bad}).status_code == 401, bad
