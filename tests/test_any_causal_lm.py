"""Any causal LM as the base model: local folders of a GPT-2, a Llama-style and a Qwen2-style model (random weights,
tokenizers without a pad token or padding with EOS, as their hub releases ship) run through every stage on CPU:
data, SFT, a reward model at each precision, PPO and the judged evaluation. Plumbing, not learning: the models are
random and the runs a few steps long."""

from __future__ import annotations

import math

import pytest
from conftest import TINY

pytestmark = pytest.mark.slow

EOS = "<|endoftext|>"


def _tokenizer(texts, pad: str | None, vocab: int = 1000):
    """A byte-level BPE tokenizer with EOS as its only special token; `pad` as the hub releases set it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, **({"pad_token": pad} if pad else {}))


def _model(family: str, vocab: int, eos: int):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=256,
                                          bos_token_id=eos, eos_token_id=eos))
    small = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=eos,
                 eos_token_id=eos)
    return (LlamaForCausalLM(LlamaConfig(**small)) if family == "llama"
            else Qwen2ForCausalLM(Qwen2Config(**small, tie_word_embeddings=True)))


# family -> (pad token as released, LoRA targets for SFT/PPO, for the reward model)
FAMILIES = {
    "gpt2": (None, ["c_attn"], ["c_attn", "c_proj", "c_fc"]),
    "llama": (None, None, None),  # the profile's q/k/v/o_proj and all linear layers
    "qwen2": (EOS, None, None),  # Qwen2.5 base pads with EOS
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_stage_runs_on_a_local_model_folder(family, tmp_path):
    from tinyrlhf import synthetic
    from tinyrlhf.config import get_paths, get_profile
    from tinyrlhf.stages import run_data, run_ppo, run_rm, run_sft

    pad, attention, linear = FAMILIES[family]
    folder = tmp_path / family
    records = synthetic.synthetic_records(300, 0)
    tok = _tokenizer([r[k] for r in records for k in ("chosen", "rejected")], pad)
    tok.save_pretrained(folder)
    _model(family, len(tok), tok.eos_token_id).save_pretrained(folder)

    controls = family == "qwen2"  # the null and noisy arms' plumbing, once (the end-to-end run has neither)
    overrides = TINY | {"base.model": str(folder), "rm.precisions": ["bf16", "int8", "int4"], "rm.null_arm": controls,
                        "rm.noisy_arm": controls, "rm.seeds": [0], "eval.judge": "gold"}
    if attention:
        overrides |= {"sft.target_modules": attention, "ppo.target_modules": attention, "rm.target_modules": linear}
    profile, paths = get_profile("cpu", overrides=overrides), get_paths(tmp_path / "work").make()

    data = run_data(profile, paths, progress=False)
    assert data["tokenizer"] == str(folder) and data["train"] > 0 and data["test"] > 0
    sft = run_sft(profile, paths, progress=False)
    assert sft["base_model"] == str(folder) and math.isfinite(sft["after"]["loss"])

    from tinyrlhf.base_model import load_tokenizer
    merged = load_tokenizer(paths.sft_merged)  # the pad token the SFT stage added travels with the model
    assert merged.pad_token_id is not None and merged.pad_token_id != merged.eos_token_id

    rm = run_rm(profile, paths, progress=False)
    arms = ["bf16", "int8", "int4"] + (["null", "noisy"] if controls else [])
    # every arm, and the same-recipe judge (eval.second_judge, on by default on synthetic data) of this family
    assert {a: r["status"] for a, r in rm["arms"].items()} == dict.fromkeys([*arms, "same-recipe-judge"], "ok"), \
        {a: r.get("reason") for a, r in rm["arms"].items()}
    ppo = run_ppo(profile, paths, progress=False)
    for arm in arms:
        run = ppo["arms"][arm]["seeds"][0]
        assert run["status"] == "ok", run.get("reason")
        assert len(run["history"]) == profile.ppo.steps
    assert ppo["judge"]["kind"] == "gold"
    assert set(ppo["cross_matrix"]["judges"]) >= set(arms)
    if controls:
        assert ppo["null_arm"] == "null" and ppo["noisy_arm"] == "noisy"
