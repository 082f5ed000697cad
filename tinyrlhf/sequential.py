"""Reward-model seeds until resolved: a sequential stopping rule for the best-of-n taxes.

The rule. Seeds are added one paired set at a time (one reward model per arm for the new seed). After each, every
headline arm's tax interval is computed (stats.crossed_jackknife of stats.tax_fn on the seeds it shares with bf16),
with each variance part scaled by Student's t at its own degrees of freedom at RULE_LEVEL (99%, stats.widened) rather
than 95%. Stop as resolved once at least MIN_SEEDS (3) seeds are in and the widest of these half-widths is <= the
target; otherwise stop at the seed cap or when the time budget is spent, saying the target was not met. An arm whose
tax is undefined (bf16's gain interval does not exclude 0, as stats.arm_statistics rules) never counts as resolved.
The interval reported at the stop is the 99% one the rule stopped on: after optional stopping it covered >= 93%
at every stop point that >= 5% of repetitions reached, and >= 99% overall (below).

Why 99%. Stopping when the estimated variance is small selects the seeds whose variance estimate happens to be low.
With the plain 95% interval, the final interval covered 89-91% at the earliest stop point whenever the target was
tight enough that stopping there was a ~5% event (the model below, 41 prompts, 3000 repetitions: 0.888 at 3 seeds
for a 0.05 target, 0.893 at 4 for 0.045 with a minimum of 4, 0.890 at 5 for 0.04 with a minimum of 5): a minimum
number of seeds only moves the undercovering stop point, it does not remove it. A t statistic's numerator is
independent of its variance estimate, so a stop that needs the variance estimate in its lowest 5% covers about
2 Phi(t_q sqrt(c_df)) - 1, c_df the 5% quantile of chi2_df / df: 72-88% at 95% for df 2-20, 88-94% at 98%
(measured .864 at 128 prompts), and 94.6-97.5% at 99% for every df (the seed part alone; the prompt part, steady at
P - 1 df, helps). So the stop test and the reported interval are 99% ones, and MIN_SEEDS = 3 keeps one failed model
from leaving a 1-df seed part. The price: more seeds (below).

Measured (simulate_coverage, seed 2024: int4's components in docs/variance-components.json, bf16's own taken
as the same, bf16's gain 0.80, true tax 0.05, minimum 3 seeds, cap 12). Per stop point k: repetitions that
stopped there / share whose reported interval held the true tax. 41 prompts (the cpu run's), 2000 repetitions:

    target  interval  k=3        4          5          6          7          8          9-12       overall  mean k
    0.07    99% rule  65 .969    93 .978    173 .994   232 1.0    286 1.0    340 1.0    811 1.0    .998     7.8
    0.07    plain 95  412 .925   417 .981   459 .998   379 .997   221 1.0    80 1.0     32 1.0     .980     5.0
    0.10    99% rule  192 .984   322 .997   459 1.0    519 1.0    323 1.0    135 1.0    50 1.0     .998     5.5
    0.10    plain 95  871 .960   671 .994   352 .997   98 1.0     8 1.0      -          -          .980     3.9

128 prompts (the rtx4060 design's; the seed part dominates more), target 0.05, 1500 repetitions: the rule 47 .915,
55 .982, 83 .964, 127 .984, 175 .989, then >= .997 (overall .992, mean 8.6 seeds); plain 95% 238 .849, 252 .948,
309 .981, then >= .988 (overall .961, mean 5.5). The rule's lowest, .915 at 3 seeds, is a stop 3% of repetitions
reach (standard error .04). The price of the rule is seeds: 1.6 to 3.1 more on average. Past ~6 seeds both cover
~100%: the crossed jackknife counts the residual in both its parts (stats.crossed_jackknife: conservative).

What this does not show: the components come from the synthetic cpu profile (41 prompts, 5 seeds, one run), not
from HH-RLHF or a real-size reward model; the cells are Gaussian; bf16's own spread is assumed equal to the
difference's; one arm is simulated, where the pipeline stops on the widest of several (each arm's interval is then
the simulated one at a later stop). A stop point the rule reaches in under ~5% of repetitions can cover less (a
rarer low variance estimate): in a seed-dominated stress case (seed variance x10, 20 prompts, target 0.14-0.18,
1500 repetitions) the rule covered .90-.93 at 4 seeds on 52-120 repetitions, where plain 95% covered .80-.85 at 3.
"""

from __future__ import annotations

import math

import numpy as np

from . import stats

RULE_LEVEL = 0.99  # two-sided level of the interval the rule stops on and reports (see above)
MIN_SEEDS = 3


def tax_intervals(cells: dict, base, *, reference: str, arms, level: float = 0.95) -> dict[str, dict | None]:
    """Each arm's tax interval at two-sided `level` from stats.crossed_jackknife of stats.tax_fn on the seeds it
    shares with `reference` (both finite), each variance part at its own df (stats.widened beyond 95%): {"value",
    "ci95", "interval", "half_width", "seeds"}. None where the tax is undefined: under 2 shared seeds, or bf16's gain
    interval on them does not exclude 0 (the rule stats.arm_statistics reports taxes by)."""
    base = np.asarray(base, dtype=float)
    out = {}
    for arm in arms:
        common = stats._ok_seeds(cells, arm, reference)
        out[arm] = None
        if len(common) < 2:
            continue
        a, r = cells[arm][common], cells[reference][common]
        ref_ci = stats.crossed_jackknife(stats._gain_fn(r, base), len(common), len(base))["ci95"]
        if ref_ci is None or ref_ci[0] <= 0:
            continue
        tax = stats.crossed_jackknife(stats.tax_fn(a, r, base), len(common), len(base))
        if tax["ci95"] is None:
            continue
        interval = tax["ci95"]
        if level != 0.95:  # widened's Bonferroni level 1 - 0.05 / c is `level` at c = 0.05 / (1 - level)
            parts = {"seeds": tax["var_seeds"], "seeds_df": len(common) - 1, "prompts": tax["var_prompts"],
                     "prompts_df": len(base) - 1}
            interval = stats.widened(tax["value"], tax["ci95"], tax["df"], 0.05 / (1 - level), parts)
        out[arm] = {"value": tax["value"], "ci95": tax["ci95"], "interval": interval,
                    "half_width": stats.half_width(interval), "seeds": len(common)}
    return out


def half_widths(cells: dict, base, *, reference: str, arms, level: float = 0.95) -> dict[str, float | None]:
    """Each arm's tax half-width at two-sided `level` (95%: crossed_jackknife's own); None where it is undefined."""
    return {arm: None if t is None else t["half_width"]
            for arm, t in tax_intervals(cells, base, reference=reference, arms=arms, level=level).items()}


def decide(cells, base, *, reference, arms, target: float, min_seeds: int = MIN_SEEDS, max_seeds: int,
           level: float = RULE_LEVEL, budget_spent: bool = False) -> dict:
    """Whether to stop adding reward-model seeds: {"stop", "reason" (one sentence), "seeds" (seeds run, the rows of
    `cells`), "widest": (arm, half-width at `level`, None where undefined), "intervals": {arm: the interval at
    `level` to report, or None}}. Resolved: at least `min_seeds` seeds paired with bf16 in every arm and the widest
    half-width <= target. Else stopped at `max_seeds` seeds run, or when `budget_spent`, the target not met."""
    k = next(iter(cells.values())).shape[0]
    tax = tax_intervals(cells, base, reference=reference, arms=arms, level=level)
    return verdict(tax, k, target=target, min_seeds=min_seeds, max_seeds=max_seeds, level=level,
                   budget_spent=budget_spent)


def verdict(tax: dict, k: int, *, target: float, min_seeds: int, max_seeds: int, level: float,
            budget_spent: bool = False) -> dict:
    """decide's answer from each arm's tax interval at `level` (tax_intervals' entries, None where undefined) after
    `k` seeds: the one place the rule's words and thresholds live, for simulated cells and the pipeline's results."""
    undefined = [arm for arm, t in tax.items() if t is None]
    widest = (undefined[0], None) if undefined else max(((a, t["half_width"]) for a, t in tax.items()),
                                                       key=lambda aw: aw[1])
    paired = min((t["seeds"] for t in tax.values() if t), default=0)
    out = {"seeds": k, "widest": widest, "level": level,
           "intervals": {a: None if t is None else t["interval"] for a, t in tax.items()}}
    if undefined:
        why = (f"{widest[0]}'s tax is undefined (bf16's gain interval does not exclude 0, or fewer than 2 seeds "
               "paired with bf16)")
    else:
        why = f"the widest {level:.0%} tax half-width is {widest[0]}'s {widest[1]:.3f}, the target {target:.3f}"
    if not undefined and paired >= min_seeds and widest[1] <= target:
        return out | {"stop": True, "reason": f"Resolved at {k} seeds: {why}."}
    if k >= max_seeds:
        return out | {"stop": True, "reason": f"Cap reached: the target was not met at {k} seeds ({why})."}
    if budget_spent:
        return out | {"stop": True, "reason": f"Time budget spent: the target was not met at {k} seeds ({why})."}
    if not undefined and paired < min_seeds:
        why = f"{paired} seeds paired with bf16, fewer than the minimum of {min_seeds}"
    return out | {"stop": False, "reason": f"Add a seed: {why}."}


def draw_cells(rng, components: dict, ref_components: dict, *, ref_gain: float, true_tax: float, reps: int,
               seeds: int, prompts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic (reps, seeds, prompts) cells of bf16 and an arm, and (reps, prompts) baselines: a prompt's
    difficulty shared by the baseline and both arms (the pairing by prompt cancels it); bf16 = baseline + ref_gain +
    seed + prompt + residual effects drawn from `ref_components`; arm = bf16 - true_tax * ref_gain + effects drawn
    from `components` (those of stats.variance_components of the arm minus bf16, in gold units). The tax of the
    expected gains is `true_tax`."""
    def effects(c):
        return (rng.normal(0.0, math.sqrt(c["seed"]), (reps, seeds, 1))
                + rng.normal(0.0, math.sqrt(c["prompt"]), (reps, 1, prompts))
                + rng.normal(0.0, math.sqrt(c["residual"]), (reps, seeds, prompts)))

    base = rng.normal(0.0, 1.0, (reps, prompts))
    ref = base[:, None, :] + ref_gain + effects(ref_components)
    return ref, ref - true_tax * ref_gain + effects(components), base


def simulate_coverage(*, components: dict, ref_gain: float, true_tax: float, prompts: int, target: float,
                      min_seeds: int = MIN_SEEDS, max_seeds: int, reps: int, seed: int, level: float = RULE_LEVEL,
                      ref_components: dict | None = None) -> dict:
    """The rule run on `reps` synthetic studies (draw_cells; bf16's own components default to `components`), one
    seed added at a time through `decide`: {"by_seeds": {k: {"reps", "resolved", "undefined", "coverage"}},
    "coverage" (all reps), "mean_seeds"}. Coverage: the share whose reported interval held `true_tax` (over those
    with an interval). Deterministic given `seed`."""
    rng = np.random.default_rng(seed)
    ref, arm, base = draw_cells(rng, components, ref_components or components, ref_gain=ref_gain,
                                true_tax=true_tax, reps=reps, seeds=max_seeds, prompts=prompts)
    rows: dict[int, dict] = {}
    for i in range(reps):
        for k in range(max(2, min_seeds), max_seeds + 1):  # decide cannot stop as resolved before min_seeds
            d = decide({"bf16": ref[i, :k], "arm": arm[i, :k]}, base[i], reference="bf16", arms=["arm"],
                       target=target, min_seeds=min_seeds, max_seeds=max_seeds, level=level)
            if d["stop"]:
                break
        ci = d["intervals"]["arm"]
        row = rows.setdefault(k, {"reps": 0, "resolved": 0, "undefined": 0, "covered": 0})
        row["reps"] += 1
        row["resolved"] += d["reason"].startswith("Resolved")
        row["undefined"] += ci is None
        row["covered"] += ci is not None and ci[0] <= true_tax <= ci[1]
    by = {k: r | {"coverage": r["covered"] / max(1, r["reps"] - r["undefined"])} for k, r in sorted(rows.items())}
    defined = sum(r["reps"] - r["undefined"] for r in by.values())
    return {"by_seeds": by, "coverage": sum(r["covered"] for r in by.values()) / max(1, defined),
            "mean_seeds": sum(k * r["reps"] for k, r in by.items()) / reps, "level": level, "target": target}


RULE = (f"seeds until resolved: after each paired set of reward models, every headline arm's best-of-n tax interval "
        f"at the headline n at {RULE_LEVEL:.0%} (each variance part at its own df); stop once at least {MIN_SEEDS} "
        f"seeds are paired with bf16 and the widest half-width is at most the target, else at the cap; cite the "
        f"{RULE_LEVEL:.0%} intervals, which cover at least 95% after the optional stop (tinyrlhf.sequential)")


def decide_from_bon(bon: dict, arms, *, target: float, seeds: int, seeds_min: int, seeds_max: int,
                    level: float = RULE_LEVEL) -> dict:
    """`decide` on a best-of-n result (stages' bon_results) after `seeds` seeds: each arm's interval at the headline
    n rebuilt at `level` from the 95% one's variance parts (stats.widened at 0.05 / (1 - level) comparisons: the
    same interval tax_intervals gives from the cells); an arm whose tax is undefined (bf16's gain not resolved) or
    missing counts as unresolved."""
    tax = {}
    for arm in arms:
        e = (bon.get("arms", {}).get(arm) or {}).get("at_n_star") or {}
        interval = stats.widened(e.get("tax_vs_bf16"), e.get("tax_vs_bf16_ci95"), e.get("tax_df"),
                                 round(0.05 / (1 - level)), e.get("tax_variance"))
        tax[arm] = None if interval is None else {
            "value": e["tax_vs_bf16"], "interval": interval, "half_width": stats.half_width(interval),
            "seeds": len(e.get("seeds_used") or range(seeds))}
    return verdict(tax, seeds, target=target, min_seeds=max(seeds_min, MIN_SEEDS), max_seeds=seeds_max, level=level)
