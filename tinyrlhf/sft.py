"""Supervised fine-tuning: LoRA on prompt + chosen reply with TRL's SFTTrainer, loss on the reply tokens only."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .chat import completion
from .config import Paths, Profile, resolve_device
from .data import Pair, data_files, read_pairs
from .memory import measured_vs_estimate
from .results import MemoryMeter, atomic_write_json, data_source_of, manifest, read_json, reusable
from .runtime import drop_scratch, free_memory, lora_config, loss_curve, trainer_kwargs


def sft_dirs(paths: Paths) -> dict:
    root = paths.models / "sft"
    return {"root": root, "adapter": root / "adapter", "merged": root / "merged"}


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

    The same objective SFTTrainer optimizes through the model's own loss (which upcasts to float32); written out
    here so evaluation can sum it by token and so it can be checked in float64.
    """
    import torch

    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction=reduction)


def heldout_loss(model, tokenizer, pairs: list[Pair], batch_size: int = 16) -> dict:
    """Token-weighted mean cross-entropy of the chosen replies given their prompts, and its perplexity."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i: i + batch_size]
            batch = completion_batch(tokenizer, [p.prompt for p in chunk], [completion(p.chosen) for p in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            total += float(response_loss(logits, batch["labels"], reduction="sum"))
            tokens += int((batch["labels"][:, 1:] != -100).sum())
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
              lora_alpha: int = 32, target_modules=("c_attn",), gradient_checkpointing: bool = False,
              max_length: int = 256, seed: int = 0, profile: Profile, progress: bool = True) -> dict:
    """LoRA SFT of the model at `init_path` on `data_path` (prompt/completion JSONL).

    Saves the adapter to `out_dir/adapter` and the merged model to `out_dir/merged`; returns the loss curve,
    seconds, peak memory and parameter counts.
    """
    from datasets import load_dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from .base_model import load_causal_lm

    set_seed(seed)  # the LoRA adapter is initialised before the Trainer seeds anything
    out_dir = Path(out_dir)
    device = resolve_device(profile)
    model = load_causal_lm(profile, str(init_path), device=device)
    dataset = load_dataset("json", data_files=str(data_path), split="train")
    lora = lora_config(model, r=lora_r, alpha=lora_alpha, dropout=dropout, target_modules=target_modules,
                       task_type="CAUSAL_LM")
    args = SFTConfig(
        **trainer_kwargs(profile, out_dir=out_dir, seed=seed, progress=progress,
                         steps=max_steps if max_steps > 0 else 100),
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accum, learning_rate=lr,
        num_train_epochs=epochs, max_steps=max_steps, warmup_steps=warmup, lr_scheduler_type="cosine",
        gradient_checkpointing=gradient_checkpointing, max_length=max_length, completion_only_loss=True,
        packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora)
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
            "trainable_parameters": trainable, "total_parameters": total_params}


def run_sft(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """The 02 notebook's stage: base model (built on `cpu`), before/after evaluation, LoRA SFT, sft_results.json."""
    from .base_model import base_model_path, build_base_model, load_causal_lm, load_tokenizer

    dirs = sft_dirs(paths)
    result_path = paths.results / "sft_results.json"
    config_hash = profile.section_hash("data", "base", "sft")
    if not force and reusable(result_path, config_hash, [dirs["merged"] / "config.json"]):
        return read_json(result_path) | {"reused": True}

    t_start = time.perf_counter()
    base_summary = build_base_model(profile, paths, force=force, progress=progress)
    init_path = base_model_path(profile, paths)
    tokenizer = load_tokenizer(profile, paths)
    test_pairs = read_pairs(data_files(paths)["test"])[: profile.sft.eval_pairs]
    sample_prompts = [p.prompt for p in test_pairs[: profile.sft.sample_prompts]]
    device = resolve_device(profile)
    max_new = profile.data.max_response_tokens

    base = load_causal_lm(profile, init_path, device=device)
    before = heldout_loss(base, tokenizer, test_pairs)
    before_text = generate(base, tokenizer, sample_prompts, max_new)
    del base
    free_memory()

    s = profile.sft
    run = train_sft(data_files(paths)["sft"], out_dir=dirs["root"], init_path=init_path, tokenizer=tokenizer,
                    batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, accum=s.accum, warmup=s.warmup,
                    dropout=s.dropout, max_steps=s.max_steps, lora_r=s.lora_r, lora_alpha=s.lora_alpha,
                    target_modules=s.target_modules, gradient_checkpointing=s.gradient_checkpointing,
                    max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1,
                    seed=profile.seed, profile=profile, progress=progress)

    tuned = load_causal_lm(profile, run["merged_dir"], device=device)
    after = heldout_loss(tuned, tokenizer, test_pairs)
    after_text = generate(tuned, tokenizer, sample_prompts, max_new)
    del tuned
    free_memory()

    result = {
        "config_hash": config_hash,
        "base_model": profile.base.model,
        "base_pretraining": {k: v for k, v in base_summary.items() if k != "config_hash"},
        "before": before,
        "after": after,
        "loss_drop": before["loss"] - after["loss"],
        "loss_curve": run["loss_curve"],
        "train_seconds": run["train_seconds"],
        "peak_memory_bytes": run["peak_memory"]["peak_bytes"],
        "memory": measured_vs_estimate(profile, "sft", run["peak_memory"]),
        "trainable_parameters": run["trainable_parameters"],
        "total_parameters": run["total_parameters"],
        "generations": [{"prompt": p, "before": b, "after": a}
                        for p, b, a in zip(sample_prompts, before_text, after_text)],
        "artifacts": {"adapter": run["adapter_dir"], "merged": run["merged_dir"]},
    }
    result["manifest"] = manifest(profile, "sft", data_source=data_source_of(paths),
                                  timings={"stage_seconds": time.perf_counter() - t_start,
                                           "train_seconds": run["train_seconds"]},
                                  peak_memory=run["peak_memory"])
    atomic_write_json(result_path, result)
    return result | {"reused": False}
