"""rm.labels = "judge": the training pairs relabelled by the judge before any reward model trains (Gao et al.
2022's design, where the judge is the gold the proxies learn)."""

from dataclasses import replace

import pytest

from tinyrlhf import data, display, evaluate, stages
from tinyrlhf.config import ConfigError, get_profile
from tinyrlhf.synthetic import gold_reward


def test_the_gold_judge_puts_every_pair_the_way_it_scores_it(tiny_world):
    profile, paths = tiny_world
    pairs = data.read_pairs(paths.data_file("train"))[:60]
    wrong = [i for i, p in enumerate(pairs) if gold_reward(p.prompt, p.chosen) > gold_reward(p.prompt, p.rejected)][::3]
    given = [replace(p, chosen=p.rejected, rejected=p.chosen) if i in wrong else p for i, p in enumerate(pairs)]
    out, info = stages.relabel_by_judge(given, get_profile("cpu", overrides={"rm.labels": "judge"}), paths)
    assert len(out) == len(given) == info["pairs"] and info["judge"].startswith("gold")
    assert all(gold_reward(p.prompt, p.chosen) >= gold_reward(p.prompt, p.rejected) for p in out)
    ties = sum(gold_reward(p.prompt, p.chosen) == gold_reward(p.prompt, p.rejected) for p in given)
    assert info["swapped"] >= len(wrong) > 0 and info["tied"] == ties
    assert [p.prompt for p in out] == [p.prompt for p in given]  # the same pairs, in the same order
    assert {p.chosen for p in out} | {p.rejected for p in out} == {p.chosen for p in given} | {p.rejected for p in given}


def test_judge_labels_need_a_judge_that_exists_before_the_reward_models():
    with pytest.raises(ConfigError, match="heldout judge is itself a reward model"):
        get_profile("cpu", overrides={"rm.labels": "judge", "eval.judge": "heldout"})
    with pytest.raises(ConfigError, match="rm.labels must be one of data, judge"):
        get_profile("cpu", overrides={"rm.labels": "gold"})


def test_relabelled_reward_models_are_other_models_and_03_says_whose_labels():
    data_labels, judge_labels = get_profile("cpu"), get_profile("cpu", overrides={"rm.labels": "judge"})
    assert stages.config_hash(stages.RM, data_labels) != stages.config_hash(stages.RM, judge_labels)
    # another judge wrote other labels: other reward models, though eval is not among the rm stage's sections
    other = get_profile("cpu", overrides={"rm.labels": "judge", "eval.judge": "/some/public/reward-model"})
    assert stages.config_hash(stages.RM, other) != stages.config_hash(stages.RM, judge_labels)
    assert other.rm == judge_labels.rm
    assert "the data's" in display.labels_line({"labels": "data", "relabelled": None})
    line = display.labels_line({"labels": "judge", "relabelled": {"judge": "gold reward", "pairs": 200, "swapped": 10,
                                                                  "tied": 3}})
    assert "10 (5.0%) were swapped" in line and "3 tied" in line


def test_the_judges_agreement_with_the_test_labels_is_counted_pair_by_pair(tiny_world):
    """bon's judge record says how often the judge prefers the data's chosen reply on the test pairs: counted here
    by hand with the gold rule (ties count half), and a reward-model judge's taken from its 03 record."""
    profile, paths = tiny_world
    spec = stages.judge_spec(profile, paths, {})
    pairs = data.read_pairs(paths.data_file("test"))[: profile.rm.eval_pairs]
    got = stages.judge_accuracy(spec, {}, evaluate.judge_pair_scores(evaluate.load_judge(spec), pairs))
    margins = [gold_reward(p.prompt, p.chosen) - gold_reward(p.prompt, p.rejected) for p in pairs]
    expected = (sum(m > 0 for m in margins) + 0.5 * sum(m == 0 for m in margins)) / len(pairs)
    assert got["pairs"] == len(pairs) and got["accuracy"] == pytest.approx(expected)
    assert got["accuracy_ci95"][0] <= got["accuracy"] <= got["accuracy_ci95"][1]
    record = {"judge": {"n_test_pairs": 9, "accuracy": 0.6, "accuracy_ci95": [0.3, 0.8]}}
    assert stages.judge_accuracy({"kind": "reward_model"}, record, None) == {
        "pairs": 9, "accuracy": 0.6, "accuracy_ci95": [0.3, 0.8]}
    line = display.judge_line({"judge": {"name": "j", "why": "w", "test_pairs": got}})
    assert f"on {got['accuracy']:.0%} [" in line and f"of {len(pairs)} test pairs" in line
