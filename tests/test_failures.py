"""A stage that fails for one precision or seed records why, and the others still run and are written."""

import shutil

import pytest

from tinyrlhf import schema
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.results import read_json

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir_copy(pipeline, tmp_path):
    _, paths, _ = pipeline
    shutil.copytree(paths.root, tmp_path / "copy")
    return get_paths(tmp_path / "copy")


def test_a_failed_reward_model_is_recorded_and_ppo_skips_it(workdir_copy, monkeypatch):
    import tinyrlhf.stages as stages

    real = stages._train_and_evaluate_rm

    def oom_for_int8(profile, paths, precision, *args, **kwargs):
        if precision == "int8":
            raise RuntimeError("CUDA out of memory (injected)")
        return real(profile, paths, precision, *args, **kwargs)

    monkeypatch.setattr(stages, "_train_and_evaluate_rm", oom_for_int8)
    profile = get_profile("cpu", overrides={"rm.max_steps": 2, "ppo.steps": 1, "ppo.seeds": [0],
                                            "ppo.eval_prompts": 8})
    rm = stages.run_rm(profile, workdir_copy, progress=False)
    assert rm["precisions"]["int8"]["status"] == "failed"
    assert "out of memory" in rm["precisions"]["int8"]["reason"]
    assert rm["precisions"]["bf16"]["status"] == rm["precisions"]["int4"]["status"] == "ok"
    schema.validate(read_json(workdir_copy.results / "rm_results.json"), "rm")

    ppo = stages.run_ppo(profile, workdir_copy, progress=False)
    assert ppo["precisions"]["int8"]["status"] == "failed"
    assert "reward model int8 failed in 03" in ppo["precisions"]["int8"]["seeds"][0]["reason"]
    assert ppo["precisions"]["int4"]["status"] == "ok"
    assert ppo["cross_matrix"]["mean_reward"][0][1] is None  # no int8 judge
    schema.validate(read_json(workdir_copy.results / "ppo_experiment_results.json"), "ppo")


def test_a_failed_ppo_seed_is_recorded_and_the_rest_go_on(workdir_copy, monkeypatch):
    import tinyrlhf.stages as stages

    real = stages.train_ppo

    def oom_for_int4_seed1(prefs_path, **kwargs):
        if kwargs["rm_path"].name == "int4" and kwargs["seed"] == 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(prefs_path, **kwargs)

    monkeypatch.setattr(stages, "train_ppo", oom_for_int4_seed1)
    profile = get_profile("cpu", overrides={"ppo.steps": 1, "ppo.eval_prompts": 8})
    # The pipeline's reward models are reused (same rm config); PPO runs anew with its own config.
    out = stages.run_ppo(profile, workdir_copy, progress=False)
    int4 = out["precisions"]["int4"]
    assert int4["status"] == "partial" and "seed 1: RuntimeError: CUDA out of memory" in int4["reason"]
    assert [s["status"] for s in int4["seeds"]] == ["ok", "failed"]
    assert int4["judged_reward_mean"] == int4["seeds"][0]["judged_reward_mean"]
    assert out["precisions"]["bf16"]["status"] == out["precisions"]["int8"]["status"] == "ok"
    schema.validate(read_json(workdir_copy.results / "ppo_experiment_results.json"), "ppo")
