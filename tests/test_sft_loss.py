"""The SFT objective: response-only cross-entropy, as built by TRL's tokenization and collator."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyrlhf.base_model import train_tokenizer
from tinyrlhf.sft import completion_batch, response_loss

PROMPTS = ["\n\nHuman: How do I make tea?\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bread?\n\nAssistant:"]
REPLIES = [" Boil water, then steep the leaves.", " Mix flour and water."]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([p + r for p, r in zip(PROMPTS, REPLIES)] * 5, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).double().eval()


def test_prompt_and_padding_tokens_get_no_loss(tok):
    batch = completion_batch(tok, PROMPTS, REPLIES)
    for i, (p, r) in enumerate(zip(PROMPTS, REPLIES)):
        n_prompt = len(tok(p, add_special_tokens=False)["input_ids"])
        n_reply = len(tok(p + r + tok.eos_token, add_special_tokens=False)["input_ids"]) - n_prompt
        labels = batch["labels"][i]
        assert (labels[:n_prompt] == -100).all()
        assert (labels[n_prompt:n_prompt + n_reply] != -100).all()
        assert (labels[n_prompt + n_reply:] == -100).all()  # padding
        assert labels[n_prompt + n_reply - 1] == tok.eos_token_id


def test_response_loss_is_the_trainers_loss_and_ignores_the_prompt(tok, model):
    batch = completion_batch(tok, PROMPTS, REPLIES)
    with torch.no_grad():
        out = model(**batch)
    ours = response_loss(out.logits, batch["labels"])
    assert torch.allclose(out.loss.double(), ours, rtol=1e-5)  # transformers computes it in float32
    # Its gradient with respect to the logits is zero at every position that predicts a prompt or padding token.
    logits = out.logits.detach().requires_grad_(True)
    response_loss(logits, batch["labels"]).backward()
    counted = batch["labels"][:, 1:] != -100
    assert (logits.grad[:, :-1][~counted] == 0).all() and (logits.grad[:, :-1][counted] != 0).any()


def test_gradient_matches_finite_differences_in_float64(tok, model):
    batch = completion_batch(tok, PROMPTS, REPLIES)
    weight = model.transformer.h[0].mlp.c_fc.weight
    original = weight.detach().clone()
    idx = [(0, 0), (3, 5), (7, 11), (15, 2)]

    def loss_at(values):
        with torch.no_grad():
            w = original.clone()
            for (i, j), v in zip(idx, values):
                w[i, j] = v
            weight.copy_(w)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert logits.dtype == torch.float64
        return response_loss(logits, batch["labels"])

    base_vals = [float(original[i, j]) for i, j in idx]
    weight.grad = None
    loss_at(base_vals).backward()
    analytic = [float(weight.grad[i, j]) for i, j in idx]
    assert any(abs(a) > 1e-6 for a in analytic)
    eps = 1e-6
    try:
        for k in range(len(idx)):
            up, down = list(base_vals), list(base_vals)
            up[k] += eps
            down[k] -= eps
            numeric = (float(loss_at(up)) - float(loss_at(down))) / (2 * eps)
            assert numeric == pytest.approx(analytic[k], rel=1e-6, abs=1e-10)
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_lora_targets_missing_from_the_model_are_a_clear_error(model):
    from tinyrlhf.config import ConfigError
    from tinyrlhf.runtime import check_target_modules

    check_target_modules(model, ["c_attn", "c_fc"])
    with pytest.raises(ConfigError, match=r"\['q_proj'\] are not in gpt2.*c_attn"):
        check_target_modules(model, ["c_attn", "q_proj"])
