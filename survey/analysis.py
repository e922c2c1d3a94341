"""The paper's survey analysis as pure functions over a votes table (:mod:`survey.votes`).

Kawar, Ganz & Elad (TMLR 2023), Section 5.2 / Appendix C: raters compare two images
of the same class and seed, one per method, and answer Left / Right / Same. Every
function here takes the validated votes table (from a database or a CSV) and the two
methods compared, called ``first`` (the paper's "robust") and ``second`` ("vanilla").
Only ``pair_kind == 'main'`` rows enter the preference figures; gold and repeat rows
are quality checks (:mod:`survey.quality`).

Notation for one pair u: a_u, b_u, s_u = answers for first, second, same;
d_u = a_u + b_u (decisive answers); n_u = d_u + s_u. Totals drop the index.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .votes import SAME

DEFAULT_THRESHOLDS = (50, 60, 70, 80)
DENOMINATORS = ("decisive", "all")


class AnalysisError(ValueError):
    """The analysis cannot run on this table as asked; the message says why."""


def main_votes(votes: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Rows of main pairs comparing exactly ``first`` and ``second``."""
    rows = votes[(votes["pair_kind"] == "main")]
    keep = (((rows["left_method"] == first) & (rows["right_method"] == second))
            | ((rows["left_method"] == second) & (rows["right_method"] == first)))
    return rows[keep]


def methods_of(votes: pd.DataFrame) -> list[str]:
    """Methods that appear in main pairs, in order of first appearance."""
    rows = votes[votes["pair_kind"] == "main"]
    seen: dict[str, None] = {}
    for left, right in zip(rows["left_method"], rows["right_method"]):
        seen.setdefault(left)
        seen.setdefault(right)
    return list(seen)


def comparisons(votes: pd.DataFrame, order: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The method pairs compared in main pairs, each as (first, second) following
    ``order`` (a method earlier in ``order`` is ``first``)."""
    rows = votes[votes["pair_kind"] == "main"]
    rank = {m: i for i, m in enumerate(order or [])}
    found: dict[tuple[str, str], None] = {}
    for left, right in zip(rows["left_method"], rows["right_method"]):
        a, b = sorted((left, right), key=lambda m: (rank.get(m, len(rank)), m))
        found.setdefault((a, b))
    return list(found)


def default_order(methods: Sequence[str]) -> list[str]:
    """The paper's orientation: ``robust`` before ``vanilla`` when both exist; any other
    names keep the given order."""
    methods = list(methods)
    if "robust" in methods and "vanilla" in methods:
        methods.remove("robust")
        methods.insert(methods.index("vanilla"), "robust")
    return methods


# --------------------------------------------------------------------------- per pair
def pair_counts(votes: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per main pair: ``a`` (first chosen), ``b`` (second chosen), ``s`` (same), ``d = a + b``,
    ``n = d + s``; indexed by pair_id, sorted."""
    rows = main_votes(votes, first, second)
    if rows.empty:
        raise AnalysisError(f"no main-pair answers compare {first!r} with {second!r}")
    table = pd.DataFrame({
        "a": (rows["choice"] == first).groupby(rows["pair_id"]).sum(),
        "b": (rows["choice"] == second).groupby(rows["pair_id"]).sum(),
        "s": (rows["choice"] == SAME).groupby(rows["pair_id"]).sum(),
    }).astype(int).sort_index()
    table["d"] = table["a"] + table["b"]
    table["n"] = table["d"] + table["s"]
    return table


@dataclass(frozen=True)
class AnswersPerPair:
    pairs: int
    min: int
    mean: float
    max: int
    total: int


def answers_per_pair(counts: pd.DataFrame) -> AnswersPerPair:
    """Number of answers per pair (the paper: 19 to 36, mean 25.09, 5,018 in all)."""
    n = counts["n"]
    return AnswersPerPair(int(len(n)), int(n.min()), float(n.mean()), int(n.max()), int(n.sum()))


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float  # percent
    first: float      # share of pairs where first is preferred
    second: float
    neither: float
    n_first: int
    n_second: int
    n_neither: int
    pairs: int


def threshold_table(counts: pd.DataFrame, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    denominator: str = "decisive") -> list[ThresholdRow]:
    """The paper's Table 2.

    A pair prefers ``first`` at threshold T when its share of the pair's answers is
    strictly greater than T: a_u / m_u > T / 100, with m_u = d_u (``decisive``, the
    paper: "more than a certain percentage of users who selected a side") or m_u = n_u
    (``all``). Likewise for ``second``; otherwise "no preference" (also when m_u = 0).
    For T >= 50 % both cannot hold at once. Comparisons are exact (rational arithmetic).
    """
    if denominator not in DENOMINATORS:
        raise AnalysisError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    rows = []
    total = len(counts)
    m = counts["d"] if denominator == "decisive" else counts["n"]
    for t in thresholds:
        frac = Fraction(str(t)) / 100
        if not 0 <= frac < 1:
            raise AnalysisError(f"thresholds are percentages in [0, 100), got {t}")
        if frac < Fraction(1, 2):
            raise AnalysisError(f"threshold {t} % is below 50 %: both methods could then be 'preferred' in one pair")
        first = sum(1 for a, mm in zip(counts["a"], m) if mm > 0 and Fraction(int(a), int(mm)) > frac)
        second = sum(1 for b, mm in zip(counts["b"], m) if mm > 0 and Fraction(int(b), int(mm)) > frac)
        neither = total - first - second
        rows.append(ThresholdRow(float(t), first / total, second / total, neither / total, first, second, neither,
                                 total))
    return rows


# --------------------------------------------------------------------------- answer level
@dataclass(frozen=True)
class Share:
    category: str
    count: int
    share: float
    low: float
    high: float


def goodman_intervals(counts: Sequence[int], confidence: float = 0.95) -> list[tuple[float, float]]:
    """Goodman (1965) simultaneous confidence intervals for multinomial proportions.

    With k categories, N answers and A = chi2_{1}(1 - alpha / k) (upper quantile),
    p_i in [A + 2 n_i -/+ sqrt(A (A + 4 n_i (N - n_i) / N))] / (2 (N + A)).
    This equals the Wilson score interval with Bonferroni-adjusted z = z_{1 - alpha/(2k)},
    so all k intervals hold together with probability >= ``confidence`` (asymptotically)."""
    counts = [int(c) for c in counts]
    total, k = sum(counts), len(counts)
    if total == 0:
        return [(0.0, 1.0)] * k
    a = float(stats.chi2.ppf(1 - (1 - confidence) / k, 1))
    out = []
    for n in counts:
        root = math.sqrt(a * (a + 4 * n * (total - n) / total))
        out.append(((a + 2 * n - root) / (2 * (total + a)), (a + 2 * n + root) / (2 * (total + a))))
    return out


def answer_shares(votes: pd.DataFrame, first: str, second: str, confidence: float = 0.95) -> list[Share]:
    """Shares of all main answers choosing first / second / same (the paper: 40.4 % /
    32.4 % / 27.2 %), with Goodman simultaneous intervals. These treat answers as
    independent; :func:`cluster_bootstrap` accounts for pairs and raters."""
    rows = main_votes(votes, first, second)
    counts = [int((rows["choice"] == c).sum()) for c in (first, second, SAME)]
    total = sum(counts)
    intervals = goodman_intervals(counts, confidence)
    return [Share(c, n, n / total if total else float("nan"), lo, hi)
            for c, n, (lo, hi) in zip((first, second, SAME), counts, intervals)]


@dataclass(frozen=True)
class SignTest:
    """Exact two-sided binomial test of H0: P(first | decisive) = 1/2."""

    name: str
    successes: float
    trials: float
    share: float
    p_value: float
    ci_low: float
    ci_high: float
    note: str = ""


def sign_test(successes: int, trials: int, name: str = "sign test", confidence: float = 0.95,
              note: str = "") -> SignTest:
    """scipy.stats.binomtest(k, n, 0.5), two-sided; CI of the share k/n by Clopper-Pearson
    (exact): [Beta^-1(alpha/2; k, n-k+1), Beta^-1(1-alpha/2; k+1, n-k)]."""
    if trials <= 0:
        return SignTest(name, successes, trials, float("nan"), float("nan"), float("nan"), float("nan"),
                        note or "no decisive answers")
    result = stats.binomtest(int(successes), int(trials), 0.5, alternative="two-sided")
    ci = result.proportion_ci(confidence_level=confidence, method="exact")
    return SignTest(name, successes, trials, successes / trials, float(result.pvalue), float(ci.low), float(ci.high),
                    note)


def sign_tests(counts: pd.DataFrame, confidence: float = 0.95) -> list[SignTest]:
    """The main test and two sensitivity checks.

    1. answers, ties excluded: k = sum a_u, n = sum d_u (primary);
    2. ties split: each pair of "same" answers counts one for each side, an odd one out
       is dropped: k = a + floor(s/2), n = a + b + 2 floor(s/2) (pulls toward 1/2);
    3. pairs: pair u votes for first if a_u > b_u, for second if b_u > a_u, tied pairs
       are dropped; k = #first pairs, n = #first + #second (one vote per pair, so
       clustering within a pair cannot inflate significance).
    """
    a, b, s = int(counts["a"].sum()), int(counts["b"].sum()), int(counts["s"].sum())
    half = s // 2
    first_pairs = int((counts["a"] > counts["b"]).sum())
    second_pairs = int((counts["b"] > counts["a"]).sum())
    return [
        sign_test(a, a + b, "answers, ties excluded", confidence),
        sign_test(a + half, a + b + 2 * half, "answers, ties split", confidence,
                  f"{s} same answers split half/half" + (" (one dropped)" if s % 2 else "")),
        sign_test(first_pairs, first_pairs + second_pairs, "pairs (majority of decisive answers)", confidence,
                  f"{len(counts) - first_pairs - second_pairs} tied pairs dropped"),
    ]


# --------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class BootstrapCI:
    statistic: str
    resampled: str   # "pairs", "raters" or "pairs and raters"
    estimate: float
    low: float
    high: float
    replicates: int
    seed: int


BOOTSTRAP_MODES = {"pairs": (True, False), "raters": (False, True), "pairs and raters": (True, True)}
BOOTSTRAP_STATISTICS = ("first share of decisive answers", "first minus second share of all answers")


def cluster_bootstrap(votes: pd.DataFrame, first: str, second: str, replicates: int = 2000, seed: int = 0,
                      confidence: float = 0.95, modes: Sequence[str] = tuple(BOOTSTRAP_MODES)) -> list[BootstrapCI]:
    """Cluster bootstrap percentile intervals of

    - first share of decisive answers: sum w [first] / sum w [decisive];
    - difference of shares of all answers: sum w ([first] - [second]) / sum w,

    where a replicate gives the answer of pair u by rater r the weight w = c_u * c_r, c
    counting how often the pair / rater was drawn with replacement. Modes: ``pairs``
    (c_r = 1; answers to one pair are correlated), ``raters`` (c_u = 1) and ``pairs and
    raters`` (both drawn independently: the pigeonhole bootstrap of Owen 2007, which
    covers both correlations but is conservative: without any pair or rater effect its
    variance is about 3x the binomial one, since Var(c_u c_r) = 3). Replicates whose
    weights leave no decisive answer are dropped (rare)."""
    rows = main_votes(votes, first, second)
    if rows.empty:
        raise AnalysisError(f"no main-pair answers compare {first!r} with {second!r}")
    unknown = set(modes) - set(BOOTSTRAP_MODES)
    if unknown:
        raise AnalysisError(f"unknown bootstrap mode(s) {sorted(unknown)}; modes: {list(BOOTSTRAP_MODES)}")
    pair_codes, pairs = pd.factorize(rows["pair_id"])
    rater_codes, raters = pd.factorize(rows["rater_id"])
    is_first = (rows["choice"] == first).to_numpy(float)
    is_second = (rows["choice"] == second).to_numpy(float)
    n_first, n_second, n_all = is_first.sum(), is_second.sum(), len(rows)
    point = (n_first / (n_first + n_second) if n_first + n_second else float("nan"), (n_first - n_second) / n_all)
    alpha = 1 - confidence
    rng = np.random.default_rng(seed)

    def counts(size: int, m: int, draw: bool) -> np.ndarray:
        if not draw:
            return np.ones((m, size), dtype=np.int64)
        picks = rng.integers(0, size, (m, size))
        return np.stack([np.bincount(row, minlength=size) for row in picks])

    out = []
    chunk = max(1, min(replicates, 2_000_000 // max(1, len(rows))))
    for mode in modes:
        draw_pairs, draw_raters = BOOTSTRAP_MODES[mode]
        shares: list[float] = []
        diffs: list[float] = []
        done = 0
        while done < replicates:
            m = min(chunk, replicates - done)
            w = counts(len(pairs), m, draw_pairs)[:, pair_codes] * counts(len(raters), m, draw_raters)[:, rater_codes]
            wf, ws, wt = w @ is_first, w @ is_second, w.sum(axis=1)
            ok = (wf + ws) > 0
            shares.extend((wf[ok] / (wf[ok] + ws[ok])).tolist())
            diffs.extend(((wf[ok] - ws[ok]) / wt[ok]).tolist())
            done += m
        for name, values, estimate in zip(BOOTSTRAP_STATISTICS, (shares, diffs), point):
            arr = np.asarray(values)
            lo, hi = np.quantile(arr, [alpha / 2, 1 - alpha / 2]) if len(arr) else (float("nan"), float("nan"))
            out.append(BootstrapCI(name, mode, float(estimate), float(lo), float(hi), int(len(arr)), seed))
    return out


# --------------------------------------------------------------------------- position bias
@dataclass(frozen=True)
class PositionBias:
    left: int
    right: int
    same: int
    left_share: float
    p_value: float
    ci_low: float
    ci_high: float


def position_bias(votes: pd.DataFrame, kinds: Sequence[str] = ("main",)) -> PositionBias:
    """Exact binomial test of H0: P(L | decisive) = 1/2 over raw answers of the given pair
    kinds. Sides are balanced per pair, so a method effect cannot masquerade as a side
    effect; a small p-value means raters lean to one side."""
    rows = votes[votes["pair_kind"].isin(list(kinds))]
    left, right = int((rows["answer"] == "L").sum()), int((rows["answer"] == "R").sum())
    same = int((rows["answer"] == "S").sum())
    test = sign_test(left, left + right, "position")
    return PositionBias(left, right, same, test.share, test.p_value, test.ci_low, test.ci_high)


def side_balance(votes: pd.DataFrame, first: str) -> tuple[int, int]:
    """How often ``first`` was shown left and right in main pairs (should be about equal)."""
    rows = votes[votes["pair_kind"] == "main"]
    return int((rows["left_method"] == first).sum()), int((rows["right_method"] == first).sum())


def as_dict(obj) -> dict:  # noqa: ANN001 - any of the dataclasses above
    return asdict(obj)


__all__ = ["AnalysisError", "AnswersPerPair", "BootstrapCI", "DEFAULT_THRESHOLDS", "DENOMINATORS", "PositionBias",
           "Share", "SignTest", "ThresholdRow", "answer_shares", "answers_per_pair", "as_dict", "cluster_bootstrap",
           "comparisons", "default_order", "goodman_intervals", "main_votes", "methods_of", "pair_counts",
           "position_bias", "side_balance", "sign_test", "sign_tests", "threshold_table"]
