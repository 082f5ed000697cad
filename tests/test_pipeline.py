"""End to end on the cpu profile (the five notebooks, executed): every stage learns on the synthetic data, the
instrument's claims hold (a gain under the gold judge), and the artifacts, result files and
figures are what later stages and paper authors rely on. Bounds are below what was measured, with margin."""

import json

import numpy as np
import pytest
import torch

from tinyrlhf import plots, schema
from tinyrlhf.config import PRECISIONS
from tinyrlhf.data import read_pairs

pytestmark = pytest.mark.slow


def test_base_model_and_sft_learn_and_reply_properly(pipeline):
    _, _, results, _ = pipeline
    sft = results["sft"]
    base = sft["base_pretraining"]
    assert base["final_loss"] < 0.3 * base["first_loss"]  # measured 4.2 -> 0.19
    assert sft["after"]["loss"] < sft["before"]["loss"]
    assert 0 < sft["trainable_parameters"] < 0.2 * sft["total_parameters"]
    quality = sft["reply_quality"]
    # The goal: at least 90% of the SFT policy's sampled replies end with EOS within ppo.max_new.
    assert quality["eos_share"] >= 0.9, quality
    assert 0.0 < quality["gold_mean"] < 2.0  # coherent, and imperfect: there is something for PPO to fix


def test_reward_models_are_above_chance_in_every_category(pipeline):
    profile, _, results, _ = pipeline
    rm = results["rm"]
    arms, models = rm["arms"], dict(rm["models"])
    # every arm, and the same-recipe judge (eval.second_judge, on by default on synthetic data) on fresh pairs
    judge = models.pop("same-recipe-judge")
    assert set(arms) == {*profile.arms, "same-recipe-judge"} and all(a["status"] == "ok" for a in arms.values())
    assert len(models) == len(profile.arms) * len(profile.rm.seeds)
    assert judge["train_pairs"] == models["bf16/seed0"]["train_pairs"] and judge["accuracy"] > 0.75
    for arm in set(profile.arms) - {"noisy"}:  # every seed of every arm but the positive control
        assert arms[arm]["above_chance_share"] >= 0.9, (arm, arms[arm])
    for mid, rec in models.items():
        by = rec["by_category"]
        assert set(by) == {"rude", "off_topic", "harmful"} and rec["released"]
        if rec["arm"] != "noisy":
            assert by["rude"]["accuracy"] >= 0.9 and by["harmful"]["accuracy"] >= 0.8, (mid, by)
    first = {arm: models[f"{arm}/seed{profile.rm.seeds[0]}"] for arm in profile.arms}
    assert first["int4"]["footprint_bytes"] < first["int8"]["footprint_bytes"] < first["bf16"]["footprint_bytes"]
    assert first["int8"]["train_seed"] == first["bf16"]["train_seed"]  # precisions paired within a seed
    assert first["int8"]["mcnemar_vs_bf16"]["p_value"] <= 1.0 and first["bf16"]["mcnemar_vs_bf16"] is None


@pytest.mark.parametrize("precision, layer", [("int8", "Linear8bitLt"), ("int4", "Linear4bit"), ("bf16", None)])
def test_saved_reward_models_reload_at_their_precision_with_a_full_precision_head(pipeline, precision, layer):
    from tinyrlhf.reward import Float32Head, evaluate_reward_model, load_reward_model

    profile, paths, results, _ = pipeline
    model, info = load_reward_model(paths.rm(precision, 0), cpu_kernel="bitsandbytes", cpu_dtype=profile.rm.cpu_dtype)
    kinds = {type(m).__name__ for m in model.modules()}
    if layer:
        assert layer in kinds
    else:
        assert not kinds & {"Linear8bitLt", "Linear4bit"}
    head = model.get_base_model().score.modules_to_save["default"]
    assert type(head) is Float32Head and head.weight.dtype == torch.float32
    assert not model.training
    # Round trip: reloading as PPO does gives exactly the accuracy recorded when the stage evaluated its saved model.
    model, info = load_reward_model(paths.rm(precision, 0), cpu_kernel=profile.rm.cpu_kernel,
                                    cpu_dtype=profile.rm.cpu_dtype)
    recorded = results["rm"]["models"][f"{precision}/seed0"]["cpu_kernel"]
    assert (info["kernel"]["kernel"], info["kernel"]["dtype"]) == (recorded["kernel"], recorded["dtype"])
    pairs = read_pairs(paths.data_file("test"))[: profile.rm.eval_pairs]
    again = evaluate_reward_model(model, info["tokenizer"], pairs)
    assert again["accuracy"] == results["rm"]["models"][f"{precision}/seed0"]["accuracy"]


def test_ppo_gains_under_the_gold_judge(pipeline):
    profile, _, results, _ = pipeline
    ppo = results["ppo"]
    assert ppo["judge"]["kind"] == "gold"
    bf16 = ppo["arms"]["bf16"]
    ppo_seeds = list(profile.ppo_rm_seeds("bf16"))
    assert bf16["status"] == "ok" and len(bf16["seeds"]) == len(ppo_seeds) * profile.ppo.runs_per_model
    assert [r["rm_seed"] for r in bf16["seeds"]] == ppo_seeds
    # Learning: PPO against every bf16 reward model raises the judge's reward over SFT (with 3 seeds the t-interval
    # of the mean is too wide to require it above 0 here; the cpu profile's 5 PPO seeds are in docs/results-log.md).
    assert all(r["judge_mean"] > ppo["sft"]["judge_mean"] for r in bf16["seeds"]), bf16["seeds"]
    assert bf16["gold_gain_vs_sft"] > 0.05
    for arm in PRECISIONS:
        rec = ppo["arms"][arm]
        assert rec["status"] == "ok" and rec["gold_gain_vs_sft"] > 0
        if arm == "bf16" or bf16["gold_gain_vs_sft_ci95"][0] > 0:  # a ratio only where bf16's gain interval excludes 0
            assert rec["tax_vs_bf16"] == pytest.approx(1 - rec["gold_gain_vs_sft"] / bf16["gold_gain_vs_sft"])
        else:
            assert rec["tax_vs_bf16"] is None and "does not exclude 0" in rec["tax_undefined"]
        for seed in rec["seeds"]:
            assert len(seed["history"]) == profile.ppo.steps and seed["reward_device"] == "cpu"
            assert [c["step"] for c in seed["checkpoints"]] == ppo["eval"]["checkpoint_steps"]
            assert len(seed["judge_per_prompt"]) == profile.eval.prompts
        assert len(rec["frontier"]["points"]) == 1 + len(rec["seeds"]) * profile.eval.checkpoints
        assert rec["frontier"]["fit"]["alpha"] is not None
    assert bf16["tax_vs_bf16"] == 0.0


def test_best_of_n_gains_on_the_pool_and_the_proxy_rises_with_n(pipeline):
    profile, paths, results, _ = pipeline
    bon = results["bon"]
    assert bon["judge"]["kind"] == "gold" and bon["pool_size"] == profile.eval.bon_pool
    assert bon["ns"][0] == 1 and bon["ns"][-1] == profile.eval.bon_pool
    rows = [json.loads(line) for line in paths.bon_pool.read_text().splitlines()]
    assert len(rows) == bon["candidates"] == bon["prompts"] * bon["pool_size"]
    assert len(rows[0]["scores"]) == len(profile.bon_arms + profile.bits_arms) * len(profile.rm.seeds) + 1  # + judge
    assert [r["bits"] for r in bon["bits"]["rows"]] == sorted(profile.eval.serve_bits)  # the sweep, reported apart
    assert not set(profile.bits_arms) & set(bon["arms"])
    assert sum(r["gold"] for r in rows) / len(rows) == pytest.approx(bon["pool_gold_mean"])
    for arm in profile.bon_arms:
        entry = bon["arms"][arm]
        assert entry["status"] == "ok" and entry["seeds_ok"] == list(range(len(profile.rm.seeds)))
        assert entry["by_n"][0]["gold_gain_vs_sft"] == pytest.approx(0.0, abs=1e-12)  # best of 1: the pool's mean
        proxy = [row["proxy_gain"] for row in entry["by_n"]]
        assert proxy == sorted(proxy) and proxy[-1] > 0  # best-of-n raises what it ranks by
    star = bon["arms"]["bf16"]["at_n_star"]
    assert star["n"] == bon["n_star"] > 1 and star["gold_gain_vs_sft_ci95"][0] > 0  # best-of-n beats sampling
    # the same pool judged again by the same-recipe judge: every quantized arm's tax under both, paired
    second = bon["second_judge"]
    assert second["status"] == "ok" and second["n"] == bon["n_star"] and second["rank_correlation"] > 0.5
    assert set(second["arms"]) == set(profile.bon_arms) - {"bf16"}
    for arm, row in second["arms"].items():
        assert row["tax_judge"] == pytest.approx(bon["arms"][arm]["at_n_star"]["tax_vs_bf16"])  # the same tax
        assert row["difference"] == pytest.approx(row["tax_second"] - row["tax_judge"])


def test_every_policy_is_scored_by_the_judge_and_every_reward_model(pipeline):
    profile, _, results, _ = pipeline
    m = results["ppo"]["cross_matrix"]
    assert m["policies"] == ["sft", *profile.arms] and m["judges"] == ["judge", *profile.arms]
    assert all(v is not None for row in m["mean_reward"] for v in row)
    # PPO raised what it trained against: each arm's policies under their own reward models, against SFT's replies
    # under the same models, on average over the arms (one reply per prompt per cell: a single cell is noisy; on an
    # AVX512-BF16 CPU bf16's cell fell 0.05 while int8's and int4's rose 0.46 and 0.62)
    rows = m["mean_reward"]
    assert np.mean([rows[i][i] - rows[0][i] for i in range(1, len(rows))]) > 0
    for arm, entry in results["ppo"]["arms"].items():  # and the reward PPO saw rose along every arm's runs
        rewards = np.array([[h["reward"] for h in s["history"]] for s in entry["seeds"]])
        half = rewards.shape[1] // 2
        assert rewards[:, half:].mean() > rewards[:, :half].mean(), arm


def test_results_validate_and_figures_redraw_from_the_json_alone(pipeline, tmp_path):
    _, paths, results, _ = pipeline
    for kind in ("data_stats", "sft", "rm", "bon", "ppo"):
        schema.validate(results[kind], kind)
    for name in ("rm_results.json", "bon_results.json", "ppo_experiment_results.json"):  # a paper author's copy
        (tmp_path / name).write_text((paths.results / name).read_text())
    drawn = plots.draw_all(tmp_path, tmp_path / "figs")
    assert len(drawn) == 15 and "bon_tax_vs_bits" in drawn
    for files in drawn.values():
        assert all(f.exists() and f.stat().st_size > 1000 for f in files)


def test_reruns_reuse_finished_stages(pipeline):
    from tinyrlhf.stages import run_bon, run_data, run_ppo, run_rm, run_sft

    profile, paths, _, _ = pipeline
    before = paths.result("ppo").read_bytes()
    for run in (run_data, run_sft, run_rm, run_bon, run_ppo):
        assert run(profile, paths, progress=False)["reused"], run.__name__
    assert paths.result("ppo").read_bytes() == before


def test_reward_wrapper_stays_on_cpu_and_returns_scores_to_the_callers_device(pipeline):
    from trl.experimental.utils import get_reward

    from tinyrlhf.reward import CPURewardModel, load_reward_model

    _, paths, _, _ = pipeline
    rm, info = load_reward_model(paths.rm("int8", 0))
    wrapper = CPURewardModel(rm, "cpu")
    # What PPOTrainer does to the reward model: a no-op here, for a CUDA device too.
    assert wrapper.to("cuda") is wrapper and wrapper.to(torch.device("cuda", 0)) is wrapper
    wrapper.train()
    assert not rm.training
    assert {p.device.type for p in rm.parameters()} == {"cpu"}
    tok = info["tokenizer"]
    q = torch.tensor([tok("\n\nHuman: How do I make tea?\n\nAssistant: Boil water.<|endoftext|>")["input_ids"]])
    _, score, _ = get_reward(wrapper, q, tok.pad_token_id, 3)  # TRL's own scoring path
    direct = rm(input_ids=q).logits[0, 0]
    assert float(score[0]) == pytest.approx(float(direct), abs=1e-5)
    hidden = wrapper.backbone(q).hidden_states[-1]
    wrapper.caller_device = torch.device("meta")
    assert wrapper.score(hidden).device.type == "meta"


# The estimator's band on the cpu profile: the measured process peak RSS lies within this factor of the estimate
# (the estimate counts 1 GiB for the Python process with torch; measured ratios were 0.7-1.2).
MEMORY_BAND = (0.5, 2.0)


def test_measured_peaks_lie_within_the_stated_band_of_the_estimates(pipeline):
    _, _, results, _ = pipeline
    records = [results["sft"]["memory"]] + [r["memory"] for r in results["rm"]["models"].values()]
    records += [s["memory"] for a in results["ppo"]["arms"].values() for s in a["seeds"]]
    for rec in records:
        assert rec["measured"] == "process peak RSS" and rec["estimate_bytes"] > 0
        assert MEMORY_BAND[0] <= rec["ratio"] <= MEMORY_BAND[1], rec


def test_the_budget_counts_the_work_the_stages_did(pipeline):
    """Issue 25: the time budget's units (budget.work_counts) are what the run did: reward models trained (the
    heldout judge's included), pool candidates and their scorers, PPO runs, and updates and evaluations per run."""
    from tinyrlhf import budget

    profile, paths, results, _ = pipeline
    work = budget.work_counts(profile)
    bon, ppo = results["bon"], results["ppo"]
    assert work["reward_models"] == len(results["rm"]["models"])
    rows = [json.loads(line) for line in paths.bon_pool.read_text().splitlines()]
    assert work["pool_candidates"] == len(rows) and work["pool_scorers"] == len(rows[0]["scores"])
    runs = [seed for arm in ppo["arms"].values() for seed in arm["seeds"]]
    assert work["ppo_runs"] == len(runs)
    for run in runs:
        assert len(run["history"]) == work["ppo_updates_per_run"]
        assert len(run["checkpoints"]) == work["checkpoints_per_run"]
        assert len(run["judge_per_prompt"]) * profile.eval.samples <= work["replies_per_run"]
