"""A stage stopped part-way (SIGKILL: a kill, a dead kernel, a power cut) keeps every reward model and every
scorer's pool scores it finished; a rerun does only the rest and ends with the numbers of a run never stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_WORLD

from tinyrlhf import stages
from tinyrlhf.config import get_paths, get_profile

pytestmark = pytest.mark.slow

# 3 seeds x 2 precisions, trained anew from the tiny world's SFT model
# the resume mechanics on the arms' models alone (the same-recipe judge is one more job, kept the same way)
SETTINGS = TINY_WORLD | {"rm.max_steps": 3, "rm.seeds": [0, 1, 2], "eval.second_judge": "none"}
MODELS = 6


def _fresh_copy(tiny_world, where):
    """The tiny world's data and SFT model without its reward models."""
    _, paths = tiny_world
    shutil.copytree(paths.root, where)
    copy = get_paths(where)
    shutil.rmtree(copy.models / "rm")
    for kind in ("rm", "bon", "ppo"):
        copy.result(kind).unlink(missing_ok=True)
    return copy


def _records(paths):
    found = (paths.models / "rm").glob(f"*/seed*/{stages.RM_RECORD}")
    return sorted(str(p.relative_to(paths.models / "rm")) for p in found)


def _kill_after(paths, finished: int, timeout: float = 600) -> list[str]:
    """Run 03's reward models in a process group of their own and SIGKILL it once `finished` models are recorded;
    returns the records there at the kill."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYRLHF_")}
    env |= {"TINYRLHF_PROFILE": "cpu", "TINYRLHF_WORKDIR": str(paths.root), "TINYRLHF_OVERRIDES": json.dumps(SETTINGS)}
    proc = subprocess.Popen([sys.executable, "-m", "tinyrlhf", "run", "rm", "-q"], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while len(_records(paths)) < finished:
            assert proc.poll() is None, f"the stage ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no reward model finished in time"
            time.sleep(0.05)
        assert proc.poll() is None  # killed part-way, not after the stage wrote its result
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return _records(paths)


def _numbers(result: dict) -> dict:
    keys = ("accuracy", "accuracy_ci95", "by_category", "mean_margin", "loss_curve", "agreement_with_bf16",
            "rank_correlation_with_bf16", "mcnemar_vs_bf16", "train_pairs", "status")
    arms = {arm: {k: v for k, v in summary.items() if k != "train_seconds_mean"}  # timings differ run to run
            for arm, summary in result["arms"].items()}
    return {mid: {k: rec.get(k) for k in keys} for mid, rec in result["models"].items()} | {"arms": arms}


def test_a_killed_reward_model_stage_keeps_what_it_finished_and_ends_as_an_uninterrupted_run(tiny_world, tmp_path,
                                                                                            monkeypatch):
    profile = get_profile("cpu", overrides=SETTINGS)
    killed = _fresh_copy(tiny_world, tmp_path / "killed")
    at_kill = _kill_after(killed, finished=2)
    assert 2 <= len(at_kill) < MODELS and not killed.result("rm").exists()

    trained = []
    real = stages.train_reward_model
    monkeypatch.setattr(stages, "train_reward_model", lambda train, **kw: trained.append(
        (kw["precision"], kw["seed"])) or real(train, **kw))
    resumed = stages.run_rm(profile, killed, progress=False)
    assert len(trained) == MODELS - len(at_kill)  # only the missing ones
    assert sorted(resumed["kept_from_earlier_attempt"]) == sorted(r.rsplit("/", 1)[0] for r in at_kill)

    monkeypatch.setattr(stages, "train_reward_model", real)
    whole = stages.run_rm(profile, _fresh_copy(tiny_world, tmp_path / "whole"), progress=False)
    assert whole["kept_from_earlier_attempt"] == []
    assert _numbers(resumed) == _numbers(whole)


def test_a_kept_reward_model_whose_files_changed_is_trained_again(tiny_world, tmp_path, monkeypatch):
    profile = get_profile("cpu", overrides=SETTINGS | {"rm.seeds": [0]})
    paths = _fresh_copy(tiny_world, tmp_path / "w")
    stages.run_rm(profile, paths, progress=False)
    paths.result("rm").unlink()  # as if the stage had been stopped after its models, before its result
    adapter = paths.rm("int4", 0) / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-8])  # a truncated file: never reused
    trained = []
    real = stages.train_reward_model
    monkeypatch.setattr(stages, "train_reward_model", lambda train, **kw: trained.append(kw["precision"])
                        or real(train, **kw))
    again = stages.run_rm(profile, paths, progress=False)
    assert trained == ["int4"] and again["kept_from_earlier_attempt"] == ["bf16/seed0"]
    trained.clear()
    stages.run_rm(profile, paths, force=True, progress=False)  # forced: nothing kept
    assert sorted(trained) == ["bf16", "int4"]


def test_pool_scores_are_kept_per_scorer_and_a_rerun_scores_only_the_missing(tiny_world, tmp_path, monkeypatch):
    profile, paths = tiny_world
    shutil.copytree(paths.root, tmp_path / "w")
    paths = get_paths(tmp_path / "w")
    first = stages.run_bon(profile, paths, force=True, progress=False)
    kept = sorted((paths.bon_pool.parent / "scores").rglob("*.json"))
    assert len(kept) == len(stages.bon_scorers(profile))

    paths.result("bon").unlink()  # stopped after the scorers, before the result
    kept[0].write_text("{not json")  # one kept file broken: that scorer scores again, the others are kept
    loads = []
    real = stages.load_for_scoring
    monkeypatch.setattr(stages, "load_for_scoring", lambda path, **kw: loads.append(str(path)) or real(path, **kw))
    again = stages.run_bon(profile, paths, progress=False)
    assert len(loads) == 1
    for key in ("arms", "n_star", "candidates"):
        assert again.get(key) == first.get(key)
