"""The survey on PostgreSQL: same code, only the URL changes.

Runs when SURVEY_TEST_POSTGRES_URL names a server where the user may create databases,
e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres`` (needs the psycopg
package); each run works in a fresh database that it drops afterwards. Skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import threading

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from survey import flow
from survey.create import SourceImage, StudyPlan, create_study
from survey.db import open_db, utcnow
from survey.models import Base, Vote

URL = os.environ.get("SURVEY_TEST_POSTGRES_URL")


@pytest.fixture()
def pg_url():
    if not URL:
        pytest.skip("set SURVEY_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres) to run the "
                    "PostgreSQL tests")
    name = "survey_test_" + secrets.token_hex(4)
    admin = create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_postgres_schema_flow_integrity_and_report(pg_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    db = open_db(pg_url)
    try:
        with db.engine.connect() as c:
            diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
        assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == "survey_alembic_version")] == []
        rng = np.random.default_rng(0)
        units = [{m: SourceImage(rng.integers(0, 255, (8, 8), dtype=np.uint8), m, f"c{i}", i, i) for m in
                  ("vanilla", "robust")} for i in range(12)]
        study_id = create_study(db, tmp_path / "media", "pg", units,
                                plan=StudyPlan(per_rater=6, gold_rate=1 / 6, repeat_rate=1 / 6))
        raters = flow.invite(db, study_id, count=8, names=["O'Brien"] + [None] * 7)
        errors = []

        def rate(token: str, seed: int) -> None:
            try:
                r = np.random.default_rng(seed)
                flow.consent(db, token)
                while (state := flow.state(db, token)).status == "pair":
                    flow.record_vote(db, token, state.showing.token, "LRS"[int(r.integers(3))])
                    with pytest.raises(flow.AlreadyAnswered):
                        flow.record_vote(db, token, state.showing.token, "L")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=rate, args=(r.invite_token, i)) for i, r in enumerate(raters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Vote)) == 8 * 8
            vote = s.scalars(select(Vote)).first()
            assert vote.answered_at.tzinfo is not None
        with pytest.raises(IntegrityError):
            with db.session() as s:
                s.add(Vote(impression_id=vote.impression_id, rater_id=vote.rater_id, pair_id=vote.pair_id, answer="X",
                           answered_at=utcnow(), latency_ms=1))
        from survey.report import report_markdown, study_report

        report = study_report(db, "pg", bootstrap=100)
        assert report["data"]["main_answers"] == 48
        assert "Table 2" in report_markdown(report)
    finally:
        db.dispose()


def test_postgres_migration_from_0001_keeps_votes_and_rolls_back_on_failure(pg_url):
    from survey.db import current_revision, head_revision, make_engine, migrate
    from test_survey_db import rows, seed_revision_0001

    engine = make_engine(pg_url)
    try:
        migrate(engine, "0001")
        seed_revision_0001(engine)
        votes = rows(engine, "votes")
        migrate(engine)
        assert current_revision(engine) == head_revision() and rows(engine, "votes") == votes
        assert rows(engine, "impressions", "pair_image_a_id, pair_image_b_id") == [(1, 2), (3, 4)]
        for sql in ("UPDATE impressions SET left_image_id = 3 WHERE id = 1",      # a side that is not the pair's
                    "UPDATE votes SET answer = 'X' WHERE id = 1",                  # an answer outside L / R / S
                    "UPDATE votes SET pair_id = 2 WHERE id = 1",                   # a vote moved off its showing
                    "UPDATE pairs SET image_b_id = 3 WHERE id = 1"):               # a pair of two classes
            with pytest.raises(IntegrityError):
                with engine.begin() as c:
                    c.exec_driver_sql(sql)
        assert rows(engine, "votes") == votes
        migrate(engine, "0001", downgrade=True)
        with engine.begin() as c:  # at 0001 nothing stops a showing of a foreign image; the upgrade must refuse it
            c.exec_driver_sql("UPDATE impressions SET left_image_id = 3 WHERE id = 1")
        with pytest.raises(IntegrityError):
            migrate(engine)
        assert current_revision(engine) == "0001" and rows(engine, "votes") == votes
    finally:
        engine.dispose()


def test_postgres_study_link_one_participation_per_id_and_quota(pg_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from survey import links
    from survey.models import Rater

    db = open_db(pg_url)
    try:
        rng = np.random.default_rng(0)
        units = [{m: SourceImage(rng.integers(0, 255, (8, 8), dtype=np.uint8), m, f"c{i}", i, i) for m in
                  ("vanilla", "robust")} for i in range(4)]
        study_id = create_study(db, tmp_path / "media", "pg-link", units, plan=StudyPlan(per_rater=2))
        link = links.open_link(db, study_id, quota=3)
        # ten visits at once, five ids twice each, quota 3: three raters, the others told the study is full
        def visit(pid: str):
            try:
                return links.join(db, link.secret, {"PROLIFIC_PID": [pid]}).participant_id
            except links.StudyFull:
                return "full"

        with ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(visit, [f"P{i % 5}" for i in range(10)]))
        with db.session() as s:
            joined = sorted(s.scalars(select(Rater.participant_id).where(Rater.study_id == study_id)))
        assert len(joined) == 3 and outcomes.count("full") >= 4
        assert all(o == "full" or o in joined for o in outcomes)
        with pytest.raises(IntegrityError):  # the database itself refuses a second participation
            with db.session() as s:
                link_id = s.scalar(text("SELECT id FROM study_links"))
                s.add(Rater(study_id=study_id, invite_token=flow.new_token(), planned_total=2, created_at=utcnow(),
                            link_id=link_id, participant_id=joined[0]))
        with pytest.raises(IntegrityError, match="participant_via_link"):
            with db.session() as s:
                s.add(Rater(study_id=study_id, invite_token=flow.new_token(), planned_total=2, created_at=utcnow(),
                            participant_id="NOLINK"))
    finally:
        db.dispose()
