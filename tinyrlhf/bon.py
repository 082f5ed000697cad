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

import functools
import math

import numpy as np

from .stats import arm_statistics, projection


@functools.lru_cache(maxsize=256)
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


def sizes(pool: int) -> list[int]:
    """The n best-of-n is evaluated at: 1, 2, 4, ... up to the pool size (which is always included)."""
    ns = [1 << k for k in range(pool.bit_length()) if 1 << k <= pool]
    return ns if ns[-1] == pool else ns + [pool]


def analyse(gold, proxies: dict, *, reference: str, null: str | None, ns=None, planned: dict | None = None) -> dict:
    """Paired best-of-n of every arm on one gold-judged pool.

    gold: (prompts x N) gold score of every candidate; proxies[arm]: (seeds x prompts x N) each seed's reward model's
    score of every candidate (NaN rows for a model that failed or was not trained; seed index i is the same
    reward-model seed in every arm). planned[arm]: the seed indices the arm has models for (default: all); a NaN
    row among them is a failure, one outside them is by design.
    For each n: every arm's expected gold reward of its best-of-n per (seed, prompt), its gain over the pool's mean
    (the SFT policy's expected gold reward) with arm_statistics' intervals (seeds crossed with prompts, paired
    across arms), and its proxy's best-of-n gain (which must rise with n). n* is the n where bf16's mean gold gain
    peaks; the headline compares the arms there, where a ratio to bf16's gain means most.
    """
    if reference not in proxies:
        raise ValueError(f"best-of-n compares every arm with {reference!r}, which is not among {list(proxies)}")
    gold = np.asarray(gold, dtype=float)
    n_prompts, pool = gold.shape
    ns = list(ns or sizes(pool))
    base = gold.mean(1)
    gold_bon, proxy_gain = {}, {}
    for arm, prox in proxies.items():
        prox = np.asarray(prox, dtype=float)
        g = np.full((len(ns), prox.shape[0], n_prompts), np.nan)
        pg = np.full((len(ns), prox.shape[0]), np.nan)
        for s in range(prox.shape[0]):
            if np.isnan(prox[s]).any():
                continue
            for k, n in enumerate(ns):
                g[k, s] = [best_of_n(prox[s, p], gold[p], n) for p in range(n_prompts)]
                pg[k, s] = np.mean([best_of_n(prox[s, p], prox[s, p], n) - prox[s, p].mean() for p in range(n_prompts)])
        gold_bon[arm], proxy_gain[arm] = g, pg
    by_n = []
    for k, n in enumerate(ns):
        cells = {arm: gold_bon[arm][k] for arm in proxies}
        by_n.append({"n": n, "kl": kl_bon(n), "stats": arm_statistics(cells, base, reference=reference, null=null)})
    ref_gain = [row["stats"][reference]["gold_gain_vs_sft"] for row in by_n]
    n_star = ns[int(np.nanargmax([g if g is not None else np.nan for g in ref_gain]))] if any(
        g is not None for g in ref_gain) else None
    d = np.sqrt([kl_bon(n) for n in ns])
    arms = {}
    for arm in proxies:
        gains = [row["stats"][arm]["gold_gain_vs_sft"] for row in by_n]
        fit = fit_bon_frontier(d, gains) if all(g is not None for g in gains) else {"alpha": None, "beta": None}
        star = ns.index(n_star) if n_star is not None else None
        seeds_ok = [int(i) for i in np.flatnonzero(~np.isnan(proxy_gain[arm][0]))]
        wanted = sorted((planned or {}).get(arm, range(proxy_gain[arm].shape[1])))
        lost = sorted(set(wanted) - set(seeds_ok))
        arms[arm] = {
            "status": "ok" if not lost else "partial" if seeds_ok else "failed",
            "reason": f"seed index(es) {lost} have no scores (see scorers)" if lost else None,
            "seeds_ok": seeds_ok,
            "by_n": [{"n": n, **row["stats"][arm], "proxy_gain": _mean_or_none(proxy_gain[arm][k])}
                     for k, (n, row) in enumerate(zip(ns, by_n))],
            "at_n_star": None if star is None else {"n": n_star, **by_n[star]["stats"][arm]},
            "frontier": fit,
            "projection": None if arm == reference or star is None else projection(
                {arm: gold_bon[arm][star], reference: gold_bon[reference][star]}, base, reference=reference,
                arm=arm, target=0.05)}
    return {"ns": ns, "kl": [kl_bon(n) for n in ns], "pool": pool, "prompts": n_prompts,
            "pool_gold_mean": float(base.mean()), "n_star": n_star, "reference": reference, "null_arm": null,
            "arms": arms}


def _mean_or_none(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else None
