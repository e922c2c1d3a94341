"""Sample size for the survey's sign test (power analysis).

The primary test is the exact two-sided binomial test of H0: P(first | decisive) = 1/2
on n decisive answers. At level alpha it rejects when k <= c_n or k >= n - c_n, with
c_n the largest integer such that 2 P(X <= c_n | n, 1/2) <= alpha. Its power against a
true share p1 is

    power(n) = P(X <= c_n | n, p1) + P(X >= n - c_n | n, p1).

Exact power is not monotone in n (saw-tooth), so the required n is the smallest n from
which power stays >= the target for every larger n searched (up to 4x the normal
approximation and at least 200 more). The normal approximation is

    n ~ ((z_{1-alpha/2} / 2 + z_{power} sqrt(p1 (1 - p1))) / (p1 - 1/2))^2.

Total answers = n / (1 - tie rate); pairs = total / answers per pair. Answers inside a
pair are correlated; multiply by the design effect 1 + (m - 1) ICC when an intra-pair
correlation is known. The paper's observed effect: p1 = 40.4 / (40.4 + 32.4) = 0.555,
tie rate 0.272, 25.09 answers per pair.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

PAPER_FIRST_SHARE = 0.404 / (0.404 + 0.324)
PAPER_TIE_RATE = 1 - 0.404 - 0.324
PAPER_ANSWERS_PER_PAIR = 25.09


def critical_value(n: int | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """c_n: the largest k with 2 P(X <= k | n, 1/2) <= alpha (-1 if none)."""
    n = np.asarray(n)
    c = stats.binom.ppf(alpha / 2, n, 0.5).astype(int)
    c = np.where(stats.binom.cdf(c, n, 0.5) > alpha / 2, c - 1, c)
    return c


def sign_test_power(n: int | np.ndarray, p1: float, alpha: float = 0.05) -> np.ndarray:
    """Exact power of the two-sided sign test with n decisive answers at true share p1."""
    n = np.asarray(n)
    c = critical_value(n, alpha)
    lower = np.where(c >= 0, stats.binom.cdf(c, n, p1), 0.0)
    upper = np.where(c >= 0, stats.binom.sf(n - c - 1, n, p1), 0.0)
    return lower + upper


def normal_approximation(p1: float, alpha: float = 0.05, power: float = 0.8) -> int:
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return int(math.ceil(((z_a * 0.5 + z_b * math.sqrt(p1 * (1 - p1))) / (p1 - 0.5)) ** 2))


@dataclass(frozen=True)
class SampleSize:
    p1: float
    alpha: float
    power: float
    decisive_answers: int
    decisive_answers_normal_approx: int
    achieved_power: float
    tie_rate: float
    total_answers: int
    answers_per_pair: float | None
    design_effect: float
    pairs: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def required_sample_size(p1: float, alpha: float = 0.05, power: float = 0.8, tie_rate: float = 0.0,
                         answers_per_pair: float | None = None, icc: float = 0.0) -> SampleSize:
    """Answers (and pairs) needed to detect a first-method share ``p1`` of decisive answers.

    ``tie_rate``: expected share of "same" answers; ``icc``: intra-pair correlation for the
    design effect 1 + (m - 1) icc, m = answers per pair (needs ``answers_per_pair``)."""
    if not 0 < p1 < 1 or p1 == 0.5:
        raise ValueError("p1 must lie in (0, 1) and differ from 0.5 (the null hypothesis)")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("alpha and power are probabilities in (0, 1)")
    if not 0 <= tie_rate < 1:
        raise ValueError("tie_rate must lie in [0, 1)")
    if icc and not answers_per_pair:
        raise ValueError("an intra-pair correlation needs --answers-per-pair")
    approx = normal_approximation(p1, alpha, power)
    upper = max(4 * approx, approx + 200, 50)
    ns = np.arange(1, upper + 1)
    powers = sign_test_power(ns, p1, alpha)
    below = np.nonzero(powers < power)[0]
    if len(below) and below[-1] == len(ns) - 1:
        raise ValueError("no sample size reaches the power in the searched range; choose a larger effect")
    n = int(ns[below[-1] + 1]) if len(below) else 1
    deff = 1 + ((answers_per_pair or 1) - 1) * icc
    total = int(math.ceil(n * deff / (1 - tie_rate)))
    pairs = int(math.ceil(total / answers_per_pair)) if answers_per_pair else None
    return SampleSize(p1, alpha, power, n, approx, float(powers[n - 1]), tie_rate, total, answers_per_pair, deff, pairs)


__all__ = ["PAPER_ANSWERS_PER_PAIR", "PAPER_FIRST_SHARE", "PAPER_TIE_RATE", "SampleSize", "critical_value",
           "normal_approximation", "required_sample_size", "sign_test_power"]
