"""The rater flow: invitations, which pair to show next, and recording a vote.

Everything a rater can influence is checked here, on the server:

- identity comes from the invite token in the link, never from cookies;
- the server picks the pair (least-answered main pairs the rater has not seen, gold
  and repeat items mixed in at the study's rates) and the sides (per pair, the image
  shown left less often goes left; a repeat is shown with the rater's earlier sides
  flipped);
- every showing (impression) has a single-use random token; a vote names only that
  token and L / R / S, and the database refuses a second vote for the same impression
  or the same rater and pair;
- a rater who comes back sees their open impression again (resume), then goes on.
"""

from __future__ import annotations

import random
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import SurveyDB, utcnow
from .models import ANSWERS, Image, Impression, Pair, Rater, Study, Vote

TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_NAME = 200
REPEAT_GAP = 3  # a repeat is not shown within this many answers of its source pair
_random = random.SystemRandom()


class FlowError(Exception):
    """A refused rater action; ``status`` is the HTTP status the web layer answers with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownToken(FlowError):
    status = 404


class WrongRater(FlowError):
    status = 403


class AlreadyAnswered(FlowError):
    status = 409


class BadAnswer(FlowError):
    status = 422


class NotConsented(FlowError):
    status = 409


def valid_token(token: str) -> bool:
    return isinstance(token, str) and bool(TOKEN.match(token))


def new_token() -> str:
    return secrets.token_urlsafe(24)  # 32 characters, 192 random bits


def clean_rater_name(name: str | None) -> str | None:
    """A rater name as given (quotes and any text allowed; it is stored as a bound
    parameter and escaped on output) or None; refuses control characters and names
    longer than 200 characters."""
    if name is None:
        return None
    name = unicodedata.normalize("NFC", str(name)).strip()
    if not name:
        return None
    if len(name) > MAX_NAME:
        raise FlowError(f"a rater name is at most {MAX_NAME} characters (got {len(name)})")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in name):
        raise FlowError("a rater name cannot contain control or invisible characters")
    return name


def planned_total(settings: dict) -> int:
    return int(settings["per_rater"]) + int(settings.get("gold_per_rater", 0)) + int(settings.get("repeat_per_rater", 0))


def invite(db: SurveyDB, study_id: int, count: int = 1, names: Sequence[str | None] | None = None) -> list[Rater]:
    """Create raters with fresh invite tokens: ``names`` (one rater each) or ``count``
    unnamed raters. Everything is validated before anything is written."""
    cleaned = [clean_rater_name(n) for n in names] if names else [None] * count
    if not cleaned or len(cleaned) > 10_000:
        raise FlowError("invite between 1 and 10,000 raters at a time")
    now = utcnow()
    with db.session() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise UnknownToken(f"no study with id {study_id}")
        raters = [Rater(study_id=study_id, name=n, invite_token=new_token(), planned_total=planned_total(study.settings),
                        created_at=now) for n in cleaned]
        session.add_all(raters)
    return raters


def rater_by_token(session: Session, token: str) -> Rater:
    if not valid_token(token):
        raise UnknownToken("this link is not valid; check that it was copied completely")
    rater = session.scalar(select(Rater).where(Rater.invite_token == token))
    if rater is None:
        raise UnknownToken("this link is not valid; check that it was copied completely")
    return rater


def consent(db: SurveyDB, token: str) -> None:
    with db.session() as session:
        rater = rater_by_token(session, token)
        if rater.consented_at is None:
            rater.consented_at = utcnow()


@dataclass(frozen=True)
class Showing:
    """What the rater page shows: one pair, its class name, the impression token and the
    progress (``position`` of ``total``, counting from 1)."""

    token: str
    class_name: str
    position: int
    total: int
    question: str


@dataclass(frozen=True)
class RaterState:
    status: str  # "consent", "pair" or "finished"
    answered: int
    total: int
    rater_name: str | None
    showing: Showing | None = None


def _answered_by_kind(session: Session, rater_id: int) -> dict[str, int]:
    rows = session.execute(select(Pair.kind, func.count()).select_from(Vote).join(Pair, Pair.id == Vote.pair_id)
                           .where(Vote.rater_id == rater_id).group_by(Pair.kind)).all()
    return {kind: n for kind, n in rows}


def _open_impression(session: Session, rater_id: int) -> Impression | None:
    return session.scalar(select(Impression).outerjoin(Vote, Vote.impression_id == Impression.id)
                          .where(Impression.rater_id == rater_id, Vote.id.is_(None)).order_by(Impression.id).limit(1))


def _least_shown(session: Session, study_id: int, rater_id: int, kind: str) -> list[int]:
    """Pairs of ``kind`` the rater has not been shown, least-answered first (then least
    shown), ties in random order."""
    seen = select(Impression.pair_id).where(Impression.rater_id == rater_id)
    votes = (select(Vote.pair_id, func.count().label("n")).group_by(Vote.pair_id)).subquery()
    shows = (select(Impression.pair_id, func.count().label("n")).group_by(Impression.pair_id)).subquery()
    rows = session.execute(
        select(Pair.id, func.coalesce(votes.c.n, 0), func.coalesce(shows.c.n, 0))
        .outerjoin(votes, votes.c.pair_id == Pair.id).outerjoin(shows, shows.c.pair_id == Pair.id)
        .where(Pair.study_id == study_id, Pair.kind == kind, Pair.id.not_in(seen))).all()
    _random.shuffle(rows)
    rows.sort(key=lambda r: (r[1], r[2]))
    return [r[0] for r in rows]


def _repeat_candidates(session: Session, study_id: int, rater_id: int, gap: int = REPEAT_GAP) -> list[int]:
    """Repeat pairs whose source main pair this rater answered (preferably not in their
    last ``gap`` answers) and whose repeat they have not been shown."""
    recent = [r[0] for r in session.execute(select(Vote.pair_id).where(Vote.rater_id == rater_id)
                                            .order_by(Vote.id.desc()).limit(gap)).all()] if gap else []
    seen = select(Impression.pair_id).where(Impression.rater_id == rater_id)
    answered = select(Vote.pair_id).where(Vote.rater_id == rater_id)
    rows = session.scalars(select(Pair.id).where(Pair.study_id == study_id, Pair.kind == "repeat",
                                                 Pair.source_pair_id.in_(answered),
                                                 Pair.source_pair_id.not_in(recent or [-1]),
                                                 Pair.id.not_in(seen))).all()
    return list(rows)


def _sides(session: Session, pair: Pair, rater_id: int) -> tuple[int, int]:
    """(left image id, right image id) for a new showing of ``pair``."""
    if pair.kind == "repeat":
        earlier = session.scalar(select(Impression).where(Impression.rater_id == rater_id,
                                                          Impression.pair_id == pair.source_pair_id))
        if earlier is not None:
            return earlier.right_image_id, earlier.left_image_id
    a_left = session.scalar(select(func.count()).select_from(Impression)
                            .where(Impression.pair_id == pair.id, Impression.left_image_id == pair.image_a_id)) or 0
    b_left = session.scalar(select(func.count()).select_from(Impression)
                            .where(Impression.pair_id == pair.id, Impression.left_image_id == pair.image_b_id)) or 0
    a_first = a_left < b_left or (a_left == b_left and _random.random() < 0.5)
    return (pair.image_a_id, pair.image_b_id) if a_first else (pair.image_b_id, pair.image_a_id)


def _choose_pair(session: Session, study: Study, rater: Rater) -> int | None:
    answered = _answered_by_kind(session, rater.id)
    settings = study.settings
    quota = {"main": int(settings["per_rater"]), "gold": int(settings.get("gold_per_rater", 0)),
             "repeat": int(settings.get("repeat_per_rater", 0))}
    remaining = {k: quota[k] - answered.get(k, 0) for k in quota}
    kinds = [k for k in ("main", "gold", "repeat") if remaining[k] > 0]
    while kinds:
        weights = [remaining[k] for k in kinds]
        kind = _random.choices(kinds, weights)[0]
        if kind == "repeat":
            gap = REPEAT_GAP if remaining["main"] > 0 else 0  # near the end, a recent source is fine
            candidates = _repeat_candidates(session, study.id, rater.id, gap)
        else:
            candidates = _least_shown(session, study.id, rater.id, kind)
        if candidates:
            return candidates[0]
        if kind == "repeat" and remaining["main"] > 0:
            # repeats become possible after more main answers; show a main pair now
            kinds = [k for k in kinds if k != "repeat"]
            continue
        kinds.remove(kind)
    return None


def _showing(session: Session, impression: Impression, rater: Rater, study: Study, answered: int) -> Showing:
    pair = session.get(Pair, impression.pair_id)
    return Showing(impression.token, pair.class_name, answered + 1, max(rater.planned_total, answered + 1),
                   study.settings.get("question", ""))


def state(db: SurveyDB, token: str) -> RaterState:
    """What the rater with invite ``token`` sees now; creates the next impression when
    none is open (in one short transaction, retried if a concurrent request raced it)."""
    for _attempt in range(5):
        try:
            with db.session() as session:
                rater = rater_by_token(session, token)
                study = session.get(Study, rater.study_id)
                answered = session.scalar(select(func.count()).select_from(Vote).where(Vote.rater_id == rater.id)) or 0
                if rater.consented_at is None:
                    return RaterState("consent", answered, rater.planned_total, rater.name)
                if answered >= rater.planned_total:
                    return RaterState("finished", answered, answered, rater.name)
                impression = _open_impression(session, rater.id)
                if impression is None:
                    # Serialise this rater's requests before choosing: two reloads at once must not open two
                    # showings. The no-op UPDATE takes the rater's row lock (PostgreSQL) or the write lock
                    # (SQLite) until commit; then look again, since a concurrent request may have just finished.
                    session.execute(update(Rater).where(Rater.id == rater.id)
                                    .values(planned_total=Rater.planned_total))
                    answered = session.scalar(select(func.count()).select_from(Vote)
                                              .where(Vote.rater_id == rater.id)) or 0
                    if answered >= rater.planned_total:
                        return RaterState("finished", answered, answered, rater.name)
                    impression = _open_impression(session, rater.id)
                if impression is None:
                    pair_id = _choose_pair(session, study, rater)
                    if pair_id is None:
                        return RaterState("finished", answered, answered, rater.name)
                    pair = session.get(Pair, pair_id)
                    left, right = _sides(session, pair, rater.id)
                    impression = Impression(token=new_token(), rater_id=rater.id, pair_id=pair_id, left_image_id=left,
                                            right_image_id=right, pair_image_a_id=pair.image_a_id,
                                            pair_image_b_id=pair.image_b_id, shown_at=utcnow())
                    session.add(impression)
                    session.flush()
                return RaterState("pair", answered, rater.planned_total, rater.name,
                                  _showing(session, impression, rater, study, answered))
        except IntegrityError:
            continue  # a concurrent request of the same rater took that pair; choose again
    raise FlowError("the server is busy; reload the page")


@dataclass(frozen=True)
class Recorded:
    vote_id: int
    impression_token: str
    answer: str
    answered_at: datetime
    latency_ms: int


def record_vote(db: SurveyDB, invite_token: str, impression_token: str, answer: str) -> Recorded:
    """Store the answer to one impression. Refusals (nothing is written): unknown invite
    or impression token, an impression of another rater, an answer other than L / R / S,
    an impression already answered. The vote is committed before this returns."""
    if not isinstance(answer, str) or answer not in ANSWERS:
        raise BadAnswer("the answer must be L, R or S")
    if not valid_token(impression_token):
        raise UnknownToken("unknown or malformed impression token; reload the page")
    try:
        with db.session() as session:
            rater = rater_by_token(session, invite_token)
            impression = session.scalar(select(Impression).where(Impression.token == impression_token))
            if impression is None:
                raise UnknownToken("unknown impression token; reload the page")
            if impression.rater_id != rater.id:
                raise WrongRater("this pair was shown to another rater")
            if session.scalar(select(Vote.id).where(Vote.impression_id == impression.id)) is not None:
                raise AlreadyAnswered("this pair was already answered; your first answer counts")
            now = utcnow()
            latency = max(0, int((now - impression.shown_at).total_seconds() * 1000))
            vote = Vote(impression_id=impression.id, rater_id=rater.id, pair_id=impression.pair_id, answer=answer,
                        answered_at=now, latency_ms=latency)
            session.add(vote)
            session.flush()
            result = Recorded(vote.id, impression_token, answer, now, latency)
    except IntegrityError:
        raise AlreadyAnswered("this pair was already answered; your first answer counts") from None
    return result


def image_for(db: SurveyDB, impression_token: str, side: str) -> Image:
    """The image shown on ``side`` ("left" / "right") of an impression."""
    if side not in ("left", "right") or not valid_token(impression_token):
        raise UnknownToken("no such image")
    with db.session() as session:
        impression = session.scalar(select(Impression).where(Impression.token == impression_token))
        if impression is None:
            raise UnknownToken("no such image")
        image = session.get(Image, impression.left_image_id if side == "left" else impression.right_image_id)
        session.expunge(image)
        return image


def invite_links(raters: Sequence[Rater], base_url: str) -> list[str]:
    """Full rater links for a server at ``base_url`` (e.g. http://host:8000/survey)."""
    return [f"{base_url.rstrip('/')}/r/{r.invite_token}" for r in raters]


__all__ = ["AlreadyAnswered", "BadAnswer", "FlowError", "RaterState", "Recorded", "Showing", "UnknownToken",
           "WrongRater", "clean_rater_name", "consent", "image_for", "invite", "invite_links", "new_token",
           "record_vote", "state", "valid_token"]
