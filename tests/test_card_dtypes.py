"""What only the card's dtypes and memory would show, caught on the CPU (issue 23): evaluation passes that made
full-vocabulary logits of every position, trainable parameters left in bf16, log-probs of one update taken in two
dtypes, a score head computing in bf16 under autocast, adapters read onto a device PEFT guessed. Each test runs the
card's dtype (bf16) on the CPU where the finding depends on it."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_WORLD

from tinyrlhf.config import get_profile

pytestmark = pytest.mark.slow


class LogitRecorder:
    """Shapes of everything the model's output layer produced while attached."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.get_output_embeddings().register_forward_hook(
            lambda _m, _a, out: self.shapes.append(tuple(out.shape)))

    def largest(self) -> int:
        return max(torch.Size(s).numel() for s in self.shapes)

    def positions(self) -> int:
        """Positions given logits (rows of [positions, vocabulary] outputs, or batch x length of 3-d ones)."""
        return sum(torch.Size(s[:-1]).numel() for s in self.shapes)


def test_heldout_loss_makes_logits_only_at_the_replys_positions(tiny_world):
    from tinyrlhf import data
    from tinyrlhf.base_model import load_causal_lm, load_tokenizer
    from tinyrlhf.chat import completion
    from tinyrlhf.logits import ROWS
    from tinyrlhf.sft import completion_batch, heldout_loss, response_loss

    _, paths = tiny_world
    tok = load_tokenizer(paths.sft_merged)
    model = load_causal_lm(paths.sft_merged, tokenizer=tok).eval()
    pairs = data.read_pairs(paths.data_file("test"))[:12]
    recorder = LogitRecorder(model)
    got = heldout_loss(model, tok, pairs, batch_size=6)
    recorder.handle.remove()
    vocab = model.get_output_embeddings().weight.shape[0]
    assert recorder.largest() <= ROWS * vocab  # never rows x positions x vocabulary
    assert recorder.positions() == got["tokens"]  # logits at the scored positions only
    # the same objective as the full-logits computation (what SFTTrainer optimizes)
    batch = completion_batch(tok, [p.prompt for p in pairs], [completion(p.chosen) for p in pairs])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    want = float(response_loss(logits, batch["labels"], reduction="sum")) / got["tokens"]
    assert got["loss"] == pytest.approx(want, rel=1e-5)


def _policy_with_adapter(paths, tok):
    """The SFT model with a LoRA adapter moved away from zero, so the policy differs from its reference."""
    from peft import LoraConfig, get_peft_model

    from tinyrlhf.base_model import load_causal_lm

    torch.manual_seed(0)
    policy = get_peft_model(load_causal_lm(paths.sft_merged, tokenizer=tok),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy.eval()


def test_kl_at_checkpoints_is_chunked_and_makes_logits_only_at_the_replies(tiny_world):
    from trl.experimental.ppo.ppo_trainer import forward
    from trl.trainer.utils import selective_log_softmax

    from tinyrlhf import evaluate
    from tinyrlhf.base_model import load_tokenizer
    from tinyrlhf.logits import ROWS

    _, paths = tiny_world
    tok = load_tokenizer(paths.sft_merged)
    policy = _policy_with_adapter(paths, tok)
    prompts = ["\n\nHuman: How do I make tea?\n\nAssistant:", "\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: "
               "How do I cook rice?\n\nAssistant:"]
    rollouts = evaluate.sample(policy, tok, prompts, samples=4, max_new=10, temperature=1.0, seed=0)
    recorder = LogitRecorder(policy)
    kl = evaluate.kl_per_reply(policy, rollouts, temperature=1.0, chunk=3)
    recorder.handle.remove()
    vocab = len(tok)
    replies, width = rollouts.responses.shape
    assert recorder.largest() <= min(ROWS, 3 * width) * vocab
    assert recorder.positions() == 2 * replies * width  # policy and reference, at the reply's positions only
    # TRL's own way (full logits of every position), in float32
    ctx, pad = rollouts.queries.shape[1], rollouts.pad_token_id
    qr = torch.cat((rollouts.queries, rollouts.responses), 1)
    with torch.no_grad():
        def logprobs():
            return selective_log_softmax(forward(policy, qr, pad).logits[:, ctx - 1: -1].float() / (1.0 + 1e-7),
                                         rollouts.responses)
        lp = logprobs()
        with policy.disable_adapter():
            ref = logprobs()
    want = ((lp - ref) * (rollouts.responses != pad)).sum(1)
    assert kl == pytest.approx(want.tolist(), abs=1e-5)
    assert max(abs(k) for k in kl) > 1e-3  # the adapter really moved the policy


def test_generation_hands_a_frozen_output_layer_contiguous_input(tiny_world):
    """Found by the card-faithful run (benchmarks/real_size_memory.py): generation's first step gives the output layer
    a strided [rows, 1, hidden] view; a frozen bf16 output layer (a LoRA policy's) then multiplies it through a copy
    of its weight per row (17.7 GiB peak sampling 64 replies of Qwen2.5-0.5B on CPU). Every generation here, the
    evaluation's sampling and PPO's rollout, gives it a contiguous input."""
    from tinyrlhf import evaluate, ppo
    from tinyrlhf.base_model import load_tokenizer

    _, paths = tiny_world
    tok = load_tokenizer(paths.sft_merged)
    policy = _policy_with_adapter(paths, tok).to(torch.bfloat16)
    assert not policy.get_output_embeddings().weight.requires_grad  # frozen, as in PPO
    seen = []  # what the output layer multiplied (a forward hook sees the input after every pre-hook)
    handle = policy.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    prompts = ["\n\nHuman: How do I make tea?\n\nAssistant:", "\n\nHuman: Hi.\n\nAssistant:"]
    evaluate.sample(policy, tok, prompts, samples=3, max_new=4, temperature=1.0, seed=0)
    assert seen and seen[0][0][:2] == (6, 1)  # the first step: the last position of every row
    queries = evaluate.queries_of(tok, prompts)
    config = __import__("transformers").GenerationConfig(max_new_tokens=4, do_sample=True, top_k=0,
                                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    ppo._generate(policy, queries, tok.pad_token_id, config)
    handle.remove()
    assert len(seen) > 4 and all(contiguous for _, contiguous in seen), seen
    # without the hook the first step's input is the strided view (what the fix is for)
    seen.clear()
    handle = policy.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        policy.generate(input_ids=queries, attention_mask=queries != tok.pad_token_id, generation_config=config)
    handle.remove()
    assert seen[0] is False


def test_every_trainable_parameter_is_float32_when_the_model_loads_in_bf16(tiny_world, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from tinyrlhf import data, reward
    from tinyrlhf.base_model import load_tokenizer
    from tinyrlhf.ppo import load_value_model
    from tinyrlhf.reward import SCORE_HEAD, Float32Head

    profile, paths = tiny_world
    tok = load_tokenizer(paths.sft_merged)
    value = load_value_model(paths.sft_merged, lora_r=4, lora_alpha=8, target_modules=["q_proj"], device="cpu",
                             dtype=torch.bfloat16, pad_token_id=tok.pad_token_id)
    trained = {n: p.dtype for n, p in value.named_parameters() if p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}, trained
    assert any(SCORE_HEAD in n for n in trained)  # the value head trains, in float32
    frozen = {p.dtype for n, p in value.named_parameters() if not p.requires_grad and SCORE_HEAD not in n}
    assert frozen == {torch.bfloat16}  # the backbone stays in the card's dtype
    hidden = torch.randn(2, 5, value.config.hidden_size, dtype=torch.bfloat16)
    head = value.base_model.model.score
    assert head(hidden).dtype == torch.float32

    # a reward model trained in bf16, as on the card ("auto" there) or by base.train_dtype on the CPU: adapters and
    # head saved in float32
    pairs = data.read_pairs(paths.data_file("train"))[:8]
    card = get_profile("cpu", overrides=TINY_WORLD | {"base.train_dtype": "bf16"})
    for precision, settings in (("int4", card), ("bf16", profile), ("int4", profile)):
        if settings is profile:  # "auto": the device's compute dtype, bf16 on the card
            monkeypatch.setattr(reward, "reward_compute_dtype", lambda device, cpu_dtype="auto": torch.bfloat16)
        out = tmp_path / f"{precision}-{settings.base.train_dtype}"
        run = reward.train_reward_model(pairs, init_path=str(paths.sft_merged), tokenizer=tok, precision=precision,
                                        out_dir=out, batch_size=4, lr=1e-3, max_steps=1, lora_r=4, lora_alpha=8,
                                        target_modules=["q_proj"], profile=settings)
        assert "bfloat16" in run["compute_dtype"]
        saved = load_file(out / "adapter_model.safetensors")
        assert saved and {t.dtype for t in saved.values()} == {torch.float32}, precision
    assert Float32Head is type(reward.load_backbone(str(paths.sft_merged), "bf16", pad_token_id=tok.pad_token_id,
                                                    device="cpu")[0].score)


def test_the_score_head_computes_in_float32_under_a_trainers_bf16_autocast():
    from tinyrlhf.reward import Float32Head

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1, bias=False)
    head.__class__ = Float32Head
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.nn.functional.linear(x.float(), head.weight))


# (rollout chunk, PPO batch, mini-batch, micro-batch): the tiny world's shapes, and the card's (rtx4060: chunks of 8
# rows, micro-batches of 4, so the log-probs of one reply come from batches of other shapes and paddings)
FIRST_UPDATE_SHAPES = {"tiny": (4, 8, 4, 2), "card": (8, 16, 8, 4)}


@pytest.mark.parametrize("shapes", list(FIRST_UPDATE_SHAPES))
def test_a_bf16_policys_first_update_sees_ratio_one_and_kl_zero(tiny_world, tmp_path, shapes):
    """With a learning rate too small to move anything, the policy is its reference and the rollout's policy: every
    log-prob must agree, so approxkl and the KL are 0 up to bf16 noise in the forward (TRL 1.12 alone takes the
    rollout's log-probs from float32 generation scores of an incremental decode and the others from bf16 logits)."""
    from tinyrlhf import ppo

    _, paths = tiny_world
    profile = get_profile("cpu", overrides=TINY_WORLD | {"base.train_dtype": "bf16"})  # the card's dtypes
    p = profile.ppo
    chunk, batch, mini, micro = FIRST_UPDATE_SHAPES[shapes]
    run = ppo.train_ppo(paths.data_file("train"), out_dir=tmp_path / "policy", sft_path=paths.sft_merged,
                        rm_path=paths.rm("bf16", 0), profile=profile, ppo_batch=batch, mini_batch=mini,
                        micro_batch=micro, rollout_chunk=chunk, ppo_epochs=1, ppo_lr=1e-12, max_new=p.max_new,
                        clip=p.clip, kl_coef=p.kl_coef, steps=1, missing_eos_penalty=p.missing_eos_penalty,
                        temperature=p.temperature, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
                        target_modules=p.target_modules, seed=0)
    first = run["history"][0]
    # measured here (AVX512-BF16 CPU): tiny shapes 8.6e-15 and 7.7e-7, the card's 1.0e-14 and 7.5e-7 with the patch;
    # TRL alone 7.6e-5 and -0.048
    assert first["approxkl"] < 1e-8, first
    assert abs(first["kl"]) < 1e-4, first


def test_a_reward_model_for_the_cpu_reads_its_adapter_onto_the_cpu(tiny_world, monkeypatch):
    """PEFT reads an adapter onto the device it infers (a visible GPU) unless told; here it is told."""
    import peft.peft_model

    from tinyrlhf.reward import load_reward_model

    _, paths = tiny_world
    monkeypatch.setattr(peft.peft_model, "infer_device", lambda: "meta")  # a device that is not the CPU
    model, _ = load_reward_model(paths.rm("int4", 0))
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_the_dense_copy_in_bf16_is_bitsandbytes_bf16_training_forward(tiny_world):
    """Where bf16 is the compute dtype (an AVX512-BF16 CPU), the dense copy is made in bf16 and scores as
    bitsandbytes' training forward in bf16 does, to bf16's resolution."""
    from tinyrlhf.reward import load_reward_model

    _, paths = tiny_world
    dense, info = load_reward_model(paths.rm("int4", 0), cpu_kernel="dense", compute_dtype=torch.bfloat16)
    assert info["kernel"]["kernel"] == "dense" and info["kernel"]["dtype"] == "bfloat16"
    trained, _ = load_reward_model(paths.rm("int4", 0), cpu_kernel="bitsandbytes", compute_dtype=torch.bfloat16)
    trained.train()  # bitsandbytes' training forward (no dropout in these models)
    tok = info["tokenizer"]
    ids = torch.tensor([tok("\n\nHuman: How do I make tea?\n\nAssistant: Boil water, then steep the leaves.")["input_ids"]])
    with torch.no_grad():
        want = trained(input_ids=ids).logits.float()
        got = dense(input_ids=ids).logits.float()
    assert (got - want).abs().max() <= 2.0**-7 * max(want.abs().max().item(), 1.0)
