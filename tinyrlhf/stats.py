"""The statistics behind every interval the pipeline reports, with NumPy and the standard library only.

- `wilson_ci`: a proportion's 95% interval (reward-model accuracy).
- `mcnemar`: the exact paired test of two classifiers on the same pairs (reward models across precisions).
- `mean_std_ci`: mean, sample standard deviation and a t-interval.
- `arm_statistics`: the quantization tax, gains and differences with `crossed_jackknife` intervals: reward-model
  seeds crossed with prompts (every seed's models answer, or rank candidates for, the same prompts), paired across
  arms by seed and prompt, each jackknife part scaled by Student's t at its own degrees of freedom (95-99% coverage
  at 3 to 7 seeds on harsh data, where a percentile bootstrap over 5 seeds covered 85-91% and Satterthwaite's
  pooled df 91.5% at 3). `variance_components` and `projection`: what more seeds or prompts buy.
- `fit_frontier`: Gao, Schulman & Hilton (2022), "Scaling laws for reward model overoptimization": RL's gold reward
  gain against d = sqrt(KL) follows R(d) = d (alpha - beta log d) (best-of-n's follows d (alpha - beta d):
  bon.fit_bon_frontier); fitted by least squares, with intervals from resampling runs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

Z95 = 1.959964
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (a table, so no scipy dependency).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def wilson_ci(successes: int, n: int, z: float = Z95) -> list[float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mcnemar(a_right, b_right) -> dict:
    """Exact McNemar test of two classifiers judged on the same items: b = items only A gets right, c = items only
    B gets right; two-sided p from the binomial(b + c, 1/2)."""
    b = sum(1 for x, y in zip(a_right, b_right) if x and not y)
    c = sum(1 for x, y in zip(a_right, b_right) if y and not x)
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n if n else 1.0
    return {"only_first_right": b, "only_second_right": c, "p_value": min(1.0, 2 * tail)}


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson on average ranks)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = x.argsort(kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their average rank
            r[x == v] = r[x == v].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def mean_std_ci(values) -> tuple[float | None, float | None, list | None]:
    """Mean, sample standard deviation and 95% t-interval of the mean; no spread from a single value."""
    values = list(values)
    n = len(values)
    if n == 0:
        return None, None, None
    m = sum(values) / n
    if n == 1:
        return m, None, None
    std = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = (T975[n - 2] if n - 1 <= len(T975) else Z95) * std / math.sqrt(n)
    return m, std, [m - half, m + half]


def percentile_ci(draws) -> list[float] | None:
    draws = np.asarray([d for d in draws if d is not None and np.isfinite(d)])
    if draws.size < 10:
        return None
    return [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]


# ------------------------------------------------------------------------------------------------- the tax
def t975(df: float) -> float:
    """Student's t two-sided 95% quantile at `df` degrees of freedom, fractional ones included (Satterthwaite's): the
    table at whole df, else t_quantile. No df (NaN, < 1) counts as 1."""
    if df is None or not math.isfinite(df) or df < 1:
        df = 1.0
    if df == int(df) and df <= len(T975):
        return T975[int(df) - 1]
    return t_quantile(0.975, df)


def equivalent_df(t: float) -> float:
    """The degrees of freedom at which t975 equals `t` (fractional), interpolated on a log grid of df computed once."""
    log_df, ts = _t975_grid()
    if t >= ts[0]:
        return 1.0
    if t <= ts[-1]:
        return float(math.exp(log_df[-1]))
    return float(math.exp(np.interp(-t, -ts, log_df)))  # t falls as df grows: interpolate on -t, increasing


@lru_cache(maxsize=1)
def _t975_grid() -> tuple[np.ndarray, np.ndarray]:
    log_df = np.linspace(0.0, math.log(1e4), 241)
    return log_df, np.array([t_quantile(0.975, math.exp(x)) for x in log_df])


@lru_cache(maxsize=4096)  # the same df recur (P - 1 prompts, S - 1 seeds): computed once each
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for 0.5 <= p < 1 at `df` (fractional included): the root of CDF(x) = p by bisection, the
    density integrated numerically (Simpson, accurate to about 1e-6; a linear interpolation of a table was 18% off
    at 1.5 df). No df (NaN, < 1) counts as 1."""
    if df is None or not math.isfinite(df) or df < 1:
        df = 1.0
    if df > 1000:
        return float(NormalDist().inv_cdf(p))
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def mass(x):  # P(0 < T < x)
        t = np.linspace(0.0, x, 2001)
        f = norm * (1 + t * t / df) ** (-(df + 1) / 2)
        h = x / 2000
        return h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while mass(hi) < p - 0.5:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < p - 0.5 else (lo, mid)
    return (lo + hi) / 2


def t_test_power(ncp: float, df: float) -> float:
    """The probability that a two-sided 95% t interval at `df` excludes 0 when the true effect is `ncp` standard
    errors: P(|T'| > t_0.975) for T' = (Z + ncp) / sqrt(V / df), V chi-square with df degrees of freedom (the
    noncentral t), integrated numerically over sqrt(V / df)."""
    df = 1.0 if df is None or not math.isfinite(df) or df < 1 else df
    c = t975(df)
    u = np.linspace(1e-6, 1 + 12 / math.sqrt(df), 2001)  # sqrt(V/df): its density is negligible past the end
    log_density = (math.log(2) + (df / 2) * math.log(df / 2) - math.lgamma(df / 2) + (df - 1) * np.log(u)
                   - df * u * u / 2)
    normal = NormalDist()
    reject = np.array([normal.cdf(ncp - c * x) + normal.cdf(-ncp - c * x) for x in u])
    return float(np.trapezoid(reject * np.exp(log_density), u))


def minimum_detectable(ci, df: float | None, power: float = 0.8) -> float | None:
    """The smallest true effect the design behind a 95% t interval detects (its interval excludes 0, two-sided 5%)
    with probability `power`: the noncentral t's effect in standard errors at its degrees of freedom (t_test_power
    solved by bisection), times the standard error read back from the half-width. Few seeds cost much: at 2 df it
    is 5.7 standard errors, at 6 df 3.4, where the normal approximation says 2.8. None without an interval."""
    if not ci or df is None or not math.isfinite(df):
        return None
    lo, hi = 0.0, 50.0
    for _ in range(36):  # to 1e-9 standard errors
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_test_power(mid, df) < power else (lo, mid)
    return (lo + hi) / 2 * (ci[1] - ci[0]) / 2 / t975(df)


def crossed_jackknife(statistic, n_seeds: int, n_prompts: int) -> dict:
    """A 95% interval for a statistic of a seeds x prompts design (crossed: every seed answers every prompt),
    correct in small samples: delete-one jackknife variances over seeds and over prompts, added (the seed-by-prompt
    interaction counted in both: slightly conservative), each scaled by Student's t at its own degrees of freedom
    (S - 1 and P - 1). For a mean, the seed part is exactly var(seed means) / S, the unbiased
    estimate a percentile bootstrap over S seeds understates by (S - 1) / S (and its quantiles are too narrow
    besides). Deterministic: no resampling. `statistic(seed_idx, prompt_idx)` takes index arrays."""
    all_s, all_p = np.arange(n_seeds), np.arange(n_prompts)
    value = statistic(all_s, all_p)
    if value is None or not math.isfinite(value):
        return {"value": None, "se": None, "df": None, "ci95": None}

    def jack(n, leave):
        if n < 2:
            return 0.0, 0
        vals = np.array([leave(i) for i in range(n)], dtype=float)
        if not np.all(np.isfinite(vals)):
            return float("nan"), n - 1
        return float((n - 1) / n * np.sum((vals - vals.mean()) ** 2)), n - 1

    v_s, df_s = jack(n_seeds, lambda i: statistic(np.delete(all_s, i), all_p))
    v_p, df_p = jack(n_prompts, lambda i: statistic(all_s, np.delete(all_p, i)))
    total = v_s + v_p
    if not math.isfinite(total) or n_seeds < 2:
        return {"value": float(value), "se": None, "df": None, "ci95": None, "var_seeds": _finite(v_s),
                "var_prompts": _finite(v_p)}
    # Each part scaled by the t quantile of its own degrees of freedom, then added: half = sqrt(t_{S-1}^2 v_seeds +
    # t_{P-1}^2 v_prompts). Satterthwaite's pooled df has a long upper tail exactly when the seed part is
    # underestimated (the seed-by-prompt interaction sits in both parts, which are not the independent chi-squares
    # it assumes): 3 seeds covered 91.5% (median df 3.2). Capping its df at S - 1 covered 97-99% but put t at S - 1
    # on a variance prompts dominate. Scaled per part: 95-99% at 3 to 7 seeds on Gaussian, skewed, heavy-tailed and
    # failed-model data (tests/test_stats.py). `df` is the t's equivalent (t975(df) = half / se), for power.
    half = _crossed_half(v_s, df_s, v_p, df_p, t975)
    df = equivalent_df(half / math.sqrt(total)) if total > 0 else float(max(df_s, 1))
    return {"value": float(value), "se": math.sqrt(total), "df": df, "ci95": [value - half, value + half],
            "var_seeds": v_s, "var_prompts": v_p}


def _crossed_half(v_seeds: float, df_seeds: int, v_prompts: float, df_prompts: int, t) -> float:
    """The crossed jackknife's half-width: each variance part scaled by `t` (a quantile function of df) at its own
    degrees of freedom, then added; a part with no degrees of freedom adds nothing."""
    return math.sqrt((t(df_seeds) ** 2 * v_seeds if df_seeds else 0.0)
                     + (t(df_prompts) ** 2 * v_prompts if df_prompts else 0.0))


def widened(value, ci, df, comparisons: int, parts: dict | None = None):
    """A 95% interval widened for `comparisons` simultaneous ones (Bonferroni: each at 1 - 0.05 / comparisons). With
    `parts` (a crossed jackknife's variance parts and their df, as `tax_variance` holds them) each part is scaled by
    t at its own df, as the interval itself was; else by t at the interval's equivalent df, which understates the
    widening when the seed part dominates at few seeds. None without an interval."""
    if value is None or not ci or df is None or comparisons < 1:
        return None
    q = 1 - 0.025 / comparisons
    if parts:
        half = _crossed_half(parts["seeds"], parts["seeds_df"], parts["prompts"], parts["prompts_df"],
                             lambda df: t_quantile(q, df))
        return [value - half, value + half]
    scale = t_quantile(q, df) / t975(df)
    return [value - (value - ci[0]) * scale, value + (ci[1] - value) * scale]


def add_family_intervals(entries: dict, family: list, name: str = "") -> None:
    """The headline's claims as one family: each member's tax interval also simultaneous over all of them
    (`tax_vs_bf16_family_ci95`, Bonferroni, each variance part at its own df), for "costs less than" said of all
    at once; `name` says what the family is (e.g. "best-of-n's precision arms")."""
    for arm in family:
        e = entries.get(arm)
        if e:
            e["tax_vs_bf16_family_ci95"] = widened(e.get("tax_vs_bf16"), e.get("tax_vs_bf16_ci95"), e.get("tax_df"),
                                                   len(family), e.get("tax_variance"))
            e["family"] = list(family)
            e["family_name"] = name


# A ratio to bf16's gain leads only where that gain is at least this many times its own 95% half-width from 0:
# Fieller's interval for the ratio is unbounded once bf16's interval reaches 0 (one half-width) and still far from
# the delta method's below about 2.5; there the absolute gain difference leads (issue 34). In standard errors that is
# 4.9 at many degrees of freedom, 6.1 at 7 seeds' and 10.8 at 3 seeds'.
RATIO_MIN_MARGINS = 2.5


def control_passed(control: str, ci) -> bool:
    """A control's verdict from its tax interval: the negative ("null") must hold 0, the positive ("noisy") must
    exclude it from above. No interval fails both."""
    if not ci:
        return False
    return ci[0] <= 0 <= ci[1] if control == "null" else ci[0] > 0


def sign_flip_p(differences) -> float | None:
    """Exact two-sided p-value of paired differences (one per reward-model seed) under "no effect", where each
    seed's difference is as likely negative as positive: the share of the 2^S sign patterns whose |mean| is at
    least the observed one. Assumes no more than symmetry; at S seeds it cannot fall below 2 / 2^S (0.0625 at 5
    seeds: never under 5%, whatever the data)."""
    d = np.asarray([x for x in differences if x is not None and math.isfinite(x)], dtype=float)
    if len(d) == 0 or len(d) > 20:
        return None
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(d))).reshape(len(d), -1).T
    means = np.abs(signs @ np.abs(d)) / len(d)
    return float(np.mean(means >= abs(d.mean()) - 1e-12))


def _per_seed(arm: np.ndarray, ref: np.ndarray, base: np.ndarray) -> dict:
    """Each paired seed's own gain difference and tax (over all prompts), and the exact sign-flip test of the
    differences: the numbers behind the interval, for a reader to see the spread."""
    g_arm, g_ref = arm.mean(axis=1) - base.mean(), ref.mean(axis=1) - base.mean()
    diffs = g_arm - g_ref
    taxes = [None if g == 0 else float(1 - x / g) for x, g in zip(g_arm, g_ref)]
    return {"per_seed_gain_diff": [float(x) for x in diffs], "per_seed_tax": taxes,
            "sign_flip_p": sign_flip_p(diffs)}


def _mean_of(values: np.ndarray, s, p) -> float:
    return float(np.mean(values[np.ix_(s, p)]))


def arm_statistics(cells: dict[str, np.ndarray], base: np.ndarray, *, reference: str, null: str | None) -> dict:
    """Gains over the baseline, taxes relative to `reference` and the difference from the null arm's tax, each
    with a crossed-jackknife t interval (crossed_jackknife) over seeds and prompts.

    cells[arm]: array (seeds x prompts) of the judge's mean score per (seed, prompt), NaN for a failed seed; seed
    index i of every arm shares reward-model seed i, so comparisons are paired by seed and by prompt. base: array
    (prompts,) of the baseline's (the SFT policy's, or the candidate pool's mean). Each comparison keeps the seeds
    finished in every arm it involves (a seed failed in one arm is dropped from that comparison, not unpaired).
    The tax 1 - gain / gain_ref is reported only where the reference's gain interval excludes 0 (on the seeds the
    comparison keeps); elsewhere it is None, the gain difference leads, and `tax_undefined` says why.
    """
    return {arm: _arm_summary(arm, cells, base, reference, null) for arm in cells}


def _ok_seeds(cells, *arms) -> np.ndarray:
    ok = np.ones(next(iter(cells.values())).shape[0], dtype=bool)
    for a in arms:
        ok &= ~np.isnan(cells[a]).any(axis=1)
    return np.flatnonzero(ok)


def _gain_fn(values, base):
    return lambda s, p: _mean_of(values, s, p) - float(np.mean(base[p]))


def tax_fn(values, ref, base):
    """The tax 1 - gain / bf16's gain of (seeds x prompts) cells, as a function of seed and prompt indices (None
    where bf16's gain is 0): the statistic every tax interval jackknifes."""
    def tax(s, p):
        g_ref = _mean_of(ref, s, p) - float(np.mean(base[p]))
        return None if g_ref == 0 else 1.0 - (_mean_of(values, s, p) - float(np.mean(base[p]))) / g_ref
    return tax


def _arm_summary(arm, cells, base, reference, null) -> dict:
    n_prompts = len(base)
    own = _ok_seeds(cells, arm)
    gain = crossed_jackknife(_gain_fn(cells[arm][own], base), len(own), n_prompts) if len(own) else {}
    out = {"gold_gain_vs_sft": gain.get("value"), "gold_gain_vs_sft_ci95": gain.get("ci95"),
           "seeds_used": [int(i) for i in own]}
    if reference not in cells:
        return out
    common = _ok_seeds(cells, arm, reference)
    a, r = cells[arm][common], cells[reference][common]
    diff = crossed_jackknife(lambda s, p: _mean_of(a, s, p) - _mean_of(r, s, p), len(common), n_prompts) \
        if len(common) else {}
    ref_gain = crossed_jackknife(_gain_fn(r, base), len(common), n_prompts) if len(common) else {}
    ref_ci = ref_gain.get("ci95")
    z = ref_gain["value"] / ref_gain["se"] if ref_gain.get("se") else None
    margins = ref_gain["value"] / ((ref_ci[1] - ref_ci[0]) / 2) if ref_ci and ref_ci[1] > ref_ci[0] else None
    out |= {"reference_gain_z": z, "reference_gain_margins": margins,
            "ratio_leads": margins is not None and margins >= RATIO_MIN_MARGINS,
            "gain_diff_vs_bf16": diff.get("value"), "gain_diff_vs_bf16_ci95": diff.get("ci95"),
            "gain_diff_df": diff.get("df"), "paired_seeds": [int(i) for i in common],
            "tax_vs_bf16": None, "tax_vs_bf16_ci95": None, "tax_undefined": None} | (
        _per_seed(a, r, base) if arm != reference and len(common) else {})
    if arm == reference:
        out |= {"tax_vs_bf16": 0.0, "gain_diff_vs_bf16": 0.0, "gain_diff_vs_bf16_ci95": None}
    elif ref_ci is None or ref_ci[0] <= 0:
        out["tax_undefined"] = ("bf16's gain interval does not exclude 0 on these seeds: a ratio to it is not defined"
                                if ref_ci is not None else "too few seeds shared with bf16 for an interval")
    else:
        tax = crossed_jackknife(tax_fn(a, r, base), len(common), n_prompts)
        out |= {"tax_vs_bf16": tax.get("value"), "tax_vs_bf16_ci95": tax.get("ci95"), "tax_df": tax.get("df"),
                "tax_variance": None if tax.get("ci95") is None else {
                    "seeds": tax["var_seeds"], "seeds_df": len(common) - 1, "prompts": tax["var_prompts"],
                    "prompts_df": n_prompts - 1}}
    if out["tax_vs_bf16_ci95"] is not None:
        lo, hi = out["tax_vs_bf16_ci95"]
        # the largest tax the interval rules out when it holds 0: "costs less than hi of bf16's gain (95%)"
        out["tax_ruled_out_above"] = hi if lo <= 0 <= hi else None
    both = _ok_seeds(cells, arm, reference, null) if null in cells else []
    ref_both = crossed_jackknife(_gain_fn(cells[reference][both], base), len(both), n_prompts).get("ci95") \
        if len(both) and arm not in (reference, null) else None
    if ref_both is not None and ref_both[0] > 0:  # on the seeds all three share, as the statistic itself
        a3, r3, n3 = cells[arm][both], cells[reference][both], cells[null][both]
        ta, tn = tax_fn(a3, r3, base), tax_fn(n3, r3, base)

        def minus_null(s, p):
            x, y = ta(s, p), tn(s, p)
            return None if x is None or y is None else x - y
        mn = crossed_jackknife(minus_null, len(both), n_prompts)
        out |= {"tax_minus_null": mn.get("value"), "tax_minus_null_ci95": mn.get("ci95")}
    return out


def variance_components(diff: np.ndarray) -> dict:
    """Method-of-moments variance components of a seeds x prompts table of paired differences (an arm minus bf16),
    two-way crossed without replication: seed (reward-model seed, with the PPO seeds within it), prompt, and the
    residual (seed x prompt interaction and sampling noise). Negative estimates are set to 0."""
    d = np.asarray(diff, dtype=float)
    n_s, n_p = d.shape
    grand, seed_means, prompt_means = d.mean(), d.mean(1), d.mean(0)
    ms_s = n_p * np.sum((seed_means - grand) ** 2) / (n_s - 1) if n_s > 1 else float("nan")
    ms_p = n_s * np.sum((prompt_means - grand) ** 2) / (n_p - 1) if n_p > 1 else float("nan")
    resid = d - seed_means[:, None] - prompt_means[None, :] + grand
    ms_e = np.sum(resid ** 2) / ((n_s - 1) * (n_p - 1)) if n_s > 1 and n_p > 1 else float("nan")
    return {"seed": max(0.0, (ms_s - ms_e) / n_p), "prompt": max(0.0, (ms_p - ms_e) / n_s), "residual": ms_e,
            "seeds": n_s, "prompts": n_p}


def projected_half_width(comp: dict, seeds: int, prompt_factor: float, ref_gain: float) -> float:
    """The half-width the reported interval (crossed_jackknife) would have with `seeds` seeds and `prompt_factor`
    times the prompts: its seed part (seed + residual / P') / S' plus its prompt part (prompt + residual / S') / P'
    (the residual in both, as the jackknife counts it), t with S' - 1 df, relative to bf16's gain (whose own
    uncertainty is left out)."""
    prompts = comp["prompts"] * prompt_factor
    var = (comp["seed"] + comp["residual"] / prompts) / seeds + (comp["prompt"] + comp["residual"] / seeds) / prompts
    return t975(max(seeds - 1, 1)) * math.sqrt(var) / abs(ref_gain)


def projection(cells, base, *, reference: str, arm: str, seeds_options=(5, 10, 20, 40), prompt_factors=(1, 2, 4),
               target: float = 0.25, resamples: int = 500, seed: int = 0) -> dict:
    """What design would bring the tax interval of `arm` to a given half-width (`target`, as a share of bf16's
    gain), from the variance components of its paired differences (variance_components): var = seed / S' +
    (prompt + residual / S') / (f P), t with S' - 1 degrees of freedom. `*_range` is the spread of each projection
    when the seeds themselves are resampled (the components are estimated from few seeds: the projection is
    uncertain too). `reaches_target`: the cheapest design (seeds x prompt factor) whose projected half-width is <=
    target, or None."""
    common = _ok_seeds(cells, arm, reference)
    out = {"components": None, "half_width_by_seeds": {}, "half_width_by_seeds_range": {}, "half_width_grid": [],
           "target": target, "reaches_target": None, "undefined": None}
    if len(common) < 2 or len(base) < 2:
        return out | {"undefined": "needs at least 2 seeds shared with bf16 and 2 prompts"}
    a, r = cells[arm][common], cells[reference][common]
    ref = crossed_jackknife(_gain_fn(r, base), len(common), len(base))
    if ref["ci95"] is None or ref["ci95"][0] <= 0:  # the same rule as the tax itself
        return out | {"undefined": "bf16's gain interval does not exclude 0: a share of it is not defined"}
    ref_gain = ref["value"]
    comp = variance_components(a - r)
    out["components"] = comp
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, len(common), len(common))
        draws.append(variance_components(a[pick] - r[pick]) | {"seeds": len(common)})
    for s in seeds_options:
        out["half_width_by_seeds"][str(s)] = projected_half_width(comp, s, 1, ref_gain)
        spread = [projected_half_width(c, s, 1, ref_gain) for c in draws if math.isfinite(c["residual"])]
        out["half_width_by_seeds_range"][str(s)] = percentile_ci(spread)
    out["half_width_grid"] = [{"seeds": s, "prompt_factor": f, "half_width": projected_half_width(comp, s, f, ref_gain)}
                              for s in seeds_options for f in prompt_factors]
    fits = [g for g in out["half_width_grid"] if g["half_width"] <= target]
    out["reaches_target"] = min(fits, key=lambda g: (g["seeds"] * g["prompt_factor"], g["seeds"])) if fits else None
    return out


def half_width(ci) -> float | None:
    return None if ci is None else (ci[1] - ci[0]) / 2


def _finite(v) -> float | None:
    return v if v is not None and math.isfinite(v) else None


# ------------------------------------------------------------------------------------------------ frontier
def _fit(d: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least squares of y = alpha d - beta d log d (through the origin: R(0) = 0 at the SFT policy)."""
    ok = d > 0
    if ok.sum() < 2:
        return None
    x = np.stack([d[ok], -d[ok] * np.log(d[ok])], axis=1)
    coef, *_ = np.linalg.lstsq(x, y[ok], rcond=None)
    return float(coef[0]), float(coef[1])


def fit_frontier(points: list[dict], *, resamples: int, seed: int = 0) -> dict:
    """points: {"run": id, "d": sqrt(KL), "gold_gain": ...}; alpha and beta with 95% intervals from resampling
    runs (the points of one run are not independent)."""
    runs = sorted({p["run"] for p in points})
    by_run = {r: [p for p in points if p["run"] == r] for r in runs}

    def fit_of(chosen):
        pts = [p for r in chosen for p in by_run[r]]
        return _fit(np.array([p["d"] for p in pts], dtype=float), np.array([p["gold_gain"] for p in pts], dtype=float))

    point = fit_of(runs)
    if point is None:
        return {"alpha": None, "beta": None, "alpha_ci95": None, "beta_ci95": None, "runs": len(runs)}
    rng = np.random.default_rng(seed)
    draws = [fit_of([runs[i] for i in rng.integers(0, len(runs), len(runs))]) for _ in range(resamples)]
    draws = [d for d in draws if d is not None]
    return {"alpha": point[0], "beta": point[1], "alpha_ci95": percentile_ci([d[0] for d in draws]),
            "beta_ci95": percentile_ci([d[1] for d in draws]), "runs": len(runs)}
