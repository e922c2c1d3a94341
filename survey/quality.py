"""Rater quality and pre-declared exclusion rules.

Per rater: number of answers, shares of L / R / S, median latency, accuracy on gold
pairs (attention checks: one image intact, the other broken or of the wrong class;
correct = the intact image chosen, "same" counts as wrong) and consistency on repeat
pairs (a main pair shown again with sides flipped; consistent = the same method, or
"same" both times).

Flags (reported, never applied silently):
- ``one_sided``: at least ``min_answers`` answers and all of them L, or all R;
- ``fast``: median latency below ``fast_ms`` milliseconds.

Exclusion rules are declared before the analysis (in the study's settings when it is
created, or on the report's command line) and every report lists them with what they
removed. Rules apply to whole raters: all their answers are dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pandas is imported where it is used: the CLI and the server start without it
    import pandas as pd

DEFAULT_FAST_MS = 800.0
DEFAULT_MIN_ANSWERS_FOR_FLAGS = 5


@dataclass(frozen=True)
class ExclusionRules:
    """Rater exclusion rules; None / False switches a rule off."""

    min_gold_accuracy: float | None = None       # drop raters whose gold accuracy is below this (0..1)
    min_median_latency_ms: float | None = None   # drop raters whose median latency is below this
    exclude_one_sided: bool = False              # drop raters flagged one_sided
    min_repeat_consistency: float | None = None  # drop raters whose repeat consistency is below this
    exclude_raters: tuple[str, ...] = field(default_factory=tuple)  # named raters

    def __post_init__(self) -> None:
        for name in ("min_gold_accuracy", "min_repeat_consistency"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} is a fraction in [0, 1], got {value}")
        if self.min_median_latency_ms is not None and self.min_median_latency_ms < 0:
            raise ValueError("min_median_latency_ms must be >= 0")
        object.__setattr__(self, "exclude_raters", tuple(str(r) for r in self.exclude_raters))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "ExclusionRules":
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown exclusion rule(s) {sorted(unknown)}; known: {sorted(known)}")
        if "exclude_raters" in values:
            values["exclude_raters"] = tuple(values["exclude_raters"] or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["exclude_raters"] = list(self.exclude_raters)
        return values

    def describe(self) -> list[str]:
        lines = []
        if self.min_gold_accuracy is not None:
            lines.append(f"gold accuracy below {self.min_gold_accuracy:.0%} (raters with gold answers)")
        if self.min_median_latency_ms is not None:
            lines.append(f"median latency below {self.min_median_latency_ms:g} ms")
        if self.exclude_one_sided:
            lines.append("always the same side (one_sided flag)")
        if self.min_repeat_consistency is not None:
            lines.append(f"repeat consistency below {self.min_repeat_consistency:.0%} (raters with repeats)")
        if self.exclude_raters:
            lines.append(f"named raters: {', '.join(self.exclude_raters)}")
        return lines or ["none"]


def rater_table(votes: pd.DataFrame, fast_ms: float = DEFAULT_FAST_MS,
                min_answers: int = DEFAULT_MIN_ANSWERS_FOR_FLAGS) -> pd.DataFrame:
    """One row per rater (index rater_id): answers, share_L/R/S, median_latency_ms,
    gold_answers, gold_accuracy, repeat_answers, repeat_consistency, one_sided, fast."""
    import pandas as pd

    raters = sorted(votes["rater_id"].unique(), key=str)
    table = pd.DataFrame(index=pd.Index(raters, name="rater_id"))
    grouped = votes.groupby("rater_id")
    table["answers"] = grouped.size()
    for answer in ("L", "R", "S"):
        table[f"share_{answer}"] = grouped["answer"].apply(lambda a, x=answer: float((a == x).mean()))
    table["median_latency_ms"] = grouped["latency_ms"].median()
    gold = votes[votes["pair_kind"] == "gold"]
    correct = (gold["choice"] == gold["gold_correct_method"])
    table["gold_answers"] = gold.groupby("rater_id").size().reindex(table.index).fillna(0).astype(int)
    table["gold_accuracy"] = correct.groupby(gold["rater_id"]).mean().reindex(table.index)
    consistency = repeat_consistency(votes)
    table["repeat_answers"] = consistency["repeats"].reindex(table.index).fillna(0).astype(int)
    table["repeat_consistency"] = consistency["consistency"].reindex(table.index)
    table["one_sided"] = (table["answers"] >= min_answers) & ((table["share_L"] == 1) | (table["share_R"] == 1))
    table["fast"] = table["median_latency_ms"].lt(fast_ms).fillna(False).astype(bool)
    return table


def repeat_consistency(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater: number of repeat answers whose source pair they also answered, and the
    share where both answers chose the same method (or both "same")."""
    import pandas as pd

    repeats = votes[votes["pair_kind"] == "repeat"]
    originals = votes[votes["pair_kind"] == "main"].set_index(["rater_id", "pair_id"])["choice"]
    rows = []
    for rater, source, choice in zip(repeats["rater_id"], repeats["source_pair_id"], repeats["choice"]):
        first = originals.get((rater, source))
        if first is not None:
            rows.append((rater, first == choice))
    frame = pd.DataFrame(rows, columns=["rater_id", "same"])
    if frame.empty:
        return pd.DataFrame(columns=["repeats", "consistency"], index=pd.Index([], name="rater_id"))
    grouped = frame.groupby("rater_id")["same"]
    return pd.DataFrame({"repeats": grouped.size(), "consistency": grouped.mean()})


@dataclass
class ExclusionReport:
    rules: list[str]
    source: str
    excluded: dict[str, list[str]]   # rule -> raters it removed
    raters_before: int
    raters_after: int
    answers_before: int
    answers_after: int
    # one entry per (rater, rule) that removed them: rater, rule, value, threshold, text
    details: list[dict[str, Any]] = field(default_factory=list)
    applied: bool = True             # False: listed only (report --no-exclusions), nothing was dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fraction(x: float) -> str:
    return f"{100 * x:.1f} %".replace(".0 %", " %")


def _explain(rule: str, row: pd.Series, rules: ExclusionRules) -> dict[str, Any]:
    """What made ``rule`` remove the rater of ``row`` (a :func:`rater_table` row): the
    value that broke it, the threshold and one sentence saying so."""
    if rule == "gold accuracy":
        value, n = float(row["gold_accuracy"]), int(row["gold_answers"])
        correct = int(round(value * n))
        return {"value": value, "threshold": rules.min_gold_accuracy,
                "text": f"gold accuracy {_fraction(value)} ({correct} of {n} gold answers correct) is below "
                        f"{_fraction(rules.min_gold_accuracy)}"}
    if rule == "median latency":
        value = float(row["median_latency_ms"])
        return {"value": value, "threshold": rules.min_median_latency_ms,
                "text": f"median answer time {value:g} ms is below {rules.min_median_latency_ms:g} ms"}
    if rule == "one sided":
        side = "Left" if row["share_L"] == 1 else "Right"
        return {"value": side, "threshold": None,
                "text": f"answered {side} to all {int(row['answers'])} pairs"}
    if rule == "repeat consistency":
        value, n = float(row["repeat_consistency"]), int(row["repeat_answers"])
        return {"value": value, "threshold": rules.min_repeat_consistency,
                "text": f"repeat consistency {_fraction(value)} ({int(round(value * n))} of {n} repeated pairs "
                        f"answered alike) is below {_fraction(rules.min_repeat_consistency)}"}
    return {"value": None, "threshold": None, "text": "named in the exclusion list"}


def apply_exclusions(votes: pd.DataFrame, rules: ExclusionRules, source: str = "none declared",
                     table: pd.DataFrame | None = None, apply: bool = True) -> tuple[pd.DataFrame, ExclusionReport]:
    """Drop whole raters by ``rules``; return the kept votes and what was removed by which
    rule (a rater hit by several rules is listed under each), each removal with the value
    that broke the rule. ``apply=False`` lists whom the rules would remove but keeps
    every vote (the report's ``--no-exclusions``)."""
    import pandas as pd

    table = rater_table(votes) if table is None else table
    excluded: dict[str, list[str]] = {}
    details: list[dict[str, Any]] = []

    def hit(name: str, mask: pd.Series) -> None:
        chosen = table.index[mask.fillna(False).astype(bool)]
        excluded[name] = sorted((str(r) for r in chosen), key=str)
        for rater in sorted(chosen, key=str):
            details.append({"rater": str(rater), "rule": name, **_explain(name, table.loc[rater], rules)})

    if rules.min_gold_accuracy is not None:
        hit("gold accuracy", table["gold_accuracy"] < rules.min_gold_accuracy)
    if rules.min_median_latency_ms is not None:
        hit("median latency", table["median_latency_ms"] < rules.min_median_latency_ms)
    if rules.exclude_one_sided:
        hit("one sided", table["one_sided"])
    if rules.min_repeat_consistency is not None:
        hit("repeat consistency", table["repeat_consistency"] < rules.min_repeat_consistency)
    if rules.exclude_raters:
        unknown = sorted(set(rules.exclude_raters) - {str(r) for r in table.index})
        if unknown:
            raise ValueError(f"exclude_raters names unknown rater(s) {unknown}")
        hit("named", pd.Series([str(r) in rules.exclude_raters for r in table.index], index=table.index))
    details.sort(key=lambda d: (str(d["rater"]), d["rule"]))
    dropped = set().union(*excluded.values()) if excluded and apply else set()
    kept = votes[~votes["rater_id"].astype(str).isin(dropped)]
    report = ExclusionReport(rules.describe(), source, excluded, int(len(table)), int(len(table) - len(dropped)),
                             int(len(votes)), int(len(kept)), details, apply)
    return kept, report


def flagged(table: pd.DataFrame) -> dict[str, list[str]]:
    """Raters carrying each flag."""
    return {name: sorted((str(r) for r in table.index[table[name]]), key=str) for name in ("one_sided", "fast")}


def gold_summary(table: pd.DataFrame) -> dict[str, Any]:
    rated = table[table["gold_answers"] > 0]
    return {"raters_with_gold": int(len(rated)),
            "mean_accuracy": float(rated["gold_accuracy"].mean()) if len(rated) else float("nan"),
            "per_rater": {str(r): {"answers": int(n), "accuracy": float(a)}
                          for r, n, a in zip(rated.index, rated["gold_answers"], rated["gold_accuracy"])}}


__all__ = ["DEFAULT_FAST_MS", "ExclusionReport", "ExclusionRules", "apply_exclusions", "flagged", "gold_summary",
           "rater_table", "repeat_consistency"]
