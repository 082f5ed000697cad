"""A reward model or PPO seed that fails records why; the others still run, and the stage still writes."""


import pytest
from conftest import TINY_WORLD

from tinyrlhf import schema
from tinyrlhf.config import get_profile

pytestmark = pytest.mark.slow
FAST = TINY_WORLD | {"rm.max_steps": 2}


@pytest.fixture
def workdir_copy(tiny_world_copy):
    return tiny_world_copy


def test_a_failed_reward_model_is_recorded_and_ppo_skips_its_arm(workdir_copy, monkeypatch):
    from tinyrlhf import stages

    real = stages.train_reward_model

    def oom_for_int8(train, **kwargs):
        if kwargs["precision"] == "int8":
            raise RuntimeError("CUDA out of memory (injected)")
        return real(train, **kwargs)

    monkeypatch.setattr(stages, "train_reward_model", oom_for_int8)
    profile = get_profile("cpu", overrides=FAST | {"rm.precisions": ["bf16", "int8", "int4"], "rm.seeds": [0]})
    rm = stages.run_rm(profile, workdir_copy, progress=False)
    assert rm["arms"]["int8"]["status"] == "failed" and "out of memory" in rm["arms"]["int8"]["reason"]
    assert "out of memory" in rm["models"]["int8/seed0"]["reason"]
    assert rm["arms"]["bf16"]["status"] == rm["arms"]["int4"]["status"] == "ok"
    schema.validate_file(workdir_copy.result("rm"), "rm")

    ppo = stages.run_ppo(profile, workdir_copy, progress=False)
    assert ppo["arms"]["int8"]["status"] == "failed"
    assert "reward model int8/seed0 failed in 03" in ppo["arms"]["int8"]["seeds"][0]["reason"]
    assert ppo["arms"]["int4"]["status"] == "ok"
    m = ppo["cross_matrix"]
    assert m["judges"] == ["judge", "bf16", "int8", "int4"]
    assert all(row[2] is None for row in m["mean_reward"])  # the failed int8 scores nothing: a column of gaps
    schema.validate_file(workdir_copy.result("ppo"), "ppo")


def test_a_failed_ppo_seed_is_recorded_and_the_rest_go_on(workdir_copy, monkeypatch):
    from tinyrlhf import stages

    real = stages.train_ppo

    def oom_for_int4_seed1(prefs_path, **kwargs):
        if kwargs["rm_path"].parent.name == "int4" and kwargs["seed"] == 1:  # models/rm/int4/seed1
            raise RuntimeError("CUDA out of memory (injected)")
        return real(prefs_path, **kwargs)

    monkeypatch.setattr(stages, "train_ppo", oom_for_int4_seed1)
    profile = get_profile("cpu", overrides=FAST)
    out = stages.run_ppo(profile, workdir_copy, progress=False)
    int4 = out["arms"]["int4"]
    assert int4["status"] == "partial" and "RuntimeError: CUDA out of memory" in int4["reason"]
    assert int4["reason"].endswith("(RM seed 1, PPO seed 1)") and int4["paired_seeds"] == [0]
    assert [s["status"] for s in int4["seeds"]] == ["ok", "failed"]
    assert int4["judge_mean"] == int4["seeds"][0]["judge_mean"]
    assert out["arms"]["bf16"]["status"] == "ok"
    schema.validate_file(workdir_copy.result("ppo"), "ppo")


def test_memory_of_a_run_that_ran_out_of_memory_is_back_before_the_next_run(workdir_copy, monkeypatch):
    """An out-of-memory error inside training: the failed run's models are gone before the next run builds its own
    (a traceback held while freeing, or garbage frozen by the next run's gc.freeze, would keep them: on a card,
    the next run would then fail too)."""
    import weakref

    import torch

    from tinyrlhf import ppo, stages

    failed, alive_at_later_builds = [], []
    real_build = ppo.build_ppo_trainer

    def build(prefs_path, **kwargs):
        alive_at_later_builds.extend(ref() is not None for ref in failed)
        trainer, *rest = real_build(prefs_path, **kwargs)
        if kwargs["rm_path"].parent.name == "bf16" and kwargs["seed"] == 0:
            failed.append(weakref.ref(trainer.model))

            def out_of_memory(*a, **k):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            trainer.train = out_of_memory
        return (trainer, *rest)

    monkeypatch.setattr(ppo, "build_ppo_trainer", build)
    profile = get_profile("cpu", overrides=FAST)
    out = stages.run_ppo(profile, workdir_copy, progress=False)
    seeds = out["arms"]["bf16"]["seeds"]
    assert [s["status"] for s in seeds] == ["failed", "ok"]
    assert "CUDA out of memory" in seeds[0]["reason"]
    assert "lower ppo.rollout_chunk or ppo.micro_batch" in seeds[0]["reason"]
    assert alive_at_later_builds and not any(alive_at_later_builds)


def test_an_out_of_memory_reason_names_the_cards_free_memory_and_the_setting_to_lower(monkeypatch):
    """Issue 25, item 6: one sentence with the free memory measured at the failure (not the card's size) and the
    setting of that kind of run to lower."""
    import torch

    from tinyrlhf.stages import failure_reason

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(1.5 * 2**30), 8 * 2**30))
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    reason = failure_reason(oom, "rm.batch_size")
    assert reason.startswith("CUDA out of memory (1.5 GiB free on the card at the failure): lower rm.batch_size;")
    assert "Tried to allocate 2.00 GiB" in reason
    assert failure_reason(ValueError("bad")) == "ValueError: bad"  # other failures: the error itself
