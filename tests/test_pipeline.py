"""End to end on the cpu profile: every stage learns on the synthetic data (asserted with bounds we measured), and
the artifacts, result files and figures are what later stages and paper authors rely on."""


import pytest
import torch

from tinyrlhf import plots, schema
from tinyrlhf.config import PRECISIONS
from tinyrlhf.data import read_pairs
from tinyrlhf.results import read_json

pytestmark = pytest.mark.slow


def test_sft_lowers_heldout_loss(pipeline):
    _, paths, out = pipeline
    sft = out["sft"]
    # Measured on the cpu profile: 1.28 -> 1.19 nats/token on the held-out chosen replies.
    assert sft["after"]["loss"] < sft["before"]["loss"] - 0.04
    assert sft["loss_curve"][-1]["loss"] < sft["loss_curve"][0]["loss"]
    assert 0 < sft["trainable_parameters"] < 0.2 * sft["total_parameters"]
    assert sft["base_pretraining"]["final_loss"] < sft["base_pretraining"]["first_loss"]
    assert sft["peak_memory_bytes"] > 0 and sft["train_seconds"] > 0
    schema.validate(read_json(paths.results / "sft_results.json"), "sft")
    schema.validate(read_json(paths.results / "data_stats.json"), "data_stats")


def test_merged_sft_model_reloads_and_generates(pipeline):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, paths, _ = pipeline
    merged = paths.models / "sft" / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok("\n\nHuman: How do I make tea?\n\nAssistant:", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert (paths.models / "sft" / "adapter" / "adapter_config.json").exists()


def test_reward_models_learn_and_quantization_is_real(pipeline):
    _, paths, out = pipeline
    rm = out["rm"]["precisions"]
    assert all(rm[p]["status"] == "ok" for p in PRECISIONS), {p: rm[p].get("reason") for p in PRECISIONS}
    # Measured: bf16 0.82 accuracy on 136 held-out pairs (95% CI 0.75-0.88).
    assert rm["bf16"]["accuracy"] >= 0.72 and rm["bf16"]["accuracy_ci95"][0] > 0.6
    for p in ("int8", "int4"):
        assert rm[p]["accuracy"] > 0.65
        assert rm[p]["agreement_with_bf16"] >= 0.75 and rm[p]["rank_correlation_with_bf16"] >= 0.6
    assert rm["int4"]["footprint_bytes"] < rm["int8"]["footprint_bytes"] < rm["bf16"]["footprint_bytes"]
    assert all(rm[p]["released"] for p in PRECISIONS)
    for p in PRECISIONS:  # logged losses are noisy per step: compare the first and last thirds
        curve = rm[p]["loss_curve"]
        third = max(1, len(curve) // 3)
        assert sum(curve[-third:]) / third < sum(curve[:third]) / third, (p, curve)
    schema.validate(read_json(paths.results / "rm_results.json"), "rm")


@pytest.mark.parametrize("precision, layer", [("int8", "Linear8bitLt"), ("int4", "Linear4bit"), ("bf16", None)])
def test_saved_reward_models_reload_at_their_precision_with_a_full_precision_head(pipeline, precision, layer):
    from tinyrlhf.reward import evaluate_reward_model, load_reward_model

    profile, paths, out = pipeline
    model, info = load_reward_model(paths.rm(precision))
    kinds = {type(m).__name__ for m in model.modules()}
    if layer:
        assert layer in kinds
    else:
        assert not kinds & {"Linear8bitLt", "Linear4bit"}
    head = model.get_base_model().score.modules_to_save["default"]
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
    assert not model.training
    # Round trip: reloading gives exactly the accuracy recorded when the stage evaluated its saved model.
    pairs = read_pairs(paths.data_file("test"))[: profile.rm.eval_pairs]
    again = evaluate_reward_model(model, info["tokenizer"], pairs)
    assert again["accuracy"] == out["rm"]["precisions"][precision]["accuracy"]
    assert again["mean_margin"] == pytest.approx(out["rm"]["precisions"][precision]["mean_margin"], abs=1e-6)


def test_ppo_raises_the_judged_reward_over_sft(pipeline):
    profile, paths, out = pipeline
    ppo = out["ppo"]
    bf16 = ppo["precisions"]["bf16"]
    assert bf16["status"] == "ok" and len(bf16["seeds"]) == len(profile.ppo.seeds) >= 2
    # Measured: SFT -1.71 -> bf16 PPO about -0.3 under the bf16 judge, win rate about 0.7.
    assert bf16["gain_vs_sft"] > 0.4
    assert bf16["win_rate_vs_sft"] > 0.55
    assert bf16["kl_mean"] > 0
    for seed in bf16["seeds"]:
        assert seed["judged_reward_mean"] > ppo["sft"]["judged_reward_mean"]
        assert len(seed["history"]) == profile.ppo.steps and seed["released"]
        assert seed["reward_device"] == "cpu"
    assert bf16["tax_vs_bf16"] == 0.0
    for p in ("int8", "int4"):
        rec = ppo["precisions"][p]
        assert rec["status"] == "ok"
        assert rec["tax_vs_bf16"] == pytest.approx((bf16["gain_vs_sft"] - rec["gain_vs_sft"]) / abs(bf16["gain_vs_sft"]))


def test_results_json_validates_and_figures_redraw_from_it(pipeline, tmp_path):
    _, paths, out = pipeline
    saved = read_json(paths.results / "ppo_experiment_results.json")
    schema.validate(saved, "ppo")
    matrix = saved["cross_matrix"]
    assert matrix["policies"] == ["sft", *PRECISIONS] and len(matrix["mean_reward"]) == 4
    assert saved["manifest"]["config"]["ppo"]["seeds"] == list(out["ppo"]["manifest"]["config"]["ppo"]["seeds"])
    # A paper author's copy: only the JSON files, in another folder.
    for name in ("rm_results.json", "ppo_experiment_results.json"):
        (tmp_path / name).write_text((paths.results / name).read_text())
    drawn = plots.draw_all(tmp_path, tmp_path / "figs")
    assert len(drawn) == 8
    for files in drawn.values():
        assert all(f.exists() and f.stat().st_size > 1000 for f in files)


def test_reruns_reuse_finished_stages(pipeline):
    from tinyrlhf.stages import run_ppo, run_rm, run_sft

    profile, paths, out = pipeline
    before = (paths.results / "ppo_experiment_results.json").read_bytes()
    assert run_sft(profile, paths, progress=False)["reused"]
    assert run_rm(profile, paths, progress=False)["reused"]
    assert run_ppo(profile, paths, progress=False)["reused"]
    assert (paths.results / "ppo_experiment_results.json").read_bytes() == before


def test_one_ppo_step_trains_only_lora_and_the_value_head(pipeline):
    from tinyrlhf.ppo import build_ppo_trainer

    profile, paths, _ = pipeline
    p = profile.ppo
    trainer, reward, tok, _ = build_ppo_trainer(
        paths.data_file("train"), sft_path=str(paths.sft_merged), rm_path=paths.rm("int4"),
        value_rm_path=paths.rm("bf16"), out_dir=paths.root / "one_step", profile=profile, ppo_batch=p.ppo_batch,
        ppo_epochs=1, max_new=p.max_new, ppo_lr=p.ppo_lr, clip=p.clip, kl_coef=p.kl_coef, mini_batch=p.mini_batch,
        steps=1, target_modules=p.target_modules, seed=0, progress=False)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # bitsandbytes may repack 4-bit weights on the first CPU forward, so the RM is compared by what it computes.
    probe = torch.tensor([tok("\n\nHuman: Hi\n\nAssistant: Hello.<|endoftext|>")["input_ids"]])
    rm_score_before = reward(probe)
    assert not any(p.requires_grad for p in reward.reward_model.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".score.modules_to_save." in n for n in trainable)
    assert any(n.startswith("value_model.") and "score" in n for n in trainable)
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and set(changed) <= set(trainable)
    assert any("lora_" in n and n.startswith("policy.") for n in changed)
    assert torch.equal(reward(probe), rm_score_before)
    assert reward.calls > 0 and all(p.device.type == "cpu" for p in reward.reward_model.parameters())


def test_reward_wrapper_stays_on_cpu_and_returns_scores_to_the_callers_device(pipeline):
    from trl.experimental.utils import get_reward

    from tinyrlhf.ppo import CPURewardModel
    from tinyrlhf.reward import load_reward_model

    profile, paths, _ = pipeline
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
    # Scores go back to the caller's device even when its type differs from the RM's.
    hidden = wrapper.backbone(q).hidden_states[-1]
    wrapper.caller_device = torch.device("meta")
    assert wrapper.score(hidden).device.type == "meta"
    assert {p.device.type for p in rm.parameters()} == {"cpu"}


# The estimator's band on the cpu profile: the measured process peak RSS lies within this factor of the estimate
# (the estimate counts 1 GiB for the Python process with torch; measured ratios were 0.7-1.2).
MEMORY_BAND = (0.5, 2.0)


def test_measured_peaks_lie_within_the_stated_band_of_the_estimates(pipeline):
    _, _, out = pipeline
    records = [out["sft"]["memory"]] + [out["rm"]["precisions"][p]["memory"] for p in PRECISIONS]
    records += [s["memory"] for p in PRECISIONS for s in out["ppo"]["precisions"][p]["seeds"]]
    assert len(records) == 1 + 3 + 3 * len(out["ppo"]["precisions"]["bf16"]["seeds"])
    for rec in records:
        assert rec["measured"] == "process peak RSS" and rec["estimate_bytes"] > 0
        assert MEMORY_BAND[0] <= rec["ratio"] <= MEMORY_BAND[1], rec
