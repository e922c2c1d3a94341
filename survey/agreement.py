"""Inter-rater agreement: Krippendorff's alpha for nominal data.

Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability". Units u (here:
pairs) carry m_u values (here: the method each rater chose, or "same"); units with
fewer than two values are not pairable and are dropped. The coincidence matrix is

    o_ck = sum_u (number of ordered pairs of values (c, k) within u, from different
           coders) / (m_u - 1),

n_c = sum_k o_ck, n = sum_c n_c (the number of pairable values), and for nominal data

    alpha = 1 - D_o / D_e = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k.

alpha = 1 is perfect agreement, 0 is agreement at chance level; it is undefined
(NaN) when every pairable value is the same category (D_e = 0).
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Iterable, Mapping

import pandas as pd


def coincidence_matrix(units: Iterable[Iterable[Hashable]]) -> dict[tuple[Hashable, Hashable], float]:
    """o_ck over all pairable units (see the module doc)."""
    matrix: Counter = Counter()
    for values in units:
        values = [v for v in values if v is not None]
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nc - 1) if c == k else nc * nk
                if pairs:
                    matrix[(c, k)] += pairs / (m - 1)
    return dict(matrix)


def krippendorff_alpha_nominal(units: Iterable[Iterable[Hashable]] | Mapping[Hashable, Iterable[Hashable]]) -> float:
    """Krippendorff's alpha (nominal) of ``units``: an iterable of value lists, one list per
    unit (missing values as None or simply absent), or a mapping unit -> values."""
    if isinstance(units, Mapping):
        units = units.values()
    o = coincidence_matrix(units)
    totals: Counter = Counter()
    for (c, _k), value in o.items():
        totals[c] += value
    n = sum(totals.values())
    observed = sum(v for (c, k), v in o.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or expected == 0:
        return float("nan")
    return 1.0 - (n - 1) * observed / expected


def alpha_of_votes(votes: pd.DataFrame, kinds: tuple[str, ...] = ("main",)) -> float:
    """Alpha over pairs of the given kinds, the value being each rater's choice (method
    name or "same"; the raw L / R is not comparable across raters because sides differ)."""
    rows = votes[votes["pair_kind"].isin(list(kinds))]
    return krippendorff_alpha_nominal(rows.groupby("pair_id")["choice"].apply(list).to_dict())


__all__ = ["alpha_of_votes", "coincidence_matrix", "krippendorff_alpha_nominal"]
