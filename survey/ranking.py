"""More than two methods: pairwise win rates and a Bradley-Terry ranking.

Bradley & Terry (1952): P(i beats j) = p_i / (p_i + p_j). Maximum likelihood by the
MM algorithm of Hunter (2004), "MM algorithms for generalized Bradley-Terry models":

    p_i <- W_i / sum_{j != i} n_ij / (p_i + p_j),     then rescale so prod_i p_i = 1,

with W_i the wins of i and n_ij the decisive comparisons of i and j ("same" answers
are left out). The maximum exists and is unique iff the "beats" graph is strongly
connected (Hunter's Assumption 1); otherwise the ranking is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .votes import SAME


class RankingError(ValueError):
    """The ranking cannot be estimated from these data; the message says why."""


def win_matrix(votes: pd.DataFrame, methods: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Methods, W (W[i, j] = answers choosing i over j) and T (T[i, j] = "same" answers
    between i and j), over main pairs."""
    rows = votes[votes["pair_kind"] == "main"]
    if methods is None:
        seen: dict[str, None] = {}
        for left, right in zip(rows["left_method"], rows["right_method"]):
            seen.setdefault(left)
            seen.setdefault(right)
        methods = list(seen)
    index = {m: i for i, m in enumerate(methods)}
    k = len(methods)
    wins, ties = np.zeros((k, k)), np.zeros((k, k))
    for left, right, choice in zip(rows["left_method"], rows["right_method"], rows["choice"]):
        if left not in index or right not in index:
            continue
        i, j = index[left], index[right]
        if choice == SAME:
            ties[i, j] += 1
            ties[j, i] += 1
        elif choice == left:
            wins[i, j] += 1
        else:
            wins[j, i] += 1
    return list(methods), wins, ties


@dataclass(frozen=True)
class WinRate:
    first: str
    second: str
    first_wins: int
    second_wins: int
    same: int
    first_share_decisive: float


def pairwise_win_rates(votes: pd.DataFrame, methods: Sequence[str] | None = None) -> list[WinRate]:
    """Every compared method pair (i < j in ``methods`` order) with its counts."""
    names, wins, ties = win_matrix(votes, methods)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            decisive = wins[i, j] + wins[j, i]
            if decisive + ties[i, j] == 0:
                continue
            out.append(WinRate(names[i], names[j], int(wins[i, j]), int(wins[j, i]), int(ties[i, j]),
                               float(wins[i, j] / decisive) if decisive else float("nan")))
    return out


def _strongly_connected(wins: np.ndarray) -> bool:
    k = len(wins)

    def reach(adj: np.ndarray) -> set[int]:
        seen, stack = {0}, [0]
        while stack:
            node = stack.pop()
            for other in np.nonzero(adj[node] > 0)[0]:
                if int(other) not in seen:
                    seen.add(int(other))
                    stack.append(int(other))
        return seen

    return len(reach(wins)) == k and len(reach(wins.T)) == k


@dataclass(frozen=True)
class BradleyTerry:
    methods: list[str]
    strength: list[float]       # p_i, geometric mean 1
    log_strength: list[float]   # theta_i = log p_i, sum 0
    iterations: int
    converged: bool

    def ranking(self) -> list[tuple[str, float]]:
        return sorted(zip(self.methods, self.log_strength), key=lambda x: -x[1])

    def probability(self, i: str, j: str) -> float:
        """Model probability that ``i`` is preferred to ``j``."""
        pi, pj = self.strength[self.methods.index(i)], self.strength[self.methods.index(j)]
        return pi / (pi + pj)


def bradley_terry(wins: np.ndarray, methods: Sequence[str], tol: float = 1e-10, max_iter: int = 10_000) -> BradleyTerry:
    """MM fit of the Bradley-Terry model to the win matrix (see the module doc)."""
    wins = np.asarray(wins, dtype=float)
    k = len(methods)
    if wins.shape != (k, k):
        raise RankingError(f"win matrix has shape {wins.shape}, expected {(k, k)}")
    if k < 2:
        raise RankingError("a ranking needs at least two methods")
    if not _strongly_connected(wins):
        raise RankingError("Bradley-Terry has no finite estimate: some method never beats (or never loses to) the "
                           "others it was compared with; collect more comparisons")
    n = wins + wins.T
    total_wins = wins.sum(axis=1)
    p = np.ones(k)
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        new = total_wins / denom
        new = new / np.exp(np.log(new).mean())
        change = float(np.max(np.abs(np.log(new) - np.log(p))))
        p = new
        if change < tol:
            converged = True
            break
    theta = np.log(p)
    return BradleyTerry(list(methods), p.tolist(), theta.tolist(), iteration, converged)


def bradley_terry_of_votes(votes: pd.DataFrame, methods: Sequence[str] | None = None) -> BradleyTerry:
    names, wins, _ = win_matrix(votes, methods)
    return bradley_terry(wins, names)


__all__ = ["BradleyTerry", "RankingError", "WinRate", "bradley_terry", "bradley_terry_of_votes", "pairwise_win_rates",
           "win_matrix"]
