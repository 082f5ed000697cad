"""The base model: a hub id or local path on GPU profiles; on the `cpu` profile a byte-level BPE tokenizer trained
on the prepared data and a small Qwen2 pre-trained on the dialogue text, saved in Hugging Face format under
`models/base/` so every later stage loads it exactly as it would load a hub model. A library: the stage that
decides when to build it is in stages.py."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .chat import full_text
from .config import SCRATCH_MODEL, BaseSettings, Paths, Profile, hub_revision
from .distributed import is_main, per_rank
from .runtime import drop_scratch, progress_callback, quiet_trainer, scratch_dir

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MAX_TOKENIZER_CHARS = 20_000


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded; the message says what to do."""


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
    # BPE training is superlinear in the length of one pre-token: a single 5-million-character "word" in a record
    # ran for minutes. Only the first MAX_TOKENIZER_CHARS of a record teach the tokenizer (the record is kept).
    tok.train_from_iterator((t[:MAX_TOKENIZER_CHARS] for t in texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   padding_side="right", model_max_length=1024)


def _hub_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the tokenizer of {path!r} ({type(e).__name__}: {str(e)[:200]}). Offline? Download the "
            "model to a local folder and set base.model to its path, or use TINYRLHF_PROFILE=cpu."
        ) from None
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # GPT-2, Llama and Qwen2.5 base ship without a pad token or pad with EOS. With pad == EOS, TRL's PPO
        # truncates a reply at its first "pad" and scores the wrong position, and SFT masks EOS out of the loss;
        # a distinct pad token avoids both (load_causal_lm grows the embeddings when the vocabulary needs it).
        tok.add_special_tokens({"pad_token": PAD})
    return tok


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer of a model folder or hub id."""
    return _hub_tokenizer(str(path), trust_remote_code)


def base_model_path(profile: Profile, paths: Paths) -> str:
    """Where the base model loads from: the built tiny model, a local folder, or the hub model's snapshot at the
    commit `base.revision` names (downloaded once into the hub cache; every later load reads that folder, so no
    load can pick up another commit)."""
    if is_scratch(profile):
        if not (paths.base / "config.json").exists():
            raise ModelLoadError(f"no base model in {paths.base}: run the sft stage (02_SFT_Finetuning) first")
        return str(paths.base)
    b = profile.base
    if Path(b.model).exists():
        return b.model
    from huggingface_hub import snapshot_download

    try:
        # weights, config and tokenizer only (a hub repository may also hold other frameworks' weights)
        return snapshot_download(b.model, revision=hub_revision(b.revision),
                                 allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"])
    except Exception as e:
        raise ModelLoadError(
            f"cannot download {b.model} at revision {b.revision} ({type(e).__name__}: {str(e)[:200]}). "
            "Offline? Download the model to a local folder and set base.model to its path, or use "
            "TINYRLHF_PROFILE=cpu.") from None


def load_causal_lm(path: str | Path, *, trust_remote_code: bool = False, dtype=None, device: str = "cpu",
                   tokenizer=None):
    """A causal LM; given its `tokenizer`, embeddings grown to cover a pad token added by load_tokenizer."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"cannot load a causal LM from {path!r} ({type(e).__name__}: {str(e)[:200]})") from None
    if tokenizer is not None:
        fit_embeddings(model, tokenizer)
    return model.to(device)


def check_context(path: str | Path, needed: int, *, trust_remote_code: bool = False) -> None:
    """Fail before any training when a prompt plus `ppo.max_new` tokens would not fit the model's positions
    (generation would otherwise die deep in the embedding with "index out of range")."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - an unreadable model is reported where it is loaded
        return
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit and needed > limit:
        raise ModelLoadError(f"data.max_prompt_tokens + ppo.max_new = {needed} tokens, but {path} has "
                             f"{limit} positions: lower ppo.max_new or data.max_prompt_tokens")


def fit_embeddings(model, tokenizer) -> None:
    """Grow the embeddings when the tokenizer has more tokens than the model has rows (a pad token added to GPT-2),
    never shrink them (Qwen2.5 pads its 151,665 tokens to 151,936 rows), and record the pad id in the config."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def dialogue_texts(pairs, eos: str) -> list[str]:
    """Both replies of every pair: the base model learns the whole distribution, good and bad."""
    return [full_text(p.prompt, r, eos) for p in pairs for r in (p.chosen, p.rejected)]


def scratch_config(settings: BaseSettings, tokenizer, max_len: int):
    """A scaled-down Qwen2 (the rtx4060 base model's family: RoPE, grouped-query attention, RMSNorm, SwiGLU, tied
    embeddings), so the cpu profile runs the same modules, LoRA targets and quantized layer shapes."""
    from transformers import Qwen2Config

    b, tok = settings, tokenizer
    return Qwen2Config(vocab_size=len(tok), hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
                       num_hidden_layers=b.num_layers, num_attention_heads=b.num_heads,
                       num_key_value_heads=b.num_kv_heads, max_position_embeddings=max(256, max_len),
                       tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=tok.eos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def pretrain(texts: list[str], tokenizer, *, out_dir: Path, settings: BaseSettings, max_len: int, seed: int,
             context: int = 0, report=None) -> dict:
    """Pre-train the `cpu` profile's small Qwen2 on `texts` with transformers' Trainer, bounded by
    settings.pretrain_steps; save the model to `out_dir` (beside its tokenizer). Returns a summary (steps, losses, seconds)."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    b, tok = settings, tokenizer
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(scratch_config(b, tok, max(max_len, context)))
    ds = Dataset.from_dict({"text": texts}).map(
        lambda x: tok(x["text"], truncation=True, max_length=max_len), batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(scratch_dir(out_dir)), max_steps=b.pretrain_steps,
        per_device_train_batch_size=per_rank(b.pretrain_batch, "base.pretrain_batch"),
        learning_rate=b.pretrain_lr, lr_scheduler_type="cosine", warmup_steps=math.ceil(0.05 * b.pretrain_steps),
        weight_decay=0.01, logging_steps=max(1, b.pretrain_steps // 20), save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
        ddp_find_unused_parameters=False)  # under a launcher: every weight is used in every step
    trainer = quiet_trainer(Trainer(model=model, args=args, train_dataset=ds,
                                    data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                                    callbacks=[progress_callback(report)] if report else None))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    if is_main():  # under a launcher every rank trained the same weights; one writes them
        model.save_pretrained(out_dir)  # the tokenizer is already there: the data stage trained and wrote it
    drop_scratch(out_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model": SCRATCH_MODEL, "built": True, "steps": b.pretrain_steps,
            "parameters": sum(p.numel() for p in model.parameters()), "loss_curve": losses,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "seconds": seconds}
