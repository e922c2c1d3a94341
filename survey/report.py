"""The survey report: every figure of :mod:`survey.analysis`, :mod:`survey.quality`,
:mod:`survey.agreement` and :mod:`survey.ranking` in one plain dictionary, rendered as
Markdown (:func:`report_markdown`) or JSON (:func:`report_json`).

The order of operations is fixed: (1) the exclusion rules declared beforehand drop
whole raters, (2) every figure is computed on the remaining answers. Flags are
reported for all raters, before exclusion.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pandas as pd

from . import analysis as A
from .agreement import alpha_of_votes
from .quality import DEFAULT_FAST_MS, ExclusionRules, apply_exclusions, flagged, gold_summary, rater_table
from .ranking import RankingError, bradley_terry_of_votes, pairwise_win_rates

DENOMINATOR_TEXT = {
    "decisive": "decisive answers only (Left or Right; the paper's definition: a share \"of users who selected "
                "a side\"); Same answers do not count",
    "all": "all answers of the pair, Same included",
}


@dataclass
class ReportOptions:
    """Settings of one report; printed with it."""

    thresholds: Sequence[float] = A.DEFAULT_THRESHOLDS
    denominator: str = "decisive"
    confidence: float = 0.95
    bootstrap: int = 2000
    seed: int = 0
    order: Sequence[str] | None = None
    fast_ms: float = DEFAULT_FAST_MS
    rules: ExclusionRules = field(default_factory=ExclusionRules)
    rules_source: str = "none declared"
    apply_exclusions: bool = True  # False: list whom the rules would remove, keep every rater

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["rules"] = self.rules.to_dict()
        values["thresholds"] = list(self.thresholds)
        values["order"] = list(self.order) if self.order else None
        return values


def _clean(value: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def comparison_report(votes: pd.DataFrame, first: str, second: str, options: ReportOptions) -> dict[str, Any]:
    """Table 2, answer shares, sign tests, bootstrap and side balance for one method pair."""
    counts = A.pair_counts(votes, first, second)
    return {
        "first": first,
        "second": second,
        "answers_per_pair": asdict(A.answers_per_pair(counts)),
        "table2": {"denominator": options.denominator, "denominator_text": DENOMINATOR_TEXT[options.denominator],
                   "rows": [asdict(r) for r in A.threshold_table(counts, options.thresholds, options.denominator)]},
        "shares": {"method": "Goodman (1965) simultaneous intervals = Wilson score intervals with Bonferroni "
                             f"z for 3 categories, joint level {options.confidence:.0%}; answers treated as independent",
                   "rows": [asdict(s) for s in A.answer_shares(votes, first, second, options.confidence)]},
        "sign_tests": [asdict(t) for t in A.sign_tests(counts, options.confidence)],
        "bootstrap": [asdict(b) for b in A.cluster_bootstrap(votes, first, second, options.bootstrap, options.seed,
                                                             options.confidence)]
        if options.bootstrap > 0 else [],
        "side_balance": dict(zip(("first_left", "first_right"), A.side_balance(
            A.main_votes(votes, first, second), first))),
    }


def build_report(votes: pd.DataFrame, options: ReportOptions | None = None, title: str = "Survey report",
                 source: str = "") -> dict[str, Any]:
    """Every figure of the survey, as a JSON-ready dictionary."""
    options = options or ReportOptions()
    if options.denominator not in A.DENOMINATORS:
        raise A.AnalysisError(f"denominator must be one of {A.DENOMINATORS}")
    if votes.empty:
        raise A.AnalysisError("there are no votes to analyse yet")
    all_raters = rater_table(votes, options.fast_ms)
    kept, exclusions = apply_exclusions(votes, options.rules, options.rules_source, all_raters,
                                        apply=options.apply_exclusions)
    unfiltered = None
    if kept.empty:
        # Say so loudly, and still show the figures of everyone: an error here would hide who was removed and why.
        unfiltered = (f"the exclusion rules removed every rater ({exclusions.raters_before} of "
                      f"{exclusions.raters_before}); the figures below are UNFILTERED, computed on all raters' "
                      "answers as if no rule were declared; they are not the study's result")
        kept = votes
    order = list(options.order) if options.order else A.default_order(A.methods_of(kept))
    pairs = A.comparisons(kept, order)
    main = kept[kept["pair_kind"] == "main"]
    report: dict[str, Any] = {
        "title": title,
        "source": source,
        "unfiltered": unfiltered,
        "options": options.to_dict(),
        "data": {"answers": int(len(kept)), "main_answers": int(len(main)),
                 "gold_answers": int((kept["pair_kind"] == "gold").sum()),
                 "repeat_answers": int((kept["pair_kind"] == "repeat").sum()),
                 "main_pairs": int(main["pair_id"].nunique()), "raters": int(kept["rater_id"].nunique()),
                 "methods": order},
        "exclusions": exclusions.to_dict(),
        "comparisons": [comparison_report(kept, a, b, options) for a, b in pairs],
        "quality": {
            "position_bias": asdict(A.position_bias(kept)),
            "krippendorff_alpha_nominal": alpha_of_votes(kept),
            "gold": gold_summary(rater_table(kept, options.fast_ms)),
            "flags": {"fast_ms": options.fast_ms, **flagged(all_raters)},
            "raters": _clean(all_raters.reset_index().to_dict(orient="records")),
        },
    }
    methods = A.methods_of(kept)
    if len(methods) > 2:
        ranked = [m for m in order if m in methods]
        report["ranking"] = {"win_rates": [asdict(w) for w in pairwise_win_rates(kept, ranked)]}
        try:
            bt = bradley_terry_of_votes(kept, ranked)
            report["ranking"]["bradley_terry"] = {"method": "Bradley-Terry, MM algorithm (Hunter 2004), Same answers "
                                                            "left out", **asdict(bt), "ranking": bt.ranking()}
        except RankingError as exc:
            report["ranking"]["bradley_terry"] = {"error": str(exc)}
    return _clean(report)


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def _p(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2e}" if x < 1e-3 else f"{x:.4f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown text (tables in GitHub style)."""
    o, d = report["options"], report["data"]
    level = f"{o['confidence']:.0%}"
    out = [f"# {report['title']}", ""]
    if report.get("source"):
        out += [f"Source: {report['source']}", ""]
    out += [f"{d['answers']} answers ({d['main_answers']} on {d['main_pairs']} main pairs, {d['gold_answers']} gold, "
            f"{d['repeat_answers']} repeat) from {d['raters']} raters; methods: {', '.join(d['methods'])}.", ""]
    if report.get("unfiltered"):
        out += [f"> **UNFILTERED FIGURES:** {report['unfiltered']}. See the excluded raters below; "
                "`survey report --no-exclusions` shows the same figures without this warning.", ""]
    ex = report["exclusions"]
    out += ["## Exclusion rules (declared before analysis)", "",
            f"Declared in: {ex['source']}. Rules: {'; '.join(ex['rules'])}.", ""]
    if not ex.get("applied", True):
        out += ["The rules were **not applied** (--no-exclusions): every rater is counted; the raters they would "
                "remove are listed below.", ""]
    if ex["excluded"]:
        for rule, raters in ex["excluded"].items():
            verb = "excluded" if ex.get("applied", True) else "would be excluded"
            out.append(f"- {rule}: {len(raters)} rater(s) {verb}" + (f" ({', '.join(raters)})" if raters else ""))
        out.append("")
    if ex.get("details"):
        out += ["| rater | rule | value | why |", "|---|---|---|---|"]
        for item in ex["details"]:
            value = item["value"]
            shown = f"{value:.3g}" if isinstance(value, float) else ("" if value is None else str(value))
            out.append(f"| {item['rater']} | {item['rule']} | {shown} | {item['text']} |")
        out.append("")
    out += [f"Raters {ex['raters_before']} -> {ex['raters_after']}, answers {ex['answers_before']} -> "
            f"{ex['answers_after']}.", ""]
    for c in report["comparisons"]:
        a, b = c["first"], c["second"]
        app = c["answers_per_pair"]
        out += [f"## {a} vs {b}", "",
                f"{app['total']} answers on {app['pairs']} pairs; answers per pair min {app['min']} / mean "
                f"{app['mean']:.2f} / max {app['max']}. {a} shown left {c['side_balance']['first_left']} times, "
                f"right {c['side_balance']['first_right']} times.", "",
                "### Table 2: share of pairs where a method is preferred", "",
                f"A method is preferred in a pair when its share of the pair's answers is more than the threshold. "
                f"Denominator: {c['table2']['denominator_text']}.", "",
                f"| threshold | {a} | {b} | no preference |", "|---|---|---|---|"]
        for r in c["table2"]["rows"]:
            out.append(f"| {r['threshold']:g} % | {_pct(r['first'])} ({r['n_first']}) | {_pct(r['second'])} "
                       f"({r['n_second']}) | {_pct(r['neither'])} ({r['n_neither']}) |")
        out += ["", "### Answer shares", "", f"{c['shares']['method']}.", "",
                f"| answer | count | share | {level} simultaneous CI |", "|---|---|---|---|"]
        for s in c["shares"]["rows"]:
            out.append(f"| {s['category']} | {s['count']} | {_pct(s['share'])} | {_pct(s['low'])} - "
                       f"{_pct(s['high'])} |")
        out += ["", f"### Sign tests ({a} vs {b}, exact binomial, two-sided, H0 share = 50 %)", "",
                f"| test | {a} | trials | {a} share | p-value | {level} Clopper-Pearson CI | note |",
                "|---|---|---|---|---|---|---|"]
        for t in c["sign_tests"]:
            out.append(f"| {t['name']} | {t['successes']:g} | {t['trials']:g} | {_pct(t['share'])} | "
                       f"{_p(t['p_value'])} | {_pct(t['ci_low'])} - {_pct(t['ci_high'])} | {t['note']} |")
        if c["bootstrap"]:
            boot = c["bootstrap"][0]
            out += ["", f"### Cluster bootstrap ({boot['replicates']} replicates, seed "
                        f"{boot['seed']}, percentile {level} CI)", "",
                    "Resampling pairs covers answers to one pair being alike, resampling raters covers a rater's "
                    "answers being alike; resampling both (Owen 2007) covers both and is conservative.", "",
                    "| statistic | resampled | estimate | CI |", "|---|---|---|---|"]
            for bci in c["bootstrap"]:
                name = bci["statistic"].replace("first", a).replace("second", b)
                out.append(f"| {name} | {bci['resampled']} | {_pct(bci['estimate'])} | {_pct(bci['low'])} - "
                           f"{_pct(bci['high'])} |")
        out.append("")
    q = report["quality"]
    pb = q["position_bias"]
    out += ["## Quality and bias", "",
            f"- Position bias (main pairs, decisive answers): Left {pb['left']}, Right {pb['right']}, Same "
            f"{pb['same']}; Left share {_pct(pb['left_share'])} ({level} CI {_pct(pb['ci_low'])} - "
            f"{_pct(pb['ci_high'])}), exact binomial p = {_p(pb['p_value'])}.",
            "- Krippendorff's alpha (nominal; unit = pair, value = chosen method or same): "
            + ("n/a" if q["krippendorff_alpha_nominal"] is None else f"{q['krippendorff_alpha_nominal']:.3f}") + ".",
            f"- Gold pairs: {q['gold']['raters_with_gold']} raters answered gold pairs; mean accuracy "
            f"{_pct(q['gold']['mean_accuracy'])}.",
            f"- Flags (all raters, before exclusion): always one side: {len(q['flags']['one_sided'])} "
            f"{q['flags']['one_sided'] or ''}; median latency < {q['flags']['fast_ms']:g} ms: "
            f"{len(q['flags']['fast'])} {q['flags']['fast'] or ''}.", ""]
    gold_rows = q["gold"]["per_rater"]
    if gold_rows:
        out += ["| rater | gold answers | gold accuracy |", "|---|---|---|"]
        out += [f"| {r} | {g['answers']} | {_pct(g['accuracy'])} |" for r, g in gold_rows.items()]
        out.append("")
    if "ranking" in report:
        out += ["## Ranking of methods", "", "| first | second | first wins | second wins | same | first share of "
                "decisive |", "|---|---|---|---|---|---|"]
        for w in report["ranking"]["win_rates"]:
            out.append(f"| {w['first']} | {w['second']} | {w['first_wins']} | {w['second_wins']} | {w['same']} | "
                       f"{_pct(w['first_share_decisive'])} |")
        bt = report["ranking"]["bradley_terry"]
        out.append("")
        if "error" in bt:
            out.append(f"Bradley-Terry: {bt['error']}")
        else:
            out += [f"{bt['method']}; log-strengths (sum 0):", "", "| rank | method | log-strength |", "|---|---|---|"]
            out += [f"| {i + 1} | {m} | {s:+.3f} |" for i, (m, s) in enumerate(bt["ranking"])]
        out.append("")
    return "\n".join(out)


def study_report(db, study: str | int | None = None, **overrides: Any) -> dict[str, Any] | None:  # noqa: ANN001
    """The report of a study in a :class:`survey.db.SurveyDB` with the exclusion rules,
    fast-answer threshold and method order declared when the study was created (None
    while it has no votes). ``overrides`` replace :class:`ReportOptions` fields, e.g.
    ``bootstrap=0`` or ``denominator="all"``; passing ``rules`` marks them as given by
    the caller instead of declared in advance."""
    from .create import find_study
    from .votes import votes_from_db

    current = find_study(db, study)
    with db.session() as session:
        table = votes_from_db(session, current.id)
    if table.empty:
        return None
    settings = current.settings
    values: dict[str, Any] = {
        "rules": ExclusionRules.from_dict(settings.get("exclusions")),
        "rules_source": f"study settings at creation ({settings.get('exclusions_declared_at', '?')})",
        "fast_ms": float(settings.get("fast_ms", DEFAULT_FAST_MS)),
        "order": A.default_order(current.methods),
    }
    if "rules" in overrides and "rules_source" not in overrides:
        overrides["rules_source"] = "given at report time (replacing the study's declared rules)"
    values.update(overrides)
    return build_report(table, ReportOptions(**values), title=f"Survey report: {current.name}",
                        source="study database")


__all__ = ["DENOMINATOR_TEXT", "ReportOptions", "build_report", "comparison_report", "report_json", "report_markdown",
           "study_report"]
