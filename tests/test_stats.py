"""The experiment's arithmetic on hand-computed cases and by simulation: intervals (and their coverage), McNemar,
the tax, variance components, the projection, the frontier fit."""

import math

import numpy as np
import pytest

from tinyrlhf.evaluate import checkpoint_steps, eval_prompts, win_rate
from tinyrlhf.stats import (
    arm_statistics,
    crossed_jackknife,
    fit_frontier,
    mcnemar,
    mean_std_ci,
    minimum_detectable,
    sign_flip_p,
    projection,
    spearman,
    t975,
    t_quantile,
    t_test_power,
    variance_components,
    wilson_ci,
)


def test_mean_std_and_t_interval():
    mean, std, ci = mean_std_ci([1.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(math.sqrt(2))
    assert ci == pytest.approx([2 - 12.706, 2 + 12.706])  # t(0.975, 1 df) * sqrt(2) / sqrt(2)
    assert mean_std_ci([5.0]) == (5.0, None, None)
    assert mean_std_ci([]) == (None, None, None)


def test_wilson_interval_rank_correlation_and_mcnemar():
    assert wilson_ci(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson_ci(0, 0) == [0.0, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties share their rank
    # Five pairs only the first gets right, one only the second: p = 2 * (C(6,0) + C(6,1)) / 2**6.
    first = [True] * 5 + [False] + [True] * 4
    second = [False] * 5 + [True] + [True] * 4
    assert mcnemar(first, second) == {"only_first_right": 5, "only_second_right": 1, "p_value": 14 / 64}
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_win_rate_counts_ties_as_half():
    assert win_rate([1, 2, 3, 4], [0, 2, 5, 3]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def _cells(rng, seeds=5, prompts=40, gain=1.0, seed_sd=0.2):
    sft = rng.normal(0.0, 1.0, prompts)
    bf16 = sft + gain + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, 0.3, (seeds, prompts))
    return sft, bf16


def test_a_fixed_share_of_the_gain_lost_on_every_cell_is_a_tax_with_no_spread():
    rng = np.random.default_rng(0)
    sft, bf16 = _cells(rng)
    cells = {"bf16": bf16, "int8": sft + 0.5 * (bf16 - sft), "null": bf16.copy()}
    out = arm_statistics(cells, sft, reference="bf16", null="null")
    assert out["int8"]["tax_vs_bf16"] == pytest.approx(0.5)
    assert out["int8"]["tax_vs_bf16_ci95"] == pytest.approx([0.5, 0.5])  # paired: the same loss on every seed
    assert out["null"]["tax_vs_bf16_ci95"] == pytest.approx([0.0, 0.0])
    assert out["int8"]["tax_minus_null_ci95"] == pytest.approx([0.5, 0.5])
    assert out["int8"]["gain_diff_vs_bf16"] == pytest.approx(-0.5 * out["bf16"]["gold_gain_vs_sft"])
    lo, hi = out["bf16"]["gold_gain_vs_sft_ci95"]
    assert lo < out["bf16"]["gold_gain_vs_sft"] < hi and lo > 0.5  # a clear gain: interval well above 0
    assert out["null"]["tax_ruled_out_above"] == pytest.approx(0.0)  # an interval at 0 rules out any tax


def test_the_interval_resamples_seeds_when_only_the_seeds_differ():
    """Reward-model seeds that differ on every prompt alike and prompts that do not: only the seeds can widen the
    interval, and they must (a bootstrap over prompts alone would give a zero-width interval)."""
    sft = np.zeros(20)
    shift = np.array([0.0, 0.2, -0.1, 0.15, -0.05])[:, None]  # one offset per reward-model seed
    cells = {"bf16": np.ones((5, 20)), "int4": 0.9 + shift + np.zeros((5, 20))}
    out = arm_statistics(cells, sft, reference="bf16", null=None)["int4"]
    lo, hi = out["gain_diff_vs_bf16_ci95"]
    assert hi - lo > 0.1 and lo < out["gain_diff_vs_bf16"] < hi
    # exactly a t-interval on the five seed means with 4 degrees of freedom
    means = (0.9 + shift.ravel()) - 1.0
    half = 2.776 * means.std(ddof=1) / math.sqrt(5)
    assert [lo, hi] == pytest.approx([means.mean() - half, means.mean() + half], rel=1e-6)


def _simulated(rng, seeds, prompts=41, gains=(0.8, 0.76), seed_sd=0.08, case="gaussian"):
    """A crossed seeds x prompts design like best-of-n's: prompt difficulty shared by every arm and the baseline, a
    reward-model effect per seed and arm, an arm x prompt interaction and per-cell noise. The harsher cases a
    statistical review asked for: "skewed" per-prompt difficulty (exponential), "heavy" seed effects (Student's t
    with 3 df, same sd), "failed": a tenth of the int4 reward models lose 30% of their gain (the truth moves with
    them: TRUTH)."""
    difficulty = rng.exponential(0.3, prompts) - 0.3 if case == "skewed" else rng.normal(0, 0.3, prompts)
    base = difficulty + rng.normal(0, 0.15, prompts)
    cells = {}
    for arm, g in zip(("bf16", "int4"), gains):
        seed_effect = (rng.standard_t(3, (seeds, 1)) * seed_sd / math.sqrt(3) if case == "heavy"
                       else rng.normal(0, seed_sd, (seeds, 1)))
        gain = g * np.where(rng.random((seeds, 1)) < 0.1, 0.7, 1.0) if case == "failed" and arm == "int4" else g
        cells[arm] = gain + difficulty[None, :] + seed_effect + rng.normal(0, 0.1, prompts)[None, :] \
            + rng.normal(0, 0.15, (seeds, prompts))
    return cells, base


TRUTH = {case: {"gain": g, "diff": g - 0.8, "tax": 1 - g / 0.8}
         for case, g in (("gaussian", 0.76), ("skewed", 0.76), ("heavy", 0.76), ("failed", 0.76 * 0.97))}


def _default_seed_counts() -> list[int]:
    """The cpu profile's numbers of reward-model seeds behind an interval: best-of-n's precision arms (rm.seeds),
    PPO's (ppo.rm_seeds) and the controls' (rm.control_seeds)."""
    from tinyrlhf.config import NULL_ARM, get_profile

    cpu = get_profile("cpu")
    return sorted({len(cpu.rm.seeds), len(cpu.ppo_rm_seeds("bf16")), len(cpu.arm_seeds(NULL_ARM))})


@pytest.mark.parametrize("case", list(TRUTH))
@pytest.mark.parametrize("seeds", sorted({3, 5, 7, *_default_seed_counts()}))
def test_intervals_cover_the_truth_at_least_93_percent_on_harsh_data(seeds, case, capsys):
    """Coverage by simulation at 3, 5 and 7 reward-model seeds (and the cpu profile's designs) x 41 prompts, for the
    gain, the gain difference and the ratio, on Gaussian data and the harsher cases, at two random seeds; the Monte
    Carlo error is printed. Satterthwaite's pooled df covered 91.5% at 3 seeds; a percentile bootstrap over 5 seeds
    85-91%. Fails if the intervals lose their small-sample correction (each part scaled by its own t)."""
    truth, n = TRUTH[case], 400
    coverage = {}
    for rng_seed in (20261129, 7):
        rng = np.random.default_rng(rng_seed + seeds)
        hits, defined = dict.fromkeys(truth, 0), dict.fromkeys(truth, 0)
        for _ in range(n):
            cells, base = _simulated(rng, seeds=seeds, case=case)
            out = arm_statistics(cells, base, reference="bf16", null=None)["int4"]
            for key, ci in (("gain", out["gold_gain_vs_sft_ci95"]), ("diff", out["gain_diff_vs_bf16_ci95"]),
                            ("tax", out["tax_vs_bf16_ci95"])):
                if ci is not None:  # a tax is undefined when bf16's own gain is not resolved: said, not covered
                    defined[key] += 1
                    hits[key] += ci[0] <= truth[key] <= ci[1]
        coverage[rng_seed] = {k: hits[k] / defined[k] for k in truth}
    with capsys.disabled():
        for rng_seed, cov in coverage.items():
            mc = max(1.96 * math.sqrt(c * (1 - c) / n) for c in cov.values())
            print(f"\ncoverage, {seeds} seeds, {case}, rng {rng_seed}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in cov.items()) + f" (Monte Carlo error ±{mc:.3f})", end="")
    assert min(min(c.values()) for c in coverage.values()) >= 0.93, coverage


def test_t_quantiles_at_fractional_degrees_of_freedom_put_2_5_percent_in_the_tail():
    assert [t975(df) for df in range(1, 31)] == pytest.approx([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                                                                2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
                                                                2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080,
                                                                2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
                                                                2.045, 2.042])
    for df in (1.5, 2.5, 4.3, 37.5):  # the upper tail beyond t975(df), by a fine trapezoid on another grid
        x = np.linspace(t975(df), 4000.0, 2_000_001)
        density = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) * (
            1 + x * x / df) ** (-(df + 1) / 2)
        tail = np.trapezoid(density, x)  # P(T > 4000) is below 1e-5 at these df
        assert tail == pytest.approx(0.025, abs=1e-4), df
    assert t975(1) > t975(1.5) > t975(2) > t975(2.5) > t975(3)
    assert t975(float("nan")) == t975(0.3) == pytest.approx(12.706) and t975(5000) == pytest.approx(1.96, abs=0.001)


def test_a_failed_seed_is_dropped_from_each_comparison_not_unpaired():
    rng = np.random.default_rng(1)
    sft, bf16 = _cells(rng, seeds=4)
    int4 = bf16 - 0.2
    int4[1] = np.nan
    out = arm_statistics({"bf16": bf16, "int4": int4}, sft, reference="bf16", null=None)
    assert out["int4"]["paired_seeds"] == [0, 2, 3] and out["bf16"]["seeds_used"] == [0, 1, 2, 3]
    assert out["int4"]["gain_diff_vs_bf16"] == pytest.approx(-0.2)  # seed 1 of bf16 is not compared with nothing
    assert out["int4"]["gain_diff_vs_bf16_ci95"] == pytest.approx([-0.2, -0.2])
    gone = arm_statistics({"bf16": np.full_like(bf16, np.nan), "int4": int4}, sft, reference="bf16", null=None)
    assert gone["int4"]["tax_vs_bf16"] is None and gone["int4"]["tax_vs_bf16_ci95"] is None


def test_no_ratio_where_the_references_gain_interval_reaches_zero():
    rng = np.random.default_rng(6)
    sft = rng.normal(0, 1, 30)
    bf16 = sft + rng.normal(0, 0.3, (5, 30))  # no gain at all
    out = arm_statistics({"bf16": bf16, "int8": bf16 - 0.05}, sft, reference="bf16", null=None)["int8"]
    assert out["tax_vs_bf16"] is None and "does not exclude 0" in out["tax_undefined"]
    assert out["gain_diff_vs_bf16"] == pytest.approx(-0.05)  # the absolute difference still leads


def test_variance_components_recover_the_simulated_ones():
    rng = np.random.default_rng(7)
    seed_sd, prompt_sd, noise_sd = 0.3, 0.5, 0.2
    est = [variance_components(rng.normal(0, seed_sd, (40, 1)) + rng.normal(0, prompt_sd, (1, 60))
                               + rng.normal(0, noise_sd, (40, 60))) for _ in range(20)]
    assert np.mean([e["seed"] for e in est]) == pytest.approx(seed_sd**2, rel=0.15)
    assert np.mean([e["prompt"] for e in est]) == pytest.approx(prompt_sd**2, rel=0.15)
    assert np.mean([e["residual"] for e in est]) == pytest.approx(noise_sd**2, rel=0.05)


def test_projection_scales_the_seed_variance():
    rng = np.random.default_rng(2)
    sft, bf16 = _cells(rng, seeds=5, seed_sd=0.5)
    _, int8 = _cells(np.random.default_rng(3), seeds=5, seed_sd=0.5)
    int8 = int8 - _cells(np.random.default_rng(3), seeds=5, seed_sd=0.5)[0] + sft
    proj = projection({"bf16": bf16, "int8": int8}, sft, reference="bf16", arm="int8", resamples=100)
    hw = proj["half_width_by_seeds"]
    assert hw["40"] < hw["20"] < hw["10"] < hw["5"]
    c, gain = proj["components"], float(np.mean(bf16) - np.mean(sft))
    # the reported interval's own variance (crossed_jackknife counts the residual in its seed and prompt parts)
    var = (c["seed"] + c["residual"] / c["prompts"]) / 20 + (c["prompt"] + c["residual"] / 20) / c["prompts"]
    assert hw["20"] == pytest.approx(t975(19) * math.sqrt(var) / gain)
    flat = projection({"bf16": sft + rng.normal(0, 0.3, bf16.shape), "int8": int8}, sft, reference="bf16",
                      arm="int8", resamples=10)  # bf16 gains nothing: a share of its gain is not defined
    assert flat["half_width_by_seeds"] == {} and "does not exclude 0" in flat["undefined"]
    lo, hi = proj["half_width_by_seeds_range"]["5"]
    assert lo < hw["5"] < hi  # the projection's own uncertainty, from resampling the seeds


def test_frontier_fit_recovers_gao_et_al_coefficients():
    points = []
    for run in range(4):
        for d in (0.2, 0.5, 0.9, 1.4, 2.0):
            points.append({"run": run, "d": d, "gold_gain": d * (1.5 - 0.5 * math.log(d))})
    fit = fit_frontier(points, resamples=50)
    assert fit["alpha"] == pytest.approx(1.5) and fit["beta"] == pytest.approx(0.5)
    assert fit["alpha_ci95"] == pytest.approx([1.5, 1.5]) and fit["runs"] == 4
    assert fit_frontier([{"run": 0, "d": 0.0, "gold_gain": 0.0}], resamples=10)["alpha"] is None


def test_checkpoints_and_evaluation_prompts():
    assert checkpoint_steps(12, 6) == [2, 4, 6, 8, 10, 12]
    assert checkpoint_steps(5, 5) == [1, 2, 3, 4, 5] and checkpoint_steps(100, 5)[-1] == 100
    prompts = [f"p{i}" for i in range(30)] * 2
    chosen = eval_prompts(prompts, 8, seed=0)
    assert len(chosen) == len(set(chosen)) == 8 and chosen == eval_prompts(list(reversed(prompts)), 8, seed=0)
    assert chosen != sorted(chosen)[:8] and eval_prompts(prompts, 8, seed=1) != chosen  # a sample, not the first
    assert len(eval_prompts(prompts, 100, seed=0)) == 30


def test_projection_grid_names_the_cheapest_design_reaching_the_target():
    rng = np.random.default_rng(4)
    sft, bf16 = _cells(rng, seeds=5, seed_sd=0.5)
    _, int8 = _cells(np.random.default_rng(5), seeds=5, seed_sd=0.5)
    proj = projection({"bf16": bf16, "int8": int8}, sft, reference="bf16", arm="int8", resamples=50, target=10.0)
    assert proj["reaches_target"] == {"seeds": 5, "prompt_factor": 1, "half_width": proj["half_width_by_seeds"]["5"]}
    grid = {(g["seeds"], g["prompt_factor"]): g["half_width"] for g in proj["half_width_grid"]}
    assert grid[(5, 4)] < grid[(5, 2)] < grid[(5, 1)]
    assert projection({"bf16": bf16, "int8": int8}, sft, reference="bf16", arm="int8", resamples=50,
                      target=1e-6)["reaches_target"] is None


def test_t_quantiles_at_other_levels():
    # Student's t table (one-sided 80% and 90%) and the normal's beyond 1000 df
    assert [t_quantile(0.8, df) for df in (1, 2, 4, 6, 10, 30)] == pytest.approx(
        [1.376, 1.061, 0.941, 0.906, 0.879, 0.854], abs=1e-3)
    assert t_quantile(0.9, 5) == pytest.approx(1.476, abs=1e-3) and t_quantile(0.8, 5000) == pytest.approx(0.8416, abs=1e-3)
    assert t_quantile(0.975, 2.0) == pytest.approx(t975(2), abs=1e-3) and t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("seeds", [3, 7])
def test_the_minimum_detectable_effect_is_detected_80_percent_of_the_time(seeds):
    """The minimum detectable effect of the instrument's own interval (crossed jackknife-t over seeds x prompts, seed
    effects dominating as in the cpu profile), checked by simulation: at a true effect equal to it (from the design's
    true standard error and its typical degrees of freedom), the interval excludes 0 in about 80% of experiments; at
    half of it, far less often. Monte Carlo error about 0.01."""
    rng = np.random.default_rng(seeds)
    prompts, reps, sd_seed, sd_prompt, sd_cell = 41, 1500, 1.0, 0.5, 1.0

    def experiment(effect):
        cells = effect + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_prompt, (1, prompts)) \
            + rng.normal(0, sd_cell, (seeds, prompts))
        return crossed_jackknife(lambda s, p: float(cells[np.ix_(s, p)].mean()), seeds, prompts)

    se = math.sqrt(sd_seed**2 / seeds + sd_prompt**2 / prompts + sd_cell**2 / (seeds * prompts))
    df = float(np.median([experiment(0.0)["df"] for _ in range(300)]))
    mde = minimum_detectable([-t975(df) * se, t975(df) * se], df)
    assert t_test_power(mde / se, df) == pytest.approx(0.8, abs=1e-6)

    def power(effect):
        return float(np.mean([experiment(effect)["ci95"][0] > 0 for _ in range(reps)]))

    at_mde, at_half = power(mde), power(mde / 2)
    assert 0.75 <= at_mde <= 0.85, (at_mde, mde / se, df)
    assert at_half < 0.4, at_half
    assert minimum_detectable(None, 3) is None and minimum_detectable([-1, 1], None) is None
    # the normal approximation, (1.96 + 0.84) standard errors, would promise 80% at a much smaller effect
    assert mde / se > 2.8 + (0.5 if seeds == 3 else 0.1)


def test_per_seed_taxes_and_the_exact_sign_flip_test():
    """Each paired seed's own gain difference and tax beside the interval, and the exact sign-flip p-value of the
    differences: every one of 2^S sign patterns counted."""
    assert sign_flip_p([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)  # 5 seeds: never under 5%
    assert sign_flip_p([0.3] * 7) == pytest.approx(2 / 128)
    assert sign_flip_p([0.1, 0.2, -0.05]) == pytest.approx(4 / 8)  # |mean| >= 0.083: +-(.1+.2+.05), +-(.1+.2-.05)
    assert sign_flip_p([1, -1, 1, -1]) == 1.0 and sign_flip_p([]) is None
    rng = np.random.default_rng(3)
    base = rng.normal(0, 0.1, 12)
    ref = 1.0 + rng.normal(0, 0.05, (4, 12))
    arm = ref - np.array([0.1, 0.2, 0.0, 0.3])[:, None]
    out = arm_statistics({"bf16": ref, "int4": arm}, base, reference="bf16", null=None)["int4"]
    g_ref = ref.mean(axis=1) - base.mean()
    assert out["per_seed_gain_diff"] == pytest.approx([-0.1, -0.2, 0.0, -0.3])
    assert out["per_seed_tax"] == pytest.approx(list(1 - (g_ref - [0.1, 0.2, 0.0, 0.3]) / g_ref))
    assert out["sign_flip_p"] == pytest.approx(sign_flip_p([-0.1, -0.2, 0.0, -0.3]))
    assert "per_seed_tax" not in arm_statistics({"bf16": ref}, base, reference="bf16", null=None)["bf16"]
