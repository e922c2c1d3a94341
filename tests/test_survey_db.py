"""Survey storage on a real SQLite file: migrations, pragmas, and the integrity rules the
database itself enforces (not only the application)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from survey.create import SourceImage, StudyPlan, create_study
from survey.db import SurveyDBError, current_revision, head_revision, open_db, utcnow
from survey.models import Base, Image, Impression, Pair, Rater, Vote


def units(n: int = 4, methods=("vanilla", "robust")):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        out.append({m: SourceImage(rng.integers(0, 255, (8, 8, 1), dtype=np.uint8), m, f"class{i % 3}", i % 3, 100 + i,
                                   {"note": "test"}) for m in methods})
    return out


@pytest.fixture()
def db(tmp_path):
    database = open_db(tmp_path / "s.db")
    yield database
    database.dispose()


def test_migrations_build_exactly_the_models(db):
    assert current_revision(db.engine) == head_revision()
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == "survey_alembic_version")] == []


def test_sqlite_pragmas(db):
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_unmigrated_database_is_refused_with_advice(tmp_path):
    with pytest.raises(SurveyDBError, match="python -m survey init"):
        open_db(tmp_path / "empty.db", upgrade=False)
    with pytest.raises(SurveyDBError, match="in-memory"):
        open_db("sqlite://")
    open_db(tmp_path / "empty.db").dispose()  # migrating twice is harmless
    open_db(tmp_path / "empty.db").dispose()


def seed_impression(db):
    study_id = create_study(db, db.engine.url.database + "_media", "s", units(), plan=StudyPlan(per_rater=4))
    now = utcnow()
    with db.session() as s:
        pair = s.scalars(select(Pair).where(Pair.kind == "main")).first()
        other = s.scalars(select(Pair).where(Pair.kind == "main", Pair.id != pair.id)).first()
        raters = [Rater(study_id=study_id, invite_token=f"tok{i}" + "x" * 20, planned_total=4, created_at=now)
                  for i in range(2)]
        s.add_all(raters)
        s.flush()
        imp = Impression(token="imp" + "x" * 20, rater_id=raters[0].id, pair_id=pair.id,
                         left_image_id=pair.image_a_id, right_image_id=pair.image_b_id, shown_at=now)
        s.add(imp)
        s.flush()
        return {"imp": imp.id, "rater": raters[0].id, "rater2": raters[1].id, "pair": pair.id, "other": other.id,
                "a": pair.image_a_id, "b": pair.image_b_id}


def insert_vote(db, **values):
    row = {"answered_at": utcnow(), "latency_ms": 10, "answer": "L", **values}
    with db.session() as s:
        s.add(Vote(**row))


def count_votes(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Vote))


def test_database_enforces_vote_integrity(db):
    ids = seed_impression(db)
    base = {"impression_id": ids["imp"], "rater_id": ids["rater"], "pair_id": ids["pair"]}
    with pytest.raises(IntegrityError, match="ck_votes_answer"):
        insert_vote(db, **base, answer="X")
    with pytest.raises(IntegrityError):  # the vote claims another rater than the impression's
        insert_vote(db, **{**base, "rater_id": ids["rater2"]})
    with pytest.raises(IntegrityError):  # ... or another pair
        insert_vote(db, **{**base, "pair_id": ids["other"]})
    with pytest.raises(IntegrityError):  # no such impression (foreign keys are on)
        insert_vote(db, **{**base, "impression_id": 999})
    assert count_votes(db) == 0
    insert_vote(db, **base)
    with pytest.raises(IntegrityError, match="UNIQUE"):
        insert_vote(db, **base, answer="R")
    assert count_votes(db) == 1


def test_database_enforces_pair_and_impression_rules(db):
    ids = seed_impression(db)
    now = utcnow()
    with pytest.raises(IntegrityError):  # one showing per rater and pair
        with db.session() as s:
            s.add(Impression(token="imp2" + "x" * 20, rater_id=ids["rater"], pair_id=ids["pair"],
                             left_image_id=ids["b"], right_image_id=ids["a"], shown_at=now))
    with pytest.raises(IntegrityError, match="ck_pairs_kind"):
        with db.session() as s:
            s.add(Pair(study_id=1, kind="other", class_name="c", image_a_id=ids["a"], image_b_id=ids["b"],
                       created_at=now))
    with pytest.raises(IntegrityError, match="repeat_has_source"):
        with db.session() as s:
            s.add(Pair(study_id=1, kind="repeat", class_name="c", image_a_id=ids["a"], image_b_id=ids["b"],
                       created_at=now))
    with pytest.raises(IntegrityError, match="distinct_images"):
        with db.session() as s:
            s.add(Pair(study_id=1, kind="main", class_name="c", image_a_id=ids["a"], image_b_id=ids["a"],
                       created_at=now))


def test_times_are_utc(db):
    ids = seed_impression(db)
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    insert_vote(db, impression_id=ids["imp"], rater_id=ids["rater"], pair_id=ids["pair"], answered_at=local)
    with db.session() as s:
        stored = s.scalar(select(Vote.answered_at))
        raw = s.execute(text("SELECT answered_at FROM votes")).scalar()
    assert stored == local and stored.tzinfo == timezone.utc and stored.hour == 12
    assert str(raw).startswith("2024-05-01 12:00:00")
    with pytest.raises(StatementError, match="naive datetime"):
        insert_vote(db, impression_id=ids["imp"], rater_id=ids["rater2"], pair_id=ids["pair"],
                    answered_at=datetime(2024, 1, 1))


def test_study_images_have_files_hashes_and_configs(db, tmp_path):
    import hashlib

    media = tmp_path / "media"
    create_study(db, media, "s", units(6, ("a", "b", "c")), plan=StudyPlan(per_rater=5, gold_rate=0.2,
                                                                              repeat_rate=0.2))
    with db.session() as s:
        images = s.scalars(select(Image)).all()
        kinds = dict(s.execute(select(Pair.kind, func.count()).group_by(Pair.kind)).all())
        pairs = s.scalars(select(Pair).where(Pair.kind == "main")).all()
        by_id = {im.id: im for im in images}
    assert kinds == {"main": 18, "repeat": 18, "gold": 4}  # 6 units x 3 method pairs; gold = ceil(0.2 * 18)
    for image in images:
        path = media / image.file_name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == image.sha256
        assert not any(m in image.file_name for m in ("a", "b", "c") if len(m) > 1)
        assert isinstance(image.config, dict)
    for pair in pairs:
        a, b = by_id[pair.image_a_id], by_id[pair.image_b_id]
        assert (a.class_name, a.seed) == (b.class_name, b.seed) == (pair.class_name, pair.seed)
        assert a.method != b.method
