"""End to end on the cpu profile (the five notebooks, executed): every stage learns on the synthetic data, the
instrument's claims hold (a gain under the gold judge, a null arm at zero), and the artifacts, result files and
figures are what later stages and paper authors rely on. Bounds are below what was measured, with margin."""

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
    arms = results["rm"]["arms"]
    assert set(arms) == set(profile.arms) and all(a["status"] == "ok" for a in arms.values())
    for arm, rec in arms.items():
        by = rec["by_category"]
        assert set(by) == {"rude", "off_topic", "harmful"}
        assert by["rude"]["accuracy"] >= 0.9 and by["harmful"]["accuracy"] >= 0.8, (arm, by)
        assert by["off_topic"]["accuracy"] > 0.55, (arm, by)  # the hard one: the reply must match the request
        assert rec["released"]
    assert arms["int4"]["footprint_bytes"] < arms["int8"]["footprint_bytes"] < arms["bf16"]["footprint_bytes"]
    assert arms["null"]["precision"] == "bf16" and arms["null"]["seed"] != arms["bf16"]["seed"]
    assert arms["int8"]["mcnemar_vs_bf16"]["p_value"] <= 1.0 and arms["bf16"]["mcnemar_vs_bf16"] is None


@pytest.mark.parametrize("precision, layer", [("int8", "Linear8bitLt"), ("int4", "Linear4bit"), ("bf16", None)])
def test_saved_reward_models_reload_at_their_precision_with_a_full_precision_head(pipeline, precision, layer):
    from tinyrlhf.reward import Float32Head, evaluate_reward_model, load_reward_model

    profile, paths, results, _ = pipeline
    model, info = load_reward_model(paths.rm(precision), cpu_kernel="bitsandbytes")
    kinds = {type(m).__name__ for m in model.modules()}
    if layer:
        assert layer in kinds
    else:
        assert not kinds & {"Linear8bitLt", "Linear4bit"}
    head = model.get_base_model().score.modules_to_save["default"]
    assert type(head) is Float32Head and head.weight.dtype == torch.float32
    assert not model.training
    # Round trip: reloading as PPO does gives exactly the accuracy recorded when the stage evaluated its saved model.
    model, info = load_reward_model(paths.rm(precision), cpu_kernel=profile.rm.cpu_kernel)
    recorded = results["rm"]["arms"][precision]["cpu_kernel"]
    assert (info["kernel"]["kernel"], info["kernel"]["dtype"]) == (recorded["kernel"], recorded["dtype"])
    pairs = read_pairs(paths.data_file("test"))[: profile.rm.eval_pairs]
    again = evaluate_reward_model(model, info["tokenizer"], pairs)
    assert again["accuracy"] == results["rm"]["arms"][precision]["accuracy"]


def test_ppo_gains_under_the_gold_judge_and_the_null_arm_sits_at_zero(pipeline):
    profile, _, results, _ = pipeline
    ppo = results["ppo"]
    assert ppo["judge"]["kind"] == "gold" and ppo["null_arm"] == "null"
    bf16 = ppo["arms"]["bf16"]
    assert bf16["status"] == "ok" and len(bf16["seeds"]) == len(profile.ppo.seeds)
    # The issue's claims: bf16's gain over SFT has its interval above 0; the null arm's tax interval holds 0.
    assert bf16["gold_gain_vs_sft_ci95"][0] > 0, bf16["gold_gain_vs_sft_ci95"]
    lo, hi = ppo["arms"]["null"]["tax_vs_bf16_ci95"]
    assert lo <= 0 <= hi
    for arm in PRECISIONS:
        rec = ppo["arms"][arm]
        assert rec["status"] == "ok" and rec["gold_gain_vs_sft"] > 0
        assert rec["tax_vs_bf16"] == pytest.approx(1 - rec["gold_gain_vs_sft"] / bf16["gold_gain_vs_sft"])
        for seed in rec["seeds"]:
            assert len(seed["history"]) == profile.ppo.steps and seed["reward_device"] == "cpu"
            assert [c["step"] for c in seed["checkpoints"]] == ppo["eval"]["checkpoint_steps"]
            assert len(seed["judge_per_prompt"]) == profile.eval.prompts
        assert len(rec["frontier"]["points"]) == 1 + len(rec["seeds"]) * profile.eval.checkpoints
        assert rec["frontier"]["fit"]["alpha"] is not None
    assert bf16["tax_vs_bf16"] == 0.0


def test_every_policy_is_scored_by_the_judge_and_every_reward_model(pipeline):
    _, _, results, _ = pipeline
    m = results["ppo"]["cross_matrix"]
    assert m["policies"] == ["sft", "bf16", "int8", "int4", "null"]
    assert m["judges"] == ["judge", "bf16", "int8", "int4", "null"]
    assert all(v is not None for row in m["mean_reward"] for v in row)
    sft_row, bf16_row = m["mean_reward"][0], m["mean_reward"][1]
    assert bf16_row[1] > sft_row[1]  # PPO raised what it trained against


def test_results_validate_and_figures_redraw_from_the_json_alone(pipeline, tmp_path):
    _, paths, results, _ = pipeline
    for kind in ("data_stats", "sft", "rm", "ppo"):
        schema.validate(results[kind], kind)
    for name in ("rm_results.json", "ppo_experiment_results.json"):  # a paper author's copy, in another folder
        (tmp_path / name).write_text((paths.results / name).read_text())
    drawn = plots.draw_all(tmp_path, tmp_path / "figs")
    assert len(drawn) == 9
    for files in drawn.values():
        assert all(f.exists() and f.stat().st_size > 1000 for f in files)


def test_reruns_reuse_finished_stages(pipeline):
    from tinyrlhf.stages import run_data, run_ppo, run_rm, run_sft

    profile, paths, _, _ = pipeline
    before = paths.result("ppo").read_bytes()
    for run in (run_data, run_sft, run_rm, run_ppo):
        assert run(profile, paths, progress=False)["reused"], run.__name__
    assert paths.result("ppo").read_bytes() == before


def test_reward_wrapper_stays_on_cpu_and_returns_scores_to_the_callers_device(pipeline):
    from trl.experimental.utils import get_reward

    from tinyrlhf.reward import CPURewardModel, load_reward_model

    _, paths, _, _ = pipeline
    rm, info = load_reward_model(paths.rm("int8"))
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
    records = [results["sft"]["memory"]] + [r["memory"] for r in results["rm"]["arms"].values()]
    records += [s["memory"] for a in results["ppo"]["arms"].values() for s in a["seeds"]]
    for rec in records:
        assert rec["measured"] == "process peak RSS" and rec["estimate_bytes"] > 0
        assert MEMORY_BAND[0] <= rec["ratio"] <= MEMORY_BAND[1], rec
