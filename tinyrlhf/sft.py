"""Supervised fine-tuning: LoRA on prompt + chosen reply with TRL's SFTTrainer, loss on the reply tokens only;
held-out loss and greedy generations for the before/after comparison. A library: the stage is in stages.py."""

from __future__ import annotations

import math
from pathlib import Path

from .base_model import load_causal_lm
from .chat import completion
from .config import Profile, resolve_device
from .data import Pair
from .distributed import per_rank, rank_record
from .logits import token_logprobs
from .results import MemoryMeter
from .runtime import (
    drop_scratch,
    free_memory,
    lora_config,
    loss_curve,
    progress_callback,
    quiet_trainer,
    seed_everything,
    train_dtype,
    trainer_kwargs,
)


def completion_batch(tokenizer, prompts: list[str], completions: list[str]) -> dict:
    """Tokenize prompt/completion pairs as TRL 1.12's SFTTrainer does (prompt, then prompt + completion + EOS;
    labels -100 on the prompt) and pad them with TRL's own collator, which sets padding labels to -100."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        ids = tokenizer(p + c + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        examples.append({"input_ids": ids, "labels": [-100] * len(p_ids) + ids[len(p_ids):]})
    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)


def response_loss(logits, labels, reduction: str = "mean"):
    """Masked response-only cross-entropy: next-token loss over positions whose label is not -100.

    The same objective SFTTrainer optimizes through the model's own loss (which upcasts to float32), from full
    logits; written out here so it can be checked in float64 and so `heldout_loss`, which makes logits only at the
    reply's positions, can be checked against it (tests/test_sft_loss.py, tests/test_card_dtypes.py).
    """
    import torch

    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction=reduction)


def heldout_loss(model, tokenizer, pairs: list[Pair], batch_size: int = 16) -> dict:
    """Token-weighted mean cross-entropy of the chosen replies given their prompts, and its perplexity: the
    objective of `response_loss`, with logits made only at the reply's positions (logits.token_logprobs; the full
    logits of 16 rows of 500 positions would take 10 GB at Qwen2.5's vocabulary)."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i: i + batch_size]
            batch = completion_batch(tokenizer, [p.prompt for p in chunk], [completion(p.chosen) for p in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch["labels"]
            scored = torch.zeros_like(labels, dtype=torch.bool)
            scored[:, :-1] = labels[:, 1:] != -100  # position t predicts label t + 1
            lp = token_logprobs(model, batch["input_ids"], batch["attention_mask"], scored=scored,
                                targets=labels[:, 1:][labels[:, 1:] != -100])
            total -= float(lp.double().sum())
            tokens += int(scored.sum())
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "pairs": len(pairs)}


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy replies, cut at the end-of-sequence token."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(p, return_tensors="pt", add_special_tokens=False).to(device)
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def train_sft(data_path, *, out_dir, init_path, tokenizer, batch_size: int, lr: float, epochs: float = 1.0,
              accum: int = 1, warmup: float = 0.0, dropout: float = 0.05, max_steps: int = -1, lora_r: int = 16,
              lora_alpha: int = 32, target_modules=("c_attn",), max_length: int = 256, seed: int = 0,
              profile: Profile, report=None) -> dict:
    """LoRA SFT of the model at `init_path` on `data_path` (prompt/completion JSONL).

    Saves the adapter to `out_dir/adapter` and the merged model to `out_dir/merged`; returns the loss curve,
    seconds, peak memory and parameter counts.
    """
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    seed_everything(seed)
    out_dir = Path(out_dir)
    device = resolve_device(profile)
    # The dtype the trainer computes in (as PPO loads its policy): a bf16 checkpoint would otherwise stay bf16 on a
    # CPU, where training is float32 (unless base.train_dtype says bf16) and the memory estimate counts that dtype.
    model = load_causal_lm(init_path, trust_remote_code=profile.base.trust_remote_code, device=device,
                           tokenizer=tokenizer, dtype=train_dtype(profile, device))
    dataset = load_dataset("json", data_files=str(data_path), split="train")
    lora = lora_config(model, r=lora_r, alpha=lora_alpha, dropout=dropout, target_modules=target_modules,
                       task_type="CAUSAL_LM")
    args = SFTConfig(
        **trainer_kwargs(profile, out_dir=out_dir, seed=seed,
                         steps=max_steps if max_steps > 0 else 100),
        per_device_train_batch_size=per_rank(batch_size, "sft.batch_size"), gradient_accumulation_steps=accum,
        learning_rate=lr, num_train_epochs=epochs, max_steps=max_steps, warmup_steps=warmup,
        lr_scheduler_type="cosine", max_length=max_length, completion_only_loss=True,
        packing=False)
    ranks = rank_record()
    trainer = quiet_trainer(SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=lora, callbacks=[ranks] + ([progress_callback(report)] if report
                                                                                else [])))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in trainer.model.parameters())  # base + LoRA
    with MemoryMeter() as meter:
        trainer.train()
    adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"
    trainer.model.save_pretrained(adapter_dir)
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    drop_scratch(out_dir)
    curve = loss_curve(trainer)
    del trainer, model, merged
    free_memory()
    return {"adapter_dir": str(adapter_dir), "merged_dir": str(merged_dir), "loss_curve": curve,
            "train_seconds": meter.result["seconds"], "peak_memory": meter.result,
            "trainable_parameters": trainable, "total_parameters": total_params, "ranks": ranks.ranks}
