"""Log-probabilities of chosen tokens without the full-vocabulary logits of every position.

A causal LM's forward applies its output layer to every position: [rows, positions, vocabulary] logits, 0.3 MB per
position in bf16 at Qwen2.5's 151,936 tokens (64 rows x 500 positions: 9.7 GB, then a float32 copy). Evaluation
needs them only where a token is scored (the reply's tokens), so here the output layer's input is taken from the
model as it is computed (a pre-hook on `get_output_embeddings()`, which then multiplies nothing), and the output
layer runs on the scored positions only, `rows` of them at a time, in float32 from there on. Right for causal LMs
whose logits are their output layer's output (Qwen2, Llama, GPT-2; not those that scale or soft-cap logits after it,
e.g. Gemma 2, Cohere, Granite). A library: sft, evaluate and ppo call it. Also here: `contiguous_output_input`, for
generation's first step.
"""

from __future__ import annotations

import contextlib

import torch

ROWS = 256  # scored positions per output-layer call: 256 x 151,936 x 4 bytes = 156 MB of float32 logits


@contextlib.contextmanager
def _output_layer_input(model, store: list):
    """Within this context the model's output layer keeps its input in `store` and computes logits for none of it."""
    head = model.get_output_embeddings()

    def take(_module, args):
        store.append(args[0])
        return (args[0][..., :0, :],)  # zero positions: no logits are made

    handle = head.register_forward_pre_hook(take)
    try:
        yield head
    finally:
        handle.remove()


def token_logprobs(model, input_ids, attention_mask, *, scored: torch.Tensor, targets: torch.Tensor,
                   position_ids=None, temperature: float = 1.0, rows: int = ROWS) -> torch.Tensor:
    """log p(targets | prefix) at the positions where `scored` ([batch, length] bool) is True, in row-major order, as
    float32: the logits of position t predict the token at t + 1, so `targets` holds, for each scored position, the
    token that follows it. Logits are divided by `temperature` (as TRL's PPO divides them) before the softmax."""
    store: list = []
    with torch.no_grad(), _output_layer_input(model, store) as head:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = store[-1][scored]  # [N, hidden]
    out = []
    with torch.no_grad():  # the hook is off: the output layer computes again
        for i in range(0, hidden.shape[0], rows):
            logits = (head(hidden[i: i + rows]) / temperature).float()  # divided in the model's dtype, as TRL does
            out.append(torch.log_softmax(logits, -1).gather(-1, targets[i: i + rows, None]).squeeze(-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def response_logprobs(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int, *,
                      temperature: float, rows: int = ROWS) -> torch.Tensor:
    """[batch, response length] float32 log-probs of each response token, with TRL 1.12's PPO conventions
    (trl.experimental.ppo.ppo_trainer.forward: pad positions masked and zeroed, positions counted from the first real
    token; logits divided by the temperature) and the same numbers as its `selective_log_softmax` over
    `forward(...).logits[:, context_length - 1:-1]` in float32. Padding positions of the response hold whatever the
    model says there (TRL masks them afterwards)."""
    mask = query_responses != pad_token_id
    position_ids = mask.cumsum(1) - mask.long()
    input_ids = torch.masked_fill(query_responses, ~mask, 0)
    scored = torch.zeros_like(mask)
    scored[:, context_length - 1: -1] = True
    responses = query_responses[:, context_length:]
    lp = token_logprobs(model, input_ids, mask, scored=scored, targets=responses.reshape(-1),
                        position_ids=position_ids, temperature=temperature, rows=rows)
    return lp.view(responses.shape)


@contextlib.contextmanager
def contiguous_output_input(model):
    """Within this context the model's output layer gets a contiguous input. Generation's first step hands it the
    last position of every row, a strided view ([rows, 1, hidden] with the stride of the whole prompt). With a frozen
    output layer (a LoRA policy's) and bf16 weights, torch's CPU matmul does not fold such an input into one matrix
    product; it copies the weight once per row for a batched product instead: rows x hidden x vocabulary elements,
    16.2 GiB for 64 rows of Qwen2.5-0.5B (measured: 17.7 GiB peak sampling 64 replies, 1.8 GiB with this; float32,
    or a weight that requires grad, folds). Whether CUDA's batched matmul copies too is not known here; the copy of
    the input it costs instead is a few kilobytes."""
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
