"""The best-of-n estimator (tinyrlhf.bon) against brute force: every n-subset of a small pool enumerated."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from tinyrlhf import bon


def brute_force(proxy, gold, n):
    """Mean over every n-subset of the gold of its best-proxy member, ties split evenly."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(proxy)), n))
    for subset in subsets:
        top = max(proxy[i] for i in subset)
        winners = [i for i in subset if proxy[i] == top]
        total += sum(gold[i] for i in winners) / len(winners)
    return total / len(subsets)


@pytest.mark.parametrize("seed", range(5))
def test_the_estimator_equals_enumerating_every_subset(seed):
    rng = random.Random(seed)
    pool = 9
    proxy = [round(rng.gauss(0, 1), 1) for _ in range(pool)]  # rounded: some ties
    gold = [rng.gauss(0, 1) for _ in range(pool)]
    for n in range(1, pool + 1):
        assert bon.best_of_n(proxy, gold, n) == pytest.approx(brute_force(proxy, gold, n), abs=1e-12)


def test_the_ends_and_the_weights():
    proxy, gold = [3.0, 1.0, 2.0], [0.3, 0.1, 0.2]
    assert bon.best_of_n(proxy, gold, 1) == pytest.approx(np.mean(gold))  # n = 1: the pool's mean
    assert bon.best_of_n(proxy, gold, 3) == pytest.approx(0.3)  # n = N: the proxy's favourite
    for pool, n in ((5, 1), (8, 3), (64, 16)):
        w = bon.rank_weights(pool, n)
        assert w.sum() == pytest.approx(1.0) and (np.diff(w) >= 0).all()  # higher ranks win more often
    with pytest.raises(ValueError, match="1 <= n <= pool"):
        bon.rank_weights(4, 5)


def test_kl_of_best_of_n():
    assert bon.kl_bon(1) == 0.0
    assert bon.kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    assert bon.kl_bon(64) == pytest.approx(math.log(64) - 63 / 64)
    assert all(bon.kl_bon(n + 1) > bon.kl_bon(n) for n in range(1, 100))


def test_the_frontier_fit_recovers_its_parameters():
    d = np.sqrt([bon.kl_bon(n) for n in (2, 4, 8, 16, 32, 64)])
    fit = bon.fit_bon_frontier(d, d * (0.9 - 0.3 * d))
    assert fit["alpha"] == pytest.approx(0.9) and fit["beta"] == pytest.approx(0.3)


def _pool(rng, prompts=12, size=16):
    quality = rng.normal(0, 1, (prompts, size))
    return quality, quality + rng.normal(0, 0.3, (prompts, size))


def test_paired_analysis_finds_n_star_and_a_worse_ranker_s_tax():
    rng = np.random.default_rng(0)
    quality, gold = _pool(rng)
    seeds = 4
    good = np.stack([quality + rng.normal(0, 0.3, quality.shape) for _ in range(seeds)])
    proxies = {"bf16": good, "int8": good.copy(),  # the same rankings: no tax at all
               "noisy": np.stack([quality + rng.normal(0, 3.0, quality.shape) for _ in range(seeds)]),
               "null": np.stack([quality + rng.normal(0, 0.3, quality.shape) for _ in range(seeds)])}
    out = bon.analyse(gold, proxies, reference="bf16", null="null")
    assert out["ns"] == [1, 2, 4, 8, 16] and out["kl"][0] == 0.0 and out["pool_gold_mean"] == pytest.approx(gold.mean())
    gains = [row["gold_gain_vs_sft"] for row in out["arms"]["bf16"]["by_n"]]
    assert out["n_star"] == out["ns"][int(np.argmax(gains))]
    assert out["arms"]["bf16"]["at_n_star"]["gold_gain_vs_sft"] == pytest.approx(max(gains))
    star = out["arms"]["int8"]["at_n_star"]
    assert star["tax_vs_bf16"] == pytest.approx(0.0) and star["tax_vs_bf16_ci95"] == pytest.approx([0.0, 0.0])
    noisy = out["arms"]["noisy"]["at_n_star"]
    assert noisy["tax_vs_bf16_ci95"][0] > 0  # a much worse ranker: detected
    best_of_1 = [arm["by_n"][0]["gold_gain_vs_sft"] for arm in out["arms"].values()]
    assert best_of_1 == pytest.approx([0.0] * 4)  # one candidate: the pool's mean, whatever ranks it
    proxy = [row["proxy_gain"] for row in out["arms"]["bf16"]["by_n"]]
    assert proxy == sorted(proxy)


def test_a_reward_model_that_failed_is_left_out_of_its_seed_only():
    rng = np.random.default_rng(1)
    quality, gold = _pool(rng)
    good = np.stack([quality + rng.normal(0, 0.3, quality.shape) for _ in range(3)])
    broken = good.copy()
    broken[1] = np.nan
    out = bon.analyse(gold, {"bf16": good, "int4": broken}, reference="bf16", null=None)
    assert out["arms"]["int4"]["status"] == "partial" and out["arms"]["int4"]["seeds_ok"] == [0, 2]
    assert out["arms"]["int4"]["at_n_star"]["paired_seeds"] == [0, 2]


def test_a_control_arm_trained_on_fewer_seeds_is_paired_on_those_and_not_called_partial():
    rng = np.random.default_rng(2)
    quality, gold = _pool(rng)
    good = np.stack([quality + rng.normal(0, 0.3, quality.shape) for _ in range(4)])
    null = np.stack([quality + rng.normal(0, 0.3, quality.shape) for _ in range(4)])
    null[2:] = np.nan  # trained for the first two seeds only (rm.control_seeds = 2)
    planned = {"bf16": [0, 1, 2, 3], "null": [0, 1]}
    out = bon.analyse(gold, {"bf16": good, "null": null}, reference="bf16", null="null", planned=planned)
    assert out["arms"]["null"]["status"] == "ok" and out["arms"]["null"]["reason"] is None
    assert out["arms"]["null"]["seeds_ok"] == [0, 1] and out["arms"]["null"]["at_n_star"]["paired_seeds"] == [0, 1]
    assert out["arms"]["bf16"]["at_n_star"]["seeds_used"] == [0, 1, 2, 3]
    null[1] = np.nan  # now one of its planned seeds failed
    out = bon.analyse(gold, {"bf16": good, "null": null}, reference="bf16", null="null", planned=planned)
    assert out["arms"]["null"]["status"] == "partial" and "[1]" in out["arms"]["null"]["reason"]


def _judged_pool(seed: int = 0, seeds: int = 5, prompts: int = 24, pool: int = 16):
    """A gold-judged pool, bf16's proxies close to gold and int4's noisier, each seed's own noise."""
    rng = np.random.default_rng(seed)
    gold = rng.normal(size=(prompts, pool))
    bf16 = gold + 0.5 * rng.normal(size=(seeds, prompts, pool))
    int4 = gold + 1.5 * rng.normal(size=(seeds, prompts, pool))
    return gold, {"bf16": bf16, "int4": int4}


def test_a_second_judge_equal_to_the_judge_moves_no_tax():
    gold, proxies = _judged_pool()
    shift = bon.judge_shift(gold, gold.copy(), proxies, n=4, reference="bf16", arms=["int4"])
    row = shift["arms"]["int4"]
    assert row["tax_judge"] == pytest.approx(row["tax_second"]) and row["tax_judge"] > 0
    assert row["difference"] == pytest.approx(0.0, abs=1e-12) and all(abs(d) < 1e-12 for d in row["per_seed"])
    assert shift["rank_correlation"] == pytest.approx(1.0) and shift["n_peak_judge"] == shift["n_peak_second"]


def test_a_judge_that_shares_bf16s_errors_reads_the_other_arms_tax_higher():
    """A second judge made of bf16's own proxy errors (seed 0's: a bf16 model of the same recipe) favours the
    candidates bf16 ranks first, so the noisier arm's tax reads higher under it, by an interval that excludes 0."""
    gold, proxies = _judged_pool(seed=3)
    rng = np.random.default_rng(99)
    shared = proxies["bf16"].mean(0)  # what every bf16 seed's ranking has in common: gold plus shared errors
    second = shared + 0.2 * rng.normal(size=gold.shape)
    proxies["bf16"] = shared + 0.3 * rng.normal(size=proxies["bf16"].shape)
    row = bon.judge_shift(gold, second, proxies, n=4, reference="bf16", arms=["int4"])["arms"]["int4"]
    assert row["difference"] == pytest.approx(row["tax_second"] - row["tax_judge"], abs=1e-12)
    assert row["difference_ci95"][0] > 0 and all(d > 0 for d in row["per_seed"])
