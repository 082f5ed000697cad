"""Reward models trained to a plateau (rm.early_stopping): a validation split of the training pairs, evaluated every
rm.eval_every steps, stopped after rm.patience evaluations without a better accuracy (transformers'
EarlyStoppingCallback), the best checkpoint kept and the steps recorded; off, every step up to the cap is trained."""

from __future__ import annotations

import pytest

from tinyrlhf import budget, data
from tinyrlhf.base_model import load_tokenizer
from tinyrlhf.config import get_profile
from tinyrlhf.reward import load_reward_model, train_reward_model


def _train(tiny_world, out, **kwargs):
    profile, paths = tiny_world
    pairs = data.read_pairs(paths.data_file("train"))
    train, validation = data.split_by_prompt(pairs, 0.2, 0)
    run = train_reward_model(train, init_path=str(paths.sft_merged), tokenizer=load_tokenizer(paths.sft_merged),
                             precision="bf16", out_dir=out, batch_size=8, lr=1e-3, max_steps=60,
                             target_modules=profile.rm.target_modules, profile=profile,
                             **({"validation": validation} | kwargs if kwargs else {}))
    return run, validation


def test_training_stops_on_a_plateau_and_keeps_the_best_checkpoint(tiny_world, tmp_path):
    """The synthetic pairs are learned within a few dozen steps: validation accuracy stops improving and training
    stops well before the cap of 60, keeping the best evaluation's checkpoint, and says so."""
    run, validation = _train(tiny_world, tmp_path / "rm", eval_every=4, patience=2)
    steps = run["steps"]
    curve = steps["validation_accuracy"]
    assert steps["early_stopping"] and steps["stopped_early"] and steps["trained"] < steps["cap"] == 60
    assert [h["step"] for h in curve] == list(range(4, steps["trained"] + 1, 4))
    best = max(h["accuracy"] for h in curve)
    assert {h["step"] for h in curve if h["accuracy"] == best} >= {steps["kept"]}  # the best evaluation kept
    assert steps["validation_pairs"] == len(validation)
    # the last `patience` evaluations were no better than the kept one: that is why it stopped
    assert all(h["accuracy"] <= best for h in curve if h["step"] > steps["kept"])
    assert len([h for h in curve if h["step"] > steps["kept"]]) == 2
    assert not list((tmp_path / "rm").glob("**/checkpoint-*"))  # the trainer's checkpoints are scratch
    model, _ = load_reward_model(tmp_path / "rm")  # the kept model loads as any reward model does
    assert not model.training


def test_without_early_stopping_every_step_to_the_cap_is_trained(tiny_world, tmp_path):
    run, _ = _train(tiny_world, tmp_path / "rm")
    assert run["steps"] == {"trained": 60, "cap": 60, "early_stopping": False}


def test_the_gpu_profiles_stop_early_and_the_budget_counts_the_cap_and_the_validation():
    rtx = get_profile("rtx4060")
    assert rtx.rm.early_stopping and not get_profile("cpu").rm.early_stopping
    rows = {r["key"]: r for r in budget.predict(rtx, budget.desktop(), lengths=budget.expected(rtx))}
    assert f"at the cap of {rtx.rm.max_steps} steps (early stopping may take fewer)" in rows["rm"]["work"]
    without = get_profile("rtx4060", overrides={"rm.early_stopping": False})
    plain = {r["key"]: r for r in budget.predict(without, budget.desktop(), lengths=budget.expected(without))}
    assert rows["rm"]["hours"] > plain["rm"]["hours"]  # the validation evaluations are counted
    with pytest.raises(ValueError, match="rm.eval_every"):
        get_profile("rtx4060", overrides={"rm.eval_every": 0})
