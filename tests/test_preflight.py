"""The preflight runs the GPU profile's stages end to end through the user's command, a few steps each, and gives one
verdict per stage; here on the CPU with a small Qwen2 model folder (the real architecture's modules, random weights)
and the rtx4060 profile's batch sizes, chunks, judge and LoRA targets (its public judge by hub id: a tiny Llama reward
model under that id in an offline hub cache of the test's own)."""

import json

import pytest
from test_any_causal_lm import _model, _tokenizer
from test_external_judge import _save_judge
from test_judge_pin import publish

from tinyrlhf import preflight
from tinyrlhf.config import get_paths, get_profile

pytestmark = pytest.mark.slow

# Shorter than the card's 384 + 128 tokens and fewer synthetic pairs: the CPU's minutes, not the card's
SMALL = {"data.source": "synthetic", "data.synthetic_pairs": 300, "data.max_prompt_tokens": 64,
         "data.max_response_tokens": 32, "ppo.max_new": 32, "sft.gradient_checkpointing": False}


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory):
    from tinyrlhf import synthetic

    folder = tmp_path_factory.mktemp("qwen2")
    records = synthetic.synthetic_records(300, 0)
    tok = _tokenizer([r[k] for r in records for k in ("chosen", "rejected")], "<|endoftext|>")
    tok.save_pretrained(folder)
    _model("qwen2", len(tok), tok.eos_token_id).save_pretrained(folder)
    return folder


def test_the_preflight_runs_every_stage_of_the_gpu_profile_and_says_it_is_ready(qwen2_folder, tmp_path, monkeypatch):
    overrides = SMALL | {"base.model": str(qwen2_folder)}
    profile, paths = get_profile("rtx4060", overrides=overrides), get_paths(tmp_path).make()
    sha = "c" * 40  # the profile's judge, served offline from a cache of our own to the stages' processes
    publish(tmp_path / "hub-cache", profile.eval.judge, sha, _save_judge(tmp_path / "judge", template=True))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said = []
    out = preflight.run(profile, paths, overrides=overrides, report=said.append)
    assert [r["stage"] for r in out["stages"]] == list(preflight.STAGES)
    assert out["ready"], out["stages"]
    assert all(r["verdict"].startswith("ok") and r["seconds"] > 0 for r in out["stages"])
    by = {r["stage"]: r for r in out["stages"]}
    assert all(by[s]["peak_bytes"] > 0 and by[s]["estimate_bytes"] > 0 for s in ("sft", "rm", "ppo"))
    written = json.loads((paths.results / preflight.FILE).read_text())
    assert written["ready"] and written["manifest"]["profile"] == "rtx4060"
    # the profile's sizes, the counts shrunk; every arm trained, on every training pair (a public judge: no heldout
    # one), and the judge pinned in the preflight's workdir at the commit its first load got
    where = get_paths(tmp_path / "preflight")
    rm = json.loads(where.result("rm").read_text())
    assert {f"{arm}/seed0" for arm in profile.arms} <= set(rm["models"]) and "judge" not in rm["models"]
    assert json.loads(where.hub_pins.read_text())[profile.eval.judge]["revision"] == sha
    assert json.loads(where.result("bon").read_text())["judge"]["revision"] == sha
    # early stopping's path ran (one validation evaluation at the last step), and the go/no-go did not stop PPO
    assert all(m["steps"]["early_stopping"] and len(m["steps"]["validation_accuracy"]) == 1
               for m in rm["models"].values())
    assert written["settings"]["ppo.gate"] is False
    assert written["settings"]["ppo.ppo_batch"] == profile.ppo.mini_batch and "rm.batch_size" not in written["settings"]
    assert "Preflight passed" in preflight.sentence(out) and not (paths.models / "rm").exists()  # the user's: untouched
    assert any("ppo ok" in line for line in said)


def test_the_preflight_stops_at_the_first_stage_that_fails_and_names_why(qwen2_folder, tmp_path):
    overrides = SMALL | {"base.model": str(qwen2_folder), "rm.target_modules": ["no_such_layer"]}
    profile, paths = get_profile("rtx4060", overrides=overrides), get_paths(tmp_path).make()
    out = preflight.run(profile, paths, overrides=overrides, report=lambda _: None)
    # "ok" or "ok, above its estimate": a small model's process RSS is near the estimate's fixed part
    verdicts = {r["stage"]: r["verdict"].split(",")[0] for r in out["stages"]}
    assert verdicts == {"data": "ok", "sft": "ok", "rm": "fails", "bon": "not run", "ppo": "not run"}
    assert "no_such_layer" in next(r for r in out["stages"] if r["stage"] == "rm")["reason"]
    assert not out["ready"] and "FAILED at rm" in preflight.sentence(out)


def test_verdicts_from_measured_peaks():
    memory = {"stage": "rm_int8", "measured_bytes": 3 * 2**30, "estimate_bytes": 2 * 2**30}
    result = {"models": {"int8/seed0": {"status": "ok", "memory": memory}}}
    assert preflight.verdict("rm", 0, "", result, 1.0, 16 * 2**30)["verdict"] == "ok, above its estimate"
    tight = preflight.verdict("rm", 0, "", result, 1.0, 3 * 2**30)
    assert tight["verdict"] == "fails" and "lower its batch size" in tight["reason"]
    died = preflight.verdict("rm", 1, "error: CUDA out of memory", None, 1.0, 8 * 2**30)
    assert died["verdict"] == "fails" and "out of memory" in died["reason"]
