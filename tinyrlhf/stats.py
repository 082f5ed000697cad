"""The statistics behind every interval the pipeline reports, with NumPy and the standard library only.

- `wilson_ci`: a proportion's 95% interval (reward-model accuracy).
- `mcnemar`: the exact paired test of two classifiers on the same pairs (reward models across precisions).
- `mean_std_ci`: mean, sample standard deviation and a t-interval.
- `bootstrap_arms`: the quantization tax. Hierarchical bootstrap over seeds and prompts, paired across arms: every
  resample draws seed indices and prompt indices once and applies them to every arm and to the SFT reference, so
  what the arms share cancels in their differences.
- `fit_frontier`: Gao, Schulman & Hilton (2022), "Scaling laws for reward model overoptimization": the gold reward
  gain against d = sqrt(KL) follows R(d) = d (alpha - beta log d) for best-of-n and RL alike; fitted by least
  squares, with intervals from resampling runs.
"""

from __future__ import annotations

import math

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
def arm_statistics(cells: dict[str, np.ndarray], sft: np.ndarray, *, reference: str, null: str | None,
                   resamples: int, seed: int = 0, levels: str = "both") -> dict[str, dict]:
    """Gains over SFT, taxes relative to `reference` and differences from the null arm, each with a 95% interval.

    cells[arm]: array (seeds x prompts) of the judge's mean score per (seed, prompt), NaN for a failed seed;
    sft: array (prompts,) of the SFT policy's. Tax of an arm = 1 - gain / gain_reference. The bootstrap draws seed
    indices (paired across arms: seed s of every arm shares PPO seed s) and prompt indices (shared by the arms and
    SFT); levels="seeds" or "prompts" resamples only one of them (for the variance components).
    """
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = next(iter(cells.values())).shape
    point = _gains(cells, sft, np.arange(n_seeds), np.arange(n_prompts))
    draws = []
    for _ in range(resamples):
        s = rng.integers(0, n_seeds, n_seeds) if levels in ("both", "seeds") else np.arange(n_seeds)
        p = rng.integers(0, n_prompts, n_prompts) if levels in ("both", "prompts") else np.arange(n_prompts)
        draws.append(_gains(cells, sft, s, p))
    return {arm: _summaries(arm, point, draws, reference, null) for arm in cells}


def _gains(cells, sft, s, p) -> dict[str, float]:
    base = float(np.mean(sft[p]))
    out = {}
    for arm, values in cells.items():
        picked = values[np.ix_(s, p)]
        out[arm] = float(np.mean(picked[~np.isnan(picked)])) - base if (~np.isnan(picked)).any() else float("nan")
    return out


def _tax(gains: dict, arm: str, reference: str) -> float | None:
    ref = gains.get(reference)
    return None if not ref or not math.isfinite(ref) else 1.0 - gains[arm] / ref


def _finite(v) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _summaries(arm, point, draws, reference, null) -> dict:
    has_ref = _finite(point.get(reference)) is not None
    out = {"gold_gain_vs_sft": _finite(point[arm]), "gold_gain_vs_sft_ci95": percentile_ci([d[arm] for d in draws]),
           "tax_vs_bf16": _finite(_tax(point, arm, reference)),
           "tax_vs_bf16_ci95": percentile_ci([_tax(d, arm, reference) for d in draws]) if has_ref else None,
           "gain_diff_vs_bf16": _finite(point[arm] - point[reference]) if has_ref else None,
           "gain_diff_vs_bf16_ci95": percentile_ci([d[arm] - d[reference] for d in draws]) if has_ref else None}
    if null is not None and null in point and has_ref:
        diffs = [_tax(d, arm, reference) - _tax(d, null, reference) for d in draws
                 if _tax(d, arm, reference) is not None and _tax(d, null, reference) is not None]
        null_tax = _finite(_tax(point, null, reference))
        out["tax_minus_null"] = None if out["tax_vs_bf16"] is None or null_tax is None else \
            out["tax_vs_bf16"] - null_tax
        out["tax_minus_null_ci95"] = percentile_ci(diffs)
    return out


def half_width(ci) -> float | None:
    return None if ci is None else (ci[1] - ci[0]) / 2


def projection(cells, sft, *, reference: str, arm: str, resamples: int, seed: int = 0,
               seeds_options=(5, 10, 20, 40), prompt_factors=(1, 2, 4), target: float = 0.25) -> dict:
    """What design would bring the tax interval of `arm` to a given half-width, from the variance components the
    data show: var(tax) = v_seeds * S / S' + v_prompts / f, for S' seeds and f times the prompts (v_prompts holds
    the sample noise too, so f times the replies per prompt shrinks at most that part). `reaches_target`: the
    cheapest design (seeds x prompt factor) whose projected half-width is <= target, or None."""
    var = {}
    for level in ("seeds", "prompts"):
        stats = arm_statistics(cells, sft, reference=reference, null=None, resamples=resamples, seed=seed,
                               levels=level)
        hw = half_width(stats[arm]["tax_vs_bf16_ci95"])
        var[level] = None if hw is None else (hw / Z95) ** 2
    out = {"variance_seeds": var["seeds"], "variance_prompts": var["prompts"], "half_width_by_seeds": {},
           "half_width_grid": [], "target": target, "reaches_target": None}
    if None in var.values():
        return out
    n_seeds = next(iter(cells.values())).shape[0]

    def hw_of(s, f):
        return Z95 * math.sqrt(var["seeds"] * n_seeds / s + var["prompts"] / f)

    out["half_width_by_seeds"] = {str(s): hw_of(s, 1) for s in seeds_options}
    out["half_width_grid"] = [{"seeds": s, "prompt_factor": f, "half_width": hw_of(s, f)}
                              for s in seeds_options for f in prompt_factors]
    fits = [g for g in out["half_width_grid"] if g["half_width"] <= target]
    out["reaches_target"] = min(fits, key=lambda g: (g["seeds"] * g["prompt_factor"], g["seeds"])) if fits else None
    return out


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
