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
    ({"rm.seeds": [0, 0]}, "must be distinct"),
    ({"rm.seeds": [0, 100]}, "must be below 100"),
    ({"rm.seeds": ["a"]}, "integers in"),
    ({"rm.control_seeds": -1}, "rm.control_seeds must be an integer >= 0"),
    ({"ppo.rm_seeds": -2}, "ppo.rm_seeds must be an integer >= 0"),
    ({"seed": -1}, "seed must be integers in"),
    ({"sft.lr": float("nan")}, "sft.lr must be a finite number"),
    ({"rm.lr": float("inf")}, "rm.lr must be a finite number"),
    ({"ppo.max_new": 8}, "must be >= data.max_response_tokens"),
    ({"ppo.rm_device": "tpu"}, "ppo.rm_device must be cpu or cuda"),
    ({"base.train_dtype": "fp16"}, "base.train_dtype must be one of auto, bf16, fp32"),
    ({"ppo.rm_device": "cuda"}, "needs the policy on a GPU"),
])
def test_bad_values_fail_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        get_profile("cpu", overrides=override)


def test_overrides_by_keyword_and_env(monkeypatch):
    p = get_profile("cpu", sft__max_steps=7)
    assert p.sft.max_steps == 7 and p.sft.lr == get_profile("cpu").sft.lr
    monkeypatch.setenv("TINYRLHF_OVERRIDES", json.dumps({"rm.seeds": [3, 4]}))
    assert get_profile("cpu").rm.seeds == (3, 4)
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


def test_hub_downloads_are_pinned_to_a_commit_and_part_of_the_settings():
    from tinyrlhf.config import LATEST, PINNED_REVISIONS

    real = get_profile("rtx4060")
    assert real.base.revision == PINNED_REVISIONS["Qwen/Qwen2.5-0.5B"] and len(real.base.revision) == 40
    assert real.data.revision == PINNED_REVISIONS["Anthropic/hh-rlhf"]
    assert get_profile("cpu").base.revision == LATEST  # the scratch model is built here: nothing to pin
    assert get_profile("rtx4060", overrides={"base.model": "gpt2"}).base.revision == LATEST
    assert get_profile("rtx4060", overrides={"base.revision": "abc"}).base.revision == "abc"
    assert real.to_dict()["base"]["revision"] == real.base.revision  # what the manifest records
    changed = get_profile("rtx4060", overrides={"data.revision": "0" * 40})
    assert changed.section_hash("data", "base") != real.section_hash("data", "base")


def test_the_training_dtype_follows_the_setting_and_reruns_what_it_changes(monkeypatch):
    """base.train_dtype: "auto" trains in bf16 on a bf16 card and float32 on the CPU; "bf16" runs the card's dtypes on
    the CPU (the trainer's bf16 autocast too), and the memory estimate and every training stage's hash follow it."""
    import torch

    from tinyrlhf import config as config_module
    from tinyrlhf import memory
    from tinyrlhf.runtime import train_dtype, trainer_kwargs

    auto, card = get_profile("cpu"), get_profile("cpu", overrides={"base.train_dtype": "bf16"})
    assert train_dtype(auto, "cpu") == torch.float32 and train_dtype(card, "cpu") == torch.bfloat16
    assert train_dtype(get_profile("cpu", overrides={"base.train_dtype": "fp32"}), "cuda") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train_dtype(auto, "cuda") == torch.bfloat16
    assert not trainer_kwargs(auto, out_dir="x", seed=0, steps=1)["bf16"]
    assert trainer_kwargs(card, out_dir="x", seed=0, steps=1)["bf16"]
    assert auto.section_hash("data", "base", "sft") != card.section_hash("data", "base", "sft")
    # the estimate counts bf16 weights and activations where the setting says so, on the CPU as on the card
    real = config_module.PROFILES["rtx4060"]
    cpu_fp32 = memory.estimate_profile(real, device="cpu")["sft"].parts
    cpu_bf16 = memory.estimate_profile(get_profile("rtx4060", overrides={"base.train_dtype": "bf16"}),
                                       device="cpu")["sft"].parts
    assert cpu_bf16["weights"] * 2 == cpu_fp32["weights"]
    assert cpu_bf16["weights"] == memory.estimate_profile(real, device="cuda")["sft"].parts["weights"]


def test_the_base_model_is_read_at_its_pinned_commit(monkeypatch, tmp_path):
    import huggingface_hub

    from tinyrlhf import base_model
    from tinyrlhf.config import get_paths

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, revision=None, **kw: asked.append((repo_id, revision)) or str(tmp_path))
    profile = get_profile("rtx4060")
    assert base_model.base_model_path(profile, get_paths(tmp_path)) == str(tmp_path)
    assert asked == [("Qwen/Qwen2.5-0.5B", profile.base.revision)]
    assert base_model.base_model_path(get_profile("rtx4060", overrides={"base.model": str(tmp_path)}),
                                      get_paths(tmp_path)) == str(tmp_path)  # a local folder is read as it is
    assert len(asked) == 1


def test_the_dataset_is_read_at_its_pinned_commit(monkeypatch):
    import datasets

    from tinyrlhf import data

    asked = []

    def load_dataset(hub_id, data_dir=None, revision=None):
        asked.append((hub_id, data_dir, revision))
        return {"test": [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}]}

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    raw = data.load_source("hub", subsets=["harmless-base"], hub_id="Anthropic/hh-rlhf", revision="c0ffee")
    assert asked == [("Anthropic/hh-rlhf", "harmless-base", "c0ffee")] and len(raw.lines) == 1


def test_the_noisy_arms_flips_follow_the_data(monkeypatch, tmp_path):
    """rm.label_noise_on="auto": the rude pairs first on the synthetic data, uniformly on any other (whose pairs have
    no categories); naming a category on such data, or an unknown value, is refused before any stage runs."""
    from tinyrlhf.config import LABEL_NOISE_ON
    from tinyrlhf.synthetic import CATEGORIES

    assert set(LABEL_NOISE_ON) == {"auto", "any", *CATEGORIES}
    assert get_profile("cpu").rm.label_noise_on == "rude"
    assert get_profile("cpu", overrides={"rm.label_noise_on": "any"}).rm.label_noise_on == "any"
    assert get_profile("rtx4060").rm.label_noise_on == "any"  # HH-RLHF
    with pytest.raises(ConfigError, match="label_noise_on='loud' is not one of auto, any, rude"):
        get_profile("cpu", overrides={"rm.label_noise_on": "loud"})
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path))
    assert get_profile("cpu").rm.label_noise_on == "any"
    with pytest.raises(ConfigError, match="category of the synthetic data.*'local'.*'auto' or 'any'"):
        get_profile("cpu", overrides={"rm.label_noise_on": "rude"})


def test_controls_and_ppo_take_the_first_reward_model_seeds():
    from tinyrlhf.config import NOISY_ARM, NULL_ARM

    p = get_profile("cpu", overrides={"rm.seeds": [4, 2, 7, 9], "rm.control_seeds": 2, "ppo.rm_seeds": 3})
    assert p.arm_seeds("int4") == p.arm_seeds("served-int4") == (4, 2, 7, 9)
    assert p.arm_seeds(NULL_ARM) == p.arm_seeds(NOISY_ARM) == (4, 2)
    assert p.ppo_rm_seeds("bf16") == (4, 2, 7) and p.ppo_rm_seeds(NULL_ARM) == (4, 2)
    every = get_profile("cpu", overrides={"rm.seeds": [4, 2], "rm.control_seeds": 0, "ppo.rm_seeds": 0})
    assert every.arm_seeds(NOISY_ARM) == every.ppo_rm_seeds(NULL_ARM) == (4, 2)
    more = get_profile("cpu", overrides={"rm.seeds": [1], "rm.control_seeds": 5, "ppo.rm_seeds": 5})
    assert more.arm_seeds(NULL_ARM) == more.ppo_rm_seeds("int8") == (1,)
