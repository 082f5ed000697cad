"""The real HH-RLHF sample through every stage, with few steps: plumbing (counts, formats, files), not learning;
tiny models score about chance on real data."""

import pytest
from conftest import HH_DIR, requires_hh

from tinyrlhf import schema
from tinyrlhf.config import PRECISIONS, get_paths, get_profile
from tinyrlhf.results import read_json

pytestmark = [pytest.mark.slow, requires_hh]

# The real data has no gold rules: the default judge ("auto") is then a bf16 reward model trained on the other half
# (as on GPU profiles), so the README's real-data example (`TINYRLHF_HH_DIR=... make run`) runs to the end.
SMALL = {"base.pretrain_steps": 10, "sft.max_steps": 3, "rm.max_steps": 3, "ppo.steps": 1, "rm.seeds": [0],
         "ppo.ppo_batch": 8, "ppo.mini_batch": 8, "ppo.micro_batch": 8, "ppo.rollout_chunk": 8, "ppo.ppo_epochs": 1,
         "eval.prompts": 8, "eval.samples": 2, "eval.checkpoints": 1, "eval.bootstrap": 50, "eval.bon_pool": 4,
         "workers": 1}


def test_real_sample_runs_every_stage(tmp_path, monkeypatch):
    from tinyrlhf.stages import run_bon, run_data, run_ppo, run_rm, run_sft

    monkeypatch.setenv("TINYRLHF_HH_DIR", str(HH_DIR))
    profile = get_profile("cpu", overrides=SMALL)
    assert profile.eval.judge == "heldout"  # chosen from the data source, before any stage runs
    paths = get_paths(tmp_path).make()
    stats = run_data(profile, paths, progress=False)
    assert stats["source"] == "local" and stats["rows_read"] == 2312

    sft = run_sft(profile, paths, progress=False)
    assert sft["before"]["pairs"] == sft["after"]["pairs"] == min(stats["test"], profile.sft.eval_pairs)
    assert len(sft["generations"]) == profile.sft.sample_prompts

    rm = run_rm(profile, paths, progress=False)
    assert set(rm["arms"]) == {*PRECISIONS, "null", "noisy", "judge"} and rm["judge_arm"] == "judge"
    models = rm["models"]
    assert models["judge"]["train_pairs"] + models["bf16/seed0"]["train_pairs"] == stats["train"]
    assert models["noisy/seed0"]["flipped_pairs"] == round(0.25 * models["noisy/seed0"]["train_pairs"])
    for p in PRECISIONS:
        rec = models[f"{p}/seed0"]
        assert rec["status"] == "ok", rec.get("reason")
        assert rec["n_test_pairs"] == min(stats["test"], profile.rm.eval_pairs)
        assert 0.0 <= rec["accuracy"] <= 1.0 and rec["accuracy_ci95"][0] <= rec["accuracy"] <= rec["accuracy_ci95"][1]
        assert (paths.rm(p, 0) / "adapter_model.safetensors").exists()

    bon = run_bon(profile, paths, progress=False)
    assert bon["judge"]["kind"] == "reward_model" and bon["candidates"] == profile.eval.prompts * 4
    assert all(bon["arms"][arm]["status"] == "ok" for arm in profile.bon_arms)
    assert len(paths.bon_pool.read_text().splitlines()) == bon["candidates"]

    ppo = run_ppo(profile, paths, progress=False)
    assert ppo["judge"]["kind"] == "reward_model" and ppo["judge"]["path"] == str(paths.rm("judge"))
    for arm in profile.arms:
        assert ppo["arms"][arm]["status"] == "ok", ppo["arms"][arm]["reason"]
        assert (paths.policy(arm, 0) / "adapter_model.safetensors").exists()
    assert ppo["eval"]["prompts"] == len(ppo["sft"]["judge_per_prompt"]) == profile.eval.prompts
    for kind, name in (("data_stats", "data_stats.json"), ("sft", "sft_results.json"), ("rm", "rm_results.json"),
                       ("bon", "bon_results.json"), ("ppo", "ppo_experiment_results.json")):
        saved = read_json(paths.results / name)
        schema.validate(saved, kind)
        assert saved["manifest"]["data_source"]["source"] == "local" if kind != "data_stats" else True


def test_the_hub_path_runs_offline_on_a_folder_in_the_hub_repositorys_layout(tmp_path, monkeypatch):
    """The exact call a GPU user's data stage makes, datasets.load_dataset("Anthropic/hh-rlhf", data_dir=...),
    against a local folder laid out like the hub repository: datasets resolves a repository id that names an
    existing folder to that folder, and HF_DATASETS_OFFLINE makes sure nothing else is tried."""
    import gzip
    import shutil

    from tinyrlhf.stages import run_data

    repo = tmp_path / "Anthropic" / "hh-rlhf"
    for subset in ("helpful-base", "harmless-base"):
        (repo / subset).mkdir(parents=True)
        shutil.copy(HH_DIR / "harmless-base" / "test.jsonl.gz", repo / subset / "test.jsonl.gz")
        with gzip.open(HH_DIR / "harmless-base" / "test.jsonl.gz", "rt") as src, \
                gzip.open(repo / subset / "train.jsonl.gz", "wt") as dst:
            dst.writelines(line for i, line in enumerate(src) if i < 300)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINYRLHF_HH_DIR", raising=False)
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    profile = get_profile("cpu", overrides={"data.source": "hub", "data.subsets": ["helpful-base", "harmless-base"]})
    paths = get_paths(tmp_path / "work").make()
    stats = run_data(profile, paths, progress=False)
    assert stats["source"] == "hub"
    assert stats["rows_read"] == 2 * (2312 + 300)
    assert sorted(stats["sha256"]) == [f"hub:Anthropic/hh-rlhf/{s}/{split}" for s in ("harmless-base", "helpful-base")
                                       for split in ("test", "train")]
    assert stats["train"] > 0 and stats["test"] > 0
