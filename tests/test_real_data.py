"""The real HH-RLHF sample through every stage, with few steps: plumbing (counts, formats, files), not learning;
tiny models score about chance on real data."""

import pytest
from conftest import HH_DIR, requires_hh

from tinyrlhf import schema
from tinyrlhf.config import PRECISIONS, get_paths, get_profile
from tinyrlhf.results import read_json

pytestmark = [pytest.mark.slow, requires_hh]

SMALL = {"base.pretrain_steps": 10, "sft.max_steps": 3, "rm.max_steps": 3, "ppo.steps": 1, "ppo.seeds": [0],
         "ppo.ppo_batch": 8, "ppo.mini_batch": 8, "ppo.ppo_epochs": 1, "ppo.eval_prompts": 8, "ppo.max_new": 8}


def test_real_sample_runs_every_stage(tmp_path, monkeypatch):
    from tinyrlhf.stages import run_data, run_ppo, run_rm, run_sft

    monkeypatch.setenv("TINYRLHF_HH_DIR", str(HH_DIR))
    profile = get_profile("cpu", overrides=SMALL)
    paths = get_paths(tmp_path).make()
    stats = run_data(profile, paths, progress=False)
    assert stats["source"] == "local" and stats["rows_read"] == 2312

    sft = run_sft(profile, paths, progress=False)
    assert sft["before"]["pairs"] == sft["after"]["pairs"] == min(stats["test"], profile.sft.eval_pairs)
    assert len(sft["generations"]) == profile.sft.sample_prompts

    rm = run_rm(profile, paths, progress=False)
    for p in PRECISIONS:
        rec = rm["precisions"][p]
        assert rec["status"] == "ok", rec.get("reason")
        assert rec["n_test_pairs"] == min(stats["test"], profile.rm.eval_pairs)
        assert 0.0 <= rec["accuracy"] <= 1.0 and rec["accuracy_ci95"][0] <= rec["accuracy"] <= rec["accuracy_ci95"][1]
        assert (paths.rm(p) / "adapter_model.safetensors").exists()

    ppo = run_ppo(profile, paths, progress=False)
    for p in PRECISIONS:
        assert ppo["precisions"][p]["status"] == "ok", ppo["precisions"][p]["reason"]
        assert (paths.policy(p, 0) / "adapter_model.safetensors").exists()
    assert ppo["eval_prompts"] == len(ppo["sft"]["samples"]) + max(0, ppo["eval_prompts"] - profile.ppo.sample_responses)
    for kind, name in (("data_stats", "data_stats.json"), ("sft", "sft_results.json"), ("rm", "rm_results.json"),
                       ("ppo", "ppo_experiment_results.json")):
        saved = read_json(paths.results / name)
        schema.validate(saved, kind)
        assert saved["manifest"]["data_source"]["source"] == "local" if kind != "data_stats" else True
