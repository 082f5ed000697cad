import json

import pytest

from tinyrlhf.config import ConfigError, get_paths, get_profile, resolve_source


def test_default_profile_follows_cuda(monkeypatch):
    from tinyrlhf import config

    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert get_profile().name == "cpu"
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    assert get_profile().name == "rtx4060"


def test_env_selects_profile(monkeypatch):
    monkeypatch.setenv("TINYRLHF_PROFILE", "rtx4060")
    assert get_profile().name == "rtx4060"


def test_unknown_profile_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: cpu, rtx4060"):
        get_profile("a100")


@pytest.mark.parametrize("override, message", [
    ({"sft.lr": -1.0}, "sft.lr must be > 0"),
    ({"sft.batch_size": 2.5}, "sft.batch_size must be an integer"),
    ({"data.test_fraction": 1.5}, "strictly between 0 and 1"),
    ({"rm.precisions": ["bf16", "fp8"]}, "allowed: bf16, int8, int4"),
    ({"data.source": "s3"}, "one of auto, synthetic, hub, local"),
    ({"ppo.ppo_batch": 12}, "multiple of ppo.mini_batch"),
    ({"sft.nope": 1}, "sft has: batch_size"),
    ({"nope.x": 1}, "allowed: data, base, sft, rm, ppo"),
    ({"base.hidden_size": 100}, "multiple of 64"),
    ({"ppo.seeds": [0, 0]}, "must be distinct"),
    ({"ppo.seeds": ["a"]}, "integers in"),
    ({"seed": -1}, "seed must be integers in"),
    ({"sft.lr": float("nan")}, "sft.lr must be a finite number"),
    ({"rm.lr": float("inf")}, "rm.lr must be a finite number"),
    ({"ppo.max_new": 8}, "must be >= data.max_response_tokens"),
    ({"ppo.rm_device": "tpu"}, "ppo.rm_device must be cpu or cuda"),
    ({"ppo.rm_device": "cuda"}, "needs the policy on a GPU"),
])
def test_bad_values_fail_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        get_profile("cpu", overrides=override)


def test_overrides_by_keyword_and_env(monkeypatch):
    p = get_profile("cpu", sft__max_steps=7)
    assert p.sft.max_steps == 7 and p.sft.lr == get_profile("cpu").sft.lr
    monkeypatch.setenv("TINYRLHF_OVERRIDES", json.dumps({"ppo.seeds": [3, 4]}))
    assert get_profile("cpu").ppo.seeds == (3, 4)
    monkeypatch.setenv("TINYRLHF_OVERRIDES", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        get_profile("cpu")
    for not_an_object in ("[1, 2]", "3"):
        monkeypatch.setenv("TINYRLHF_OVERRIDES", not_an_object)
        with pytest.raises(ConfigError, match="must be a JSON object"):
            get_profile("cpu")


def test_section_hash_tracks_only_its_sections():
    a, b = get_profile("cpu"), get_profile("cpu", ppo__steps=7)
    assert a.section_hash("data", "sft") == b.section_hash("data", "sft")
    assert a.section_hash("ppo") != b.section_hash("ppo")


def test_workdir_moves_artifacts(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYRLHF_WORKDIR", str(tmp_path))
    paths = get_paths().make()
    assert paths.results == tmp_path / "results" and paths.figures.is_dir() and paths.data.is_dir()


def test_hh_dir_switches_auto_source(monkeypatch, tmp_path):
    p = get_profile("cpu")
    assert resolve_source(p) == "synthetic"
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path))
    assert resolve_source(p) == "local"
    assert resolve_source(get_profile("cpu", data__source="synthetic")) == "synthetic"


def test_a_workdir_that_is_a_file_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot hold the pipeline's folders.*writable folder"):
        get_paths(tmp_path / "file").make()
