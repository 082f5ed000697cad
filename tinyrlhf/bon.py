"""Best-of-n on one candidate pool (Gao, Schulman & Hilton 2022, *Scaling laws for reward model overoptimization*):
the expected gold reward of the candidate a reward model ranks best among n drawn from a pool of N >= n, without
drawing. A library for the paired best-of-n of issue 24: every reward model ranks the same gold-judged pool, so only
the rankings differ between arms.

Unbiased estimator: sort the pool by proxy score, ascending; the candidate at rank i (1..N) is the best of a random
n-subset exactly when the subset holds it and n - 1 of the i - 1 below it, which happens with probability
C(i - 1, n - 1) / C(N, n). Candidates with equal proxy scores share their ranks' weights equally (a random tie-break).
KL of best-of-n from the sampling policy: log n - (n - 1) / n; d = sqrt(KL); the frontier R_bon(d) = d (alpha - beta d).
"""

from __future__ import annotations

import math

import numpy as np


def rank_weights(pool: int, n: int) -> np.ndarray:
    """P(the candidate at rank i of `pool`, ascending, is the best of a random n-subset), i = 1..pool; sums to 1."""
    if not 1 <= n <= pool:
        raise ValueError(f"best-of-n needs 1 <= n <= pool size; got n={n}, pool={pool}")
    total = math.comb(pool, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, pool + 1)])


def best_of_n(proxy, gold, n: int) -> float:
    """Expected `gold` of the candidate with the highest `proxy` among n drawn without replacement from the pool
    (one prompt's candidates), exactly; ties in `proxy` broken at random."""
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    if proxy.shape != gold.shape or proxy.ndim != 1:
        raise ValueError("proxy and gold must be 1-d and of the same length (one prompt's pool)")
    order = np.argsort(proxy, kind="stable")
    weights = rank_weights(len(proxy), n)
    sorted_proxy, sorted_gold = proxy[order], gold[order]
    # a tied group shares its weight: every member is equally likely to win the tie
    value = 0.0
    start = 0
    while start < len(sorted_proxy):
        end = start
        while end + 1 < len(sorted_proxy) and sorted_proxy[end + 1] == sorted_proxy[start]:
            end += 1
        value += weights[start: end + 1].sum() * sorted_gold[start: end + 1].mean()
        start = end + 1
    return float(value)


def kl_bon(n: int) -> float:
    """KL(best-of-n || sampling policy) = log n - (n - 1) / n (Gao et al. 2022; an upper bound, exact for
    continuous rewards without ties)."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return math.log(n) - (n - 1) / n


def fit_bon_frontier(d, gain) -> dict:
    """Least-squares alpha, beta of gain = d (alpha - beta d) through the origin."""
    d, gain = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    design = np.stack([d, -d * d], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    return {"alpha": float(alpha), "beta": float(beta)}
