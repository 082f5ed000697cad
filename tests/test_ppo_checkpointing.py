"""PPO honours `sft.gradient_checkpointing` (the one checkpointing setting, which the memory estimate assumes for
every stage): TRL 1.12's PPOTrainer never enables it on its own. With it on, the training passes are checkpointed,
the rollout still generates with the KV cache, and a run gives the same statistics as without it."""

from __future__ import annotations

import pytest
from conftest import TINY_WORLD

from tinyrlhf.config import get_profile

pytestmark = pytest.mark.slow


def _run(paths, profile, out):
    from tinyrlhf import ppo

    p = profile.ppo
    return ppo.train_ppo(paths.data_file("train"), out_dir=out, sft_path=paths.sft_merged, rm_path=paths.rm("bf16", 0),
                         profile=profile, ppo_batch=p.ppo_batch, mini_batch=p.mini_batch, micro_batch=p.micro_batch,
                         rollout_chunk=p.rollout_chunk, ppo_epochs=p.ppo_epochs, ppo_lr=p.ppo_lr, max_new=p.max_new,
                         clip=p.clip, kl_coef=p.kl_coef, steps=p.steps, lr_scheduler=p.lr_scheduler,
                         missing_eos_penalty=p.missing_eos_penalty, temperature=p.temperature, lora_r=p.lora_r,
                         lora_alpha=p.lora_alpha, target_modules=p.target_modules, seed=0)


def test_ppo_checkpoints_its_training_passes_and_keeps_its_numbers(tiny_world, tmp_path, monkeypatch):
    import transformers.modeling_layers as layers
    import transformers.modeling_utils as modeling_utils

    _, paths = tiny_world
    overrides = TINY_WORLD
    checkpointed, cache_dropped = [], []
    real_checkpoint = modeling_utils.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        checkpointed.append(1)
        return real_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting_checkpoint)
    monkeypatch.setattr(layers.logger, "warning_once", lambda msg, *a, **k: cache_dropped.append(msg))

    plain = _run(paths, get_profile("cpu", overrides=overrides | {"sft.gradient_checkpointing": False}),
                 tmp_path / "plain")
    assert not checkpointed
    with_ckpt = _run(paths, get_profile("cpu", overrides=overrides | {"sft.gradient_checkpointing": True}),
                     tmp_path / "ckpt")
    assert checkpointed, "no layer was checkpointed during PPO training"
    assert not [m for m in cache_dropped if "Caching is incompatible" in m], cache_dropped

    for a, b in zip(with_ckpt["history"], plain["history"], strict=True):
        for k in ("reward", "kl", "entropy", "policy_loss", "value_loss", "approxkl"):
            # relative: the statistics are float32 sums (entropy ~276), so one ulp is 3e-5 in absolute terms
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-5), (a["step"], k)
