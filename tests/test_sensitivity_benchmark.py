"""benchmarks/sensitivity.py's spike-ins: a known tax put into bf16's own scores, read back by the run's analysis."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tinyrlhf import bon

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sensitivity.py"


def _load():
    spec = importlib.util.spec_from_file_location("sensitivity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flattened_scores_pick_the_pools_mean_so_the_tax_is_bf16s_gain_on_the_flattened_prompts():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(20, 16))
    assert bon.best_of_n(np.zeros(16), gold[0], 4) == pytest.approx(gold[0].mean())
    bf16 = np.stack([gold + rng.normal(scale=0.3, size=gold.shape) for _ in range(3)])
    e = _load().spike_in(gold, bf16, 0.25, 4, np.random.default_rng(1))
    # the same draws as spike_in: 5 of the 20 prompts per seed; the pooled tax is the share of bf16's summed gain
    # that sat on them (its expectation over the draw is 5 / 20)
    again = np.random.default_rng(1)
    flat = [set(again.choice(20, size=5, replace=False)) for _ in range(3)]
    gain = np.array([[bon.best_of_n(bf16[s, p], gold[p], 4) - gold[p].mean() for p in range(20)] for s in range(3)])
    share = sum(gain[s, p] for s in range(3) for p in flat[s]) / gain.sum()
    assert e["tax_vs_bf16"] == pytest.approx(share, rel=1e-9) and e["n"] == 4


def test_detection_grows_with_the_spike_and_the_interval_holds_the_known_tax():
    rng = np.random.default_rng(2)
    gold = rng.normal(size=(40, 16))
    bf16 = np.stack([gold + rng.normal(scale=0.3, size=gold.shape) for _ in range(5)])
    rows = _load().spike_ins(gold, bf16, 4, repeats=30, seed=0)
    assert [r["known_tax"] for r in rows] == [0.05, 0.1, 0.2]
    assert rows[0]["detected"] <= rows[1]["detected"] <= rows[2]["detected"] and rows[2]["detected"] > 0.8
    assert all(r["covered"] >= 0.8 for r in rows)
    assert all(abs(r["tax_mean"] - r["known_tax"]) < 0.03 for r in rows)
    assert all(r["with_interval"] == r["repeats"] == 30 for r in rows)
