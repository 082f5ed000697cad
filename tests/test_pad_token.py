"""A distinct pad token for tokenizers that ship without one or pad with EOS (GPT-2, Llama, Qwen2.5 base), and
embeddings grown to hold it: with pad == EOS TRL's PPO would cut replies at their EOS and score the wrong token."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tinyrlhf.base_model import PAD, load_causal_lm, load_tokenizer

EOS = "<|endoftext|>"


def _tokenizer_folder(tmp_path, pad: str | None):
    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate("abcdefghij ")}}
    core = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, **({"pad_token": pad} if pad else {}))
    tok.save_pretrained(tmp_path)
    return len(vocab)


@pytest.mark.parametrize("pad", [None, EOS], ids=["no-pad", "pad-is-eos"])
def test_gpt2_gets_a_distinct_pad_and_grown_embeddings(tmp_path, pad):
    n = _tokenizer_folder(tmp_path, pad)
    GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_layer=1, n_head=2, n_positions=32)).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id and len(tok) == n + 1
    model = load_causal_lm(tmp_path, tokenizer=tok)
    assert model.get_input_embeddings().num_embeddings == n + 1
    assert model.get_output_embeddings().weight.shape[0] == n + 1  # the tied head grew with it
    assert model.config.pad_token_id == tok.pad_token_id
    batch = tok(["abc", "a"], padding=True, return_tensors="pt")
    assert (batch["input_ids"] == tok.pad_token_id).sum() == 2
    assert model(**batch).logits.shape[-1] == n + 1


def test_spare_embedding_rows_are_kept(tmp_path):
    """Qwen2.5 has more embedding rows than tokens: the pad token takes a spare row and nothing is resized."""
    n = _tokenizer_folder(tmp_path, None)
    cfg = Qwen2Config(vocab_size=n + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    before = Qwen2ForCausalLM.from_pretrained(tmp_path).get_input_embeddings().weight.detach().clone()
    model = load_causal_lm(tmp_path, tokenizer=tok)
    assert tok.pad_token_id == n and model.get_input_embeddings().num_embeddings == n + 8
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_a_distinct_pad_is_kept(tmp_path):
    _tokenizer_folder(tmp_path, "a")
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "a"


def test_a_reply_limit_beyond_the_models_positions_is_a_clear_error(tmp_path):
    """ppo.max_new past a model's positions used to die in the embedding ("index out of range") after training."""
    from tinyrlhf.base_model import ModelLoadError, check_context

    n = _tokenizer_folder(tmp_path, None)
    GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(tmp_path)
    check_context(tmp_path, 64)
    with pytest.raises(ModelLoadError, match="= 65 tokens, but .* has 64 positions: lower ppo.max_new"):
        check_context(tmp_path, 65)


def test_the_scratch_model_is_built_with_the_positions_the_profile_needs():
    from tinyrlhf.config import get_profile
    from tinyrlhf.stages import context_needed

    assert context_needed(get_profile("cpu", ppo__max_new=1000)) == 96 + 1000
    assert context_needed(get_profile("cpu")) == 96 + 48


def test_one_giant_word_does_not_stall_tokenizer_training():
    """A record holding one multi-million-character token used to run for minutes; only its head is learned from."""
    from tinyrlhf.base_model import MAX_TOKENIZER_CHARS, train_tokenizer

    texts = ["x" * (100 * MAX_TOKENIZER_CHARS)] + ["how do I bake bread? mix flour and water."] * 50
    tok = train_tokenizer(texts, vocab_size=300)
    assert tok.decode(tok("bake bread")["input_ids"]) == "bake bread"
