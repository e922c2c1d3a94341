"""Survey analysis against independent computations written here (no survey code used
to compute the expected values).

The synthetic set mirrors the paper's survey (Kawar et al. 2023, Section 5.2): 5,018
answers over 200 pairs with 19-36 answers each, 40.4 % robust / 32.4 % vanilla / the
rest "same".
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from survey import analysis as A
from survey.agreement import krippendorff_alpha_nominal
from survey.power import critical_value, required_sample_size, sign_test_power
from survey.quality import ExclusionRules, apply_exclusions, rater_table
from survey.ranking import RankingError, bradley_terry, pairwise_win_rates, win_matrix
from survey.report import ReportOptions, build_report, report_markdown
from survey.votes import VotesError, read_votes_csv, votes_from_records, write_votes_csv

N_ANSWERS, N_PAIRS = 5018, 200
N_ROBUST = round(0.404 * N_ANSWERS)   # 2027
N_VANILLA = round(0.324 * N_ANSWERS)  # 1626


def synthetic_records(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    sizes = [19, 36] + [rng.randint(19, 36) for _ in range(N_PAIRS - 2)]
    while sum(sizes) != N_ANSWERS:
        i = rng.randrange(2, N_PAIRS)
        step = 1 if sum(sizes) < N_ANSWERS else -1
        if 19 <= sizes[i] + step <= 36:
            sizes[i] += step
    choices = ["robust"] * N_ROBUST + ["vanilla"] * N_VANILLA + ["same"] * (N_ANSWERS - N_ROBUST - N_VANILLA)
    rng.shuffle(choices)
    raters = [f"r{i:02d}" for i in range(60)]
    records, k = [], 0
    for p, size in enumerate(sizes):
        for rater in rng.sample(raters, size):
            choice = choices[k]
            k += 1
            left, right = ("robust", "vanilla") if rng.random() < 0.5 else ("vanilla", "robust")
            answer = "S" if choice == "same" else ("L" if choice == left else "R")
            records.append({"pair_id": f"p{p:03d}", "rater_id": rater, "left_method": left, "right_method": right,
                            "answer": answer, "latency_ms": rng.randint(1500, 9000)})
    return records


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return synthetic_records()


@pytest.fixture(scope="module")
def votes(records) -> pd.DataFrame:
    return votes_from_records(records)


def choice_of(r: dict) -> str:
    return "same" if r["answer"] == "S" else (r["left_method"] if r["answer"] == "L" else r["right_method"])


def per_pair(records):
    counts = defaultdict(Counter)
    for r in records:
        counts[r["pair_id"]][choice_of(r)] += 1
    return counts


def test_synthetic_set_has_the_papers_shape(records):
    assert len(records) == 5018
    totals = Counter(choice_of(r) for r in records)
    assert round(100 * totals["robust"] / 5018, 1) == 40.4 and round(100 * totals["vanilla"] / 5018, 1) == 32.4
    sizes = Counter(r["pair_id"] for r in records)
    assert len(sizes) == 200 and min(sizes.values()) == 19 and max(sizes.values()) == 36


def test_answers_per_pair(votes, records):
    app = A.answers_per_pair(A.pair_counts(votes, "robust", "vanilla"))
    sizes = Counter(r["pair_id"] for r in records)
    assert (app.pairs, app.min, app.max, app.total) == (200, min(sizes.values()), max(sizes.values()), 5018)
    assert app.mean == pytest.approx(5018 / 200)  # 25.09 as in the paper


@pytest.mark.parametrize("denominator", ["decisive", "all"])
def test_table2_matches_independent_count(votes, records, denominator):
    rows = A.threshold_table(A.pair_counts(votes, "robust", "vanilla"), (50, 60, 70, 80), denominator)
    for row, t in zip(rows, (50, 60, 70, 80)):
        robust = vanilla = 0
        for c in per_pair(records).values():
            den = c["robust"] + c["vanilla"] + (c["same"] if denominator == "all" else 0)
            if den and Fraction(c["robust"], den) > Fraction(t, 100):
                robust += 1
            elif den and Fraction(c["vanilla"], den) > Fraction(t, 100):
                vanilla += 1
        assert (row.n_first, row.n_second, row.n_neither) == (robust, vanilla, 200 - robust - vanilla)
        assert row.first == pytest.approx(robust / 200) and row.neither == pytest.approx(1 - (robust + vanilla) / 200)


def test_table2_strictly_more_than_threshold():
    # one pair 6 robust / 4 vanilla: exactly 60 % is not "more than 60 %"
    recs = [{"pair_id": "x", "rater_id": f"r{i}", "left_method": "robust", "right_method": "vanilla",
             "answer": "L" if i < 6 else "R"} for i in range(10)]
    recs += [{"pair_id": "x", "rater_id": "r10", "left_method": "robust", "right_method": "vanilla", "answer": "S"}]
    counts = A.pair_counts(votes_from_records(recs), "robust", "vanilla")
    decisive = A.threshold_table(counts, (50, 60), "decisive")
    assert [r.n_first for r in decisive] == [1, 0]
    everything = A.threshold_table(counts, (50, 60), "all")  # 6/11 = 54.5 %
    assert [r.n_first for r in everything] == [1, 0]


def test_answer_shares_and_simultaneous_intervals(votes):
    shares = A.answer_shares(votes, "robust", "vanilla", 0.95)
    z = stats.norm.ppf(1 - 0.05 / (2 * 3))  # Bonferroni over 3 categories
    for s, expected in zip(shares, (N_ROBUST, N_VANILLA, 5018 - N_ROBUST - N_VANILLA)):
        assert s.count == expected
        p = expected / 5018
        centre = (p + z * z / (2 * 5018)) / (1 + z * z / 5018)
        half = z / (1 + z * z / 5018) * math.sqrt(p * (1 - p) / 5018 + z * z / (4 * 5018 ** 2))
        assert s.share == pytest.approx(p)
        assert (s.low, s.high) == pytest.approx((centre - half, centre + half), rel=1e-9)


def exact_two_sided_half(k: int, n: int) -> float:
    """Two-sided exact binomial p-value at p = 1/2 in integer arithmetic: the binomial
    coefficients by the recurrence C(n, i + 1) = C(n, i) (n - i) / (i + 1)."""
    coefficients = [1]
    for i in range(n):
        coefficients.append(coefficients[-1] * (n - i) // (i + 1))
    lower, upper = sum(coefficients[:k + 1]), sum(coefficients[k:])
    return float(min(Fraction(1), 2 * Fraction(min(lower, upper), 2 ** n)))


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    low = 0.0 if k == 0 else stats.beta.ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
    return low, high


def test_sign_tests(votes, records):
    main, ties, pairs = A.sign_tests(A.pair_counts(votes, "robust", "vanilla"))
    assert (main.successes, main.trials) == (N_ROBUST, N_ROBUST + N_VANILLA)
    assert main.p_value == pytest.approx(exact_two_sided_half(N_ROBUST, N_ROBUST + N_VANILLA), rel=1e-6)
    assert main.p_value < 1e-9  # the paper: significant at > 95 %
    assert (main.ci_low, main.ci_high) == pytest.approx(clopper_pearson(N_ROBUST, N_ROBUST + N_VANILLA), rel=1e-9)
    same = 5018 - N_ROBUST - N_VANILLA
    assert (ties.successes, ties.trials) == (N_ROBUST + same // 2, N_ROBUST + N_VANILLA + 2 * (same // 2))
    assert ties.p_value == pytest.approx(exact_two_sided_half(int(ties.successes), int(ties.trials)), rel=1e-6)
    wins = Counter()
    for c in per_pair(records).values():
        wins["robust" if c["robust"] > c["vanilla"] else "vanilla" if c["vanilla"] > c["robust"] else "tie"] += 1
    assert (pairs.successes, pairs.trials) == (wins["robust"], wins["robust"] + wins["vanilla"])
    assert pairs.p_value == pytest.approx(exact_two_sided_half(wins["robust"], wins["robust"] + wins["vanilla"]),
                                          rel=1e-6)


def test_position_bias(votes, records):
    left = sum(r["answer"] == "L" for r in records)
    right = sum(r["answer"] == "R" for r in records)
    pb = A.position_bias(votes)
    assert (pb.left, pb.right) == (left, right)
    assert pb.p_value == pytest.approx(exact_two_sided_half(left, left + right), rel=1e-6)
    biased = [dict(r, answer="L" if r["answer"] != "S" else "S") for r in records]
    assert A.position_bias(votes_from_records(biased)).p_value < 1e-100


def width(ci) -> float:
    return ci.high - ci.low


def test_cluster_bootstrap_widens_only_with_clustering(votes):
    boot = A.cluster_bootstrap(votes, "robust", "vanilla", replicates=400, seed=1)
    assert boot == A.cluster_bootstrap(votes, "robust", "vanilla", replicates=400, seed=1)
    by = {(b.statistic, b.resampled): b for b in boot}
    share = by["first share of decisive answers", "pairs"]
    assert share.estimate == pytest.approx(N_ROBUST / (N_ROBUST + N_VANILLA))
    assert share.low < share.estimate < share.high
    cp = clopper_pearson(N_ROBUST, N_ROBUST + N_VANILLA)
    # answers were shuffled independently of pairs and raters: one-way resampling gives about the binomial width,
    # two-way about sqrt(3) times it (Var(c_u c_r) = 3)
    for mode in ("pairs", "raters"):
        assert 0.75 < width(by["first share of decisive answers", mode]) / (cp[1] - cp[0]) < 1.3
    assert 1.35 < width(by["first share of decisive answers", "pairs and raters"]) / (cp[1] - cp[0]) < 2.2
    diff = by["first minus second share of all answers", "pairs"]
    assert diff.estimate == pytest.approx((N_ROBUST - N_VANILLA) / 5018)
    # every pair unanimous: the same counts, but pairs are the real unit -> much wider when pairs are resampled
    rng = random.Random(3)
    clustered = []
    for p in range(100):
        winner = "robust" if p < 55 else "vanilla"
        for i in range(20):
            left, right = ("robust", "vanilla") if rng.random() < 0.5 else ("vanilla", "robust")
            clustered.append({"pair_id": f"p{p}", "rater_id": f"r{i}", "left_method": left, "right_method": right,
                              "answer": "L" if winner == left else "R"})
    wide = {b.resampled: b for b in A.cluster_bootstrap(votes_from_records(clustered), "robust", "vanilla",
                                                        replicates=400, seed=1)
            if b.statistic == "first share of decisive answers"}
    cp = clopper_pearson(1100, 2000)
    assert width(wide["pairs"]) > 3 * (cp[1] - cp[0]) and width(wide["pairs and raters"]) > 3 * (cp[1] - cp[0])
    assert width(wide["raters"]) < 1.5 * (cp[1] - cp[0])  # raters are not the cluster here


def alpha_by_pairs(units) -> float:
    """Independent Krippendorff alpha: explicit pairs of values (Krippendorff 2011, eq. for D_o, D_e)."""
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    d_o = sum(sum(1 for i in range(len(u)) for j in range(len(u)) if i != j and u[i] != u[j]) / (len(u) - 1)
              for u in pairable) / n
    freq = Counter(values)
    d_e = sum(freq[c] * freq[k] for c in freq for k in freq if c != k) / (n * (n - 1))
    return 1 - d_o / d_e


def test_krippendorff_hand_example():
    # 3 units, 2 coders: (a, a), (a, b), (b, b). Coincidences o_aa = 2, o_ab = o_ba = 1, o_bb = 2;
    # n_a = n_b = 3, n = 6; alpha = 1 - (n - 1) (o_ab + o_ba) / (2 n_a n_b) = 1 - 5 * 2 / 18 = 4 / 9.
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    # Krippendorff (2011), nominal example with 4 coders, 12 units, missing values: alpha = 0.743
    data = [[1, 1, None, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
            [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [None, 5, 5, 5], [None, None, 1, 1], [None, 3, None, None]]
    assert krippendorff_alpha_nominal(data) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]))


def test_krippendorff_on_votes(votes, records):
    units = defaultdict(list)
    for r in records:
        units[r["pair_id"]].append(choice_of(r))
    from survey.agreement import alpha_of_votes
    assert alpha_of_votes(votes) == pytest.approx(alpha_by_pairs(list(units.values())), rel=1e-9)
    assert abs(alpha_of_votes(votes)) < 0.05  # answers were shuffled: chance-level agreement


def quality_records() -> list[dict]:
    recs = []
    for p in range(12):
        for i, rater in enumerate(("good", "sloppy", "lefty", "fast")):
            left, right = ("robust", "vanilla") if (p + i) % 2 else ("vanilla", "robust")
            answer = {"good": "L" if left == "robust" else "R", "sloppy": "S", "lefty": "L",
                      "fast": "R" if p % 3 else "S"}[rater]
            recs.append({"pair_id": f"m{p}", "rater_id": rater, "left_method": left, "right_method": right,
                         "answer": answer, "latency_ms": 300 if rater == "fast" else 4000})
    for g in range(4):
        for rater in ("good", "sloppy", "lefty", "fast"):
            left, right = ("robust", "broken") if g % 2 else ("broken", "robust")
            answer = {"good": "L" if left == "robust" else "R", "sloppy": "S", "lefty": "L",
                      "fast": "L" if g < 3 else "R"}[rater]
            recs.append({"pair_id": f"g{g}", "pair_kind": "gold", "gold_correct_method": "robust", "rater_id": rater,
                         "left_method": left, "right_method": right, "answer": answer, "latency_ms": 4000})
    for p in range(2):  # repeats of m0, m1 with flipped sides
        for rater in ("good", "lefty"):
            src = next(r for r in recs if r["pair_id"] == f"m{p}" and r["rater_id"] == rater)
            answer = {"good": "L" if src["right_method"] == "robust" else "R", "lefty": "L"}[rater]
            recs.append({"pair_id": f"rep{p}", "pair_kind": "repeat", "source_pair_id": f"m{p}", "rater_id": rater,
                         "left_method": src["right_method"], "right_method": src["left_method"], "answer": answer,
                         "latency_ms": 4000})
    return recs


def test_rater_quality_and_exclusions():
    votes = votes_from_records(quality_records())
    table = rater_table(votes, fast_ms=800)
    # gold: good 4/4; sloppy 0/4; lefty picks left: g1, g3 have robust on the left -> 2/4; fast: g1 L ok, g0 L bad,
    # g2 L bad, g3 R bad -> 1/4
    assert table.loc["good", "gold_accuracy"] == 1.0 and table.loc["sloppy", "gold_accuracy"] == 0.0
    assert table.loc["lefty", "gold_accuracy"] == 0.5 and table.loc["fast", "gold_accuracy"] == 0.25
    assert table.loc["good", "repeat_consistency"] == 1.0 and table.loc["lefty", "repeat_consistency"] == 0.0
    assert list(table.index[table["one_sided"]]) == ["lefty"]
    assert list(table.index[table["fast"]]) == ["fast"]
    rules = ExclusionRules(min_gold_accuracy=0.75, exclude_one_sided=True)
    kept, report = apply_exclusions(votes, rules, "test", table)
    assert report.excluded == {"gold accuracy": ["fast", "lefty", "sloppy"], "one sided": ["lefty"]}
    assert set(kept["rater_id"]) == {"good"} and report.answers_after == len(kept) == 12 + 4 + 2
    with pytest.raises(ValueError, match="unknown rater"):
        apply_exclusions(votes, ExclusionRules(exclude_raters=("nobody",)))


def test_each_exclusion_names_the_rule_and_the_value_that_broke_it():
    votes = votes_from_records(quality_records())
    rules = ExclusionRules(min_gold_accuracy=0.75, min_median_latency_ms=500, exclude_one_sided=True,
                           min_repeat_consistency=0.5)
    kept, report = apply_exclusions(votes, rules, "test")
    why = {(d["rater"], d["rule"]): d for d in report.details}
    # expected values counted by hand from quality_records(): gold answers per rater are 4
    assert set(why) == {("fast", "gold accuracy"), ("fast", "median latency"), ("lefty", "gold accuracy"),
                        ("lefty", "one sided"), ("lefty", "repeat consistency"), ("sloppy", "gold accuracy")}
    assert why[("sloppy", "gold accuracy")]["value"] == 0.0
    assert why[("sloppy", "gold accuracy")]["text"] == "gold accuracy 0 % (0 of 4 gold answers correct) is below 75 %"
    assert why[("fast", "gold accuracy")]["text"].startswith("gold accuracy 25 % (1 of 4")
    assert why[("fast", "median latency")]["value"] == 300.0
    assert why[("fast", "median latency")]["text"] == "median answer time 300 ms is below 500 ms"
    assert why[("lefty", "one sided")]["text"] == "answered Left to all 18 pairs"
    assert why[("lefty", "repeat consistency")]["text"].startswith("repeat consistency 0 % (0 of 2")
    # listed but not applied: everybody is kept, the details are the same
    kept_all, listed = apply_exclusions(votes, rules, "test", apply=False)
    assert len(kept_all) == len(votes) and listed.details == report.details and listed.applied is False
    assert listed.raters_after == listed.raters_before == 4


def test_report_when_every_rater_is_excluded_shows_unfiltered_figures_marked():
    votes = votes_from_records(quality_records())
    rules = ExclusionRules(exclude_raters=("good", "sloppy", "lefty", "fast"))
    report = build_report(votes, ReportOptions(bootstrap=0, rules=rules, rules_source="test"))
    assert report["unfiltered"] and "removed every rater (4 of 4)" in report["unfiltered"]
    assert report["data"]["raters"] == 4 and report["data"]["answers"] == len(votes)
    assert report["exclusions"]["raters_after"] == 0 and len(report["exclusions"]["details"]) == 4
    text = report_markdown(report)
    assert "**UNFILTERED FIGURES:**" in text and "| good | named |" in text
    unfiltered = build_report(votes, ReportOptions(bootstrap=0))
    assert unfiltered["comparisons"] == report["comparisons"]  # the same figures as with no rule at all
    assert unfiltered["unfiltered"] is None and "UNFILTERED" not in report_markdown(unfiltered)
    # --no-exclusions: no warning, the rules' verdicts listed as "would be excluded"
    listed = build_report(votes, ReportOptions(bootstrap=0, rules=rules, apply_exclusions=False))
    assert listed["unfiltered"] is None and listed["comparisons"] == unfiltered["comparisons"]
    assert "4 rater(s) would be excluded" in report_markdown(listed)


def test_report_runs_and_prints_denominator(votes):
    options = ReportOptions(bootstrap=200, rules=ExclusionRules(min_median_latency_ms=100), rules_source="test")
    report = build_report(votes, options)
    comparison = report["comparisons"][0]
    assert (comparison["first"], comparison["second"]) == ("robust", "vanilla")
    text = report_markdown(report)
    assert "users who selected a side" in text and "| 50 % |" in text and "Goodman" in text
    assert "median latency below 100 ms" in text
    all_answers = build_report(votes, ReportOptions(bootstrap=0, denominator="all"))
    assert "Same included" in report_markdown(all_answers)
    import json
    json.dumps(report, allow_nan=False)


def test_csv_round_trip(votes, tmp_path):
    path = tmp_path / "votes.csv"
    write_votes_csv(votes, path)
    again = read_votes_csv(path)
    assert len(again) == 5018
    assert A.pair_counts(again, "robust", "vanilla").equals(A.pair_counts(votes, "robust", "vanilla"))


@pytest.mark.parametrize("text, message", [
    ("pair_id,rater_id,left_method,answer\n1,a,x,L\n", "lacks the column"),
    ("pair_id,rater_id,left_method,right_method,answer\n1,a,x,y,Q\n", "answer must be L, R or S"),
    ("pair_id,rater_id,left_method,right_method,answer\n1,a,x,x,L\n", "left_method equals right_method"),
    ("pair_id,rater_id,left_method,right_method,answer\n1,a,x,y,L\n1,a,y,x,R\n", "more than once"),
    ("pair_id,rater_id,left_method,right_method,answer\n1,a,x,y,L\n1,b,x,z,R\n", "different method pairs"),
    ("pair_id,rater_id,left_method,right_method,answer,choice\n1,a,x,y,L,y\n", "choice disagrees"),
    ("pair_id,rater_id,left_method,right_method,answer,pair_kind\n1,a,x,y,L,repeat\n", "source_pair_id"),
    ("", "empty"),
])
def test_bad_csv_is_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(VotesError, match=message):
        read_votes_csv(path)


def test_power_matches_brute_force():
    p1, alpha = 0.7, 0.05

    def brute_power(n: int) -> float:
        """Sum of P(k | n, p1) over every k the exact test rejects (p-value by enumeration)."""
        reject = [k for k in range(n + 1) if exact_two_sided_half(k, n) <= alpha]
        return sum(math.comb(n, k) * p1 ** k * (1 - p1) ** (n - k) for k in reject)

    for n in (5, 10, 23, 40, 61):
        assert float(sign_test_power(n, p1, alpha)) == pytest.approx(brute_power(n), abs=1e-12)
    plan = required_sample_size(p1, alpha, 0.8)
    assert brute_power(plan.decisive_answers) >= 0.8
    assert brute_power(plan.decisive_answers - 1) < 0.8
    assert all(brute_power(n) >= 0.8 for n in range(plan.decisive_answers, plan.decisive_answers + 40))
    assert abs(plan.decisive_answers - plan.decisive_answers_normal_approx) < 10
    assert critical_value(10, 0.05) == 1  # 2 * P(X <= 1 | 10) = 0.0215; P(X <= 2) doubled = 0.109


def exact_power(n: int, p1: float, alpha: float = 0.05) -> float:
    """Power of the exact two-sided sign test by enumeration: the rejection region from
    integer sums of binomial coefficients, its probability under p1 term by term."""
    coefficients = [1]
    for i in range(n):
        coefficients.append(coefficients[-1] * (n - i) // (i + 1))
    tail, c = 0, -1
    for k in range(n // 2 + 1):  # largest c with 2 P(X <= c | 1/2) <= alpha
        tail += coefficients[k]
        if Fraction(2 * tail, 2 ** n) > alpha:
            break
        c = k
    log_p, log_q = math.log(p1), math.log(1 - p1)
    terms = [math.exp(math.log(coefficients[k]) + k * log_p + (n - k) * log_q)
             for k in [*range(c + 1), *range(n - c, n + 1)]] if c >= 0 else []
    return math.fsum(terms)


def test_power_for_the_papers_effect():
    p1 = 0.404 / 0.728  # the paper's robust share of decisive answers
    plan = required_sample_size(p1, 0.05, 0.8, tie_rate=0.272, answers_per_pair=25.09)
    n = plan.decisive_answers
    assert exact_power(n, p1) >= 0.8 > exact_power(n - 1, p1)
    assert all(exact_power(m, p1) >= 0.8 for m in range(n, n + 30, 3))
    assert plan.achieved_power == pytest.approx(exact_power(n, p1), rel=1e-9)
    z = stats.norm.ppf(0.975) / 2 + stats.norm.ppf(0.8) * math.sqrt(p1 * (1 - p1))
    assert plan.decisive_answers_normal_approx == math.ceil((z / (p1 - 0.5)) ** 2)
    assert plan.total_answers == math.ceil(n / (1 - 0.272))
    assert plan.pairs == math.ceil(plan.total_answers / 25.09)
    # the paper's survey (5,018 answers, 3,653 decisive) had far more than enough power for this effect
    assert exact_power(3653, p1) > 0.99


def bt_loglik(theta, wins):
    k = len(theta)
    return sum(wins[i, j] * (theta[i] - np.logaddexp(theta[i], theta[j])) for i in range(k) for j in range(k) if i != j)


def test_bradley_terry_maximises_likelihood_and_recovers_order():
    rng = np.random.default_rng(0)
    true = np.array([0.0, 0.5, 1.0, -0.7])
    wins = np.zeros((4, 4))
    for _ in range(6000):
        i, j = rng.choice(4, 2, replace=False)
        if rng.random() < 1 / (1 + np.exp(true[j] - true[i])):
            wins[i, j] += 1
        else:
            wins[j, i] += 1
    fit = bradley_terry(wins, ["a", "b", "c", "d"])
    assert fit.converged and sum(fit.log_strength) == pytest.approx(0, abs=1e-9)
    from scipy.optimize import minimize
    res = minimize(lambda t: -bt_loglik(np.r_[t, -t.sum()], wins), np.zeros(3), method="BFGS", options={"gtol": 1e-8})
    direct = np.r_[res.x, -res.x.sum()]
    assert np.allclose(fit.log_strength, direct, atol=1e-4)
    assert [m for m, _ in fit.ranking()] == ["c", "b", "a", "d"]
    assert np.allclose(fit.log_strength, true - true.mean(), atol=0.1)
    with pytest.raises(RankingError, match="never"):
        bradley_terry(np.array([[0, 3.0], [0, 0]]), ["x", "y"])


def test_three_methods_win_rates_from_votes():
    recs = []
    spec = {("a", "b"): (7, 3, 2), ("a", "c"): (6, 4, 0), ("b", "c"): (5, 5, 1)}
    k = 0
    for (m1, m2), (w1, w2, s) in spec.items():
        for answer in ["L"] * w1 + ["R"] * w2 + ["S"] * s:
            recs.append({"pair_id": f"{m1}{m2}", "rater_id": f"r{k}", "left_method": m1, "right_method": m2,
                         "answer": answer})
            k += 1
    votes = votes_from_records(recs)
    rates = {(w.first, w.second): (w.first_wins, w.second_wins, w.same) for w in pairwise_win_rates(votes)}
    assert rates == spec
    names, wins, ties = win_matrix(votes)
    assert names == ["a", "b", "c"] and wins[0, 1] == 7 and wins[1, 0] == 3 and ties[1, 2] == 1
    report = build_report(votes, ReportOptions(bootstrap=0))
    assert report["ranking"]["bradley_terry"]["ranking"][0][0] == "a"
    assert len(report["comparisons"]) == 3


# --------------------------------------------------------------------------- the whole report, independently
def wilson_bonferroni(count: int, total: int, k: int = 3, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval with z = z_{1 - alpha / (2k)} (algebraically Goodman 1965)."""
    z = stats.norm.ppf(1 - (1 - confidence) / (2 * k))
    p = count / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total ** 2))
    return centre - half, centre + half


def test_every_figure_of_the_report_on_the_synthetic_csv(records, tmp_path, capsys):
    """The paper-shaped set written as a CSV with the csv module, analysed by
    `python -m survey report --votes`, and every figure of the JSON report recomputed
    here from the records alone."""
    import csv
    import json

    from survey.cli import main

    path = tmp_path / "votes.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["pair_id", "rater_id", "left_method", "right_method", "answer", "latency_ms"])
        writer.writeheader()
        writer.writerows(records)
    counts = per_pair(records)
    raters = {r["rater_id"] for r in records}
    answers = Counter(choice_of(r) for r in records)
    sizes = [sum(c.values()) for c in counts.values()]
    for denominator in ("decisive", "all"):
        assert main(["report", "--votes", str(path), "--json", "--bootstrap", "300", "--seed", "5",
                     "--denominator", denominator]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["data"] == {"answers": 5018, "main_answers": 5018, "gold_answers": 0, "repeat_answers": 0,
                                  "main_pairs": 200, "raters": len(raters), "methods": ["robust", "vanilla"]}
        assert report["exclusions"]["excluded"] == {} and report["exclusions"]["answers_after"] == 5018
        (c,) = report["comparisons"]
        assert (c["first"], c["second"]) == ("robust", "vanilla")
        app = c["answers_per_pair"]
        assert (app["pairs"], app["min"], app["max"], app["total"]) == (200, min(sizes), max(sizes), 5018)
        assert app["mean"] == pytest.approx(25.09) and (app["min"], app["max"]) == (19, 36)
        # Table 2: strictly more than the threshold, share of the pair's decisive (or all) answers
        assert c["table2"]["denominator"] == denominator
        for row, t in zip(c["table2"]["rows"], (50, 60, 70, 80)):
            robust = vanilla = 0
            for pc in counts.values():
                den = pc["robust"] + pc["vanilla"] + (pc["same"] if denominator == "all" else 0)
                robust += den > 0 and 100 * pc["robust"] > t * den
                vanilla += den > 0 and 100 * pc["vanilla"] > t * den
            assert (row["threshold"], row["n_first"], row["n_second"], row["n_neither"], row["pairs"]) == \
                (t, robust, vanilla, 200 - robust - vanilla, 200)
            assert (row["first"], row["second"], row["neither"]) == pytest.approx(
                (robust / 200, vanilla / 200, (200 - robust - vanilla) / 200))
        # answer shares: 40.4 % / 32.4 % / 27.2 % with simultaneous intervals
        shares = {s["category"]: s for s in c["shares"]["rows"]}
        for name, paper in (("robust", 40.4), ("vanilla", 32.4), ("same", 27.2)):
            assert shares[name]["count"] == answers[name]
            assert round(100 * shares[name]["share"], 1) == paper
            assert (shares[name]["low"], shares[name]["high"]) == pytest.approx(
                wilson_bonferroni(answers[name], 5018), rel=1e-9)
        # sign tests: ties excluded, ties split, one vote per pair
        same = answers["same"]
        robust_pairs = sum(pc["robust"] > pc["vanilla"] for pc in counts.values())
        vanilla_pairs = sum(pc["vanilla"] > pc["robust"] for pc in counts.values())
        expected = [(answers["robust"], answers["robust"] + answers["vanilla"]),
                    (answers["robust"] + same // 2, answers["robust"] + answers["vanilla"] + 2 * (same // 2)),
                    (robust_pairs, robust_pairs + vanilla_pairs)]
        for test, (k, n) in zip(c["sign_tests"], expected):
            assert (test["successes"], test["trials"]) == (k, n)
            assert test["p_value"] == pytest.approx(exact_two_sided_half(k, n), rel=1e-6, abs=1e-300)
            assert (test["ci_low"], test["ci_high"]) == pytest.approx(clopper_pearson(k, n), rel=1e-9)
        assert c["sign_tests"][0]["p_value"] < 0.05  # the paper: significant at the 95 % level
        # bootstrap: point estimates are the plain ratios, intervals around them, seed recorded
        for b in c["bootstrap"]:
            point = (answers["robust"] / (answers["robust"] + answers["vanilla"])
                     if b["statistic"] == "first share of decisive answers"
                     else (answers["robust"] - answers["vanilla"]) / 5018)
            assert b["estimate"] == pytest.approx(point) and b["low"] < point < b["high"]
            assert (b["seed"], b["replicates"]) == (5, 300)
        robust_left = sum(r["left_method"] == "robust" for r in records)
        assert c["side_balance"] == {"first_left": robust_left, "first_right": 5018 - robust_left}
        # quality
        q = report["quality"]
        left, right = (sum(r["answer"] == a for r in records) for a in "LR")
        assert (q["position_bias"]["left"], q["position_bias"]["right"], q["position_bias"]["same"]) == \
            (left, right, same)
        assert q["position_bias"]["p_value"] == pytest.approx(exact_two_sided_half(left, left + right), rel=1e-6)
        assert q["krippendorff_alpha_nominal"] == pytest.approx(
            alpha_by_pairs([[choice_of(r) for r in records if r["pair_id"] == p] for p in counts]), rel=1e-9)
        assert q["flags"]["one_sided"] == [] and q["flags"]["fast"] == []  # latencies 1.5-9 s, answers shuffled
        assert len(q["raters"]) == len(raters)
        for row in q["raters"]:
            mine = [r for r in records if r["rater_id"] == row["rater_id"]]
            assert row["answers"] == len(mine)
            assert row["share_L"] == pytest.approx(sum(r["answer"] == "L" for r in mine) / len(mine))
            assert row["median_latency_ms"] == pytest.approx(float(np.median([r["latency_ms"] for r in mine])))
    # the Markdown prints the same Table 2 (decisive) with its denominator
    assert main(["report", "--votes", str(path), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "users who selected a side" in text
    for t in (50, 60, 70, 80):
        robust = sum(100 * pc["robust"] > t * (pc["robust"] + pc["vanilla"]) for pc in counts.values())
        assert f"| {t} % | {100 * robust / 200:.1f} % ({robust}) |" in text


def cluster_se(records, cluster: str) -> float:
    """Delta-method (linearisation) standard error of R = sum a / sum d with clusters:
    sqrt(G / (G - 1) * sum_g (a_g - R d_g)^2) / D."""
    a, d = Counter(), Counter()
    for r in records:
        choice = choice_of(r)
        a[r[cluster]] += choice == "robust"
        d[r[cluster]] += choice != "same"
    ratio = sum(a.values()) / sum(d.values())
    g = len(d)
    return math.sqrt(g / (g - 1) * sum((a[k] - ratio * d[k]) ** 2 for k in d)) / sum(d.values())


def test_bootstrap_matches_the_delta_method(records):
    """One-way cluster bootstrap percentile intervals have the width of the
    cluster-robust (linearised) interval, 2 * 1.96 * SE, up to Monte Carlo error."""
    votes = votes_from_records(records)
    boot = A.cluster_bootstrap(votes, "robust", "vanilla", replicates=1500, seed=2, modes=("pairs", "raters"))
    for b in boot:
        if b.statistic != "first share of decisive answers":
            continue
        expected = 2 * stats.norm.ppf(0.975) * cluster_se(records, "pair_id" if b.resampled == "pairs" else "rater_id")
        assert (b.high - b.low) == pytest.approx(expected, rel=0.12), b.resampled
    # unanimous pairs: the pair is the unit, the pairs bootstrap widens exactly as the delta method says
    rng = random.Random(4)
    clustered = []
    for p in range(120):
        winner = "robust" if rng.random() < 0.55 else "vanilla"
        for i in range(rng.randint(10, 25)):
            left, right = ("robust", "vanilla") if rng.random() < 0.5 else ("vanilla", "robust")
            clustered.append({"pair_id": f"p{p}", "rater_id": f"r{i}", "left_method": left, "right_method": right,
                              "answer": "S" if rng.random() < 0.2 else ("L" if winner == left else "R")})
    (b,) = A.cluster_bootstrap(votes_from_records(clustered), "robust", "vanilla", replicates=1500, seed=2,
                               modes=("pairs",))[:1]
    expected = 2 * stats.norm.ppf(0.975) * cluster_se(clustered, "pair_id")
    assert (b.high - b.low) == pytest.approx(expected, rel=0.12)
