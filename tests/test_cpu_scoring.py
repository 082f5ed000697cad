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


def test_grouped_scores_equal_the_whole_padded_batch(tiny_world):
    from trl.experimental.utils import get_reward

    _, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16"))
    pad = info["tokenizer"].pad_token_id
    ids = _rollout_like(pad)
    whole = get_reward(CPURewardModel(model, tokens_per_batch=0), ids, pad, 24)[1]
    grouped = CPURewardModel(model, tokens_per_batch=120)
    assert len(padding_free_groups(ids != pad, 120)) > 2
    assert get_reward(grouped, ids, pad, 24)[1] == pytest.approx(whole, abs=1e-5)
    assert grouped.tokens == int((ids != pad).sum())


def test_scoring_runs_with_the_reward_models_threads_and_gives_them_back(tiny_world):
    _, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16"))
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
    gpu_report = report | {"cuda": {"available": True, "devices": [{"name": "card"}]},
                           "cpu": report["cpu"] | {"physical_cores": 8}}
    gpu = env.reward_scoring(gpu_report, config.get_profile("rtx4060"))
    assert gpu["threads"] == 7 and "keeps a core" in gpu["threads_reason"]


@pytest.mark.parametrize("override, message", [({"rm.int8_cpu_matmul": "fast"}, "rm.int8_cpu_matmul must be"),
                                               ({"ppo.rm_threads": -1}, "ppo.rm_threads must be")])
def test_bad_scoring_settings_are_refused(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.get_profile("cpu", overrides=override)


def test_int8_scoring_uses_bitsandbytes_cpu_training_forward_and_stays_close_to_llm_int8(pipeline):
    import bitsandbytes as bnb

    from tinyrlhf import data
    from tinyrlhf.reward import compare_int8_matmuls, evaluate_reward_model

    profile, paths, _, _ = pipeline
    model, info = load_reward_model(paths.rm("int8"))
    assert info["int8_matmul"] == "dequantized"
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    model.eval()
    CPURewardModel(model).train()  # what PPO does to the wrapper: the pin holds
    assert layers and all(layer.training for layer in layers) and not model.training
    tok = info["tokenizer"]
    ids = torch.tensor([tok("\n\nHuman: How do I make tea?\n\nAssistant: Boil water.")["input_ids"]])
    with torch.no_grad():
        pinned = model(input_ids=ids).logits
        model.train()  # bitsandbytes' own train-mode forward: MatMul8bitFp on the CPU (no dropout in these models)
        trained = model(input_ids=ids).logits
        model.eval()
    assert torch.equal(pinned, trained)
    pin_int8_matmul(model, "llm.int8")
    with torch.no_grad():
        llm_int8 = model(input_ids=ids).logits
    assert not torch.equal(pinned, llm_int8)  # a different function indeed
    # The stated tolerance, on the held-out pairs: the same order on >= 98% of pairs, and no score moving by more
    # than 10% of the mean |margin| (measured: 130/130 pairs, 0.12 against a mean |margin| of 5.0).
    test = data.read_pairs(paths.data_file("test"))[:200]
    pin_int8_matmul(model, "dequantized")
    check = compare_int8_matmuls(model, tok, test, evaluate_reward_model(model, tok, test), "dequantized")
    assert check["same_order"] >= 0.98
    assert check["max_abs_score_difference"] <= 0.1 * check["mean_abs_margin"]
    recorded = __import__("json").loads(paths.result("rm").read_text())["arms"]["int8"]["int8_cpu_matmul"]
    assert recorded["used"] == "dequantized" and recorded["same_order"] >= 0.98
