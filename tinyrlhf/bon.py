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

from .stats import (add_family_intervals, arm_statistics, crossed_jackknife, projection, sign_flip_p, spearman,
                    tax_fn, widened)


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


def analyse(gold, proxies: dict, *, reference: str, null: str | None, ns=None, planned: dict | None = None,
            headline_n: int | None = None, family=(), sweep: dict | None = None, served_pairs: dict | None = None) -> dict:
    """Paired best-of-n of every arm on one gold-judged pool.

    gold: (prompts x N) gold score of every candidate; proxies[arm]: (seeds x prompts x N) each seed's reward model's
    score of every candidate (NaN rows for a model that failed or was not trained; seed index i is the same
    reward-model seed in every arm). planned[arm]: the seed indices the arm has models for (default: all); a NaN
    row among them is a failure, one outside them is by design.
    For each n: every arm's expected gold reward of its best-of-n per (seed, prompt), its gain over the pool's mean
    (the SFT policy's expected gold reward) with arm_statistics' intervals (seeds crossed with prompts, paired
    across arms), and its proxy's best-of-n gain (which must rise with n). n* is the n where bf16's mean gold gain
    peaks. The headline compares the arms at `headline_n` when given (fixed before the run), else at n* (chosen on
    the data it reports: `n_star_rule` says which); each n's tax also gets a band simultaneous over every n.
    `family`: the arms whose "costs less than" are the headline's claims, each also given an interval simultaneous
    over them (Bonferroni). `sweep`: {arm: bits} of the bits sweep, reported apart (bits_sweep). `served_pairs`:
    {trained arm: its served arm}, each pair's difference of taxes with its own interval (trained_minus_served).
    """
    if reference not in proxies:
        raise ValueError(f"best-of-n compares every arm with {reference!r}, which is not among {list(proxies)}")
    gold = np.asarray(gold, dtype=float)
    n_prompts, pool = gold.shape
    ns = list(ns or sizes(pool))
    base = gold.mean(1)
    gold_bon, proxy_gain = _rank_all(gold, proxies, ns)
    by_n = []
    for k, n in enumerate(ns):
        cells = {arm: gold_bon[arm][k] for arm in proxies}
        by_n.append({"n": n, "kl": kl_bon(n), "stats": arm_statistics(cells, base, reference=reference, null=null)})
    ref_gain = [row["stats"][reference]["gold_gain_vs_sft"] for row in by_n]
    n_peak = ns[int(np.nanargmax([g if g is not None else np.nan for g in ref_gain]))] if any(
        g is not None for g in ref_gain) else None
    n_star = headline_n if headline_n in ns else n_peak
    for row in by_n:
        _add_bands(row["stats"], len(ns))
    star = ns.index(n_star) if n_star is not None else None
    arms = {arm: _arm_record(arm, by_n, proxy_gain[arm], (planned or {}).get(arm), star, reference,
                             None if star is None or arm == reference else
                             {arm: gold_bon[arm][star], reference: gold_bon[reference][star]}, base)
            for arm in proxies}
    add_family_intervals({arm: rec["at_n_star"] for arm, rec in arms.items()}, [a for a in family if a in arms],
                         "best-of-n's precision arms, trained and served")
    sweep = sweep or {}
    ref_ci = ((arms[reference]["at_n_star"] or {}).get("gold_gain_vs_sft_ci95") or [0.0, 0.0])
    # ratios to bf16's gain only where it is resolved from 0, as every tax (stats.arm_statistics)
    at_star = {arm: gold_bon[arm][star] for arm in proxies} if star is not None and ref_ci[0] > 0 else None
    return {"ns": ns, "kl": [kl_bon(n) for n in ns], "pool": pool, "prompts": n_prompts,
            "pool_gold_mean": float(base.mean()), "n_star": n_star, "n_peak": n_peak,
            "n_star_rule": ("fixed in the profile before the run by eval.headline_n"
                            if headline_n is not None and n_star == headline_n else
                            "n*, where bf16's gold gain peaks on these data (chosen on the data it reports)"),
            "reference": reference, "null_arm": null,
            "arms": {arm: rec for arm, rec in arms.items() if arm not in sweep},
            "bits": bits_sweep({arm: arms[arm] for arm in sweep}, sweep, at_star, base, reference) if sweep else None,
            "trained_minus_served": None if at_star is None else {
                trained: trained_minus_served(at_star[trained], at_star[served], at_star[reference], base)
                for trained, served in (served_pairs or {}).items() if trained in at_star and served in at_star}}


def _rank_all(gold: np.ndarray, proxies: dict, ns: list) -> tuple[dict, dict]:
    """Each arm's expected gold reward of its best-of-n, (ns x seeds x prompts), and its proxy's own best-of-n gain,
    (ns x seeds); NaN for a seed without scores."""
    n_prompts = gold.shape[0]
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
    return gold_bon, proxy_gain


def _arm_record(arm, by_n, proxy_gain, planned, star, reference, star_cells, base) -> dict:
    """One arm's best-of-n: status, every n's statistics, the headline n's, its frontier and projection."""
    gains = [row["stats"][arm]["gold_gain_vs_sft"] for row in by_n]
    d = np.sqrt([row["kl"] for row in by_n])
    seeds_ok = [int(i) for i in np.flatnonzero(~np.isnan(proxy_gain[0]))]
    lost = sorted(set(sorted(planned if planned is not None else range(proxy_gain.shape[1]))) - set(seeds_ok))
    return {"status": "ok" if not lost else "partial" if seeds_ok else "failed",
            "reason": f"seed index(es) {lost} have no scores (see scorers)" if lost else None,
            "seeds_ok": seeds_ok,
            "by_n": [{"n": row["n"], **row["stats"][arm], "proxy_gain": _mean_or_none(proxy_gain[k])}
                     for k, row in enumerate(by_n)],
            "at_n_star": None if star is None else {"n": by_n[star]["n"], **by_n[star]["stats"][arm]},
            "frontier": fit_bon_frontier(d, gains) if all(g is not None for g in gains) else {"alpha": None,
                                                                                             "beta": None},
            "projection": None if star_cells is None else projection(star_cells, base, reference=reference, arm=arm,
                                                                     target=0.05)}


def _add_bands(stats: dict, comparisons: int) -> None:
    """Each arm's tax at one n with its band simultaneous over the `comparisons` n's (Bonferroni)."""
    for e in stats.values():
        e["tax_vs_bf16_band"] = widened(e.get("tax_vs_bf16"), e.get("tax_vs_bf16_ci95"), e.get("tax_df"), comparisons,
                                        e.get("tax_variance"))


def _seed_ok(*cells) -> np.ndarray:
    return np.flatnonzero(np.all([~np.isnan(c).any(axis=1) for c in cells], axis=0))


def trained_minus_served(trained, served, ref, base) -> dict:
    """The tax of a precision's trained arm minus that of the same precision served from bf16's models, at the
    headline n, paired by seed and prompt, with its crossed-jackknife interval: what training at that precision adds
    to (or saves over) quantizing a bf16-trained model. It cannot separate the precision's arithmetic during
    training from the other training path it takes (a partial reseed: other gradients, other optimum): the trained
    arm differs in both, the served one in neither."""
    ok = _seed_ok(trained, served, ref)
    t, v, r = trained[ok], served[ok], ref[ok]

    def diff(s, p):
        g_ref = float(np.mean(r[np.ix_(s, p)])) - float(np.mean(base[p]))
        return None if g_ref == 0 else (float(np.mean(v[np.ix_(s, p)])) - float(np.mean(t[np.ix_(s, p)]))) / g_ref
    est = crossed_jackknife(diff, len(ok), len(base)) if len(ok) else {}
    per_seed = [diff(np.array([i]), np.arange(len(base))) for i in range(len(ok))]
    return {"value": est.get("value"), "ci95": est.get("ci95"), "df": est.get("df"), "seeds": [int(i) for i in ok],
            "per_seed": per_seed, "sign_flip_p": sign_flip_p(per_seed)}


def bits_sweep(arms: dict, bits: dict, at_star: dict | None, base, reference: str) -> dict:
    """Where quantization starts to cost, from the served-at-k-bits arms at the headline n.

    trend: the tax's least-squares slope per halving of the width (against log2 bits: a threshold at low widths
    weighs as much as the step from 8 to 4), with its crossed-jackknife interval, and a sign-flip test of the
    per-seed slopes, exact but conditional on these prompts (every seed ranks the same ones; the interval counts
    them). onset: fixed-sequence testing from the fewest bits up (each width tested at 5% only while every narrower
    one was resolved: the family-wise error stays 5% with no correction): `onset_bits` the widest resolved width
    (None when the narrowest is not), `stopped_at` the first width not resolved, where testing stopped: wider
    widths were not tested, whatever their intervals. `at_star` None (bf16's gain not resolved): no trend."""
    order = sorted(bits, key=bits.get)  # fewest bits first
    rows = [{"arm": arm, "bits": bits[arm], "status": arms[arm]["status"], **(arms[arm]["at_n_star"] or {})}
            for arm in order]
    onset = stopped = None
    for row in rows:
        ci = row.get("tax_vs_bf16_ci95")
        if not ci or ci[0] <= 0:
            stopped = row["bits"]
            break
        onset = row["bits"]
    return {"rows": rows, "onset_bits": onset, "stopped_at": stopped, "trend": None if at_star is None else
            _bits_trend([at_star[a] for a in order], [bits[a] for a in order], at_star[reference], base)}


def _bits_trend(cells: list, widths: list, ref, base) -> dict:
    ok = _seed_ok(ref, *cells)
    x = -np.log2(np.asarray(widths, dtype=float))  # halvings of the width, up to a constant
    x = x - x.mean()
    taxes_at = [tax_fn(c[ok], ref[ok], base) for c in cells]  # each width's tax, as every tax is computed

    def slope(s, p):
        taxes = [tax(s, p) for tax in taxes_at]
        return None if None in taxes else float(x @ np.asarray(taxes) / (x @ x))
    est = crossed_jackknife(slope, len(ok), len(base)) if len(ok) and len(widths) > 1 else {}
    per_seed = [slope(np.array([i]), np.arange(len(base))) for i in range(len(ok))] if est else []
    return {"per_halving": est.get("value"), "per_halving_ci95": est.get("ci95"), "df": est.get("df"),
            "per_seed": per_seed, "sign_flip_p": sign_flip_p(per_seed)}


def _mean_or_none(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else None


def judge_shift(gold, second, proxies: dict, *, n: int, reference: str, arms) -> dict:
    """How far a second judge of the same pool moves best-of-n's taxes at `n`: each arm's tax under the judge
    (`gold`) and under `second` (prompts x N, the same candidates), and their paired difference, second minus
    judge, per seed and prompt with its crossed-jackknife interval and the per-seed sign-flip p. The arms' rankings
    are the same under both: only the judging differs. Also the judges' rank correlation over the pool, and n* under
    each (the n where bf16's gain peaks). A tax is a ratio of gains, so the judges' scales do not matter."""
    gold, second = np.asarray(gold, dtype=float), np.asarray(second, dtype=float)
    ns = sizes(gold.shape[1])
    under = {}
    for name, judge in (("judge", gold), ("second", second)):
        bon, _ = _rank_all(judge, {a: proxies[a] for a in (reference, *arms)}, ns)
        under[name] = {"bon": {a: v[ns.index(n)] for a, v in bon.items()}, "base": judge.mean(1),
                       "stats": arm_statistics({a: v[ns.index(n)] for a, v in bon.items()}, judge.mean(1),
                                               reference=reference, null=None),
                       "n_peak": ns[int(np.nanargmax([np.nanmean(bon[reference][k]) for k in range(len(ns))]))]}
    rows = {}
    for arm in arms:
        j, s = under["judge"], under["second"]
        ok = _seed_ok(j["bon"][arm], j["bon"][reference])
        t_j = tax_fn(j["bon"][arm][ok], j["bon"][reference][ok], j["base"])
        t_s = tax_fn(s["bon"][arm][ok], s["bon"][reference][ok], s["base"])

        def diff(si, pi):
            a, b = t_s(si, pi), t_j(si, pi)
            return None if a is None or b is None else a - b
        est = crossed_jackknife(diff, len(ok), len(j["base"])) if len(ok) else {}
        per_seed = [diff(np.array([i]), np.arange(len(j["base"]))) for i in range(len(ok))]
        rows[arm] = {"tax_judge": j["stats"][arm].get("tax_vs_bf16"),
                     "tax_judge_ci95": j["stats"][arm].get("tax_vs_bf16_ci95"),
                     "tax_second": s["stats"][arm].get("tax_vs_bf16"),
                     "tax_second_ci95": s["stats"][arm].get("tax_vs_bf16_ci95"),
                     "difference": est.get("value"), "difference_ci95": est.get("ci95"), "df": est.get("df"),
                     "per_seed": per_seed, "sign_flip_p": sign_flip_p(per_seed), "seeds": [int(i) for i in ok]}
    return {"n": n, "arms": rows, "rank_correlation": spearman(gold.ravel(), second.ravel()),
            "n_peak_judge": under["judge"]["n_peak"], "n_peak_second": under["second"]["n_peak"],
            "bf16_gain_judge_ci95": under["judge"]["stats"][reference].get("gold_gain_vs_sft_ci95"),
            "bf16_gain_second_ci95": under["second"]["stats"][reference].get("gold_gain_vs_sft_ci95")}
