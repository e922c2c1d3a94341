"""ORM tables of the survey (SQLAlchemy 2).

One study holds images, pairs of images that share class and seed, raters, the
impressions each rater was shown and the votes they cast. The database itself
enforces the rules a result depends on:

- ``votes.impression_id`` is UNIQUE: one vote per showing (single-use token);
- ``UNIQUE(votes.rater_id, votes.pair_id)``: one vote per rater and pair (a repeated
  pair is its own ``pairs`` row of kind ``repeat``, so its vote does not collide);
- ``votes(impression_id, rater_id, pair_id)`` references the same triple of
  ``impressions``: a vote cannot claim a rater or pair other than the one shown;
- ``impressions(pair_id, pair_image_a_id, pair_image_b_id)`` references
  ``pairs(id, image_a_id, image_b_id)`` and a CHECK makes (left, right) either (a, b)
  or (b, a): a showing can only put the pair's own two images on the two sides, so
  the method a vote chose is always one of the pair's;
- both images of a pair belong to the pair's study and carry the pair's class name
  and seed (composite foreign keys into ``images``; a NULL seed is not compared);
- ``CHECK(answer IN ('L','R','S'))``, ``CHECK(kind IN ('main','gold','repeat'))``;
- ``UNIQUE(raters.study_id, raters.participant_id)``: one participation per
  crowdsourcing participant id and study (a second visit resumes the same rater); a
  rater has a participant id exactly when it came through the study link, and that link
  belongs to the rater's study (composite foreign key);
- a study link's completion URLs are http(s) (CHECK), its quota is positive;
- foreign keys everywhere (SQLite needs ``PRAGMA foreign_keys=ON``; see :mod:`survey.db`).

Times are stored in UTC (:class:`UTCDateTime` refuses naive datetimes).
The schema is created by the alembic migrations in ``survey/migrations``; a test
checks that they match these classes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (Boolean, CheckConstraint, DateTime, ForeignKey, ForeignKeyConstraint, Index, Integer,
                        MetaData, String, Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PAIR_KINDS = ("main", "gold", "repeat")
ANSWERS = ("L", "R", "S")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A timezone-aware datetime stored as UTC (naive on SQLite, timestamptz on PostgreSQL)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; the survey stores UTC times only (use survey.db.utcnow())")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class JSONText(TypeDecorator):
    """JSON stored as text (portable across SQLite and PostgreSQL, byte-for-byte readable)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True)

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    methods: Mapped[list] = mapped_column(JSONText(), nullable=False)
    settings: Mapped[dict] = mapped_column(JSONText(), nullable=False)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("id", "study_id", "class_name"),  # targets of the pairs' composite keys
        UniqueConstraint("id", "seed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    file_name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    class_label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_name: Mapped[str] = mapped_column(String(200), nullable=False)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(200), nullable=False)
    config: Mapped[dict] = mapped_column(JSONText(), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class Pair(Base):
    __tablename__ = "pairs"
    __table_args__ = (
        CheckConstraint("kind IN ('main', 'gold', 'repeat')", name="kind"),
        CheckConstraint("image_a_id <> image_b_id", name="distinct_images"),
        CheckConstraint("(kind = 'repeat') = (source_pair_id IS NOT NULL)", name="repeat_has_source"),
        CheckConstraint("(kind = 'gold') = (gold_image_id IS NOT NULL)", name="gold_has_answer"),
        UniqueConstraint("id", "image_a_id", "image_b_id"),  # target of impressions' composite key
        ForeignKeyConstraint(["image_a_id", "study_id", "class_name"],
                             ["images.id", "images.study_id", "images.class_name"], name="fk_pairs_image_a_of_pair"),
        ForeignKeyConstraint(["image_b_id", "study_id", "class_name"],
                             ["images.id", "images.study_id", "images.class_name"], name="fk_pairs_image_b_of_pair"),
        ForeignKeyConstraint(["image_a_id", "seed"], ["images.id", "images.seed"], name="fk_pairs_image_a_seed"),
        ForeignKeyConstraint(["image_b_id", "seed"], ["images.id", "images.seed"], name="fk_pairs_image_b_seed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(10), nullable=False)
    class_label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_name: Mapped[str] = mapped_column(String(200), nullable=False)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_a_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    image_b_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    source_pair_id: Mapped[int | None] = mapped_column(ForeignKey("pairs.id"), nullable=True, unique=True)
    gold_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


HTTP_URL = "({column} IS NULL OR {column} LIKE 'http://%' OR {column} LIKE 'https://%')"


class StudyLink(Base):
    """The one public link of a study for crowdsourcing platforms: ``/s/<secret>``; the
    participant id comes from the URL parameter ``id_param`` (and ``keep_params`` are
    stored with it); at most ``quota`` participants; a finished participant sees
    ``completion_code`` (or ``screenout_code`` when gold checks exclude them) and is sent
    to the matching URL when one is set."""

    __tablename__ = "study_links"
    __table_args__ = (
        UniqueConstraint("id", "study_id"),  # target of the raters' composite key
        CheckConstraint("quota IS NULL OR quota >= 1", name="quota_positive"),
        CheckConstraint(HTTP_URL.format(column="completion_url"), name="completion_url_http"),
        CheckConstraint(HTTP_URL.format(column="screenout_url"), name="screenout_url_http"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, unique=True)
    secret: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    id_param: Mapped[str] = mapped_column(String(64), nullable=False)
    keep_params: Mapped[list] = mapped_column(JSONText(), nullable=False)
    quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_code: Mapped[str] = mapped_column(String(64), nullable=False)
    completion_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    screenout_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    screenout_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_open: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class Rater(Base):
    __tablename__ = "raters"
    __table_args__ = (
        UniqueConstraint("study_id", "participant_id"),  # one participation per platform participant
        CheckConstraint("(link_id IS NULL) = (participant_id IS NULL)", name="participant_via_link"),
        ForeignKeyConstraint(["link_id", "study_id"], ["study_links.id", "study_links.study_id"],
                             name="fk_raters_link_of_study"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    invite_token: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    planned_total: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    consented_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    link_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    participant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    platform_ids: Mapped[dict | None] = mapped_column(JSONText(), nullable=True)  # the kept URL parameters


class Impression(Base):
    __tablename__ = "impressions"
    __table_args__ = (
        UniqueConstraint("rater_id", "pair_id"),
        UniqueConstraint("id", "rater_id", "pair_id"),
        CheckConstraint("left_image_id <> right_image_id", name="distinct_sides"),
        CheckConstraint("(left_image_id = pair_image_a_id AND right_image_id = pair_image_b_id) OR "
                        "(left_image_id = pair_image_b_id AND right_image_id = pair_image_a_id)", name="sides_of_pair"),
        ForeignKeyConstraint(["pair_id", "pair_image_a_id", "pair_image_b_id"],
                             ["pairs.id", "pairs.image_a_id", "pairs.image_b_id"], name="fk_impressions_pair_images"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), nullable=False)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), nullable=False, index=True)
    left_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    right_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    pair_image_a_id: Mapped[int] = mapped_column(Integer, nullable=False)  # copies of the pair's images (checked)
    pair_image_b_id: Mapped[int] = mapped_column(Integer, nullable=False)
    shown_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("impression_id"),
        UniqueConstraint("rater_id", "pair_id"),
        CheckConstraint("answer IN ('L', 'R', 'S')", name="answer"),
        CheckConstraint("latency_ms >= 0", name="latency"),
        ForeignKeyConstraint(["impression_id", "rater_id", "pair_id"],
                             ["impressions.id", "impressions.rater_id", "impressions.pair_id"],
                             name="fk_votes_impression_triple", ondelete="CASCADE"),
        Index("ix_votes_pair_id", "pair_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    impression_id: Mapped[int] = mapped_column(Integer, nullable=False)
    rater_id: Mapped[int] = mapped_column(Integer, nullable=False)
    pair_id: Mapped[int] = mapped_column(Integer, nullable=False)
    answer: Mapped[str] = mapped_column(String(1), nullable=False)
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    latency_ms: Mapped[int] = mapped_column(Integer, nullable=False)


__all__ = ["ANSWERS", "PAIR_KINDS", "Base", "Image", "Impression", "JSONText", "Pair", "Rater", "Study", "StudyLink",
           "UTCDateTime", "Vote"]
