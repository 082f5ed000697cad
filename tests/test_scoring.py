"""One scoring path: the rewards TRL's PPO computes for its rollouts and the scores evaluation gives the same token
ids agree, missing-EOS penalty included; and TRL 1.12 steps the optimizer once per mini-batch."""

from __future__ import annotations

import pytest
import torch

from tinyrlhf import evaluate, ppo
from tinyrlhf.reward import CPURewardModel, load_reward_model

pytestmark = pytest.mark.slow


def _trainer(profile, paths, **overrides):
    p = profile.ppo
    kwargs = dict(sft_path=str(paths.sft_merged), rm_path=paths.rm("int4", 0), out_dir=paths.root / "ppo_probe",
                  profile=profile, ppo_batch=8, ppo_epochs=2, max_new=p.max_new, ppo_lr=1e-3, clip=0.2,
                  kl_coef=0.05, mini_batch=4, micro_batch=2, rollout_chunk=4, missing_eos_penalty=1.5, steps=1,
                  target_modules=p.target_modules, seed=0) | overrides
    return ppo.build_ppo_trainer(paths.data_file("train"), **kwargs)


def test_ppo_rewards_and_evaluation_scores_agree_on_the_same_rollouts(tiny_world, monkeypatch):
    import trl.experimental.ppo.ppo_trainer as trl_ppo

    profile, paths = tiny_world
    trainer, reward, tok, _ = _trainer(profile, paths, max_new=6)  # short: some replies end, some are cut
    seen, real = [], trl_ppo.get_reward

    def recording(model, query_responses, pad_token_id, context_length):
        out = real(model, query_responses, pad_token_id, context_length)
        if model is reward:
            seen.append((query_responses.clone(), context_length, out[1].detach().clone()))
        return out

    monkeypatch.setattr(trl_ppo, "get_reward", recording)
    logged = []
    trainer.add_callback(type("Log", (__import__("transformers").TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(logs)})())
    trainer.train()
    assert seen and logged
    penalised = []
    for qr, ctx, trl_scores in seen:
        responses = qr[:, ctx:]
        has_eos = [bool(x) for x in (responses == tok.eos_token_id).any(1)]
        rollouts = evaluate.Rollouts(["p"] * len(qr), 1, qr[:, :ctx], responses, has_eos, [""] * len(qr),
                                     tok.pad_token_id)
        ours = evaluate.proxy_scores(reward, rollouts, eos_token_id=tok.eos_token_id, missing_eos_penalty=0.0)
        assert torch.tensor(ours) == pytest.approx(trl_scores.float(), abs=1e-4)
        penalised += evaluate.proxy_scores(reward, rollouts, eos_token_id=tok.eos_token_id, missing_eos_penalty=1.5)
        assert not all(has_eos) or len(seen) > 1  # the penalty path is exercised somewhere
    # TRL subtracts the penalty after scoring; its logged mean is what evaluation computes.
    assert sum(penalised) / len(penalised) == pytest.approx(logged[0]["objective/scores"], abs=1e-4)


def test_scores_do_not_depend_on_how_replies_are_batched(tiny_world):
    """In float32, where a matmul does not depend on the batch's shape at this tolerance on any CPU (in bf16 on a CPU
    with native bf16 it does, at bf16's resolution: test_cpu_scoring checks that case)."""
    profile, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16", 0), compute_dtype=torch.float32)
    wrapper, tok = CPURewardModel(model), info["tokenizer"]
    policy = __import__("tinyrlhf.base_model", fromlist=["x"]).load_causal_lm(paths.sft_merged)
    prompts = ["\n\nHuman: How do I make tea?\n\nAssistant:",
               "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help you today?\n\nHuman: How do I cook rice?"
               "\n\nAssistant:"]
    rollouts = evaluate.sample(policy, tok, prompts, samples=3, max_new=12, temperature=1.0, seed=0)
    together = evaluate.proxy_scores(wrapper, rollouts, eos_token_id=tok.eos_token_id, missing_eos_penalty=1.0)
    one_by_one = evaluate.proxy_scores(wrapper, rollouts, eos_token_id=tok.eos_token_id, missing_eos_penalty=1.0,
                                       chunk=1)
    assert together == pytest.approx(one_by_one, abs=1e-4)
    assert (rollouts.queries[:, 0] == tok.pad_token_id).any()  # left padding was really there


def test_a_repeated_reply_is_scored_once_and_gets_the_same_score(tiny_world, monkeypatch):
    profile, paths = tiny_world
    model, info = load_reward_model(paths.rm("bf16", 0), compute_dtype=torch.float32)
    wrapper, tok = CPURewardModel(model), info["tokenizer"]
    policy = __import__("tinyrlhf.base_model", fromlist=["x"]).load_causal_lm(paths.sft_merged)
    once = evaluate.sample(policy, tok, ["\n\nHuman: How do I make tea?\n\nAssistant:"], samples=4, max_new=12,
                           temperature=1.0, seed=0)
    alone = evaluate.proxy_scores(wrapper, once, eos_token_id=tok.eos_token_id, missing_eos_penalty=1.0, chunk=1)
    twice = evaluate.Rollouts(once.prompts, 8, torch.cat([once.queries] * 2), torch.cat([once.responses] * 2),
                              once.has_eos * 2, once.texts * 2, once.pad_token_id)
    scored, real = [], evaluate.score_rollouts
    monkeypatch.setattr(evaluate, "score_rollouts", lambda m, q, r, **kw: scored.append(len(q)) or real(m, q, r, **kw))
    both = evaluate.proxy_scores(wrapper, twice, eos_token_id=tok.eos_token_id, missing_eos_penalty=1.0)
    assert both == pytest.approx(alone * 2, abs=1e-4)
    distinct = len({(tuple(q.tolist()), tuple(r.tolist())) for q, r in zip(once.queries, once.responses)})
    assert sum(scored) == distinct <= len(once.texts)


@pytest.mark.parametrize("micro_batch", [2, 4])
def test_one_optimizer_step_per_mini_batch(tiny_world, micro_batch):
    profile, paths = tiny_world
    trainer, *_ = _trainer(profile, paths, micro_batch=micro_batch)
    steps = []
    trainer.optimizer.optimizer.register_step_post_hook(lambda *a: steps.append(1))
    trainer.train()
    # 8 rollouts, mini-batches of 4, 2 PPO epochs: 4 optimizer steps, whatever the micro-batch.
    assert len(steps) == 4
    assert trainer.args.gradient_accumulation_steps == 4 // micro_batch
