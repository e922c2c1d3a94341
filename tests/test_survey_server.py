"""The survey over real HTTP: a real uvicorn server (`python -m survey serve`) in a
subprocess on a free port, many raters voting at once, replayed requests, and a server
killed (SIGKILL) mid-study and restarted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import func, select

from survey import flow
from survey.create import SourceImage, StudyPlan, create_study
from survey.db import open_db
from survey.models import Impression, Vote

ROOT = Path(__file__).resolve().parent.parent
IMPRESSION = re.compile(r'name="impression" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m survey serve` in its own process group; kill() is SIGKILL, no goodbye."""

    def __init__(self, db_path: Path, media: Path, extra: tuple[str, ...] = (), env: dict | None = None):
        self.port = free_port()
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = db_path.parent / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "survey", "serve", "--db", str(db_path), "--media", str(media), "--host",
             "127.0.0.1", "--port", str(self.port), *extra], cwd=ROOT, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early: {(db_path.parent / f'server-{self.port}.log').read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("server did not start within 60 s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def make_study(tmp_path: Path, units: int, per_rater: int, gold_rate: float = 0.0, repeat_rate: float = 0.0):
    rng = np.random.default_rng(1)
    data = [{m: SourceImage(rng.integers(0, 255, (8, 8), dtype=np.uint8), m, f"c{i % 5}", i % 5, i) for m in
             ("vanilla", "robust")} for i in range(units)]
    db = open_db(tmp_path / "s.db")
    study_id = create_study(db, tmp_path / "media", "http", data,
                            plan=StudyPlan(per_rater=per_rater, gold_rate=gold_rate, repeat_rate=repeat_rate))
    return db, study_id


class Rater:
    """A rater's browser: follows the link, consents, answers; records acknowledged votes."""

    def __init__(self, base: str, token: str, rng_seed: int):
        self.base, self.token = base, token
        self.client = httpx.Client(base_url=base, timeout=30)
        self.rng = np.random.default_rng(rng_seed)
        self.acknowledged: dict[str, str] = {}
        self.refused = 0

    def start(self) -> None:
        r = self.client.post(f"/r/{self.token}/consent")
        assert r.status_code == 303

    def current(self) -> str | None:
        page = self.client.get(f"/r/{self.token}")
        assert page.status_code == 200, page.text
        match = IMPRESSION.search(page.text)
        return match.group(1) if match else None

    def vote(self, impression: str, answer: str) -> int:
        r = self.client.post(f"/r/{self.token}/vote", data={"impression": impression, "answer": answer})
        if r.status_code == 303:
            self.acknowledged[impression] = answer
        elif r.status_code == 409:
            self.refused += 1
        return r.status_code


def stored_votes(db) -> dict[str, str]:
    with db.session() as s:
        return {t: a for t, a in s.execute(select(Impression.token, Vote.answer)
                                           .join(Vote, Vote.impression_id == Impression.id))}


def test_many_raters_at_once_lose_nothing_and_never_double_count(tmp_path):
    db, study_id = make_study(tmp_path, units=24, per_rater=6, gold_rate=1 / 6, repeat_rate=1 / 6)
    tokens = [r.invite_token for r in flow.invite(db, study_id, count=12)]
    server = Server(tmp_path / "s.db", tmp_path / "media")
    try:
        raters = [Rater(server.url, t, i) for i, t in enumerate(tokens)]
        barrier = threading.Barrier(len(raters))
        errors: list[BaseException] = []

        def run(rater: Rater) -> None:
            try:
                rater.start()
                barrier.wait(30)
                with ThreadPoolExecutor(2) as twin:
                    while True:
                        # the page loaded twice at once (two tabs, a reload): both show the same one pair
                        first, second = twin.map(lambda _: rater.current(), range(2))
                        assert first == second, (first, second)
                        if (impression := first) is None:
                            break
                        answer = "LRS"[int(rater.rng.integers(3))]
                        # the same vote sent twice at once (double click, retry): exactly one may count
                        codes = sorted(twin.map(lambda _: rater.vote(impression, answer), range(2)))
                        assert codes == [303, 409], codes
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(r,)) for r in raters]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        acknowledged = {k: v for r in raters for k, v in r.acknowledged.items()}
        assert len(acknowledged) == 12 * 8  # 6 main + 1 gold + 1 repeat each
        assert stored_votes(db) == acknowledged
        assert sum(r.refused for r in raters) == len(acknowledged)
        # a replay of an old request, long after, is refused too
        old = next(iter(raters[0].acknowledged))
        replay = raters[0].client.post(f"/r/{raters[0].token}/vote", data={"impression": old, "answer": "L"})
        assert replay.status_code == 409
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Vote)) == len(acknowledged)
            # every showing was answered: concurrent reloads opened no second showing
            assert s.scalar(select(func.count()).select_from(Impression)) == len(acknowledged)
            per_pair = s.execute(select(Vote.rater_id, Vote.pair_id, func.count()).group_by(Vote.rater_id,
                                                                                           Vote.pair_id)).all()
            assert {n for *_, n in per_pair} == {1}
    finally:
        server.kill()
        db.dispose()


def test_killed_server_keeps_every_acknowledged_vote(tmp_path):
    db, study_id = make_study(tmp_path, units=20, per_rater=6)
    tokens = [r.invite_token for r in flow.invite(db, study_id, count=6)]
    server = Server(tmp_path / "s.db", tmp_path / "media")
    raters = [Rater(server.url, t, i) for i, t in enumerate(tokens)]
    for r in raters:
        r.start()
    stop = threading.Event()

    def run(rater: Rater) -> None:
        try:
            while not stop.is_set() and (impression := rater.current()) is not None:
                rater.vote(impression, "LRS"[int(rater.rng.integers(3))])
        except httpx.HTTPError:
            pass  # the server died under us; what was acknowledged is recorded

    threads = [threading.Thread(target=run, args=(r,)) for r in raters]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while sum(len(r.acknowledged) for r in raters) < 12 and time.time() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL while raters are mid-request
    for t in threads:
        t.join(30)
    acknowledged = {k: v for r in raters for k, v in r.acknowledged.items()}
    assert 12 <= len(acknowledged) < 36  # killed mid-study
    restarted = Server(tmp_path / "s.db", tmp_path / "media")
    try:
        after_crash = stored_votes(db)
        assert set(acknowledged) <= set(after_crash)
        assert all(after_crash[k] == v for k, v in acknowledged.items())
        assert len(after_crash) - len(acknowledged) <= len(raters)  # at most one in-flight vote per rater
        # everyone resumes through the new server and finishes exactly their 6 pairs
        for r in raters:
            r.client = httpx.Client(base_url=restarted.url, timeout=30)
            while (impression := r.current()) is not None:
                assert r.vote(impression, "S") == 303
        with db.session() as s:
            per_rater = dict(s.execute(select(Vote.rater_id, func.count()).group_by(Vote.rater_id)).all())
        assert sorted(per_rater.values()) == [6] * 6
    finally:
        restarted.kill()
        db.dispose()


def test_serve_refuses_oversized_and_malformed_requests_over_http(tmp_path):
    db, study_id = make_study(tmp_path, units=4, per_rater=2)
    token = flow.invite(db, study_id)[0].invite_token
    password = "pw-" + "q7Zr" * 6
    # access log on (info): it must still hold neither the password nor the Authorization header
    server = Server(tmp_path / "s.db", tmp_path / "media", ("--log-level", "info"),
                    env={"RCG_ADMIN_PASSWORD": password})
    try:
        admin = httpx.Client(base_url=server.url, timeout=30)
        assert admin.get("/results.json").status_code == 401
        assert admin.get("/results.json", auth=("admin", "wrong")).status_code == 401
        assert admin.get("/results.json", auth=("admin", password)).status_code == 200
        rater = Rater(server.url, token, 0)
        rater.start()
        impression = rater.current()

        def chunks():
            yield b"impression=" + impression.encode() + b"&answer=L&x="
            for _ in range(100):
                yield b"y" * 1024

        # streamed (chunked, no Content-Length) oversized body
        r = rater.client.post(f"/r/{token}/vote", content=chunks(),
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        r = rater.client.post(f"/r/{token}/vote", content=b"answer=L", headers={
            "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400
        # a repeated JSON key is refused like a repeated form field, not read as its last value
        r = rater.client.post(f"/r/{token}/vote", content=(
            '{"impression": "%s", "answer": "L", "answer": "R"}' % impression).encode(),
            headers={"content-type": "application/json"})
        assert r.status_code == 400 and "repeated: answer" in r.json()["error"]
        assert stored_votes(db) == {}
        assert rater.vote(impression, "L") == 303
    finally:
        server.kill()
        db.dispose()
    log = server.log_path.read_text()
    assert "GET /results.json" in log  # the access log really was on
    import base64
    assert password not in log and base64.b64encode(
        f"admin:{password}".encode()).decode() not in log
    assert "warning" not in log.lower()  # the password came from the environment: no command-line warning


def hold_write_lock(db_path: Path):
    """Another connection that takes SQLite's write lock and keeps it until rolled back."""
    import sqlite3

    connection = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    connection.execute("BEGIN IMMEDIATE")
    return connection


def test_a_held_write_lock_answers_503_with_retry_after_and_loses_nothing(tmp_path):
    db, study_id = make_study(tmp_path, units=6, per_rater=3)
    tokens = [r.invite_token for r in flow.invite(db, study_id, count=3)]
    server = Server(tmp_path / "s.db", tmp_path / "media", env={"RCG_SURVEY_BUSY_TIMEOUT_MS": "200"})
    try:
        rater, second, third = (Rater(server.url, t, i) for i, t in enumerate(tokens))
        rater.start()
        impression = rater.current()
        second.start()  # consented; its first pair is chosen (a write) on its next page view
        lock = hold_write_lock(tmp_path / "s.db")
        try:
            r = rater.client.post(f"/r/{rater.token}/vote", json={"impression": impression, "answer": "L"})
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["ok"] is False and "busy" in r.json()["error"]
            # a browser's form post: a page that posts the same answer again by itself
            r = rater.client.post(f"/r/{rater.token}/vote", data={"impression": impression, "answer": "L"})
            assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
            assert int(r.headers["retry-after"]) >= 1
            assert 'id="busy"' in r.text and "was not saved yet" in r.text
            assert f'name="impression" value="{impression}"' in r.text and 'name="answer" value="L"' in r.text
            assert 'action="vote"' in r.text and "requestSubmit" in r.text
            # a page view that must write, and a consent, are answered the same way
            r = second.client.get(f"/r/{second.token}")
            assert r.status_code == 503 and 'id="busy"' in r.text and "location.reload" in r.text
            r = third.client.post(f"/r/{third.token}/consent")
            assert r.status_code == 503 and 'action="consent"' in r.text
            assert stored_votes(db) == {}
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert rater.vote(impression, "L") == 303  # the retry goes through once the lock is free
        assert stored_votes(db) == {impression: "L"}
        assert second.current() is not None
        third.start()
    finally:
        server.kill()
        db.dispose()
    assert "Traceback" not in server.log_path.read_text()
