"""The judge: gold on the synthetic data, a reward model no arm trained against, or one the user names by path."""

from __future__ import annotations

import shutil

import pytest
from conftest import TINY_WORLD

from tinyrlhf import schema
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.ppo import PPOError

pytestmark = pytest.mark.slow


def test_a_reward_model_named_by_path_judges_from_the_decoded_text(tiny_world, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tinyrlhf.stages import run_ppo

    _, paths = tiny_world
    shutil.copytree(paths.root, tmp_path / "wd")
    wd = get_paths(tmp_path / "wd")
    # A "public" reward model: its own folder and tokenizer, not trained here against anything.
    external = tmp_path / "external-rm"
    AutoModelForSequenceClassification.from_pretrained(paths.sft_merged, num_labels=1).save_pretrained(external)
    AutoTokenizer.from_pretrained(paths.sft_merged).save_pretrained(external)
    profile = get_profile("cpu", overrides=TINY_WORLD | {"eval.judge": str(external)})
    out = run_ppo(profile, wd, progress=False)
    judge = out["judge"]
    assert {k: judge[k] for k in ("kind", "name", "path", "revision", "device")} == {
        "kind": "external", "name": str(external), "path": str(external), "revision": None, "device": "cpu"}
    # the scratch tokenizer has no chat template: plain text, and the record says so
    assert judge["chat_template"] is False and "no chat template" in judge["why"]
    assert judge["truncated"] == 0 and judge["scored"] > 0
    assert out["arms"]["bf16"]["status"] == "ok" and out["cross_matrix"]["judges"][0] == "judge"
    schema.validate_file(wd.result("ppo"), "ppo")


def test_the_default_judge_follows_the_data_and_gold_on_other_data_is_refused_at_once(tiny_world, monkeypatch,
                                                                                     tmp_path):
    from tinyrlhf.config import ConfigError
    from tinyrlhf.stages import judge_spec

    assert get_profile("cpu").eval.judge == "gold"  # the synthetic set: its rules are the gold judge
    assert get_profile("cpu", overrides={"data.source": "local"}).eval.judge == "heldout"
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path))  # the README's real-data example on the cpu profile
    assert get_profile("cpu").eval.judge == "heldout"
    with pytest.raises(ConfigError, match="eval.judge='gold' knows only the synthetic data's rules.*'local'"):
        get_profile("cpu", overrides={"eval.judge": "gold"})  # refused before any stage, not in 04
    monkeypatch.delenv("TINYRLHF_HH_DIR")
    with pytest.raises(PPOError, match="heldout judge's reward model failed in 03"):
        judge_spec(get_profile("cpu", overrides={"eval.judge": "heldout"}), tiny_world[1],
                   {"judge": {"status": "failed", "reason": "x"}})
