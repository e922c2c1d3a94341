"""Crowdsourcing study links: one public link per study for Prolific, Amazon Mechanical
Turk, CloudResearch and the like.

    https://HOST/s/<secret>?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...

- ``<secret>`` is a per-study random string (192 bits): without it nobody reaches the
  study; a new one (``--new-secret``) retires the old link.
- The participant id is read from one URL parameter (``id_param``, Prolific's
  ``PROLIFIC_PID`` by default; e.g. ``workerId`` for MTurk); other parameters named in
  ``keep_params`` (``STUDY_ID``, ``SESSION_ID`` by default) are stored with the rater
  and exported with the votes. Ids are 1-64 letters, digits, ``_``, ``-`` or ``.``;
  anything else is refused and nothing is written.
- One participation per participant id and study, enforced by the database
  (``UNIQUE(raters.study_id, raters.participant_id)``): a second visit with the same id
  resumes the same rater.
- ``quota``: at most this many participants; the next new id gets a "study full" page.
- A participant who finishes sees the completion code and is sent on to the
  completion URL (http or https only) when one is set; a participant whom the study's
  declared gold rule (``--exclude-gold-below``) excludes gets the screen-out code / URL
  instead, when one is set.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from typing import Mapping, Sequence
from urllib.parse import quote, urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .db import SurveyDB, utcnow
from .flow import FlowError, UnknownToken, new_token, planned_total, rater_by_token
from .models import Impression, Pair, Rater, Study, StudyLink, Vote

PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SECRET = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_URL = 2000
PROLIFIC_ID_PARAM = "PROLIFIC_PID"
PROLIFIC_KEEP_PARAMS = ("STUDY_ID", "SESSION_ID")


class LinkError(FlowError):
    """A bad study link or a bad setting of one (400 unless a subclass says otherwise)."""


class StudyFull(FlowError):
    status = 409


class StudyClosed(FlowError):
    status = 410


def new_code() -> str:
    """A completion code platforms accept: 8 upper-case letters and digits."""
    alphabet = string.ascii_uppercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def check_url(url: str | None, what: str) -> str | None:
    """``url`` if it is an absolute http(s) URL without spaces or control characters."""
    if url is None or url == "":
        return None
    if len(url) > MAX_URL:
        raise LinkError(f"the {what} is longer than {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise LinkError(f"the {what} must be an http:// or https:// address, got {url!r}")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise LinkError(f"the {what} contains spaces or control characters")
    return url


def _check_code(code: str | None, what: str) -> str | None:
    if code is None:
        return None
    if not CODE.match(code):
        raise LinkError(f"the {what} must be 1-64 letters, digits, '_' or '-', got {code!r}")
    return code


def _check_param(name: str) -> str:
    if not isinstance(name, str) or not PARAM_NAME.match(name):
        raise LinkError(f"a URL parameter name is a letter then up to 63 letters, digits or '_', got {name!r}")
    return name


@dataclass(frozen=True)
class LinkInfo:
    """A study link as stored (no ORM object leaves the session)."""

    study: str
    secret: str
    id_param: str
    keep_params: tuple[str, ...]
    quota: int | None
    completion_code: str
    completion_url: str | None
    screenout_code: str | None
    screenout_url: str | None
    is_open: bool
    participants: int

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/s/{self.secret}"

    def prolific_url(self, base_url: str) -> str:
        """The link with Prolific's placeholders, ready to paste into the study's settings."""
        params = [self.id_param, *self.keep_params]
        return self.url(base_url) + "?" + "&".join(f"{p}={{{{%{p}%}}}}" for p in params)


def _info(session, link: StudyLink) -> LinkInfo:  # noqa: ANN001 - sqlalchemy Session
    study = session.get(Study, link.study_id)
    count = session.scalar(select(func.count()).select_from(Rater).where(Rater.link_id == link.id)) or 0
    return LinkInfo(study.name, link.secret, link.id_param, tuple(link.keep_params), link.quota, link.completion_code,
                    link.completion_url, link.screenout_code, link.screenout_url, link.is_open, count)


_UNSET = object()


def open_link(db: SurveyDB, study_id: int, *, id_param: str | None = None, keep_params: Sequence[str] | None = None,
              quota: int | None | object = _UNSET, completion_code: str | None = None,
              completion_url: str | None | object = _UNSET, screenout_code: str | None | object = _UNSET,
              screenout_url: str | None | object = _UNSET, new_secret: bool = False,
              is_open: bool = True) -> LinkInfo:
    """Create the study's link, or change the settings given (the others stay). Every
    value is checked before anything is written; a bad one raises :class:`LinkError`."""
    if id_param is not None:
        _check_param(id_param)
    if keep_params is not None:
        keep_params = [_check_param(p) for p in keep_params]
        if len(set(keep_params)) != len(keep_params):
            raise LinkError("a kept URL parameter is named twice")
    if quota is not _UNSET and quota is not None and (not isinstance(quota, int) or quota < 1):
        raise LinkError(f"the quota is a number of participants >= 1, got {quota!r}")
    _check_code(completion_code, "completion code")
    if screenout_code is not _UNSET:
        _check_code(screenout_code, "screen-out code")
    if completion_url is not _UNSET:
        completion_url = check_url(completion_url, "completion URL")
    if screenout_url is not _UNSET:
        screenout_url = check_url(screenout_url, "screen-out URL")
    with db.session() as session:
        if session.get(Study, study_id) is None:
            raise UnknownToken(f"no study with id {study_id}")
        link = session.scalar(select(StudyLink).where(StudyLink.study_id == study_id))
        if link is None:
            link = StudyLink(study_id=study_id, secret=new_token(), id_param=PROLIFIC_ID_PARAM,
                             keep_params=list(PROLIFIC_KEEP_PARAMS), quota=None, completion_code=new_code(),
                             completion_url=None, screenout_code=None, screenout_url=None, is_open=True,
                             created_at=utcnow())
            session.add(link)
        elif new_secret:
            link.secret = new_token()
        if id_param is not None:
            link.id_param = id_param
        if keep_params is not None:
            link.keep_params = list(keep_params)
        if link.id_param in link.keep_params:
            raise LinkError(f"{link.id_param} is the participant id parameter; do not also list it as a kept one")
        for name, value in (("quota", quota), ("completion_url", completion_url), ("screenout_code", screenout_code),
                            ("screenout_url", screenout_url)):
            if value is not _UNSET:
                setattr(link, name, value)
        if completion_code is not None:
            link.completion_code = completion_code
        link.is_open = is_open
        session.flush()
        return _info(session, link)


def link_info(db: SurveyDB, study_id: int) -> LinkInfo | None:
    with db.session() as session:
        link = session.scalar(select(StudyLink).where(StudyLink.study_id == study_id))
        return _info(session, link) if link is not None else None


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise LinkError(f"the URL names {name} more than once; open the study from the platform's page again")
    return values[0] if values else None


def _valid_id(value: str, name: str) -> str:
    if not PARTICIPANT_ID.match(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise LinkError(f"the {name} in this link is not a valid id ({len(value)} characters: {shown!r}); ids are "
                        "1-64 letters, digits, '_', '-' or '.'. Please open the study from the platform's page again")
    return value


def join(db: SurveyDB, secret: str, params: Mapping[str, Sequence[str]]) -> Rater:
    """The rater of the participant named in ``params`` (URL query parameters, each a
    list of values): the one already there (resume) or a new one. Refusals write
    nothing: unknown secret (404), closed link (410), a missing, repeated or malformed id
    (400), the quota reached (409)."""
    if not isinstance(secret, str) or not SECRET.match(secret):
        raise UnknownToken("this study link is not valid; check that it was copied completely")
    for _attempt in range(5):
        try:
            with db.session() as session:
                link = session.scalar(select(StudyLink).where(StudyLink.secret == secret))
                if link is None:
                    raise UnknownToken("this study link is not valid; check that it was copied completely")
                participant = _one(params, link.id_param)
                if participant is None or participant == "":
                    raise LinkError(f"this link lacks your participant id (the URL parameter {link.id_param}); "
                                    "please open the study from the recruiting platform's page")
                participant = _valid_id(participant, link.id_param)
                kept = {}
                for name in link.keep_params:
                    value = _one(params, name)
                    if value:
                        kept[name] = _valid_id(value, name)
                existing = session.scalar(select(Rater).where(Rater.study_id == link.study_id,
                                                              Rater.participant_id == participant))
                if existing is not None:
                    session.expunge(existing)
                    return existing
                if not link.is_open:
                    raise StudyClosed("this study is closed and takes no new participants; thank you for your "
                                      "interest")
                # Serialise joins of this link before counting (row lock on PostgreSQL, the write lock on SQLite)
                session.execute(update(StudyLink).where(StudyLink.id == link.id).values(quota=StudyLink.quota))
                joined = session.scalar(select(func.count()).select_from(Rater).where(Rater.link_id == link.id)) or 0
                if link.quota is not None and joined >= link.quota:
                    raise StudyFull(f"this study is full: all {link.quota} places are taken. Please return the study "
                                    "on the platform (do not submit it); thank you for your interest")
                study = session.get(Study, link.study_id)
                rater = Rater(study_id=link.study_id, invite_token=new_token(), planned_total=planned_total(
                    study.settings), created_at=utcnow(), link_id=link.id, participant_id=participant,
                    platform_ids=kept or None)
                session.add(rater)
                session.flush()
                session.expunge(rater)
                return rater
        except IntegrityError:
            continue  # the same participant joined at the same moment: the next round finds their rater
    raise FlowError("the server is busy; reload the page")


@dataclass(frozen=True)
class Completion:
    code: str
    url: str | None
    screened_out: bool


def _gold_accuracy(session, rater_id: int) -> float | None:  # noqa: ANN001 - sqlalchemy Session
    rows = session.execute(select(Vote.answer, Impression.left_image_id, Impression.right_image_id, Pair.gold_image_id)
                           .join(Impression, Impression.id == Vote.impression_id)
                           .join(Pair, Pair.id == Vote.pair_id)
                           .where(Vote.rater_id == rater_id, Pair.kind == "gold")).all()
    if not rows:
        return None
    correct = sum(1 for answer, left, right, gold in rows
                  if (answer == "L" and left == gold) or (answer == "R" and right == gold))
    return correct / len(rows)


def completion(db: SurveyDB, invite_token: str) -> Completion | None:
    """What a finished participant of a study link gets (None for a personal invitation):
    the screen-out code when the study declared a gold rule, this rater's gold accuracy
    is below it and the link has a screen-out code; the completion code otherwise."""
    from .quality import ExclusionRules

    with db.session() as session:
        rater = rater_by_token(session, invite_token)
        if rater.link_id is None:
            return None
        link = session.get(StudyLink, rater.link_id)
        study = session.get(Study, rater.study_id)
        if link.screenout_code:
            rule = ExclusionRules.from_dict(study.settings.get("exclusions")).min_gold_accuracy
            accuracy = _gold_accuracy(session, rater.id) if rule is not None else None
            if accuracy is not None and accuracy < rule:
                return Completion(link.screenout_code, link.screenout_url, True)
        return Completion(link.completion_code, link.completion_url, False)


def participant_query(link: LinkInfo, participant: str, **kept: str) -> str:
    """The query string a platform would append (for tests and documentation)."""
    values = {link.id_param: participant, **kept}
    return "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in values.items())


__all__ = ["Completion", "LinkError", "LinkInfo", "PROLIFIC_ID_PARAM", "PROLIFIC_KEEP_PARAMS", "StudyClosed",
           "StudyFull", "check_url", "completion", "join", "link_info", "new_code", "open_link", "participant_query"]
