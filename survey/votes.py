"""The votes table: one row per answer, the common input of every analysis.

The same table comes from a study database (:func:`votes_from_db`) or from a CSV file
(:func:`read_votes_csv`), for instance votes collected on a crowdsourcing platform,
so both are analysed by the same code. :func:`write_votes_csv` exports it.

CSV columns (header row required, UTF-8, comma separated; extra columns are kept
and ignored):

required
    ``pair_id``       identifier of the pair (any text); one pair = two images of the
                      same class and seed; every row of a pair names the same two methods
    ``rater_id``      identifier of the rater (any text)
    ``left_method``   method of the image shown on the left in this showing
    ``right_method``  method of the image shown on the right
    ``answer``        ``L``, ``R`` or ``S`` (same / no preference), as clicked
optional
    ``pair_kind``     ``main`` (default), ``gold`` (attention check) or ``repeat``
                      (a main pair shown again to the same rater, sides flipped)
    ``source_pair_id``  for ``repeat`` rows: the ``pair_id`` of the repeated main pair
    ``gold_correct_method``  for ``gold`` rows: the method of the intact image
    ``latency_ms``    milliseconds from showing to answer (quality flags)
    ``class_label``, ``class_name``, ``seed``, ``method_a``, ``method_b``, ``study``,
    ``vote_id``, ``impression_id``, ``shown_at``, ``answered_at`` (ISO 8601, UTC)
    ``participant_id``  the crowdsourcing platform's id of the rater (study link), e.g.
                      Prolific's PROLIFIC_PID; empty for personal invitations
    ``platform_ids``  the other URL parameters kept with it, as a JSON object, e.g.
                      ``{"SESSION_ID": "...", "STUDY_ID": "..."}``
    ``choice``        derived: the chosen method or ``same``; checked when present

Derived column added on reading: ``choice`` (left_method for L, right_method for R,
``same`` for S).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

import pandas as pd

REQUIRED_COLUMNS = ("pair_id", "rater_id", "left_method", "right_method", "answer")
OPTIONAL_COLUMNS = ("pair_kind", "source_pair_id", "gold_correct_method", "latency_ms", "class_label", "class_name",
                    "seed", "method_a", "method_b", "study", "vote_id", "impression_id", "shown_at", "answered_at",
                    "participant_id", "platform_ids")
EXPORT_COLUMNS = ("study", "vote_id", "impression_id", "pair_id", "pair_kind", "source_pair_id", "class_label",
                  "class_name", "seed", "method_a", "method_b", "left_method", "right_method", "answer", "choice",
                  "gold_correct_method", "rater_id", "participant_id", "platform_ids", "shown_at", "answered_at",
                  "latency_ms")
SAME = "same"


class VotesError(ValueError):
    """The votes table is not usable; the message names the rows and what to fix."""


def _rows(mask: pd.Series, votes: pd.DataFrame, limit: int = 5) -> str:
    idx = list(votes.index[mask][:limit])
    more = int(mask.sum()) - len(idx)
    return ", ".join(str(i + 2) for i in idx) + (f" and {more} more" if more > 0 else "")


def normalise_votes(frame: pd.DataFrame, source: str = "votes table") -> pd.DataFrame:
    """Validate a raw votes table and add the derived ``choice`` column.

    Identifiers become text, empty optional columns get their defaults, and every
    problem is reported with CSV line numbers (header = line 1)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise VotesError(f"{source} lacks the column(s) {missing}; required: {list(REQUIRED_COLUMNS)} "
                         "(see the CSV format in survey/votes.py or the README)")
    votes = frame.copy().reset_index(drop=True)
    for column in ("pair_id", "rater_id", "left_method", "right_method", "answer", "source_pair_id",
                   "gold_correct_method", "pair_kind", "choice"):
        if column in votes.columns:
            votes[column] = votes[column].map(lambda v: "" if pd.isna(v) else str(v).strip())
    for column in REQUIRED_COLUMNS:
        empty = votes[column] == ""
        if empty.any():
            raise VotesError(f"{source}: empty {column} on line(s) {_rows(empty, votes)}")
    votes["answer"] = votes["answer"].str.upper()
    bad = ~votes["answer"].isin(["L", "R", "S"])
    if bad.any():
        raise VotesError(f"{source}: answer must be L, R or S; line(s) {_rows(bad, votes)} have "
                         f"{sorted(set(votes.loc[bad, 'answer']))[:5]}")
    same_side = votes["left_method"] == votes["right_method"]
    if same_side.any():
        raise VotesError(f"{source}: left_method equals right_method on line(s) {_rows(same_side, votes)}")
    if "pair_kind" not in votes.columns:
        votes["pair_kind"] = "main"
    votes["pair_kind"] = votes["pair_kind"].replace("", "main").str.lower()
    bad = ~votes["pair_kind"].isin(["main", "gold", "repeat"])
    if bad.any():
        raise VotesError(f"{source}: pair_kind must be main, gold or repeat; see line(s) {_rows(bad, votes)}")
    for column in ("source_pair_id", "gold_correct_method"):
        if column not in votes.columns:
            votes[column] = ""
    no_source = (votes["pair_kind"] == "repeat") & (votes["source_pair_id"] == "")
    if no_source.any():
        raise VotesError(f"{source}: repeat rows need source_pair_id; line(s) {_rows(no_source, votes)}")
    gold = votes["pair_kind"] == "gold"
    bad_gold = gold & ~((votes["gold_correct_method"] == votes["left_method"])
                        | (votes["gold_correct_method"] == votes["right_method"]))
    if bad_gold.any():
        raise VotesError(f"{source}: gold rows need gold_correct_method equal to left_method or right_method; "
                         f"line(s) {_rows(bad_gold, votes)}")
    if "latency_ms" in votes.columns:
        votes["latency_ms"] = pd.to_numeric(votes["latency_ms"], errors="coerce")
    else:
        votes["latency_ms"] = float("nan")
    choice = votes["left_method"].where(votes["answer"] == "L", votes["right_method"])
    choice = choice.where(votes["answer"] != "S", SAME)
    if "choice" in votes.columns and (votes["choice"] != "").any():
        given = votes["choice"]
        wrong = (given != "") & (given != choice)
        if wrong.any():
            raise VotesError(f"{source}: choice disagrees with answer and sides on line(s) {_rows(wrong, votes)}")
    votes["choice"] = choice
    left, right = votes["left_method"], votes["right_method"]
    methods = (left.where(left < right, right) + "\x1f" + right.where(left < right, left))
    per_pair = methods.groupby(votes["pair_id"]).nunique()
    mixed = per_pair[per_pair > 1]
    if len(mixed):
        raise VotesError(f"{source}: pair(s) {list(mixed.index[:5])} appear with different method pairs; every row "
                         "of a pair must show the same two methods")
    duplicated = votes.duplicated(["rater_id", "pair_id"], keep=False)
    if duplicated.any():
        raise VotesError(f"{source}: rater answered the same pair more than once on line(s) "
                         f"{_rows(duplicated, votes)}; give repeats their own pair_id with pair_kind=repeat")
    return votes


def read_votes_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate a votes CSV (format in the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise VotesError(f"votes file {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise VotesError(f"{path} is not a readable UTF-8 CSV file: {exc}") from exc
    except pd.errors.EmptyDataError:
        raise VotesError(f"{path} is empty; it needs a header row with {list(REQUIRED_COLUMNS)}") from None
    return normalise_votes(frame, str(path))


def write_votes_csv(votes: pd.DataFrame, path_or_buffer) -> None:  # noqa: ANN001 - path or text stream
    """Write the table with the export columns first (then any extra columns)."""
    columns = [c for c in EXPORT_COLUMNS if c in votes.columns] + [c for c in votes.columns if c not in EXPORT_COLUMNS]
    votes.to_csv(path_or_buffer, columns=columns, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


def votes_from_records(records: Iterable[dict]) -> pd.DataFrame:
    """A validated table from dictionaries (tests, other platforms' APIs)."""
    return normalise_votes(pd.DataFrame(list(records)))


def votes_from_db(session, study_id: int) -> pd.DataFrame:  # noqa: ANN001 - sqlalchemy Session
    """Every vote of a study, joined with its showing, pair, images and rater."""
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from .models import Image, Impression, Pair, Rater, Study, Vote

    study = session.get(Study, study_id)
    if study is None:
        raise VotesError(f"no study with id {study_id}")
    left, right, img_a, img_b, gold = (aliased(Image) for _ in range(5))
    query = (select(Vote.id, Vote.impression_id, Vote.pair_id, Pair.kind, Pair.source_pair_id, Pair.class_label,
                    Pair.class_name, Pair.seed, img_a.method, img_b.method, left.method, right.method, Vote.answer,
                    gold.method, Vote.rater_id, Rater.participant_id, Rater.platform_ids, Impression.shown_at,
                    Vote.answered_at, Vote.latency_ms)
             .join(Impression, Impression.id == Vote.impression_id)
             .join(Rater, Rater.id == Vote.rater_id)
             .join(Pair, Pair.id == Vote.pair_id)
             .join(img_a, img_a.id == Pair.image_a_id).join(img_b, img_b.id == Pair.image_b_id)
             .join(left, left.id == Impression.left_image_id).join(right, right.id == Impression.right_image_id)
             .outerjoin(gold, gold.id == Pair.gold_image_id)
             .where(Pair.study_id == study_id).order_by(Vote.id))
    columns = ["vote_id", "impression_id", "pair_id", "pair_kind", "source_pair_id", "class_label", "class_name",
               "seed", "method_a", "method_b", "left_method", "right_method", "answer", "gold_correct_method",
               "rater_id", "participant_id", "platform_ids", "shown_at", "answered_at", "latency_ms"]
    rows = [list(r) for r in session.execute(query)]
    frame = pd.DataFrame(rows, columns=columns)
    frame.insert(0, "study", study.name)
    for column in ("shown_at", "answered_at"):
        frame[column] = frame[column].map(lambda t: t.isoformat(timespec="milliseconds") if t is not None else "")
    for column in ("source_pair_id", "class_label", "seed"):
        frame[column] = frame[column].map(lambda v: "" if v is None or pd.isna(v) else str(int(v)))
    frame["participant_id"] = frame["participant_id"].map(lambda v: v or "")
    frame["platform_ids"] = frame["platform_ids"].map(lambda v: json.dumps(v, sort_keys=True) if v else "")
    if frame.empty:
        for column in REQUIRED_COLUMNS:
            frame[column] = frame[column].astype(str)
        frame["choice"] = pd.Series(dtype=str)
        return frame
    return normalise_votes(frame, f"study {study.name!r}")


__all__ = ["EXPORT_COLUMNS", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "SAME", "VotesError", "normalise_votes",
           "read_votes_csv", "votes_from_db", "votes_from_records", "write_votes_csv"]
