"""CPU reward scoring made faster without changing the scores: length-sorted padding-free groups, the reward
model's own threads, and int8 through the dequantized weights bitsandbytes trains with on the CPU."""

from __future__ import annotations

import pytest
import torch

from tinyrlhf import config
from tinyrlhf.jobs import reward_threads
from tinyrlhf.reward import (
    CPURewardModel,
    load_reward_model,
    padding_free_groups,
    pin_int8_matmul,
)


def _rollout_like(pad: int, rows: int = 12, context: int = 24, reply: int = 16, seed: int = 0):
    """Left-padded queries and right-padded replies of random lengths, as TRL hands them to the reward model."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (rows, context + reply), generator=g)
    for i in range(rows):
        ids[i, : context - int(torch.randint(3, context + 1, (1,), generator=g))] = pad
        ids[i, context + int(torch.randint(1, reply + 1, (1,), generator=g)):] = pad
    return ids


def test_groups_cover_every_row_once_and_every_real_token():
    mask = _rollout_like(pad=0) != 0
    for budget in (0, 1, 64, 200, 10_000):
        groups = padding_free_groups(mask, budget)
        assert sorted(r for rows, _ in groups for r in rows) == list(range(mask.shape[0]))
        for rows, spans in groups:
            for row, (lo, hi) in zip(rows, spans):  # a row's span holds all its real tokens, and starts with one
                assert mask[row, :lo].sum() == 0 and mask[row, hi:].sum() == 0 and mask[row, lo]
            longest = max(hi - lo for lo, hi in spans)
            assert budget == 0 or len(rows) == 1 or len(rows) * longest <= budget
    assert len(padding_free_groups(mask, 0)) == 1
    work = sum(len(rows) * max(hi - lo for lo, hi in spans) for rows, spans in padding_free_groups(mask, 200))
    assert work < 0.8 * mask.numel() and work < 1.3 * mask.sum()  # near the real tokens, not the padded batch


def test_grouped_scores_equal_the_whole_padded_batch_in_float32(tiny_world):
    """Exactness is claimed in float32 only: there, a matmul's result does not depend on the batch's shape at the
    tolerance below on any CPU (in bf16 it does on CPUs with native bf16: see the next test)."""
    from trl.experimental.utils import get_reward

    _, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16", 0), compute_dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    pad = info["tokenizer"].pad_token_id
    ids = _rollout_like(pad)
    whole = get_reward(CPURewardModel(model, tokens_per_batch=0), ids, pad, 24)[1]
    grouped = CPURewardModel(model, tokens_per_batch=120)
    assert len(padding_free_groups(ids != pad, 120)) > 2
    assert get_reward(grouped, ids, pad, 24)[1] == pytest.approx(whole, abs=1e-5)
    assert grouped.tokens == int((ids != pad).sum())


def bf16_score_tolerance(wrapper, ids, attention_mask) -> torch.Tensor:
    """Per row, one bf16 rounding (relative 2**-8) of every term of the score head's dot product w . h at the row's
    last real token: how far two bf16 computations of the same score can differ when they round the final hidden
    state differently (e.g. a matmul blocked otherwise for another batch shape, as native bf16 kernels do)."""
    hidden = wrapper.backbone(ids, attention_mask=attention_mask).hidden_states[-1].float()
    last = attention_mask.long().cumsum(1).argmax(1)  # the last real token of each row
    h = hidden[torch.arange(ids.shape[0]), last]
    return 2.0**-8 * (h.abs() @ wrapper.head.weight.float().abs().T).squeeze(-1)


def test_grouped_scores_match_the_whole_padded_batch_in_bf16_within_its_resolution(tiny_world):
    from trl.experimental.utils import get_reward

    _, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16", 0), compute_dtype=torch.bfloat16)
    assert next(model.get_base_model().model.parameters()).dtype == torch.bfloat16
    pad = info["tokenizer"].pad_token_id
    ids = _rollout_like(pad)
    whole_model = CPURewardModel(model, tokens_per_batch=0)
    whole = get_reward(whole_model, ids, pad, 24)[1].squeeze(-1)
    grouped = get_reward(CPURewardModel(model, tokens_per_batch=120), ids, pad, 24)[1].squeeze(-1)
    tolerance = bf16_score_tolerance(whole_model, ids, ids != pad)
    assert ((grouped - whole).abs() <= tolerance).all(), (grouped - whole, tolerance)
    # the tolerance still catches a real packing error: an off-by-one span that drops each row's last token
    cut = ids.clone()
    cut[torch.arange(ids.shape[0]), (ids != pad).long().cumsum(1).argmax(1)] = pad
    off_by_one = get_reward(whole_model, cut, pad, 24)[1].squeeze(-1)
    assert ((off_by_one - whole).abs() > tolerance).sum() >= ids.shape[0] // 2


def test_scoring_runs_with_the_reward_models_threads_and_gives_them_back(tiny_world):
    _, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16", 0))
    wrapper = CPURewardModel(model, threads=1)
    seen = []
    handle = wrapper.lm_backbone.register_forward_pre_hook(lambda *a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        wrapper(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(before)


def test_reward_threads_leave_the_gpu_process_a_core():
    assert reward_threads(0, "cpu", "cuda", 8) == 7  # policy on the GPU: all physical cores but one
    assert reward_threads(0, "cpu", "cpu", 8) == 0  # policy on the CPU: the job's threads; scoring and training alternate
    assert reward_threads(3, "cpu", "cuda", 8) == 3
    assert reward_threads(0, "cpu", "cuda", 1) == 1
    assert reward_threads(0, "cuda", "cuda", 8) == 0  # on the card: torch's CPU threads do not matter


def test_environment_report_says_how_the_reward_model_scores():
    from tinyrlhf import env

    report = env.environment_report()
    cpu = env.reward_scoring(report, config.get_profile("cpu"))
    assert cpu["policy_device"] == "cpu" and cpu["int8_matmul"] == "dequantized" and cpu["int4_kernel"]
    assert set(cpu["kernels"]) == {"bf16", "int8", "int4"} and cpu["cpu_kind"] == report["cpu"]["kind"]
    assert cpu["kernels"]["int8"]["kernel"] == "dense"  # the cpu profile's tiny copy fits any RAM
    assert cpu["compute_dtype"] == "float32"  # rm.cpu_dtype: the cpu profile computes in float32 on every CPU
    auto = env.reward_scoring(report, config.get_profile("cpu", overrides={"rm.cpu_dtype": "auto"}))
    assert auto["compute_dtype"] == ("bfloat16" if report["cpu"]["bf16_usable"] else "float32")
    tight = report | {"memory": report["memory"] | {"ram_available_bytes": 2**20}}
    assert env.reward_scoring(tight, config.get_profile("cpu"))["kernels"]["int4"]["kernel"] == "bitsandbytes"
    gpu_report = report | {"cuda": {"available": True, "devices": [{"name": "card"}]},
                           "cpu": report["cpu"] | {"physical_cores": 8}}
    gpu = env.reward_scoring(gpu_report, config.get_profile("rtx4060"))
    assert gpu["threads"] == 7 and "keeps a core" in gpu["threads_reason"]


@pytest.mark.parametrize("override, message", [({"rm.int8_cpu_matmul": "fast"}, "rm.int8_cpu_matmul must be"),
                                               ({"rm.cpu_dtype": "bf16"}, "rm.cpu_dtype must be"),
                                               ({"rm.cpu_kernel": "fast"}, "rm.cpu_kernel must be"),
                                               ({"ppo.rm_threads": -1}, "ppo.rm_threads must be"),
                                               ({"ppo.overlap_scoring": "yes"}, "ppo.overlap_scoring must be"),
                                               ({"eval.score_device": "gpu"}, "eval.score_device must be"),
                                               ({"eval.score_device": "cuda"}, "needs a GPU profile")])
def test_bad_scoring_settings_are_refused(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.get_profile("cpu", overrides=override)


def test_idle_scoring_goes_to_the_card_only_where_there_is_one(monkeypatch):
    """eval.score_device: "auto" scores on the card when the profile runs on one, on the CPU otherwise; "cuda"
    without a visible card is refused in one sentence, not a CUDA traceback."""
    assert config.score_device(config.get_profile("cpu")) == "cpu"
    gpu = config.get_profile("rtx4060")
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    assert config.score_device(gpu) == "cuda"
    assert config.score_device(config.get_profile("rtx4060", overrides={"eval.score_device": "cpu"})) == "cpu"
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert config.score_device(gpu) == "cpu"
    with pytest.raises(config.ConfigError, match="no CUDA device is visible"):
        config.score_device(config.get_profile("rtx4060", overrides={"eval.score_device": "cuda"}))


def test_pool_scoring_asks_for_the_scoring_device(tiny_world, monkeypatch, tmp_path):
    """The pool's reward model is loaded for, and scores on, the device eval.score_device resolves to."""
    from tinyrlhf import reward, stages

    profile, paths = tiny_world
    asked = []

    def load(path, **kw):
        asked.append(kw["device"])
        return reward.load_for_scoring(path, **kw | {"device": "cpu"})

    monkeypatch.setattr(stages, "load_for_scoring", load)
    monkeypatch.setattr(stages, "score_device", lambda p: "cuda")
    job = {"skip": None, "profile": profile, "paths": paths, "model_arm": "bf16", "seed": profile.rm.seeds[0],
           "serve_precision": None, "pool": None, "eos": 0, "kept": tmp_path / "none.json", "key": "k"}
    record = stages._score_pool_job(job, report=None)
    assert asked == ["cuda"]  # then scoring fails (no card, and no pool given here): recorded, not raised
    assert record["status"] == "failed" and record["reason"]


def test_a_reward_model_for_the_idle_card_is_its_dense_copy_in_the_cards_dtype(tiny_world, monkeypatch):
    """Scoring on the idle card uses the arm's arithmetic (the dense copy, as PPO's CPU scoring), not bitsandbytes'
    CUDA kernels, in the card's compute dtype whatever the host CPU computes in; "meta" stands in for the card
    here: every weight leaves the CPU."""
    import torch

    from tinyrlhf.reward import load_for_scoring

    _, paths = tiny_world
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # the card's (an RTX 4060's) answer
    model, info = load_for_scoring(paths.rm("int4", 0), device="meta", cpu_kernel="bitsandbytes", cpu_dtype="fp32")
    assert info["kernel"]["kernel"] == "dense" and info["score_device"] == "meta"  # whatever rm.cpu_kernel says
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())
    def backbone(m):  # the dense copy's layers and the embedding (LoRA and the head train and score in float32)
        return {p.dtype for n, p in m.named_parameters() if "base_layer" in n or "embed" in n}

    assert backbone(model) == {torch.bfloat16} and "bfloat16 on meta, dense copy" in info["arithmetic"]
    cpu, cpu_info = load_for_scoring(paths.rm("int4", 0), device="cpu", cpu_kernel="dense", cpu_dtype="fp32")
    assert backbone(cpu) == {torch.float32}  # the host's
    assert cpu_info["kernel"]["kernel"] == "dense" and torch.device("cpu") == next(cpu.parameters()).device


def test_int8_scoring_uses_bitsandbytes_cpu_training_forward_and_stays_close_to_llm_int8(pipeline):
    import bitsandbytes as bnb

    profile, paths, results, _ = pipeline
    from tinyrlhf import kernels

    model, info = load_reward_model(paths.rm("int8", 0), cpu_kernel="bitsandbytes")
    assert info["int8_matmul"] == "dequantized"
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    model.eval()
    CPURewardModel(model).train()  # what PPO does to the wrapper: the pin holds
    assert layers and all(kernels.pinned(layer) for layer in layers) and not model.training
    tok = info["tokenizer"]
    ids = torch.tensor([tok("\n\nHuman: How do I make tea?\n\nAssistant: Boil water.")["input_ids"]])
    with torch.no_grad():
        pinned = model(input_ids=ids).logits
        for layer in layers:  # unpinned: bitsandbytes' own train-mode forward, MatMul8bitFp on the CPU
            del layer.forward
        model.train()  # (no dropout in these models)
        trained = model(input_ids=ids).logits
        model.eval()
    assert torch.equal(pinned, trained)
    pin_int8_matmul(model, "llm.int8")
    with torch.no_grad():
        llm_int8 = model(input_ids=ids).logits
    assert not torch.equal(pinned, llm_int8)  # a different function indeed
    # The stated tolerance, recorded by 03 on the held-out pairs: LLM.int8 orders >= 98% of pairs as the kernel PPO
    # uses, and moves no score by more than 10% of the mean |margin| (measured: 130/130 pairs, 0.12 against 5.0).
    check = results["rm"]["models"]["int8/seed0"]["cpu_kernel_check"]
    assert check["used"] == results["rm"]["models"]["int8/seed0"]["cpu_kernel"]["kernel"]
    other = check["others"]["bitsandbytes llm.int8"]
    assert other["same_order"] >= 0.98 and other["max_abs_score_difference"] <= 0.1 * check["mean_abs_margin"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_dense_copy_is_the_forward_bitsandbytes_trains_with(pipeline, precision):
    """The dense kernel multiplies by the weights bitsandbytes' CPU training forward builds on every call, so in
    float32 its scores are those of that forward to float rounding; the bitsandbytes layers are gone."""
    import bitsandbytes as bnb

    _, paths, _, _ = pipeline
    dense, info = load_reward_model(paths.rm(precision, 0), cpu_kernel="dense", compute_dtype=torch.float32)
    assert info["kernel"]["kernel"] == "dense" and info["kernel"]["dtype"] == "float32"
    assert not [m for m in dense.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))]
    trained, _ = load_reward_model(paths.rm(precision, 0), cpu_kernel="bitsandbytes", compute_dtype=torch.float32)
    trained.train()  # bitsandbytes' training forward (no dropout in these models)
    tok = info["tokenizer"]
    ids = _rollout_like(tok.pad_token_id)
    mask = (ids != tok.pad_token_id).long()
    with torch.no_grad():
        expected = trained(input_ids=ids, attention_mask=mask).logits
        scored = dense(input_ids=ids, attention_mask=mask).logits
    assert scored == pytest.approx(expected, abs=1e-5)


def test_kernel_choice_follows_memory_and_the_cpu():
    from tinyrlhf.kernels import KernelError, choose

    gib = 2**30
    args = dict(compute_dtype=torch.bfloat16, dense_bytes=gib, native_bf16=True, int8_matmul="dequantized")
    assert choose("int8", setting="auto", available_bytes=8 * gib, **args)["kernel"] == "dense"
    assert choose("int4", setting="auto", available_bytes=8 * gib, **args)["dtype"] == "bfloat16"
    tight = choose("int4", setting="auto", available_bytes=3 * gib, **args)  # a dense copy would take a third
    # pinned to the arm's arithmetic even where bitsandbytes would repack for its fused bf16 kernel
    assert tight["kernel"] == "bitsandbytes" and "dequantized to bfloat16" in tight["why"] and "more than 25%" in \
        tight["why"]
    no_bf16 = choose("int4", setting="auto", available_bytes=3 * gib, **args | {"native_bf16": False,
                                                                               "compute_dtype": torch.float32})
    assert "dequantized to float32 on every call" in no_bf16["why"]
    assert choose("int8", setting="bitsandbytes", available_bytes=64 * gib,
                  **args | {"int8_matmul": "llm.int8"})["kernel"] == "bitsandbytes llm.int8"
    assert choose("int8", setting="dense", available_bytes=None, **args)["kernel"] == "dense"
    assert choose("int8", setting="auto", available_bytes=None, **args)["kernel"] == "bitsandbytes dequantized"
    assert choose("bf16", setting="bitsandbytes", available_bytes=None, **args)["kernel"] == "dense"
    with pytest.raises(KernelError, match="rm.cpu_kernel must be one of"):
        choose("int8", setting="fast", available_bytes=None, **args)


def test_a_reward_model_judge_scores_the_pool_on_the_idle_card_and_is_counted(tiny_world, monkeypatch):
    """The heldout judge scores best-of-n's pool where every scorer does (eval.score_device: the idle card), as its
    dense copy in the card's dtype ("meta" stands in for the card); the time budget counts its pool scoring."""
    from tinyrlhf import budget, config, evaluate

    _, paths = tiny_world
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    judge = evaluate.load_judge({"kind": "reward_model", "path": str(paths.rm("bf16", 0))}, device="meta",
                                cpu_dtype="fp32")
    assert judge.model.device.type == "meta"
    assert {p.dtype for n, p in judge.model.reward_model.named_parameters() if "embed" in n} == {torch.bfloat16}
    machine = budget.Machine("card", 100.0, 300.0, 7, 5000.0, "test")
    rows = {judged: {r["key"]: r for r in budget.predict(config.get_profile("rtx4060", overrides={
        "eval.judge": judged, "data.source": "synthetic"}), machine)}["bon"] for judged in ("heldout", "gold")}
    assert rows["heldout"]["gpu_hours"] > rows["gold"]["gpu_hours"] and "heldout judge" in rows["heldout"]["work"]
