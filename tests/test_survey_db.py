"""Survey storage on a real SQLite file: migrations, pragmas, and the integrity rules the
database itself enforces (not only the application)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

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


def test_busy_timeout_from_the_environment_and_a_held_lock_is_recognised(tmp_path, monkeypatch):
    from survey.db import BUSY_TIMEOUT_ENV, database_busy

    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "soon")
    with pytest.raises(SurveyDBError, match=f"{BUSY_TIMEOUT_ENV}='soon': give a whole number of milliseconds"):
        open_db(tmp_path / "s.db")
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "150")
    database = open_db(tmp_path / "s.db")
    try:
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 150
        holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OperationalError) as info:
                with database.session() as session:
                    session.execute(text("UPDATE raters SET name = name"))
            assert database_busy(info.value)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with pytest.raises(OperationalError) as info:
            with database.session() as session:
                session.execute(text("SELECT * FROM no_such_table"))
        assert not database_busy(info.value)
    finally:
        database.dispose()


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
                         left_image_id=pair.image_a_id, right_image_id=pair.image_b_id,
                         pair_image_a_id=pair.image_a_id, pair_image_b_id=pair.image_b_id, shown_at=now)
        s.add(imp)
        s.flush()
        return {"imp": imp.id, "rater": raters[0].id, "rater2": raters[1].id, "pair": pair.id, "other": other.id,
                "a": pair.image_a_id, "b": pair.image_b_id, "other_a": other.image_a_id, "other_b": other.image_b_id,
                "study": study_id}


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
                             left_image_id=ids["b"], right_image_id=ids["a"], pair_image_a_id=ids["a"],
                             pair_image_b_id=ids["b"], shown_at=now))
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


# --------------------------------------------------------------------------- raw SQL
def raw_connection(db, foreign_keys: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection to the study file, as any other client (the sqlite3
    shell, a script) would open it: nothing of survey's Python code is involved."""
    connection = sqlite3.connect(db.engine.url.database, isolation_level=None, timeout=10)
    connection.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    return connection


def table_dump(db) -> dict[str, list[tuple]]:
    with sqlite3.connect(db.engine.url.database) as c:
        return {t: sorted(c.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("studies", "images", "pairs", "raters", "impressions", "votes")}


def test_raw_sql_cannot_break_the_rules(db):
    ids = seed_impression(db)
    with db.session() as s:  # an image of another class and seed, in the same study
        foreign = s.scalar(select(Image).where(Image.id.not_in([ids["a"], ids["b"], ids["other_a"], ids["other_b"]]),
                                               Image.class_name != s.get(Pair, ids["pair"]).class_name))
        foreign = foreign.id
    now = "2024-01-01 00:00:00.000000"
    c = raw_connection(db)
    vote = ("INSERT INTO votes (impression_id, rater_id, pair_id, answer, answered_at, latency_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)")
    good = (ids["imp"], ids["rater"], ids["pair"], "L", now, 10)
    imp = ("INSERT INTO impressions (token, rater_id, pair_id, left_image_id, right_image_id, pair_image_a_id, "
           "pair_image_b_id, shown_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    pair = ("INSERT INTO pairs (study_id, kind, class_name, seed, image_a_id, image_b_id, created_at) "
            "VALUES (?, 'main', ?, ?, ?, ?, ?)")
    with db.session() as s:
        p = s.get(Pair, ids["pair"])
        pair_class, pair_seed = p.class_name, p.seed
    attempts = {
        "answer outside L/R/S": (vote, (*good[:3], "X", now, 10)),
        "lower-case answer": (vote, (*good[:3], "l", now, 10)),
        "empty answer": (vote, (*good[:3], "", now, 10)),
        "negative latency": (vote, (*good[:5], -1)),
        "vote claiming another rater": (vote, (ids["imp"], ids["rater2"], ids["pair"], "L", now, 10)),
        "vote claiming another pair": (vote, (ids["imp"], ids["rater"], ids["other"], "L", now, 10)),
        "vote for no impression": (vote, (999, ids["rater"], ids["pair"], "L", now, 10)),
        "second showing of a pair to a rater": (imp, ("t" * 32, ids["rater"], ids["pair"], ids["b"], ids["a"],
                                                      ids["a"], ids["b"], now)),
        "showing an image that is not the pair's": (imp, ("u" * 32, ids["rater2"], ids["pair"], ids["a"], foreign,
                                                          ids["a"], ids["b"], now)),
        "showing claiming another pair's images": (imp, ("v" * 32, ids["rater2"], ids["pair"], ids["other_a"],
                                                         ids["other_b"], ids["other_a"], ids["other_b"], now)),
        "showing one image on both sides": (imp, ("w" * 32, ids["rater2"], ids["pair"], ids["a"], ids["a"], ids["a"],
                                                  ids["b"], now)),
        "pair of two classes": (pair, (ids["study"], pair_class, pair_seed, ids["a"], foreign, now)),
        "pair whose images have another seed": (pair, (ids["study"], pair_class, 12345, ids["a"], ids["b"], now)),
        "pair in another study": (pair, (ids["study"] + 1, pair_class, pair_seed, ids["a"], ids["b"], now)),
    }
    before = table_dump(db)
    for name, (sql, values) in attempts.items():
        with pytest.raises(sqlite3.IntegrityError):
            c.execute(sql, values)
            pytest.fail(f"the database accepted: {name}")
    assert table_dump(db) == before
    c.execute(vote, good)
    for name, sql in {"second vote on the impression": vote,
                      "answer changed to Q": "UPDATE votes SET answer = 'Q'",
                      "vote moved to another rater": f"UPDATE votes SET rater_id = {ids['rater2']}",
                      "showing's side swapped for a foreign image": f"UPDATE impressions SET left_image_id = {foreign}",
                      "pair's image swapped for one of another class": f"UPDATE pairs SET image_b_id = {foreign} "
                                                                      f"WHERE id = {ids['pair']}"}.items():
        with pytest.raises(sqlite3.IntegrityError):
            c.execute(sql, good) if "?" in sql else c.execute(sql)
            pytest.fail(f"the database accepted: {name}")
    assert c.execute("SELECT answer, rater_id FROM votes").fetchall() == [("L", ids["rater"])]
    # UNIQUE and CHECK hold on any connection; foreign keys are a per-connection switch in SQLite (every
    # connection survey opens turns them on, see survey/db.py), so a client that leaves them off loses those
    plain = raw_connection(db, foreign_keys=False)
    for sql, values in ((vote, good), (vote, (*good[:3], "X", now, 10))):
        with pytest.raises(sqlite3.IntegrityError):
            plain.execute(sql, values)
    c.close()
    plain.close()
    assert count_votes(db) == 1


# --------------------------------------------------------------------------- migrations
T0 = "2024-01-01 00:00:00.000000"


def seed_revision_0001(engine, bad_sides: bool = False) -> None:
    """A small study written with raw SQL against the 0001 schema (two pairs, a rater who
    saw both, one vote each)."""
    with engine.begin() as c:
        x = c.exec_driver_sql
        x(f"INSERT INTO studies (id, name, created_at, methods, settings) VALUES (1, 's', '{T0}', "
          "'[\"vanilla\", \"robust\"]', '{\"per_rater\": 2}')")
        for i, (method, cls, seed) in enumerate([("vanilla", "cat", 7), ("robust", "cat", 7), ("vanilla", "dog", 8),
                                                 ("robust", "dog", 8)], 1):
            x("INSERT INTO images (id, study_id, file_name, sha256, class_label, class_name, seed, method, config, "
              f"width, height, created_at) VALUES ({i}, 1, 'f{i}.png', 'h', {seed}, '{cls}', {seed}, '{method}', "
              f"'{{}}', 8, 8, '{T0}')")
        x("INSERT INTO pairs (id, study_id, kind, class_label, class_name, seed, image_a_id, image_b_id, created_at) "
          f"VALUES (1, 1, 'main', 7, 'cat', 7, 1, 2, '{T0}'), (2, 1, 'main', 8, 'dog', 8, 3, 4, '{T0}')")
        x(f"INSERT INTO raters (id, study_id, invite_token, planned_total, created_at) VALUES (1, 1, 'tok', 2, '{T0}')")
        second = (3, 1) if bad_sides else (4, 3)  # bad: the dog pair shown with a cat image
        x("INSERT INTO impressions (id, token, rater_id, pair_id, left_image_id, right_image_id, shown_at) VALUES "
          f"(1, 'i1', 1, 1, 2, 1, '{T0}'), (2, 'i2', 1, 2, {second[0]}, {second[1]}, '{T0}')")
        x("INSERT INTO votes (id, impression_id, rater_id, pair_id, answer, answered_at, latency_ms) VALUES "
          f"(1, 1, 1, 1, 'L', '{T0}', 900), (2, 2, 1, 2, 'S', '{T0}', 1200)")


def rows(engine, table: str, columns: str = "*") -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.exec_driver_sql(f"SELECT {columns} FROM {table} ORDER BY id")]


def test_upgrade_from_0001_keeps_every_vote_and_adds_the_rules(tmp_path):
    from survey.db import make_engine, migrate

    engine = make_engine(tmp_path / "old.db")
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    seed_revision_0001(engine)
    before = {t: rows(engine, t) for t in ("studies", "images", "pairs", "raters", "votes")}
    shown = rows(engine, "impressions", "id, token, rater_id, pair_id, left_image_id, right_image_id, shown_at")
    engine.dispose()
    db = open_db(tmp_path / "old.db")  # what every command does: migrate to the newest schema
    assert current_revision(db.engine) == head_revision() != "0001"
    # the table rebuilds lost nothing (no cascade); later revisions add columns to raters (NULL for old rows)
    assert {t: [r[:len(before[t][0])] for r in rows(db.engine, t)] for t in before} == before
    assert rows(db.engine, "raters", "link_id, participant_id, platform_ids") == [(None, None, None)]
    assert rows(db.engine, "impressions", "id, token, rater_id, pair_id, left_image_id, right_image_id, shown_at") \
        == shown
    assert rows(db.engine, "impressions", "pair_image_a_id, pair_image_b_id") == [(1, 2), (3, 4)]  # back-filled
    with db.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert not c.exec_driver_sql("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'").all()
    with pytest.raises(IntegrityError):  # the new rule holds
        with db.engine.begin() as c:
            c.exec_driver_sql("UPDATE impressions SET left_image_id = 3 WHERE id = 1")
    with db.session() as s:
        assert [v.answer for v in s.scalars(select(Vote).order_by(Vote.id))] == ["L", "S"]
    # and back down and up again, still without losing a vote
    migrate(db.engine, "0001", downgrade=True)
    assert current_revision(db.engine) == "0001" and rows(db.engine, "votes") == before["votes"]
    migrate(db.engine)
    assert current_revision(db.engine) == head_revision() and rows(db.engine, "votes") == before["votes"]
    db.dispose()


def test_a_failing_migration_changes_nothing(tmp_path):
    from survey.db import make_engine, migrate

    engine = make_engine(tmp_path / "bad.db")
    migrate(engine, "0001")
    seed_revision_0001(engine, bad_sides=True)
    with engine.connect() as c:
        schema = c.exec_driver_sql("SELECT type, name, sql FROM sqlite_master ORDER BY name").all()
    before = {t: rows(engine, t) for t in ("studies", "images", "pairs", "raters", "impressions", "votes")}
    with pytest.raises(IntegrityError, match="sides_of_pair"):
        migrate(engine)
    assert current_revision(engine) == "0001"
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT type, name, sql FROM sqlite_master ORDER BY name").all() == schema
    assert {t: rows(engine, t) for t in before} == before
    with pytest.raises(IntegrityError):  # foreign keys are back on for this pooled connection
        with engine.begin() as c:
            c.exec_driver_sql(f"INSERT INTO raters (study_id, invite_token, planned_total, created_at) "
                              f"VALUES (99, 'x', 1, '{T0}')")
    engine.dispose()
