"""Same seed and profile give the same numbers on CPU; another seed gives other numbers."""

import pytest
from conftest import TINY_WORLD

from tinyrlhf.config import get_paths, get_profile

pytestmark = pytest.mark.slow

SMALL = {"base.pretrain_steps": 15, "sft.max_steps": 4}


def _run(tmp_path, name, **kw):
    from tinyrlhf.stages import run_data, run_sft

    profile = get_profile("cpu", overrides=SMALL, **kw)
    paths = get_paths(tmp_path / name).make()
    run_data(profile, paths, progress=False)
    result = run_sft(profile, paths, progress=False)
    adapter = (paths.models / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()
    return result, adapter


def test_same_seed_same_numbers(tmp_path):
    a, adapter_a = _run(tmp_path, "a")
    b, adapter_b = _run(tmp_path, "b")
    assert a["before"] == b["before"] and a["after"] == b["after"]
    assert a["loss_curve"] == b["loss_curve"] and a["generations"] == b["generations"]
    assert adapter_a == adapter_b
    c, adapter_c = _run(tmp_path, "c", seed=1)
    assert c["after"]["loss"] != a["after"]["loss"] and adapter_c != adapter_a


def test_reward_model_does_not_depend_on_what_ran_before_in_the_process(tmp_path):
    """RewardTrainer initialises the score head and LoRA before the Trainer seeds; our stage seeds first."""
    import torch

    from tinyrlhf.base_model import load_tokenizer
    from tinyrlhf.data import read_pairs
    from tinyrlhf.reward import (
        evaluate_reward_model,
        load_reward_model,
        train_reward_model,
    )

    profile = get_profile("cpu", overrides=SMALL)
    _run(tmp_path, "base")
    paths = get_paths(tmp_path / "base")
    merged = paths.models / "sft" / "merged"
    tok = load_tokenizer(merged)
    test = read_pairs(paths.data_file("test"))[:40]
    margins = []
    for i, history in enumerate((1, 1000)):
        torch.rand(history)  # a different amount of earlier random draws
        out = tmp_path / f"rm{i}"
        train_reward_model(paths.data_file("train"), init_path=str(merged), tokenizer=tok, precision="bf16",
                           out_dir=out, batch_size=8, lr=1e-3, max_steps=3, profile=profile,
                           target_modules=profile.rm.target_modules)
        model, _ = load_reward_model(out)
        margins.append(evaluate_reward_model(model, tok, test)["scores_chosen"])
    assert margins[0] == margins[1]


def test_parallel_jobs_give_the_numbers_of_one_job_at_a_time(tiny_world, tmp_path):
    """The jobs' torch threads are set by the profile, not by how many jobs run at once: two workers reproduce one."""
    import shutil

    from tinyrlhf.stages import run_rm

    _, paths = tiny_world
    accuracy = {}
    for workers in (1, 2):
        shutil.copytree(paths.root, tmp_path / str(workers))
        profile = get_profile("cpu", overrides=TINY_WORLD | {"rm.max_steps": 3, "workers": workers})
        rm = run_rm(profile, get_paths(tmp_path / str(workers)), force=True, progress=False)
        accuracy[workers] = {m: (r["mean_margin"], r["loss_curve"]) for m, r in rm["models"].items()}
    assert accuracy[1] == accuracy[2]
