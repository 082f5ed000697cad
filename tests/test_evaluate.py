"""The experiment's arithmetic on hand-computed cases: intervals, win rate, gains and the quantization tax."""

import math

import pytest

from tinyrlhf.evaluate import _win_rate, aggregate, mean_std_ci
from tinyrlhf.reward import spearman, wilson_ci


def _seed(seed, judged, status="ok"):
    if status != "ok":
        return {"seed": seed, "status": status, "reason": "OutOfMemoryError: boom"}
    return {"seed": seed, "status": "ok", "reason": None, "judged_reward_mean": judged, "own_reward_mean": judged + 1,
            "kl_mean": 2.0, "win_rate_vs_sft": 0.6, "response_length_mean": 10.0, "train_seconds": 5.0,
            "peak_memory_bytes": 100 + seed}


def test_mean_std_and_t_interval():
    mean, std, ci = mean_std_ci([1.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(math.sqrt(2))
    assert ci == pytest.approx([2 - 12.706, 2 + 12.706])  # t(0.975, 1 df) * sqrt(2) / sqrt(2)
    assert mean_std_ci([5.0]) == (5.0, None, None)
    assert mean_std_ci([]) == (None, None, None)


def test_win_rate_counts_ties_as_half():
    assert _win_rate([1, 2, 3, 4], [0, 2, 5, 3]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_gain_and_tax_relative_to_bf16_paired_by_seed():
    runs = {"bf16": [_seed(0, 1.0), _seed(1, 2.0)], "int8": [_seed(0, 0.5), _seed(1, 1.5)],
            "int4": [_seed(0, 2.0), _seed(1, 1.0)]}
    out = aggregate(runs, sft_judged_mean=0.0)
    assert out["bf16"]["gain_vs_sft"] == 1.5 and out["bf16"]["tax_vs_bf16"] == 0.0
    assert out["int8"]["gain_vs_sft"] == 1.0
    assert out["int8"]["tax_vs_bf16"] == pytest.approx(0.5 / 1.5)
    assert out["int8"]["tax_vs_bf16_ci95"] == pytest.approx([1 / 3, 1 / 3])  # the same loss on both seeds
    lo, hi = out["int4"]["tax_vs_bf16_ci95"]  # seed taxes -1/1.5 and +1/1.5: a wide interval around 0
    assert out["int4"]["tax_vs_bf16"] == pytest.approx(0.0) and lo < -1 and hi > 1
    assert out["int8"]["peak_memory_bytes_max"] == 101 and out["int8"]["status"] == "ok"


def test_failed_seeds_and_a_failed_judge():
    runs = {"bf16": [_seed(0, 1.0, "failed"), _seed(1, 1.0, "failed")], "int4": [_seed(0, 0.4), _seed(1, 0, "failed")]}
    out = aggregate(runs, sft_judged_mean=0.0)
    assert out["bf16"]["status"] == "failed" and out["bf16"]["judged_reward_mean"] is None
    assert out["int4"]["status"] == "partial" and "seed 1: OutOfMemoryError" in out["int4"]["reason"]
    assert out["int4"]["judged_reward_mean"] == 0.4 and out["int4"]["judged_reward_std"] is None
    assert out["int4"]["tax_vs_bf16"] is None  # no bf16 gain to compare with


def test_wilson_interval_and_rank_correlation():
    assert wilson_ci(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson_ci(0, 0) == [0.0, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
