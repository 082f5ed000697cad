"""The experiment's arithmetic on hand-computed cases: intervals, McNemar, the tax's bootstrap, the frontier fit."""

import math

import numpy as np
import pytest

from tinyrlhf.evaluate import checkpoint_steps, eval_prompts, win_rate
from tinyrlhf.stats import (
    arm_statistics,
    fit_frontier,
    half_width,
    mcnemar,
    mean_std_ci,
    projection,
    spearman,
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
    out = arm_statistics(cells, sft, reference="bf16", null="null", resamples=300)
    assert out["int8"]["tax_vs_bf16"] == pytest.approx(0.5)
    assert out["int8"]["tax_vs_bf16_ci95"] == pytest.approx([0.5, 0.5])  # paired: the same loss in every draw
    assert out["null"]["tax_vs_bf16_ci95"] == pytest.approx([0.0, 0.0])
    assert out["int8"]["tax_minus_null_ci95"] == pytest.approx([0.5, 0.5])
    assert out["int8"]["gain_diff_vs_bf16"] == pytest.approx(-0.5 * out["bf16"]["gold_gain_vs_sft"])
    lo, hi = out["bf16"]["gold_gain_vs_sft_ci95"]
    assert lo < out["bf16"]["gold_gain_vs_sft"] < hi and lo > 0.5  # a clear gain: interval well above 0


def test_noise_gives_an_interval_that_covers_the_truth_and_shrinks_with_more_seeds():
    covered, widths = 0, {}
    for seeds in (4, 16):
        hws = []
        for rep in range(20):
            rng = np.random.default_rng(rep)
            sft, bf16 = _cells(rng, seeds=seeds)
            _, other = _cells(np.random.default_rng(1000 + rep), seeds=seeds)  # same truth, independent noise
            other = other - _cells(np.random.default_rng(1000 + rep), seeds=seeds)[0] + sft
            out = arm_statistics({"bf16": bf16, "null": other}, sft, reference="bf16", null=None, resamples=200,
                                 seed=rep)
            lo, hi = out["null"]["tax_vs_bf16_ci95"]
            covered += lo <= 0 <= hi
            hws.append(half_width([lo, hi]))
        widths[seeds] = np.median(hws)
    assert covered >= 34  # of 40: a 95% interval may miss now and then, not often
    assert widths[16] < 0.7 * widths[4]


def test_a_failed_seed_is_left_out_and_a_missing_reference_gives_no_tax():
    rng = np.random.default_rng(1)
    sft, bf16 = _cells(rng, seeds=3)
    int4 = bf16.copy()
    int4[1] = np.nan
    out = arm_statistics({"bf16": bf16, "int4": int4}, sft, reference="bf16", null=None, resamples=100)
    assert math.isfinite(out["int4"]["gold_gain_vs_sft"])
    gone = arm_statistics({"bf16": np.full_like(bf16, np.nan), "int4": int4}, sft, reference="bf16", null=None,
                          resamples=50)
    assert gone["int4"]["tax_vs_bf16"] is None and gone["int4"]["tax_vs_bf16_ci95"] is None


def test_projection_scales_the_seed_variance():
    rng = np.random.default_rng(2)
    sft, bf16 = _cells(rng, seeds=5, seed_sd=0.5)
    _, int8 = _cells(np.random.default_rng(3), seeds=5, seed_sd=0.5)
    int8 = int8 - _cells(np.random.default_rng(3), seeds=5, seed_sd=0.5)[0] + sft
    proj = projection({"bf16": bf16, "int8": int8}, sft, reference="bf16", arm="int8", resamples=300)
    hw = proj["half_width_by_seeds"]
    assert hw["40"] < hw["20"] < hw["10"] < hw["5"]
    assert hw["20"] ** 2 - 1.96**2 * proj["variance_prompts"] == pytest.approx(
        (hw["5"] ** 2 - 1.96**2 * proj["variance_prompts"]) / 4, rel=1e-3)


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
    proj = projection({"bf16": bf16, "int8": int8}, sft, reference="bf16", arm="int8", resamples=300, target=10.0)
    assert proj["reaches_target"] == {"seeds": 5, "prompt_factor": 1, "half_width": proj["half_width_by_seeds"]["5"]}
    grid = {(g["seeds"], g["prompt_factor"]): g["half_width"] for g in proj["half_width_grid"]}
    assert grid[(5, 4)] < grid[(5, 2)] < grid[(5, 1)]
    assert projection({"bf16": bf16, "int8": int8}, sft, reference="bf16", arm="int8", resamples=300,
                      target=1e-6)["reaches_target"] is None
