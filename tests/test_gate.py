"""The go/no-go before PPO (tinyrlhf.gate): its two checks on constructed results, and 04 stopping before its first
run on reward models at chance, proceeding when the gate passes or is off."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest

from tinyrlhf import gate, stages
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.results import read_json

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_WORLD
from test_schema import make_bon_results, make_rm_results


def _unresolved(bon: dict) -> dict:
    bon = copy.deepcopy(bon)
    bon["arms"]["bf16"]["at_n_star"] |= {"gold_gain_vs_sft": 0.01, "gold_gain_vs_sft_ci95": [-0.02, 0.04]}
    return bon


def _at_chance(rm: dict, seed_key: str) -> dict:
    rm = copy.deepcopy(rm)
    rm["models"][seed_key] |= {"accuracy": 0.52, "accuracy_ci95": [0.47, 0.57]}
    return rm


def test_the_gate_goes_when_bf16_s_gain_is_resolved_and_its_reward_models_are_above_chance():
    rm, bon = make_rm_results(), make_bon_results()
    assert bon["arms"]["bf16"]["at_n_star"]["gold_gain_vs_sft_ci95"][0] > 0  # the builders' bf16 is resolved
    out = gate.verdict(get_profile("rtx4060"), rm, bon)
    assert out["go"] and out["sentence"].startswith("Go/no-go before PPO: GO.")
    assert "PPO would take" in out["sentence"] and "ppo.gate is on" in out["sentence"]


@pytest.mark.parametrize("broken", ["gain", "accuracy", "both", "no bon"])
def test_a_no_go_names_the_failed_check_with_its_numbers_and_what_to_raise(broken):
    rm, bon = make_rm_results(), make_bon_results()
    seed_key = next(k for k, m in rm["models"].items() if m["arm"] == "bf16")
    if broken in ("gain", "both"):
        bon = _unresolved(bon)
    if broken in ("accuracy", "both"):
        rm = _at_chance(rm, seed_key)
    if broken == "no bon":
        bon = None
    profile = get_profile("rtx4060")
    out = gate.verdict(profile, rm, bon)
    text = out["sentence"]
    assert not out["go"] and text.startswith("Go/no-go before PPO: NO-GO.")
    hours = gate.ppo_hours(profile)
    assert hours > 5 and f"PPO would take {hours:.1f} h more" in text  # most of the night
    assert f"Raise rm.max_steps (now {profile.rm.max_steps})" in text and "ppo.gate=false" in text
    if broken in ("gain", "both"):
        assert "+0.010 [−0.020, +0.040]: its interval holds 0" in text
    if broken in ("accuracy", "both"):
        assert f"1 of {len(rm['seeds'])} bf16 reward models are not above chance" in text and "0.520 [0.470, 0.570]" in text
    if broken == "no bon":
        assert "no current best-of-n result" in text
    assert out["checks"]["bon"]["ok"] is (broken == "accuracy")


@pytest.fixture
def world_at_chance(tiny_world, tmp_path, monkeypatch):
    """A copy of the tiny world whose reward models are made useless on purpose: trained on every training pair
    with its labels swapped (they learn the preference backwards, below chance on the test pairs), then best-of-n.
    The data files are untouched (their lineage holds); the training pairs are swapped as the rm stage reads them."""
    from tinyrlhf import data

    _, paths = tiny_world
    shutil.copytree(paths.root, tmp_path / "world")
    paths = get_paths(tmp_path / "world")
    profile = get_profile("cpu", overrides=TINY_WORLD | {"ppo.gate": True, "rm.max_steps": 12, "rm.eval_pairs": 48})
    read = data.read_pairs

    def swapped_training_pairs(path, *args, **kwargs):
        pairs = read(path, *args, **kwargs)
        return data.flip_labels(pairs, 1.0, 0)[0] if Path(path) == paths.data_file("train") else pairs

    with monkeypatch.context() as patch:
        patch.setattr(data, "read_pairs", swapped_training_pairs)
        stages.run_rm(profile, paths, force=True, progress=False)
    stages.run_bon(profile, paths, progress=False)
    return profile, paths


class Started(Exception):
    """PPO's jobs were about to start."""


def _refuse_jobs(*args, **kwargs):
    raise Started


def test_04_stops_before_its_first_run_when_the_reward_models_are_at_chance(world_at_chance, monkeypatch, capsys):
    profile, paths = world_at_chance
    bf16 = [m for m in read_json(paths.result("rm"))["models"].values() if m["arm"] == "bf16"]
    assert all(m["accuracy_ci95"][1] < 0.5 for m in bf16), "precondition: the reward models learned it backwards"
    monkeypatch.setattr(stages, "run_jobs", _refuse_jobs)
    with pytest.raises(stages.NoGoError, match=r"^Go/no-go before PPO: NO-GO\. .*2 of 2 bf16 reward models are not "
                                               r"above chance.*Raise rm\.max_steps \(now 12\)"):
        stages.run_ppo(profile, paths, progress=False)
    assert not paths.result("ppo").exists()
    assert not any(paths.root.glob("models/ppo_policy_*"))
    # the CLI says the same in one line, no traceback
    from tinyrlhf import cli

    monkeypatch.setenv("TINYRLHF_OVERRIDES", "{}")
    code = cli.main(["run", "ppo", "--profile", "cpu", "--workdir", str(paths.root), "-q",
                     *[f"--set={k}={_json(v)}" for k, v in profile_overrides(profile).items()]])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: NoGoError: Go/no-go before PPO: NO-GO.")


def profile_overrides(profile) -> dict:
    return TINY_WORLD | {"ppo.gate": True, "rm.max_steps": profile.rm.max_steps, "rm.eval_pairs": profile.rm.eval_pairs}


def _json(value) -> str:
    import json

    return json.dumps(value)


def test_04_goes_past_the_gate_when_it_passes_or_is_off(world_at_chance, monkeypatch):
    profile, paths = world_at_chance
    monkeypatch.setattr(stages, "run_jobs", _refuse_jobs)
    with pytest.raises(Started):  # the gate off: 04 runs on the same reward models
        stages.run_ppo(get_profile("cpu", overrides=profile_overrides(profile) | {"ppo.gate": False}), paths,
                       progress=False)
    passing = {"ok": True, "what": "passes"}
    monkeypatch.setattr(gate, "bon_check", lambda bon: passing)
    monkeypatch.setattr(gate, "accuracy_check", lambda rm: passing)
    with pytest.raises(Started):  # the gate on and passing
        stages.run_ppo(profile, paths, progress=False)
