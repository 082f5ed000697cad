"""The base model: a hub id or local path on GPU profiles; on the `cpu` profile a byte-level BPE tokenizer trained
on the prepared data and a tiny GPT-2 pre-trained on the dialogue text, saved in Hugging Face format under
`models/base/` so every later stage loads it exactly as it would load a hub model."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .chat import full_text
from .config import SCRATCH_MODEL, Paths, Profile

EOS = "<|endoftext|>"
PAD = "<|pad|>"


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded; the message says what to do."""


def base_dir(paths: Paths) -> Path:
    return paths.models / "base"


def is_scratch(profile: Profile) -> bool:
    return profile.base.model == SCRATCH_MODEL


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `texts`, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   padding_side="right", model_max_length=1024)


def _hub_tokenizer(profile: Profile, path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=profile.base.trust_remote_code)
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the tokenizer of {path!r} ({type(e).__name__}: {str(e)[:200]}). Offline? Download the "
            "model to a local folder and set base.model to its path, or use TINYRLHF_PROFILE=cpu."
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # causal LMs often ship without one; padding is masked anyway
    return tok


def tokenizer_for_data(profile: Profile, paths: Paths, train_texts: list[str]):
    """The tokenizer used to filter lengths in data preparation; on `cpu` it is trained here and saved."""
    if not is_scratch(profile):
        return _hub_tokenizer(profile, profile.base.model)
    tok = train_tokenizer(train_texts, profile.base.vocab_size)
    tok.save_pretrained(base_dir(paths))
    return tok


def load_tokenizer(profile: Profile, paths: Paths, path: str | Path | None = None):
    """The profile's tokenizer (from `path`, e.g. a trained model folder, when given)."""
    if path is None and is_scratch(profile):
        path = base_dir(paths)
        if not (Path(path) / "tokenizer.json").exists():
            raise ModelLoadError(f"no tokenizer in {path}: run 01_Data_Preparation first")
    return _hub_tokenizer(profile, str(path or profile.base.model))


def base_model_path(profile: Profile, paths: Paths) -> str:
    """Where the base model loads from: the built tiny model, or the profile's hub id / path."""
    if is_scratch(profile):
        p = base_dir(paths)
        if not (p / "config.json").exists():
            raise ModelLoadError(f"no base model in {p}: run build_base_model (02_SFT_Finetuning does)")
        return str(p)
    return profile.base.model


def load_causal_lm(profile: Profile, path: str, *, dtype=None, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=profile.base.trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"cannot load a causal LM from {path!r} ({type(e).__name__}: {str(e)[:200]})") from None
    return model.to(device)


def dialogue_texts(pairs, eos: str) -> list[str]:
    """Both replies of every pair: the base model learns the whole distribution, good and bad."""
    return [full_text(p.prompt, r, eos) for p in pairs for r in (p.chosen, p.rejected)]


def build_base_model(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """Pre-train the `cpu` profile's tiny GPT-2 on the training dialogues with transformers' Trainer.

    Bounded by base.pretrain_steps. Returns a summary (steps, losses, seconds); reuses a finished model.
    """
    import torch
    from datasets import Dataset
    from transformers import (DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, Trainer,
                              TrainingArguments)

    from .data import data_files, read_pairs
    from .results import atomic_write_json, read_json, reusable
    from .runtime import drop_scratch, scratch_dir

    if not is_scratch(profile):
        return {"model": profile.base.model, "built": False, "reason": "GPU profiles start from a pre-trained model"}
    out = base_dir(paths)
    summary_path = out / "pretrain_summary.json"
    config_hash = profile.section_hash("data", "base")
    if not force and reusable(summary_path, config_hash, [out / "model.safetensors"]):
        return read_json(summary_path) | {"reused": True}

    tok = load_tokenizer(profile, paths)
    pairs = read_pairs(data_files(paths)["train"])
    texts = dialogue_texts(pairs, tok.eos_token)
    max_len = profile.data.max_prompt_tokens + profile.data.max_response_tokens
    b = profile.base
    torch.manual_seed(profile.seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=max(256, max_len), n_embd=b.n_embd, n_layer=b.n_layer,
                     n_head=b.n_head, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    ds = Dataset.from_dict({"text": texts}).map(
        lambda x: tok(x["text"], truncation=True, max_length=max_len), batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(scratch_dir(out)), max_steps=b.pretrain_steps, per_device_train_batch_size=b.pretrain_batch,
        learning_rate=b.pretrain_lr, lr_scheduler_type="cosine", warmup_steps=math.ceil(0.05 * b.pretrain_steps),
        weight_decay=0.01, logging_steps=max(1, b.pretrain_steps // 20), save_strategy="no", report_to=[],
        seed=profile.seed, data_seed=profile.seed, use_cpu=True, disable_tqdm=not progress, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"config_hash": config_hash, "model": SCRATCH_MODEL, "built": True, "steps": b.pretrain_steps,
               "parameters": sum(p.numel() for p in model.parameters()), "loss_curve": losses,
               "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
               "seconds": seconds}
    atomic_write_json(summary_path, summary)
    drop_scratch(out)
    return summary | {"reused": False}

