"""ppo.rollout_logprobs_per_chunk, the narrow patch of TRL 1.12's rollout that keeps per-token log-probs instead of
the whole batch's full-vocabulary scores (and takes them in one dtype with the training pass's), gives TRL's own
numbers in float32: the same rollouts and log-probs as TRL's batch_generation followed by its selective_log_softmax,
and the same PPO statistics over a whole run. The bf16 case is tests/test_card_dtypes.py."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_WORLD

from tinyrlhf.config import get_profile
from tinyrlhf.ppo import RolloutLogProbs, rollout_logprobs_per_chunk

pytestmark = pytest.mark.slow


def _rollout(policy, queries, chunk, pad, config):
    """What TRL 1.12's PPOTrainer does with a rollout batch: batch_generation, then per chunk the log-probs."""
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    torch.manual_seed(0)
    query_responses, logitss = trl_ppo.batch_generation(policy, queries, chunk, pad, config)
    context = queries.shape[1]
    logprobs = [trl_ppo.selective_log_softmax(logitss[i: i + chunk], query_responses[i: i + chunk, context:])
                for i in range(0, queries.shape[0], chunk)]
    return query_responses, torch.cat(logprobs), logitss


def test_the_patched_rollout_gives_trls_rollouts_and_log_probs(tiny_world):
    from transformers import GenerationConfig

    from tinyrlhf.base_model import load_causal_lm, load_tokenizer

    _, paths = tiny_world
    tok = load_tokenizer(paths.sft_merged)
    policy = load_causal_lm(paths.sft_merged, tokenizer=tok).eval()
    prompts = ["\n\nHuman: How do I bake bread?\n\nAssistant:", "\n\nHuman: Help me fix a bike.\n\nAssistant:"] * 4
    tok.padding_side = "left"  # as TRL's PPO dataloader pads queries
    queries = tok(prompts[:7], padding=True, return_tensors="pt")["input_ids"]  # 7 rows: the last chunk is short
    config = GenerationConfig(max_new_tokens=12, temperature=0.7, top_k=0, top_p=1.0, do_sample=True,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    want_ids, want_logprobs, logits = _rollout(policy, queries, 3, tok.pad_token_id, config)
    with rollout_logprobs_per_chunk():
        got_ids, got_logprobs, stand_in = _rollout(policy, queries, 3, tok.pad_token_id, config)
    assert isinstance(stand_in, RolloutLogProbs) and stand_in.logprobs.shape == want_logprobs.shape
    assert logits.shape[-1] == len(tok)  # TRL kept the full vocabulary for every rollout
    assert torch.equal(got_ids, want_ids)
    # The patch takes them from a full forward (as the training pass does), TRL from the incremental decode's
    # scores: in float32 the same to float rounding wherever TRL uses them (up to the reply's end: later positions
    # are masked out of every PPO statistic).
    real = want_ids[:, queries.shape[1]:] != tok.pad_token_id
    torch.testing.assert_close(got_logprobs[real], want_logprobs[real], rtol=0, atol=1e-5)


def test_a_ppo_run_gives_the_same_statistics_with_and_without_the_patch(tiny_world, tmp_path, monkeypatch):
    import contextlib

    from tinyrlhf import ppo
    from tinyrlhf.config import resolve_device

    _, paths = tiny_world
    profile = get_profile("cpu", overrides=TINY_WORLD | {"ppo.rollout_chunk": 4})  # two chunks per rollout batch
    p = profile.ppo

    def run(out):
        return ppo.train_ppo(paths.data_file("train"), out_dir=out, sft_path=paths.sft_merged, rm_path=paths.rm("bf16", 0),
                             profile=profile, ppo_batch=p.ppo_batch, mini_batch=p.mini_batch,
                             micro_batch=p.micro_batch, rollout_chunk=p.rollout_chunk, ppo_epochs=p.ppo_epochs,
                             ppo_lr=p.ppo_lr, max_new=p.max_new, clip=p.clip, kl_coef=p.kl_coef, steps=p.steps,
                             lr_scheduler=p.lr_scheduler, missing_eos_penalty=p.missing_eos_penalty,
                             temperature=p.temperature, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
                             target_modules=p.target_modules, seed=0)

    patched = run(tmp_path / "patched")
    monkeypatch.setattr(ppo, "rollout_logprobs_per_chunk", contextlib.nullcontext)
    plain = run(tmp_path / "plain")
    assert resolve_device(profile) == "cpu"
    keys = ["reward", "kl", "entropy", "policy_loss", "value_loss", "approxkl"]
    for a, b in zip(patched["history"], plain["history"], strict=True):
        for k in keys:
            # relative: the statistics are float32 sums (entropy ~276), so one ulp is 3e-5 in absolute terms
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-5), (a["step"], k)


def test_overlapped_reward_scoring_gives_the_serial_runs_numbers(tiny_world, tmp_path):
    """ppo.overlap_scoring: each chunk scored on its own thread as soon as it is generated (what keeps the card
    busy while the CPU scores) gives the same rewards and PPO statistics, exactly, as scoring after the rollout."""
    from tinyrlhf import ppo

    _, paths = tiny_world
    runs = {}
    for mode in ("on", "off"):
        profile = get_profile("cpu", overrides=TINY_WORLD | {"ppo.rollout_chunk": 4, "ppo.overlap_scoring": mode})
        p = profile.ppo
        runs[mode] = ppo.train_ppo(
            paths.data_file("train"), out_dir=tmp_path / mode, sft_path=paths.sft_merged,
            rm_path=paths.rm("int4", 0), profile=profile, ppo_batch=p.ppo_batch, mini_batch=p.mini_batch,
            micro_batch=p.micro_batch, rollout_chunk=p.rollout_chunk, ppo_epochs=p.ppo_epochs, ppo_lr=p.ppo_lr,
            max_new=p.max_new, clip=p.clip, kl_coef=p.kl_coef, steps=p.steps, lr_scheduler=p.lr_scheduler,
            missing_eos_penalty=p.missing_eos_penalty, temperature=p.temperature, lora_r=p.lora_r,
            lora_alpha=p.lora_alpha, target_modules=p.target_modules, seed=0)
    on, off = runs["on"], runs["off"]
    chunks = on["history"][-1]["step"] * 8 // 4  # ppo_batch 8 in chunks of 4, every update
    assert on["reward_overlap"] == {"overlapped": True, "chunks": chunks, "misses": 0}
    assert off["reward_overlap"] == {"overlapped": False}
    assert on["reward_scored_tokens"] == off["reward_scored_tokens"]
    for a, b in zip(on["history"], off["history"], strict=True):
        assert a.pop("seconds") > 0 and b.pop("seconds") > 0  # wall time is the one thing allowed to differ
        assert a == b


def test_overlapped_scoring_hands_over_only_the_chunk_it_scored():
    """A get_reward call for other rows than the next scored chunk (other tokens, or real tokens past the chunk's
    width) is scored as TRL would: a miss, counted; padding past the chunk's width is TRL's wider batch: a hit."""
    from tinyrlhf.ppo import OverlappedScoring

    pad = 0

    class Reward:
        calls = 0

    reward = Reward()
    scoring = OverlappedScoring(reward, pad_token_id=pad, stop_token_id=None)
    scoring.executor.submit = lambda fn, model, rows, *a: type("Done", (), {
        "result": lambda self: (None, rows[:, -1].float(), rows[:, 0]), "cancel": lambda self: None})()
    chunk = torch.tensor([[0, 5, 6, 7], [4, 5, 6, 0]])
    scoring.submit(torch.tensor([[0, 1, 2, 3]]), context_length=2)  # a chunk TRL will not ask for
    scoring.submit(chunk, context_length=2)
    assert scoring.take(object(), chunk) is None and scoring.misses == 0  # not the reward model: not its business
    assert scoring.take(reward, torch.tensor([[0, 5, 6, 8], [4, 5, 6, 0]])) is None  # another reply
    assert scoring.take(reward, torch.cat((chunk, torch.tensor([[9], [0]])), 1)) is None  # a real token past it
    assert scoring.misses == 2
    wider = torch.cat((chunk, torch.zeros(2, 3, dtype=chunk.dtype)), 1)
    _, scores, _ = scoring.take(reward, wider)
    assert scores.tolist() == [7.0, 0.0] and scoring.hits == 1 and not scoring.pending
    assert scoring.misses == 3  # the two above and the chunk passed over
    scoring.close()
